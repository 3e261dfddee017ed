"""The header facts of plain JPEGs, PNGs and lossy WebPs, read from their bytes as libvips does.

Opening an image with libvips just to read its header took 0.4-0.7 ms on web-sized images
in the extraction benchmark: a quarter of a small JPEG's whole extraction. For the plain
files most of the web serves, the facts are a few bytes away. ``read`` answers only where
they are certain to be libvips' own (its jpeg2vips.c, exif.c, vipspng.c and webp2vips.c,
repeated here); for anything else it gives None and libvips reads the header:

- a JPEG whose EXIF block is anything but plain (libvips takes orientation and resolution
  from it through libexif; see ``_exif_ifd0``), a frame other than 8-bit Huffman with 1 or
  3 components, or marker segments that do not run whole up to the first scan;
- a PNG other than an opaque 8-bit grey, RGB or palette one without EXIF, whose chunks
  before the pixels are whole and known, its colour profile one libpng keeps
  (``_png``);
- a WebP other than a lossy one in the simple format (one VP8 chunk: no alpha, colour
  profile, animation or metadata).
"""

import struct
from typing import Final, NamedTuple

from crawler.extract import decode_cost, png
from crawler.extract.quality import jpeg_segments

_HUFFMAN_FRAMES: Final = frozenset({0xC0, 0xC1, 0xC2})  # baseline, extended, progressive
_SOS: Final = 0xDA
_APP0, _APP1, _APP2 = 0xE0, 0xE1, 0xE2
_MM_PER_INCH: Final = 25.4
_DEFAULT_PIXELS_PER_MM: Final = 72.0 / _MM_PER_INCH  # libvips' default: 72 dpi, as EXIF's
_SHORT, _RATIONAL = 3, 5
_ORIENTATION, _X_RESOLUTION, _Y_RESOLUTION, _RESOLUTION_UNIT = 0x0112, 0x011A, 0x011B, 0x0128
_EXIF_READ: Final = {
    _ORIENTATION: _SHORT,
    _X_RESOLUTION: _RATIONAL,
    _Y_RESOLUTION: _RATIONAL,
    _RESOLUTION_UNIT: _SHORT,
}
_SUB_IFD_POINTERS: Final = frozenset({0x8769, 0x8825, 0xA005})  # Exif, GPS, Interop
_LARGEST_PNG_SIDE: Final = 10_000_000  # VIPS_MAX_COORD, libvips' png_set_user_limits


class PlainHeader(NamedTuple):
    width: int
    height: int
    bands: int
    has_color_profile: bool
    pixels_per_mm: float  # libvips' xres
    orientation: int = 1


def read(data: bytes, image_format: str) -> PlainHeader | None:
    """The header of a plain JPEG, PNG or lossy WebP as libvips gives it, or None."""
    if image_format == "jpg":
        return _jpeg(data)
    if image_format == "webp":
        return _simple_lossy_webp(data)
    if image_format == "png":
        return _png(data)
    return None


def _jpeg(data: bytes) -> PlainHeader | None:
    frame: tuple[int, int, int] | None = None
    has_profile = False
    jfif: bytes | None = None  # the last JFIF APP0: libjpeg keeps what each one says
    exif: bytes | None = None  # the first EXIF APP1: libvips reads no other
    for marker, payload in _whole_segments(data):
        if marker in _HUFFMAN_FRAMES and frame is None:
            frame = _huffman_frame(payload)
            if frame is None:
                return None
        elif 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            return None  # another frame: arithmetic, lossless, or a second one
        elif marker == _APP1 and len(payload) > 4 and payload.startswith(b"Exif"):
            exif = exif or payload
        elif marker == _APP0 and len(payload) >= 14 and payload.startswith(b"JFIF\0"):
            jfif = payload
        elif marker == _APP2 and len(payload) > 14 and payload.startswith(b"ICC_PROFILE"):
            has_profile = has_profile or payload[12] == 1  # the first of its sections
        elif marker == _SOS:
            if frame is None:
                return None
            width, height, components = frame
            facts = _exif_ifd0(exif) if exif else (1, None)
            if facts is None:
                return None
            orientation, exif_resolution = facts
            resolution = _jfif_resolution(jfif) if exif_resolution is None else exif_resolution
            return PlainHeader(width, height, components, has_profile, resolution, orientation)
    return None


def _exif_ifd0(block: bytes) -> tuple[int, float | None] | None:
    """(orientation, xres or None to keep JFIF's) from a plain EXIF block's IFD0, as
    libvips reads them through libexif (exif.c: vips_image_resolution_from_exif and the
    orientation it parses). Plain: a whole TIFF header and IFD0, the four tags read at most
    once each, of their standard types and counts, ahead of any sub-directory pointer (so
    that nothing libexif does on loading a broken sub-directory can cut them off)."""
    tiff = block[6:]
    if not block.startswith(b"Exif\0\0") or len(tiff) < 8 or tiff[:4] not in (b"II*\0", b"MM\0*"):
        return None
    order = "<" if tiff[:2] == b"II" else ">"
    (ifd0,) = struct.unpack_from(f"{order}I", tiff, 4)
    if ifd0 + 2 > len(tiff):
        return None
    (count,) = struct.unpack_from(f"{order}H", tiff, ifd0)
    if ifd0 + 2 + 12 * count > len(tiff):
        return None
    values: dict[int, int] = {}  # tag -> where its value lies in the TIFF data
    pointer_seen = False
    for entry in range(ifd0 + 2, ifd0 + 2 + 12 * count, 12):
        tag, kind, components, offset = struct.unpack_from(f"{order}HHII", tiff, entry)
        pointer_seen = pointer_seen or tag in _SUB_IFD_POINTERS
        if tag not in _EXIF_READ:
            continue
        if pointer_seen or tag in values or (kind, components) != (_EXIF_READ[tag], 1):
            return None
        if kind == _RATIONAL and offset + 8 > len(tiff):
            return None  # libexif drops the entry
        values[tag] = offset if kind == _RATIONAL else entry + 8
    return _orientation(values, order, tiff), _exif_resolution(values, order, tiff)


def _orientation(values: dict[int, int], order: str, tiff: bytes) -> int:
    if _ORIENTATION not in values:
        return 1
    (orientation,) = struct.unpack_from(f"{order}H", tiff, values[_ORIENTATION])
    return orientation if 1 <= orientation <= 8 else 1


def _exif_resolution(values: dict[int, int], order: str, tiff: bytes) -> float | None:
    """libvips' xres from XResolution and ResolutionUnit (inches where it is absent); None
    where it keeps JFIF's: no X or Y resolution, or a unit it does not know."""
    if _X_RESOLUTION not in values or _Y_RESOLUTION not in values:
        return None
    numerator, denominator = struct.unpack_from(f"{order}II", tiff, values[_X_RESOLUTION])
    resolution = numerator / denominator if denominator else 0.0
    unit = 2
    if _RESOLUTION_UNIT in values:
        (unit,) = struct.unpack_from(f"{order}H", tiff, values[_RESOLUTION_UNIT])
    per_mm = {1: resolution, 2: resolution / _MM_PER_INCH, 3: resolution / 10.0}.get(unit)
    return None if per_mm is None else max(0.0, per_mm)


def _whole_segments(data: bytes) -> list[tuple[int, bytes]]:
    """The marker segments up to the first scan's header, where each is whole (the last is
    the scan header); else none."""
    segments = list(jpeg_segments(data))
    if not segments or segments[-1][0] != _SOS:
        return []
    position = 2
    for marker, payload in segments:
        stated = int.from_bytes(data[position + 2 : position + 4], "big")
        if data[position : position + 2] != bytes((0xFF, marker)) or stated != len(payload) + 2:
            return []  # fill bytes or a short segment: leave it to libjpeg
        position += 2 + stated
    return segments


def _huffman_frame(payload: bytes) -> tuple[int, int, int] | None:
    """(width, height, components) of an 8-bit frame of 1 or 3 components libjpeg takes."""
    if len(payload) < 6:
        return None
    precision, height, width, components = struct.unpack_from(">BHHB", payload)
    if precision != 8 or not width or not height or components not in (1, 3):
        return None
    if len(payload) != 6 + 3 * components:
        return None
    sampling = [payload[7 + 3 * i] for i in range(components)]
    if any(not 1 <= factor >> 4 <= 4 or not 1 <= factor & 0x0F <= 4 for factor in sampling):
        return None
    return width, height, components


def _jfif_resolution(jfif: bytes | None) -> float:
    """libvips' xres from a JFIF APP0 (jpeg2vips.c): its X density in the unit it states,
    unless a density is 1 or the unit is not one of length."""
    if jfif is None:
        return _DEFAULT_PIXELS_PER_MM
    unit, x_density, y_density = struct.unpack_from(">BHH", jfif, 7)
    if x_density == 1 or y_density == 1 or unit not in (1, 2):
        return _DEFAULT_PIXELS_PER_MM  # unit 0 makes the densities an aspect ratio
    return x_density / (_MM_PER_INCH if unit == 1 else 10.0)


def _simple_lossy_webp(data: bytes) -> PlainHeader | None:
    """A RIFF of one whole VP8 key frame chunk (WebPDemux's canvas is the frame's size)."""
    if len(data) < 30 or data[12:16] != b"VP8 ":
        return None
    riff_end = 8 + int.from_bytes(data[4:8], "little")
    chunk_end = 20 + int.from_bytes(data[16:20], "little")
    if riff_end > len(data) or chunk_end < 30 or chunk_end + (chunk_end & 1) != riff_end:
        return None
    size = decode_cost.webp_size(data)  # the frame's, where its start code is a key frame's
    if data[20] & 1 or size is None or not all(size):
        return None
    return PlainHeader(*size, 3, False, 1.0)  # libvips states no WebP resolution


def _png(data: bytes) -> PlainHeader | None:
    """The header of an opaque 8-bit grey, RGB or palette PNG as libvips' loader (vipspng.c,
    on libpng 1.6) states it, from the chunks before the first IDAT; None where libvips
    might read it otherwise: a colour profile libpng might not keep
    (``_profile_libpng_keeps``), transparency, EXIF (an eXIf chunk, or ImageMagick's "Raw
    profile type" text), a chunk unknown, damaged, repeated or out of order."""
    pixels_per_mm, seen = _DEFAULT_PIXELS_PER_MM, set[bytes]()
    layout: tuple[int, ...] = ()
    for kind, body in png.walk_chunks(data):
        repeated = kind in seen - {b"tEXt", b"zTXt", b"iTXt"}
        if repeated or not _PLAIN_CHECKS.get(kind, _never)(body):
            return None
        seen.add(kind)
        if kind == b"IHDR":
            layout = struct.unpack(">IIBBBBB", body)
        elif kind == b"iCCP" and (b"PLTE" in seen or not _profile_libpng_keeps(body, layout[3])):
            return None  # libpng skips a profile after the palette
        elif kind == b"pHYs":
            ppu_x = int.from_bytes(body[:4], "big")
            pixels_per_mm = ppu_x / 1000.0 if body[8] == 1 else float(ppu_x)  # 1: per metre
        elif kind == b"IDAT":
            width, height, _, colour_type, *_ = layout
            if {b"iCCP", b"sRGB"} <= seen or (colour_type == 3) != (b"PLTE" in seen):
                return None
            bands = 1 if colour_type == 0 else 3
            return PlainHeader(width, height, bands, b"iCCP" in seen, pixels_per_mm)
    return None


def _profile_libpng_keeps(chunk: bytes, colour_type: int) -> bool:
    """Whether libpng keeps an iCCP chunk's profile (png_handle_iCCP, then the checks of
    png_icc_check_header and png_icc_check_tag_table, those it only warns of let pass):
    it must inflate to the length it states, fit the image's colour (RGB for colour
    types, grey for grey), be no abstract or device link profile, and hold its tags."""
    profile = png.icc_profile(chunk) if png.keyword_ok(chunk) else None
    if profile is None or len(profile) < 132:
        return False
    length, tag_count = int.from_bytes(profile[:4], "big"), int.from_bytes(profile[128:132], "big")
    space = b"RGB " if colour_type & 2 else b"GRAY"
    header_ok = (
        length == len(profile)
        and not (profile[8] > 3 and length & 3)
        and 132 + 12 * tag_count <= length
        and int.from_bytes(profile[64:68], "big") < 0xFFFF
        and profile[36:40] == b"acsp"
        and profile[16:20] == space
        and profile[12:16] not in (b"abst", b"link")
        and profile[20:24] in (b"XYZ ", b"Lab ")
    )
    if not header_ok:
        return False
    tags = (struct.unpack_from(">II", profile, 136 + 12 * tag) for tag in range(tag_count))
    return all(start <= length and size <= length - start for start, size in tags)


def _never(body: bytes) -> bool:
    return False


def _ihdr_ok(body: bytes) -> bool:
    """An 8-bit grey, RGB or palette image within the sides libvips lets libpng read."""
    width, height, *layout = struct.unpack(">IIBBBBB", body)
    depth, colour_type, compression, filtering, interlace = layout
    sides_ok = 0 < width <= _LARGEST_PNG_SIDE and 0 < height <= _LARGEST_PNG_SIDE
    layout_ok = depth == 8 and colour_type in (0, 2, 3) and compression == filtering == 0
    return sides_ok and layout_ok and interlace in (0, 1)


def _text_ok(body: bytes) -> bool:
    """A text chunk with a valid keyword that is not EXIF in ImageMagick's form, which
    libvips reads as EXIF."""
    return png.keyword_ok(body) and not body.startswith(b"Raw profile type")


def _numbers_ok(body: bytes, count: int) -> bool:
    return len(body) == 4 * count and all(n < 1 << 31 for n in struct.unpack(f">{count}I", body))


# The chunks _png reads through before the first IDAT (each once, but text), and
# what they must be for libpng to read them as they say (it has more to say of the rest).
_PLAIN_CHECKS: Final = {
    b"IHDR": _ihdr_ok,
    b"PLTE": lambda body: 0 < len(body) <= 768 and len(body) % 3 == 0,
    b"iCCP": lambda body: True,  # checked in _png, which knows the colour type
    b"pHYs": lambda body: len(body) == 9 and body[8] <= 1 and _numbers_ok(body[:8], 2),
    b"gAMA": lambda body: _numbers_ok(body, 1) and body != bytes(4),
    b"cHRM": lambda body: _numbers_ok(body, 8),
    b"sRGB": lambda body: len(body) == 1 and body[0] <= 3,
    b"tEXt": _text_ok,
    b"zTXt": _text_ok,
    b"iTXt": _text_ok,
    b"IDAT": lambda body: True,
}
