"""Header facts: they equal what sharp reports, and bad input gives a typed one-line error."""

import ctypes
import json
import logging
import struct
import sys
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pyvips

from crawler.errors import (
    DecodeError,
    ImageError,
    NotAnImageError,
    PixelLimitError,
    UnsupportedFormatError,
)
from crawler.extract import extract
from crawler.extract.image import ImageHeader, read_header
from tests.conftest import CORPUS, EXPECTED, FIXTURES, require_shared
from tests.tiff_builder import ASCII, BYTE, RATIONAL, SHORT, entry, tiff_image

IMAGES = FIXTURES / "images"
PIXEL_LIMIT = 268_402_689


def load_references(path: Path) -> list[dict[str, Any]]:
    """The oracle's lines (``node oracle.js FILE``) from a JSON-lines file; [] when absent."""
    if not path.is_file():
        return []
    with path.open() as lines:
        return [json.loads(line) for line in lines]


FIXTURE_REFERENCES = load_references(IMAGES / "expected.jsonl")


def sharp_fields(header: ImageHeader) -> dict[str, Any]:
    """Our header in the shape of the oracle's ``sharp`` object."""
    return {
        "format": {"jpg": "jpeg", "avif": "heif"}.get(header.format, header.format),
        "width": header.width,
        "height": header.height,
        "density": header.density,
        "hasProfile": header.has_color_profile,
        "hasAlpha": header.has_transparency,
        "orientation": header.orientation,
    }


def expected_sharp_fields(reference: dict[str, Any]) -> dict[str, Any]:
    sharp = reference["sharp"]
    fields = {key: sharp[key] for key in ("format", "width", "height", "density")}
    fields |= {"hasProfile": sharp["hasProfile"], "hasAlpha": sharp["hasAlpha"]}
    fields["orientation"] = sharp["orientation"] or 1  # sharp omits it when the file has none
    return fields


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height, with almost no pixel data behind it."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 8))


def test_header_equals_sharp_on_every_corpus_file_sharp_read() -> None:
    require_shared()
    checked, wrong = 0, []
    for reference in load_references(EXPECTED):
        if reference["sharp"] is None:
            continue
        data = (CORPUS / reference["file"]).read_bytes()
        header = read_header(data, pixel_limit=PIXEL_LIMIT, where=f" ({reference['file']})")
        checked += 1
        if sharp_fields(header) != expected_sharp_fields(reference):
            wrong.append(f"{reference['file']}: {sharp_fields(header)} != {reference['sharp']}")
    print(f"\nheader: {checked} corpus files, {checked - len(wrong)} equal to sharp")
    assert checked >= 100
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize(
    "reference",
    [r for r in FIXTURE_REFERENCES if r["sharp"] is not None],
    ids=lambda r: r["file"],
)
def test_header_equals_sharp_on_synthetic_formats(reference: dict[str, Any]) -> None:
    header = read_header((IMAGES / reference["file"]).read_bytes(), pixel_limit=PIXEL_LIMIT)
    assert sharp_fields(header) == expected_sharp_fields(reference)


@pytest.mark.parametrize(
    ("name", "image_format"),
    [("photo.avif", "avif"), ("photo.heic", "heif"), ("photo.webp", "webp"), ("grey.jpg", "jpg")],
)
def test_format_names_are_imagekits(name: str, image_format: str) -> None:
    assert read_header((IMAGES / name).read_bytes(), pixel_limit=PIXEL_LIMIT).format == image_format


def test_bmp_header_is_read_without_libvips() -> None:
    header = read_header((IMAGES / "plain.bmp").read_bytes(), pixel_limit=PIXEL_LIMIT)
    assert header == ImageHeader("bmp", 64, 48, False, 96, False, 1)


def test_density_in_dots_per_centimetre_becomes_dpi() -> None:
    # the file says 118 dots per cm: 299.72 dpi, which sharp rounds to 300
    header = read_header((IMAGES / "orientation-6-dpcm.jpg").read_bytes(), pixel_limit=PIXEL_LIMIT)
    assert (header.density, header.orientation) == (300, 6)


def test_density_beyond_sharps_32_bit_integer_is_null() -> None:
    # 4294967295 dots per cm is 10909216929 dpi: sharp's int cannot hold it and gives null
    resolution = [(4294967295, 1)]
    data = tiff_image(
        bytes(64 * 48 * 3),
        64,
        48,
        image_entries=(
            entry(0x011A, RATIONAL, resolution),
            entry(0x011B, RATIONAL, resolution),
            entry(0x0128, SHORT, [3]),
        ),
    )
    assert read_header(data, pixel_limit=PIXEL_LIMIT).density is None


# The oracle's (sharp's) pHash of these pixels, as a classic TIFF and as a BigTIFF.
GRADIENT = (np.arange(64 * 48 * 3) % 251).astype(np.uint8).tobytes()
GRADIENT_PHASH = "aaff53455207adfd"
CAMERA_EXIF = {
    "exif": [entry(0x829A, RATIONAL, [(1, 160)]), entry(0x8827, SHORT, [400])],
    "gps": [entry(0x0000, BYTE, [2, 2, 0, 0]), entry(0x0001, ASCII, b"N\0")],
}


def bigtiff() -> bytes:
    return tiff_image(
        GRADIENT,
        64,
        48,
        big=True,
        image_entries=(entry(0x010F, ASCII, b"Canon\0"),),
        sections=CAMERA_EXIF,
    )


def test_bigtiff_gives_the_object_of_the_same_classic_tiff() -> None:
    classic = tiff_image(
        GRADIENT, 64, 48, image_entries=(entry(0x010F, ASCII, b"Canon\0"),), sections=CAMERA_EXIF
    )
    big, small = extract(bigtiff()).metadata, extract(classic).metadata
    assert (big["format"], big["width"], big["height"], big["pHash"]) == (
        "tiff",
        64,
        48,
        GRADIENT_PHASH,
    )
    assert small["pHash"] == GRADIENT_PHASH
    for section in ("exif", "gps", "thumbnail", "interoperability", "makernote"):
        assert big["exif"][section] == small["exif"][section]
    assert big["exif"]["exif"] == {"ExposureTime": 0.00625, "ISO": 400}
    assert big["exif"]["image"]["Make"] == "Canon"


def test_header_of_a_truncated_jpeg_is_still_read() -> None:
    data = (IMAGES / "orientation-6-dpcm.jpg").read_bytes()
    header = read_header(data[: len(data) * 2 // 3], pixel_limit=PIXEL_LIMIT)
    assert (header.width, header.height) == (400, 300)


BMP_CUT = (IMAGES / "plain.bmp").read_bytes()[:40]
SVG_XML = b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg"/>'


@pytest.mark.parametrize(
    ("data", "error", "message"),
    [
        pytest.param(b"", NotAnImageError, "not an image: the data is empty", id="empty"),
        pytest.param(b"<!DOCTYPE html><html>404</html>", NotAnImageError, "<!DOCTYPE", id="html"),
        pytest.param(b"just some text\n", NotAnImageError, "not an image", id="text"),
        pytest.param(SVG_XML, UnsupportedFormatError, "SVG", id="svg-xml"),
        pytest.param(b"<svg width='1'></svg>", UnsupportedFormatError, "SVG", id="svg"),
        pytest.param(b"\0\0\1\0\1\0" + bytes(32), UnsupportedFormatError, "ICO", id="ico"),
        pytest.param(b"8BPS\0\1" + bytes(32), UnsupportedFormatError, "PSD", id="psd"),
        pytest.param(
            b"\0\0\0\x18ftypisom\0\0\2\0isomiso2", UnsupportedFormatError, "isom", id="mp4"
        ),
        pytest.param(b"\xff\xd8\xff", DecodeError, "cannot decode jpg header", id="jpeg-magic"),
        pytest.param(png_header(50, 50)[:30], DecodeError, "cannot decode png header", id="png"),
        pytest.param(b"GIF89a\x10\0", DecodeError, "cannot decode gif header", id="gif"),
        pytest.param(b"RIFF\0\0\0\0WEBPVP8 ", DecodeError, "decode webp header", id="webp"),
        pytest.param(b"BMW 320i for sale\n", NotAnImageError, "not an image", id="text-bm"),
        pytest.param(BMP_CUT, DecodeError, "cannot decode bmp header", id="bmp"),
    ],
)
def test_bad_input_gives_a_typed_one_line_error(
    data: bytes, error: type[ImageError], message: str
) -> None:
    with pytest.raises(error) as raised:
        read_header(data, pixel_limit=PIXEL_LIMIT, where=" (https://example.test/x)")
    text = str(raised.value)
    assert message in text
    assert text.endswith(" (https://example.test/x)")
    assert "\n" not in text and len(text) < 250


def test_pixel_limit_is_checked_from_the_header_before_any_decode() -> None:
    # 10 gigapixels promised by 60 bytes: the header alone must stop it
    with pytest.raises(PixelLimitError, match="100000 x 100000 = 10000000000 pixels") as raised:
        read_header(png_header(100_000, 100_000), pixel_limit=PIXEL_LIMIT, where=" (bomb.png)")
    assert str(raised.value).endswith("limit of 268402689 (bomb.png)")
    assert raised.value.status == 413


def test_png_promising_more_pixels_than_its_bytes_can_hold_fails_at_once() -> None:
    # within the pixel limit, but 60 bytes cannot deflate to 600 MB of rows
    with pytest.raises(DecodeError, match="bytes cannot hold 100000 x 2000 pixels"):
        read_header(png_header(100_000, 2_000), pixel_limit=PIXEL_LIMIT)


def test_pixel_limit_is_inclusive() -> None:
    data = (IMAGES / "alpha.png").read_bytes()  # 120 x 90
    assert read_header(data, pixel_limit=120 * 90).width == 120
    with pytest.raises(PixelLimitError):
        read_header(data, pixel_limit=120 * 90 - 1)


def test_libvips_messages_with_bytes_that_are_not_utf8_are_logged_not_raised(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # libvips' warnings quote bytes of damaged files; pyvips' own handler decoded them as
    # strict UTF-8 and printed a traceback on stderr for each (found by fuzzing).
    unraisable: list[object] = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    caplog.set_level(logging.WARNING, logger="pyvips")
    glib = ctypes.CDLL(pytest.importorskip("_libvips").__file__)  # pyvips' binding links GLib
    glib.g_log(b"VIPS", pyvips.GLogLevelFlags.LEVEL_WARNING, b"%s", b"tag \xff\xfe damaged")
    assert unraisable == []
    assert caplog.messages == ["VIPS: tag \ufffd\ufffd damaged"]


def test_a_libvips_error_quoting_bytes_that_are_not_utf8_is_a_decode_error() -> None:
    damaged = (IMAGES / "bad-property-name.heic").read_bytes()
    with pytest.raises(DecodeError, match=r"could not parse item property '\ufffdlap'"):
        extract(damaged)
    # and the message was taken out of libvips: the next failure does not repeat it
    with pytest.raises(DecodeError) as next_failure:
        extract(b"\xff\xd8\xff\xe0" + bytes(100))
    assert "property" not in str(next_failure.value)
