"""Plain headers: read from the bytes, they must be libvips' own wherever they answer, and
leave every other file to libvips."""

import io
import struct
import zlib
from collections.abc import Callable

import pytest
from PIL import Image, ImageCms

from crawler.errors import ImageError
from crawler.extract import image, plain_headers
from tests.conftest import CORPUS, require_shared
from tests.tiff_builder import (
    LONG,
    RATIONAL,
    SHORT,
    SRATIONAL,
    Entry,
    encode_ifd,
    entry,
    tiff_block,
)

SRGB_PROFILE = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def saved(picture: Image.Image, kind: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, kind, **options)
    return buffer.getvalue()


def photo(mode: str = "RGB", size: tuple[int, int] = (96, 64)) -> Image.Image:
    picture = Image.linear_gradient("L").resize(size).convert(mode)
    if mode == "RGBA":
        picture.putalpha(128)
    return picture.quantize(64) if mode == "P" else picture


def with_jfif(jpeg: bytes, unit: int, x_density: int, y_density: int, copies: int = 1) -> bytes:
    """``jpeg`` with its APP0 replaced by ``copies`` JFIF APP0s of that unit and density."""
    assert jpeg[2:4] == b"\xff\xe0"
    rest = jpeg[4 + int.from_bytes(jpeg[4:6], "big") :]
    body = b"JFIF\0\x01\x01" + struct.pack(">BHH", unit, x_density, y_density) + b"\0\0"
    return jpeg[:2] + (b"\xff\xe0" + struct.pack(">H", len(body) + 2) + body) * copies + rest


def with_segment(jpeg: bytes, marker: int, body: bytes) -> bytes:
    return jpeg[:2] + bytes((0xFF, marker)) + struct.pack(">H", len(body) + 2) + body + jpeg[2:]


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def with_chunk(png: bytes, kind: bytes, body: bytes) -> bytes:
    """``png`` with a chunk inserted right after IHDR."""
    return png[:33] + png_chunk(kind, body) + png[33:]


def before_pixels(png: bytes, kind: bytes, body: bytes) -> bytes:
    """``png`` with a chunk inserted right before its first IDAT."""
    at = png.index(b"IDAT") - 4
    return png[:at] + png_chunk(kind, body) + png[at:]


def phys(unit: int, x: int, y: int) -> bytes:
    return struct.pack(">IIB", x, y, unit)


def with_exif(jpeg: bytes, *entries: Entry, order: str = "<", tiff: bytes = b"") -> bytes:
    """``jpeg`` with an EXIF APP1 whose IFD0 holds ``entries`` (and an Exif and a GPS
    directory after them), or the TIFF data given."""
    sections = {"image": list(entries), "exif": [entry(0x9000, 7, b"0232")], "gps": []}
    return with_segment(jpeg, 0xE1, b"Exif\0\0" + (tiff or tiff_block(sections, order)))


def resolution(unit: int | None, x: tuple[int, int] = (300, 1), order: str = "<") -> list[Entry]:
    entries = [entry(0x011A, RATIONAL, [x], order), entry(0x011B, RATIONAL, [x], order)]
    return entries + ([entry(0x0128, SHORT, [unit], order)] if unit is not None else [])


def orientation(value: int, field_type: int = SHORT) -> Entry:
    return entry(0x0112, field_type, [value])


JPEG = saved(photo(), "JPEG", quality=85)
PNG_RGB = saved(photo(), "PNG")
PNG_PALETTE = saved(photo("P"), "PNG")
ANSWERED: dict[str, Callable[[], bytes]] = {
    "jpeg": lambda: JPEG,
    "grey jpeg": lambda: saved(photo("L"), "JPEG"),
    "progressive jpeg": lambda: saved(photo(), "JPEG", progressive=True),
    "jpeg 300 dpi": lambda: with_jfif(JPEG, 1, 300, 300),
    "jpeg 118 per cm": lambda: with_jfif(JPEG, 2, 118, 118),
    "jpeg aspect ratio": lambda: with_jfif(JPEG, 0, 3, 2),
    "jpeg unknown unit": lambda: with_jfif(JPEG, 7, 300, 300),
    "jpeg density 1": lambda: with_jfif(JPEG, 1, 1, 300),
    "jpeg two JFIFs": lambda: with_jfif(JPEG, 1, 200, 200, copies=2),
    "jpeg with a profile": lambda: saved(photo(), "JPEG", icc_profile=SRGB_PROFILE),
    "jpeg profile section 2 only": lambda: with_segment(
        JPEG, 0xE2, b"ICC_PROFILE\0\x02\x02" + SRGB_PROFILE
    ),
    "exif orientation 6": lambda: with_exif(JPEG, orientation(6)),
    "exif orientation 9": lambda: with_exif(JPEG, orientation(9)),
    "exif 300 dpi": lambda: with_exif(JPEG, orientation(1), *resolution(2)),
    "exif per cm": lambda: with_exif(JPEG, *resolution(3, (118, 1))),
    "exif no unit": lambda: with_exif(JPEG, *resolution(1, (5, 2))),
    "exif unit absent": lambda: with_exif(JPEG, *resolution(None, (240, 1))),
    "exif unknown unit": lambda: with_exif(with_jfif(JPEG, 1, 200, 200), *resolution(5)),
    "exif x resolution only": lambda: with_exif(
        with_jfif(JPEG, 1, 200, 200), entry(0x011A, RATIONAL, [(300, 1)])
    ),
    "exif zero denominator": lambda: with_exif(JPEG, *resolution(2, (300, 0))),
    "exif big-endian": lambda: with_exif(
        JPEG, entry(0x0112, SHORT, [8], ">"), *resolution(2, (96, 1), ">"), order=">"
    ),
    "two exif blocks": lambda: with_exif(with_exif(JPEG, orientation(6)), orientation(3)),
    "webp": lambda: saved(photo(), "WEBP", quality=80),
    "rgb png": lambda: PNG_RGB,
    "grey png": lambda: saved(photo("L"), "PNG"),
    "palette png": lambda: PNG_PALETTE,
    "interlaced png": lambda: saved(photo(), "PNG", interlace=1),
    "png 300 dpi": lambda: with_chunk(PNG_RGB, b"pHYs", phys(1, 11811, 11811)),
    "png unit 0": lambda: with_chunk(PNG_RGB, b"pHYs", phys(0, 3, 2)),
    "png text": lambda: with_chunk(PNG_RGB, b"tEXt", b"Software\0crawler"),
    "png two texts": lambda: with_chunk(
        with_chunk(PNG_RGB, b"tEXt", b"Software\0crawler"), b"tEXt", b"Title\0a picture"
    ),
    "png gamma": lambda: with_chunk(PNG_RGB, b"gAMA", struct.pack(">I", 45455)),
    "png with a profile": lambda: saved(photo(), "PNG", icc_profile=SRGB_PROFILE),
    "palette png with a profile": lambda: saved(photo("P"), "PNG", icc_profile=SRGB_PROFILE),
}
LEFT_TO_LIBVIPS: dict[str, Callable[[], bytes]] = {
    "exif orientation a LONG": lambda: with_exif(JPEG, orientation(6, LONG)),
    "exif resolution signed": lambda: with_exif(
        JPEG, entry(0x011A, SRATIONAL, [(300, 1)]), entry(0x011B, SRATIONAL, [(300, 1)])
    ),
    "exif orientation twice": lambda: with_exif(JPEG, orientation(6), orientation(3)),
    "exif orientation after a pointer": lambda: with_exif(
        JPEG, tiff=b"II*\0\x08\0\0\0" + encode_ifd([entry(0x8769, LONG, [8]), orientation(6)], 8)
    ),
    "exif resolution outside": lambda: with_exif(
        JPEG, tiff=b"II*\0\x08\0\0\0" + encode_ifd(resolution(2), 8)[:-16]
    ),
    "exif not tiff": lambda: with_exif(JPEG, tiff=b"XX*\0\x08\0\0\0" + bytes(20)),
    "exif directory past the end": lambda: with_exif(JPEG, tiff=b"II*\0\x08\0\0\0\xff\0"),
    "exif cut in its tiff header": lambda: with_exif(JPEG, tiff=b"II*\0\x08"),
    "exif of its header alone": lambda: with_segment(JPEG, 0xE1, b"Exif\0\0"),
    "cmyk jpeg": lambda: saved(photo("CMYK"), "JPEG"),
    "truncated jpeg header": lambda: JPEG[:300],
    "webp with alpha": lambda: saved(photo("RGBA"), "WEBP"),
    "lossless webp": lambda: saved(photo(), "WEBP", lossless=True),
    "png with alpha": lambda: saved(photo("RGBA"), "PNG"),
    "palette png with transparency": lambda: saved(photo("P"), "PNG", transparency=0),
    "16-bit png": lambda: saved(photo("I;16"), "PNG"),
    "png with exif": lambda: with_chunk(PNG_RGB, b"eXIf", Image.Exif().tobytes()),
    "png bad crc": lambda: PNG_RGB[:-20] + bytes([PNG_RGB[-20] ^ 1]) + PNG_RGB[-19:],
    "png unknown critical chunk": lambda: with_chunk(PNG_RGB, b"ABCD", b""),
    "png pHYs unit 2": lambda: with_chunk(PNG_RGB, b"pHYs", phys(2, 300, 300)),
    # libpng keeps only the profiles its checks pass: not an RGB one on grey pixels
    "grey png with an RGB profile": lambda: saved(photo("L"), "PNG", icc_profile=SRGB_PROFILE),
    "png with a profile after its palette": lambda: before_pixels(
        PNG_PALETTE, b"iCCP", b"sRGB\0\0" + zlib.compress(SRGB_PROFILE)
    ),
    "png with a profile and sRGB": lambda: with_chunk(
        saved(photo(), "PNG", icc_profile=SRGB_PROFILE), b"sRGB", b"\0"
    ),
    "png with a profile of the wrong signature": lambda: saved(
        photo(), "PNG", icc_profile=SRGB_PROFILE[:36] + b"xxxx" + SRGB_PROFILE[40:]
    ),
    "png with a bad profile name": lambda: with_chunk(
        PNG_RGB, b"iCCP", b" sRGB\0\0" + zlib.compress(SRGB_PROFILE)
    ),
    "png with a profile longer than it says": lambda: saved(
        photo(), "PNG", icc_profile=SRGB_PROFILE + bytes(4)
    ),
    "png with exif as text": lambda: with_chunk(
        PNG_RGB, b"tEXt", b"Raw profile type exif\0\nexif\n      8\n45786966000049492a00\n"
    ),
    "png wider than libvips reads": lambda: (
        PNG_RGB[:8]
        + png_chunk(b"IHDR", struct.pack(">IIBBBBB", 10_000_001, 1, 8, 2, 0, 0, 0))
        + PNG_RGB[33:]
    ),
}


def libvips_header(data: bytes) -> tuple[image.ImageHeader, int]:
    image_format = image.sniff_format(data)
    loaded = image.load_vips(data, image_format)
    return image._header_from_vips(image_format, loaded), loaded.bands


def plain_header(data: bytes) -> tuple[image.ImageHeader, int] | None:
    image_format = image.sniff_format(data)
    plain = plain_headers.read(data, image_format)
    if plain is None:
        return None
    return image._header_from_plain(image_format, plain), plain.bands


@pytest.mark.parametrize("make", ANSWERED.values(), ids=ANSWERED.keys())
def test_plain_headers_are_libvips_headers(make: Callable[[], bytes]) -> None:
    data = make()
    assert plain_header(data) == libvips_header(data)


@pytest.mark.parametrize("make", LEFT_TO_LIBVIPS.values(), ids=LEFT_TO_LIBVIPS.keys())
def test_other_files_are_left_to_libvips(make: Callable[[], bytes]) -> None:
    assert plain_header(make()) is None


def test_plain_headers_are_libvips_headers_on_the_corpus() -> None:
    require_shared()
    answered = 0
    for path in sorted(CORPUS.rglob("*.*")):
        data = path.read_bytes()
        try:
            plain = plain_header(data)
        except ImageError:
            continue
        if plain is not None:
            assert plain == libvips_header(data), path.name
            answered += 1
    assert answered >= 10
