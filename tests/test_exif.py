"""The EXIF sections: node-exif conformance on JPEG, exiftool agreement elsewhere, hostile input.

Synthetic blocks are built here with struct so that each value rule of
/work/shared/spec/metadata-object.md is pinned by a case that fails when the rule breaks.
"""

import io
import json
import math
import re
import shutil
import struct
import subprocess
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pillow_heif
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from crawler.errors import ExifError
from crawler.extract import extract
from crawler.extract.exif import MAX_ENTRIES, UNSUPPORTED_MAKERNOTE, read_exif
from crawler.extract.exif import SECTIONS as EXIF_SECTIONS
from crawler.extract.exif_tags import EXIF_TAGS, GPS_TAGS
from tests.conftest import CORPUS, EXPECTED, IN_CI, SHARED, require_shared
from tests.tiff_builder import (
    ASCII,
    BYTE,
    DOUBLE,
    FLOAT,
    IFD,
    LONG,
    LONG8,
    RATIONAL,
    SHORT,
    SRATIONAL,
    SSHORT,
    UNDEFINED,
    entry,
    ifd_size,
    tiff_block,
)

JPEG_SUFFIXES = (".jpg", ".jpeg")
FORMAT_BY_SUFFIX = {".tiff": "tiff", ".heic": "heif", ".heif": "heif", ".webp": "webp"}
FORMAT_BY_SUFFIX |= {".png": "png", ".avif": "avif"}


def jpeg_with(*segments: tuple[int, bytes]) -> bytes:
    """A JPEG skeleton: SOI, the given (marker, payload) segments, then SOS and EOI."""
    parts = [b"\xff\xd8"]
    for marker, payload in segments:
        parts.append(bytes([0xFF, marker]) + struct.pack(">H", len(payload) + 2) + payload)
    return b"".join([*parts, b"\xff\xda\x00\x02\x00\xff\xd9"])


def exif_jpeg(block: bytes) -> bytes:
    return jpeg_with((0xE0, b"JFIF\0\1\1\0\0\1\0\1\0\0"), (0xE1, b"Exif\0\0" + block))


def canonical(value: Any) -> str:
    return json.dumps(value)


# --- Corpus: node-exif conformance --------------------------------------------------------------


def _references() -> list[dict[str, Any]]:
    with EXPECTED.open() as lines:
        return [json.loads(line) for line in lines]


def test_corpus_jpegs_serialise_exactly_as_node_exif() -> None:
    require_shared()
    compared, identical, wrong = 0, 0, []
    for reference in _references():
        if not reference["file"].lower().endswith(JPEG_SUFFIXES):
            continue
        data = (CORPUS / reference["file"]).read_bytes()
        if reference["exif"] is None:
            # node-exif failed (no APP1, or the first APP1 is XMP): ImageKit answers {}.
            if read_exif(data, "jpg") != {}:
                wrong.append(reference["file"])
            continue
        compared += 1
        if canonical(read_exif(data, "jpg")) == canonical(reference["exif"]):
            identical += 1
        else:
            wrong.append(reference["file"])
    print(f"\nexif: {compared} JPEGs, {identical} identical")
    assert compared > 70
    assert not wrong, f"exif differs from the reference on {wrong}"


def _documented_example() -> dict[str, Any]:
    text = (SHARED / "spec" / "imagekit-metadata-api.txt").read_text()
    start = text.index("{", text.index("Metadata Object Structure"))
    example, _end = json.JSONDecoder().raw_decode(text, start)
    return example


def test_canon_40d_gives_the_documented_exif_object() -> None:
    require_shared()
    ours = read_exif((CORPUS / "exif-samples/jpg/Canon_40D.jpg").read_bytes(), "jpg")
    assert canonical(ours) == canonical(_documented_example()["exif"])


# --- Corpus: exiftool agreement for TIFF and HEIC ----------------------------------------------

EXIFTOOL_GROUPS = {
    "IFD0": "image",
    "IFD1": "thumbnail",
    "ExifIFD": "exif",
    "GPS": "gps",
    "InteropIFD": "interoperability",
}


def _dms(value: list[float]) -> float:
    degrees, minutes, seconds = value
    return degrees + minutes / 60 + seconds / 3600


# Known differences, all from exiftool's printing rather than from the stored values:
# - even with -n, exiftool converts these to its own units (APEX to seconds and f-number,
#   degrees/minutes/seconds to decimal degrees, h/m/s to "hh:mm:ss"); we keep the stored
#   numbers, as node-exif does, so the test applies exiftool's conversion to ours;
# - exiftool prints arrays as space-separated strings and rationals to 10 significant digits;
# - exiftool's JSON turns numeric-looking text ("722") into a number.
# We also pass -b, so that long arrays (StripOffsets) print as values, not "(Binary data)".
EXIFTOOL_CONVERSIONS: dict[str, Callable[[Any], Any]] = {
    "ShutterSpeedValue": lambda apex: 2.0**-apex,
    "ApertureValue": lambda apex: 2.0 ** (apex / 2),
    "GPSLatitude": _dms,
    "GPSLongitude": _dms,
    "GPSDestLatitude": _dms,
    "GPSDestLongitude": _dms,
    "GPSTimeStamp": lambda hms: "{:02g}:{:02g}:{:02g}".format(*hms),
}


def _same_as_exiftool(name: str, ours: Any, theirs: Any) -> bool:
    ours = EXIFTOOL_CONVERSIONS.get(name, lambda value: value)(ours)
    ours_parts = ours if isinstance(ours, list) else [ours]
    theirs_parts = [theirs]
    if isinstance(theirs, str) and len(ours_parts) > 1:
        theirs_parts = theirs.split(" ")
    if len(ours_parts) != len(theirs_parts):
        return False
    return all(_same_scalar(a, b) for a, b in zip(ours_parts, theirs_parts, strict=True))


def _same_scalar(ours: Any, theirs: Any) -> bool:
    if isinstance(ours, str):
        return ours.rstrip(" ") == str(theirs)
    return math.isclose(float(ours), float(theirs), rel_tol=1e-8, abs_tol=1e-9)


def _exiftool_or_skip() -> str:
    exiftool = shutil.which("exiftool")
    if exiftool is None:
        if IN_CI:
            pytest.fail("exiftool is missing: CI must install libimage-exiftool-perl")
        pytest.skip("exiftool is not installed (apt-get install libimage-exiftool-perl)")
    return exiftool


# Tags of our table that exiftool shows but we rightly leave out: UNDEFINED values that are
# not printable text (ComponentsConfiguration is 1 2 3 0, SceneType and FileSource one byte).
BINARY_UNDEFINED_TAGS = frozenset({"ComponentsConfiguration", "SceneType", "FileSource"})
KNOWN_NAMES = {
    group: frozenset(GPS_TAGS.values() if group == "GPS" else EXIF_TAGS.values())
    for group in EXIFTOOL_GROUPS
}


def _exiftool_agreement(files: list[Path]) -> tuple[int, list[str]]:
    """(number of tags compared, disagreements) between read_exif and exiftool on ``files``."""
    command = [_exiftool_or_skip(), "-j", "-n", "-G1", "-b", *map(str, files)]
    reports = json.loads(subprocess.run(command, capture_output=True, check=True).stdout)
    compared, disagreements = 0, []
    for path, report in zip(files, reports, strict=True):
        ours = read_exif(path.read_bytes(), FORMAT_BY_SUFFIX[path.suffix.lower()])
        for key, theirs in report.items():
            group, _, name = key.partition(":")
            if name not in KNOWN_NAMES.get(group, ()):
                continue  # a group we do not map, or a tag our table does not have
            section = ours[EXIFTOOL_GROUPS[group]]
            if name in section:
                compared += 1
                if not _same_as_exiftool(name, section[name], theirs):
                    disagreements.append(f"{path.name} {key}: ours {section[name]!r}, {theirs!r}")
            elif name not in BINARY_UNDEFINED_TAGS:
                disagreements.append(f"{path.name} {key}: missing from ours")
    return compared, disagreements


def test_tiff_and_heic_agree_with_exiftool() -> None:
    require_shared()
    files = sorted(
        path
        for path in (CORPUS / "exif-samples").rglob("*")
        if path.suffix.lower() in (".tiff", ".heic", ".heif")
    )
    assert len(files) == 12
    compared, mismatches = _exiftool_agreement(files)
    assert compared > 200
    assert not mismatches


def test_heic_sections_hold_the_camera_facts() -> None:
    require_shared()
    ours = read_exif((CORPUS / "exif-samples/heic/IMG_5195.HEIC").read_bytes(), "heif")
    assert ours["image"]["Make"] == "Apple"
    assert ours["gps"]["GPSLatitudeRef"] == "N"
    assert ours["exif"]["ExifVersion"] == "0232"
    assert ours["makernote"] == {"error": UNSUPPORTED_MAKERNOTE}  # Apple's is not supported


# --- Other containers, written by Pillow and pillow-heif ---------------------------------------


def _pillow_exif() -> Image.Exif:
    exif = Image.Exif()
    exif[0x010F] = "Pillow"
    exif[0x0131] = "Paint 1.0"
    exif.get_ifd(0x8769)[0x9003] = "2024:01:02 03:04:05"
    return exif


EXPECTED_PILLOW_SECTIONS = {
    "image": {"Make": "Pillow", "Software": "Paint 1.0"},
    "exif": {"DateTimeOriginal": "2024:01:02 03:04:05"},
}


CONTAINERS = [
    ("WEBP", "webp"),
    ("PNG", "png"),
    ("AVIF", "avif"),
    ("HEIF", "heif"),
    ("TIFF", "tiff"),
]


def _saved(image_format: str, **options: Any) -> bytes:
    pillow_heif.register_heif_opener()
    out = io.BytesIO()
    Image.new("RGB", (16, 16), "teal").save(out, image_format, exif=_pillow_exif(), **options)
    return out.getvalue()


# Pillow's TIFF writer keeps IFD0 only; the corpus TIFFs and exiftool cover TIFF.
@pytest.mark.parametrize(("pillow_format", "image_format"), CONTAINERS[:-1])
def test_exif_is_read_from_every_container(pillow_format: str, image_format: str) -> None:
    ours = read_exif(_saved(pillow_format), image_format)
    assert list(ours) == ["image", "thumbnail", "exif", "gps", "interoperability", "makernote"]
    for section, entries in EXPECTED_PILLOW_SECTIONS.items():
        assert entries.items() <= ours[section].items()


def test_containers_agree_with_exiftool(tmp_path: Path) -> None:
    files = []
    for pillow_format, image_format in CONTAINERS:
        files.append(tmp_path / f"image.{image_format}")
        files[-1].write_bytes(_saved(pillow_format))
    compared, mismatches = _exiftool_agreement(files)
    assert compared >= 3 * len(files)
    assert not mismatches


def _png_with_chunk(kind: bytes, payload: bytes) -> bytes:
    png = _saved("PNG")
    png = png.replace(b"eXIf", b"zzzz")  # hide Pillow's own chunk from the reader
    chunk = struct.pack(">L", len(payload)) + kind + payload
    return png[:33] + chunk + struct.pack(">L", zlib.crc32(kind + payload)) + png[33:]


@pytest.mark.parametrize("kind", [b"tEXt", b"zTXt"])
def test_png_legacy_raw_profile_is_read(kind: bytes) -> None:
    app1 = _pillow_exif().tobytes()
    hex_lines = "\n".join(app1[i : i + 36].hex() for i in range(0, len(app1), 36))
    text = f"\nexif\n{len(app1):8d}\n{hex_lines}\n".encode()
    body = zlib.compress(text) if kind == b"zTXt" else text
    method = b"\0" if kind == b"zTXt" else b""
    ours = read_exif(_png_with_chunk(kind, b"Raw profile type exif\0" + method + body), "png")
    assert ours["image"]["Make"] == "Pillow"


def test_formats_without_exif_give_an_empty_object() -> None:
    assert read_exif(_saved("GIF"), "gif") == {}
    assert read_exif(_saved("BMP"), "bmp") == {}
    out = io.BytesIO()
    Image.new("RGB", (8, 8)).save(out, "PNG")
    assert read_exif(out.getvalue(), "png") == {}


# --- Value rules, on synthetic blocks -----------------------------------------------------------


def test_value_rules() -> None:
    image = [
        entry(0x010F, ASCII, b"Canon\0"),
        entry(0x0110, ASCII, b"ION230\0F\0"),  # only ONE trailing NUL goes
        entry(0x0131, ASCII, b"caf\xe9\0"),  # Latin-1
        entry(0x011A, RATIONAL, [(72, 1)]),  # integral: 72, not 72.0
        entry(0x011B, RATIONAL, [(1, 0)]),  # x/0: null
        entry(0x0102, SHORT, [8, 8, 8]),  # more elements stay an array
        entry(0x0112, SHORT, [1]),  # one element becomes a scalar
        entry(0x0118, FLOAT, [1.5]),  # FLOAT left out
        entry(0x0119, DOUBLE, [2.5]),  # DOUBLE left out
        entry(0xABCD, SHORT, [1]),  # unknown tag left out
        entry(0xEA1C, UNDEFINED, b"printable padding"),  # Padding skipped
    ]
    exif = [
        entry(0x9000, UNDEFINED, b"0221"),  # printable: text
        entry(0x9101, UNDEFINED, b"\1\2\3\0"),  # not printable: left out
        entry(0x9286, UNDEFINED, b"\0" * 20),  # NULs: left out
        entry(0x829A, RATIONAL, [(1, 160)]),
        entry(0x9204, SRATIONAL, [(-2, 3)]),
        entry(0x9206, SRATIONAL, [(0, -5)]),  # -0 prints as 0
        entry(0x8827, SSHORT, [-1]),
        entry(0xA420, ASCII, b""),
    ]
    gps = [entry(0x0000, BYTE, [2, 2, 0, 0]), entry(0x0006, RATIONAL, [(0, 0)])]
    block = tiff_block({"image": image, "exif": exif, "gps": gps})
    exif_at = 8 + ifd_size(image) + 2 * 12  # IFD0 grew by the two pointer entries
    expected = {
        "image": {
            "Make": "Canon",
            "Model": "ION230\u0000F",
            "Software": "café",
            "XResolution": 72,
            "YResolution": None,
            "BitsPerSample": [8, 8, 8],
            "Orientation": 1,
            "ExifOffset": exif_at,
            "GPSInfo": exif_at + ifd_size(exif),
        },
        "thumbnail": {},
        "exif": {
            "ExifVersion": "0221",
            "ExposureTime": 0.00625,
            "ExposureCompensation": -2 / 3,
            "SubjectDistance": 0,
            "ISO": -1,
            "ImageUniqueID": "",
        },
        "gps": {"GPSVersionID": [2, 2, 0, 0], "GPSAltitude": None},
        "interoperability": {},
        "makernote": {},
    }
    assert canonical(read_exif(exif_jpeg(block), "jpg")) == canonical(expected)
    assert '"XResolution": 72,' in canonical(expected)


def test_big_endian_blocks_read_the_same() -> None:
    sections = {
        "image": [entry(0x0100, LONG, [4000], ">"), entry(0x011A, RATIONAL, [(300, 1)], ">")]
    }
    assert read_exif(tiff_block(sections, ">"), "tiff")["image"] == {
        "ImageWidth": 4000,
        "XResolution": 300,
    }


def test_thumbnail_and_interoperability_sections() -> None:
    block = tiff_block(
        {
            "image": [entry(0x010F, ASCII, b"X\0")],
            "exif": [entry(0xA002, LONG, [100])],
            "interoperability": [
                entry(0x0001, ASCII, b"R98\0"),
                entry(0x1234, SHORT, [1]),  # unknown: the directory stops here
                entry(0x0002, UNDEFINED, b"0100"),
            ],
            "thumbnail": [entry(0x0103, SHORT, [6]), entry(0x0201, LONG, [1090])],
        }
    )
    ours = read_exif(block, "tiff")
    assert ours["thumbnail"] == {"Compression": 6, "ThumbnailOffset": 1090}
    assert ours["interoperability"] == {"InteropIndex": "R98"}
    assert list(ours["exif"]) == ["ExifImageWidth", "InteropOffset"]


def test_at_most_128_entries_in_ifd0_ifd1_gps_and_interop() -> None:
    entries = [entry(0x0100, SHORT, [n]) for n in range(MAX_ENTRIES)]
    entries.append(entry(0x010F, ASCII, b"Z\0"))
    # node-exif looks for IFD1's pointer after entry 128, inside the directory: we read none.
    ours = read_exif(
        tiff_block({"image": entries, "thumbnail": [entry(0x0103, SHORT, [6])]}), "tiff"
    )
    assert ours["image"] == {"ImageWidth": MAX_ENTRIES - 1}  # repeated keys keep the last value
    assert ours["thumbnail"] == {}
    gps = [entry(0x0000, BYTE, [n, 0, 0, 0]) for n in range(MAX_ENTRIES)]
    gps.append(entry(0x0001, ASCII, b"N\0"))
    assert read_exif(tiff_block({"gps": gps}), "tiff")["gps"] == {
        "GPSVersionID": [MAX_ENTRIES - 1, 0, 0, 0]
    }


def test_the_exif_directory_is_read_past_128_entries() -> None:
    # node-exif caps four directories at 128 entries, but reads every one of the Exif
    # directory: ISO, ExifVersion and LensModel here come after the 128th.
    filler = [entry(0xA002, LONG, [n]) for n in range(MAX_ENTRIES)]
    late = [entry(0x8827, SHORT, [200]), entry(0x9000, UNDEFINED, b"0232")]
    late.append(entry(0xA434, ASCII, b"EF50mm f/1.8\0"))
    for data, image_format in ((exif_jpeg(tiff_block({"exif": filler + late})), "jpg"),):
        ours = read_exif(data, image_format)["exif"]
        assert (ours["ISO"], ours["ExifVersion"], ours["LensModel"]) == (
            200,
            "0232",
            "EF50mm f/1.8",
        )
        assert ours["ExifImageWidth"] == MAX_ENTRIES - 1


CAMERA_SECTIONS = {
    "image": [entry(0x010F, ASCII, b"Canon\0"), entry(0x011A, RATIONAL, [(72, 1)])],
    "exif": [entry(0x829A, RATIONAL, [(1, 160)]), entry(0x8827, SHORT, [400])],
    "gps": [entry(0x0000, BYTE, [2, 2, 0, 0]), entry(0x0002, RATIONAL, [(1, 1)] * 3)],
}
CAMERA_EXIF = {"ExposureTime": 0.00625, "ISO": 400}


def test_a_pointer_of_type_ifd_is_followed_as_exiftool_does(tmp_path: Path) -> None:
    # TIFF 6 allows type IFD (13) for the pointer; exiftool reads the Exif directory behind it
    block = tiff_block(CAMERA_SECTIONS, pointer_type=IFD)
    assert read_exif(block, "tiff")["exif"] == CAMERA_EXIF
    path = tmp_path / "ifd-pointer.tiff"
    path.write_bytes(block)
    compared, mismatches = _exiftool_agreement([path])
    assert compared >= 6
    assert not mismatches
    # node-exif (JPEG, the reference) does not know the type: no pointer, no Exif section
    assert read_exif(exif_jpeg(block), "jpg")["exif"] == {}


@pytest.mark.parametrize("order", ["<", ">"])
def test_bigtiff_blocks_read_as_classic_tiff(order: str, tmp_path: Path) -> None:
    sections = {
        "image": [entry(0x010F, ASCII, b"Canon\0"), entry(0x0111, LONG8, [123456], order)],
        "exif": [entry(0x829A, RATIONAL, [(1, 160)], order), entry(0x8827, SHORT, [400], order)],
        "gps": [entry(0x0000, BYTE, [2, 2, 0, 0]), entry(0x0001, ASCII, b"N\0")],
    }
    ours = read_exif(tiff_block(sections, order, big=True, pointer_type=LONG8), "tiff")
    assert ours["image"]["Make"] == "Canon"
    assert ours["image"]["StripOffsets"] == 123456
    assert ours["exif"] == CAMERA_EXIF
    assert ours["gps"] == {"GPSVersionID": [2, 2, 0, 0], "GPSLatitudeRef": "N"}
    # exiftool reads a BigTIFF's sub-directories as plain ones: their group is the pointer's
    path = tmp_path / "big.tiff"
    path.write_bytes(tiff_block(sections, order, big=True, pointer_type=LONG8))
    report = json.loads(
        subprocess.run(
            [_exiftool_or_skip(), "-j", "-n", "-G1", str(path)], capture_output=True, check=True
        ).stdout
    )[0]
    assert (report["IFD0:Make"], report["IFD0:StripOffsets"]) == ("Canon", 123456)
    assert (report["ExifOffset:ExposureTime"], report["ExifOffset:ISO"]) == (0.00625, 400)


@pytest.mark.parametrize(
    ("makernote", "expected"),
    [
        (b"OLYMP\0\1\0" + b"\0" * 20, {}),
        (b"FUJIFILM" + b"\0" * 20, {}),
        (b"SANYO", {}),
        (b"Nikon\0\2\0" + b"\0" * 20, {"error": UNSUPPORTED_MAKERNOTE}),
        (b"", {"error": UNSUPPORTED_MAKERNOTE}),
    ],
)
def test_makernote_section(makernote: bytes, expected: dict[str, str]) -> None:
    block = tiff_block({"exif": [entry(0x927C, UNDEFINED, makernote)]})
    assert read_exif(block, "tiff")["makernote"] == expected


# --- JPEG segments ----------------------------------------------------------------------------

SMALL_BLOCK = tiff_block({"image": [entry(0x010F, ASCII, b"Canon\0")]})


def test_only_the_first_app1_counts() -> None:
    xmp = b"http://ns.adobe.com/xap/1.0/\0<x:xmpmeta/>"
    assert read_exif(jpeg_with((0xE1, xmp), (0xE1, b"Exif\0\0" + SMALL_BLOCK)), "jpg") == {}
    assert read_exif(jpeg_with((0xE1, b"Exif\0\0" + SMALL_BLOCK)), "jpg")["image"] == {
        "Make": "Canon"
    }


def test_jpeg_without_app1_or_not_jpeg_gives_nothing() -> None:
    assert read_exif(jpeg_with((0xE0, b"JFIF\0")), "jpg") == {}
    assert read_exif(b"\x89PNG\r\n\x1a\n", "jpg") == {}
    assert read_exif(b"", "jpg") == {}


# --- Broken blocks ----------------------------------------------------------------------------


def _raises_exif_error(data: bytes, image_format: str, message: str) -> None:
    with pytest.raises(ExifError, match=message):
        read_exif(data, image_format)


def test_an_unreadable_tiff_header_is_an_error() -> None:
    _raises_exif_error(exif_jpeg(b"XX*\0\x08\0\0\0"), "jpg", "byte order")
    _raises_exif_error(exif_jpeg(b"II,\0\x08\0\0\0"), "jpg", "magic")
    _raises_exif_error(b"II+\0\x08\0\0\0\x10\0", "tiff", "cut short")  # BigTIFF: 8-byte offset
    _raises_exif_error(b"MM\0*\0\0", "tiff", "cut short")


def _patched(block: bytes, tag: int, field: str, value: int, order: str = "<") -> bytes:
    """``block`` with the count or the value/offset field of entry ``tag`` replaced."""
    patched = bytearray(block)
    position = block.index(struct.pack(order + "H", tag), 8)
    struct.pack_into(order + "L", patched, position + (4 if field == "count" else 8), value)
    return bytes(patched)


def _read_with_problems(
    data: bytes, image_format: str = "tiff"
) -> tuple[dict[str, Any], list[str]]:
    problems: list[str] = []
    return read_exif(data, image_format, problems), problems


SECTIONS_BUT = {name: CAMERA_SECTIONS[name] for name in ("image", "exif", "gps")} | {
    "interoperability": [entry(0x0001, ASCII, b"R98\0")]
}


def test_a_directory_outside_the_block_costs_only_its_section() -> None:
    block = _patched(tiff_block(SECTIONS_BUT), 0x8825, "value", 60_000)  # GPSInfo
    ours, problems = _read_with_problems(block)
    assert ours["gps"] == {}
    assert ours["exif"] == CAMERA_EXIF | {"InteropOffset": ours["exif"]["InteropOffset"]}
    assert ours["interoperability"] == {"InteropIndex": "R98"}
    assert ours["image"]["Make"] == "Canon"
    assert problems == [f"GPS at offset 60000 lies outside the {len(block)}-byte block"]
    ifd0_far_away = b"II*\0" + struct.pack("<L", 1 << 31)
    assert _read_with_problems(ifd0_far_away)[0] == {name: {} for name in EXIF_SECTIONS}


def test_a_directory_that_loops_back_is_cut_where_it_loops() -> None:
    block = tiff_block(SECTIONS_BUT)
    exif_at = read_exif(block, "tiff")["image"]["ExifOffset"]
    interop_is_exif = _patched(block, 0xA005, "value", exif_at)
    ours, problems = _read_with_problems(interop_is_exif)
    assert ours["interoperability"] == {}
    assert ours["exif"]["ISO"] == 400 and ours["gps"]["GPSVersionID"] == [2, 2, 0, 0]
    assert problems == [f"Interop at offset {exif_at} loops back to a directory already read"]
    exif_is_ifd0 = tiff_block({"image": [(0x8769, LONG, 1, struct.pack("<L", 8))]})
    assert _read_with_problems(exif_is_ifd0)[1] == [
        "Exif at offset 8 loops back to a directory already read"
    ]
    ifd1_is_ifd0 = bytearray(SMALL_BLOCK)
    struct.pack_into("<L", ifd1_is_ifd0, 8 + 2 + 12, 8)
    ours, problems = _read_with_problems(bytes(ifd1_is_ifd0))
    assert (ours["image"], ours["thumbnail"]) == ({"Make": "Canon"}, {})
    assert problems == ["IFD1 at offset 8 loops back to a directory already read"]


def test_a_value_outside_the_block_costs_only_its_entry() -> None:
    block = tiff_block(
        {"image": [entry(0x010F, ASCII, b"A long make\0"), entry(0x0110, ASCII, b"Model\0")]}
    )
    far_value = _patched(block, 0x010F, "value", 10_000)
    ours, problems = _read_with_problems(far_value)
    assert ours["image"] == {"Model": "Model"}
    assert problems == [
        f"IFD0 Make: its 12-byte value at offset 10000 lies outside the {len(block)}-byte block"
    ]
    huge_count = _patched(block, 0x010F, "count", 0xFFFFFFFF)  # a Make of 4G characters
    ours, problems = _read_with_problems(huge_count)
    assert ours["image"] == {"Model": "Model"}
    assert problems[0].startswith("IFD0 Make: its 4294967295-byte value at offset 38 runs past")
    truncated, problems = _read_with_problems(block[:-4])
    assert truncated["image"] == {"Make": "A long make"}
    assert problems == [
        f"IFD0 Model: its 6-byte value at offset {len(block) - 6} runs past"
        f" the end of the {len(block) - 4}-byte block"
    ]


def test_a_directory_cut_short_keeps_the_entries_inside_the_block() -> None:
    block = tiff_block({"image": [entry(0x0112, SHORT, [6]), entry(0x0131, ASCII, b"Sw\0")]})
    ours, problems = _read_with_problems(block[: 8 + 2 + 12 + 6])
    assert ours["image"] == {"Orientation": 6}
    assert problems == ["IFD0 at offset 8 has 2 entries, 1 of them inside the 28-byte block"]


def test_a_makernote_outside_the_block_keeps_the_rest() -> None:
    sections = SECTIONS_BUT | {
        "exif": [*CAMERA_SECTIONS["exif"], entry(0x927C, UNDEFINED, b"Nikon" * 8)]
    }
    block = _patched(tiff_block(sections), 0x927C, "value", 60_000)
    for data, image_format in ((block, "tiff"), (exif_jpeg(block), "jpg")):
        ours, problems = _read_with_problems(data, image_format)
        # as the reference: there is a maker note, in no format it can read
        assert ours["makernote"] == {"error": UNSUPPORTED_MAKERNOTE}
        assert ours["exif"] == CAMERA_EXIF | {"InteropOffset": ours["exif"]["InteropOffset"]}
        assert ours["gps"]["GPSVersionID"] == [2, 2, 0, 0]
        assert ours["interoperability"] == {"InteropIndex": "R98"}
        assert problems[0].startswith("Exif MakerNote: its 40-byte value at offset 60000 lies")


def test_extraction_keeps_the_readable_exif_and_warns_of_the_rest() -> None:
    picture = Image.new("RGB", (40, 30), "teal")
    out = io.BytesIO()
    block = _patched(tiff_block(SECTIONS_BUT), 0x8825, "value", 60_000)
    picture.save(out, "JPEG", exif=b"Exif\0\0" + block)
    result = extract(out.getvalue())
    assert result.metadata["exif"]["exif"]["ISO"] == 400
    assert result.metadata["exif"]["gps"] == {}
    # a JPEG's block is read to the end of the file, as node-exif reads it
    assert len(result.warnings) == 1
    assert re.fullmatch(
        r"exif: GPS at offset 60000 lies outside the \d+-byte block", result.warnings[0]
    )


def _camera_like_block() -> bytes:
    return tiff_block(
        {
            "image": [entry(0x010F, ASCII, b"Canon\0"), entry(0x011A, RATIONAL, [(72, 1)])],
            "exif": [entry(0x829A, RATIONAL, [(1, 160)]), entry(0x927C, UNDEFINED, b"x" * 40)],
            "gps": [entry(0x0000, BYTE, [2, 2, 0, 0]), entry(0x0002, RATIONAL, [(1, 1)] * 3)],
            "interoperability": [entry(0x0001, ASCII, b"R98\0")],
            "thumbnail": [entry(0x0201, LONG, [1])],
        },
        order=">",
    )


HOSTILE_CASES = [
    ("tiff", _camera_like_block()),
    ("jpg", exif_jpeg(_camera_like_block())),
    ("tiff", tiff_block(CAMERA_SECTIONS, big=True)),
]


@settings(max_examples=300, deadline=None)
@given(
    case=st.sampled_from(HOSTILE_CASES),
    cut=st.integers(min_value=0, max_value=400),
    flips=st.lists(st.tuples(st.integers(0, 399), st.integers(0, 7)), max_size=6),
)
def test_hostile_blocks_give_a_dict_or_exif_error_quickly(
    case: tuple[str, bytes], cut: int, flips: list[tuple[int, int]]
) -> None:
    image_format, original = case
    data = bytearray(original[: max(cut, 8)])
    for position, bit in flips:
        if position < len(data):
            data[position] ^= 1 << bit
    started = time.perf_counter()
    try:
        result = read_exif(bytes(data), image_format)
    except ExifError as exc:
        assert "\n" not in str(exc)
    else:
        assert isinstance(result, dict)
    assert time.perf_counter() - started < 0.5
