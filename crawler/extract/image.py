"""Header facts of an image: format, size, colour profile, density, transparency, orientation.

The facts match what ``sharp(data).metadata()`` reports, because both read them through libvips
(sharp's engine). Reading a header never decodes pixels: libvips opens images lazily, and the
pixel limit is checked from the header alone. BMP is not a libvips format, so Pillow reads it.

The pixel readers used by the pHash (``load_vips``, ``decode_jpeg_as_libvips``,
``decode_with_pillow``) live here too, so that every libvips or Pillow failure becomes the same
short, typed error.
"""

import io
import logging
import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Final

import pillow_heif
import pyvips
from PIL import (
    AvifImagePlugin,
    BmpImagePlugin,
    GifImagePlugin,
    Image,
    ImageFile,
    JpegImagePlugin,
    PngImagePlugin,
    TiffImagePlugin,
    UnidentifiedImageError,
    WebPImagePlugin,
)
from pillow_heif.as_plugin import HeifImageFile

from crawler.errors import (
    DecodeError,
    ImageError,
    MemoryExhaustedError,
    NotAnImageError,
    PixelLimitError,
    UnsupportedFormatError,
)
from crawler.extract import decode_cost, libwebp, plain_headers, png
from crawler.signatures import AVIF_BRANDS, SIGNATURE_SIZE, image_signature

# Extraction runs in long-lived worker processes: libvips must not keep decoded images,
# operations or open files around between calls.
pyvips.cache_set_max(0)
pyvips.cache_set_max_mem(0)
pyvips.cache_set_max_files(0)
pillow_heif.register_heif_opener()


_GLIB_LEVELS: Final = (  # GLib's log level bits, most severe first, as logging levels
    (pyvips.GLogLevelFlags.LEVEL_ERROR, logging.ERROR),
    (pyvips.GLogLevelFlags.LEVEL_CRITICAL, logging.CRITICAL),
    (pyvips.GLogLevelFlags.LEVEL_WARNING, logging.WARNING),
    (pyvips.GLogLevelFlags.LEVEL_MESSAGE, logging.INFO),
    (pyvips.GLogLevelFlags.LEVEL_INFO, logging.INFO),
    (pyvips.GLogLevelFlags.LEVEL_DEBUG, logging.DEBUG),
)


def _log_glib_message(domain: Any, glib_level: int, message: Any, _user_data: Any) -> None:
    """A GLib log message of libvips or GObject, to the ``pyvips`` logger.

    Ours rather than pyvips' handler, which decodes messages as strict UTF-8: libvips'
    warnings quote bytes of damaged files, and each failure printed a traceback on stderr.
    """
    level = next((ours for bit, ours in _GLIB_LEVELS if glib_level & bit), logging.WARNING)
    logger = logging.getLogger("pyvips")
    if logger.isEnabledFor(level):
        logger.log(level, "%s: %s", _glib_text(domain), _glib_text(message))


def _glib_text(text: Any) -> str:
    if text == pyvips.ffi.NULL:
        return ""
    return pyvips.ffi.string(text).decode("utf-8", errors="replace")


# Kept here: GLib holds only a C pointer to the callback. libvips logs under "VIPS"; its
# HEIF loader sets out-of-range sizes from damaged files on GObject properties, which
# GLib would print on stderr under "GLib-GObject".
_GLIB_LOG_HANDLER = pyvips.ffi.callback("GLogFunc", _log_glib_message)
for _domain in (b"VIPS", b"GLib-GObject"):
    pyvips.glib_lib.g_log_set_handler(
        _domain, sum(bit for bit, _ in _GLIB_LEVELS), _GLIB_LOG_HANDLER, pyvips.ffi.NULL
    )
# Every libvips failure becomes a typed error with the reason; its warnings (several per
# broken file) would only repeat that on stderr under the CLI's WARNING-level logging.
if logging.getLogger("pyvips").level == logging.NOTSET:
    logging.getLogger("pyvips").setLevel(logging.ERROR)

_VIPS_LOADERS: Final = {
    "jpg": "jpegload_buffer",
    "png": "pngload_buffer",
    "gif": "gifload_buffer",
    "webp": "webpload_buffer",
    "tiff": "tiffload_buffer",
    "heif": "heifload_buffer",
    "avif": "heifload_buffer",
}
VIPS_FORMATS: Final = frozenset(_VIPS_LOADERS)

_UNSUPPORTED_SIGNATURES: Final = (
    (b"\x00\x00\x01\x00", "ICO"),
    (b"\x00\x00\x02\x00", "CUR"),
    (b"8BPS", "PSD"),
    (b"%PDF", "PDF"),
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", "JPEG 2000"),
    (b"\xff\x4f\xff\x51", "JPEG 2000"),
    (b"\x00\x00\x00\x0cJXL \r\n\x87\n", "JPEG XL"),
    (b"\xff\x0a", "JPEG XL"),
    (b"\x76\x2f\x31\x01", "OpenEXR"),
    (b"qoif", "QOI"),
    (b"icns", "ICNS"),
    (b"DDS ", "DDS"),
    (b"#?RADIANCE", "Radiance HDR"),
)
_HEIF_BRANDS: Final = frozenset(
    {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs", b"mif1", b"msf1"}
)
# "BM" alone also starts text; the size of the info header after it tells a real BMP
_BMP_INFO_HEADER_SIZES: Final = frozenset({12, 16, 40, 52, 56, 64, 108, 124})
_TEXT_PROBE_BYTES: Final = 1024
# EXIF orientation -> the Pillow transpose that shows the image upright
_ORIENTATION_TRANSPOSE: Final = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_SAMPLE_BYTES: Final = {
    **{"uchar": 1, "char": 1, "ushort": 2, "short": 2, "uint": 4, "int": 4},
    **{"float": 4, "double": 8, "complex": 8, "dpcomplex": 16},
}
_MM_PER_INCH: Final = 25.4
_INT32_MAX: Final = 2**31 - 1
# Pillow modes whose JPEG pixels libjpeg produces exactly as libvips' loader does (CMYK and
# YCCK are inverted and converted by libvips itself).
_LIBVIPS_IDENTICAL_JPEG_MODES: Final = frozenset({"RGB", "L"})
_PILLOW_ERRORS: Final = (OSError, EOFError, SyntaxError, ValueError, RuntimeError)
# How libvips, libjpeg and libheif say that an allocation failed
_OUT_OF_MEMORY: Final = ("out of memory", "insufficient memory", "memory allocation error")
_PILLOW_PLUGINS: Final[dict[str, type[ImageFile.ImageFile]]] = {
    "jpg": JpegImagePlugin.JpegImageFile,
    "png": PngImagePlugin.PngImageFile,
    "gif": GifImagePlugin.GifImageFile,
    "bmp": BmpImagePlugin.BmpImageFile,
    "webp": WebPImagePlugin.WebPImageFile,
    "tiff": TiffImagePlugin.TiffImageFile,
    "avif": AvifImagePlugin.AvifImageFile,
    "heif": HeifImageFile,
}


@dataclass(frozen=True)
class ImageHeader:
    """What the header says, before any pixel is decoded.

    ``width``/``height`` are as stored (before EXIF orientation); ``density`` is in dpi, rounded
    as sharp rounds it, ``None`` when the file states none above 25.4 dpi; ``orientation`` is the
    EXIF orientation 1..8 (1 when absent).
    """

    format: str
    width: int
    height: int
    has_color_profile: bool
    density: int | None
    has_transparency: bool
    orientation: int


def read_header(
    data: bytes,
    *,
    pixel_limit: int,
    memory_limit: int | None = None,
    full_decode: bool = False,
    where: str = "",
) -> ImageHeader:
    """The header facts of the image in ``data``, without decoding pixels, checked against
    the limits (``memory_limit``, None for none: what its decode needs, estimated from the
    header; ``full_decode``: the pixels will be decoded at full size, not as far as the
    pHash reduces them).

    ``where`` (e.g. `` (photo.jpg)``) is appended to error messages. Raises NotAnImageError,
    UnsupportedFormatError, DecodeError (unreadable header, or data that cannot fill the
    picture), PixelLimitError or MemoryLimitError.
    """
    image_format = sniff_format(data, where)
    if image_format == "webp" and (canvas := decode_cost.webp_size(data)):
        # before libvips, which allocates the canvas as it reads the header
        _check_pixel_limit(*canvas, pixel_limit, where)
        decode_cost.check(
            data,
            "webp",
            canvas,
            4,
            1,
            memory_limit=memory_limit,
            full_decode=full_decode,
            where=where,
        )
    if image_format == "bmp":
        header, bands = _read_bmp_header(data, where)
        sample_bytes = 1
    elif (plain := plain_headers.read(data, image_format)) is not None:
        header, bands, sample_bytes = _header_from_plain(image_format, plain), plain.bands, 1
    else:
        image = load_vips(data, image_format, where)
        header, bands = _header_from_vips(image_format, image), image.bands
        sample_bytes = _SAMPLE_BYTES.get(image.format, 8)
    _check_pixel_limit(header.width, header.height, pixel_limit, where)
    decode_cost.check(
        data,
        image_format,
        (header.width, header.height),
        bands,
        sample_bytes,
        memory_limit=memory_limit,
        full_decode=full_decode,
        where=where,
    )
    return header


def sniff_format(data: bytes, where: str = "") -> str:
    """Our format name ('jpg', 'png', ...) for ``data``, from its first bytes alone."""
    if not data:
        raise NotAnImageError(f"not an image: the data is empty{where}")
    image_format = image_signature(data[:SIGNATURE_SIZE])
    if image_format in ("heif", "avif"):
        return _iso_media_format(data, where)
    if image_format == "bmp":
        if int.from_bytes(data[14:18], "little") in _BMP_INFO_HEADER_SIZES:
            return image_format
    elif image_format is not None:
        return image_format
    for signature, name in _UNSUPPORTED_SIGNATURES:
        if data.startswith(signature):
            raise UnsupportedFormatError(f"unsupported image format: {name}{where}")
    if _looks_like_svg(data):
        raise UnsupportedFormatError(f"unsupported image format: SVG{where}")
    raise NotAnImageError(f"not an image: the data starts with {data[:16]!r}{where}")


def _check_pixel_limit(width: int, height: int, pixel_limit: int, where: str = "") -> None:
    if width * height > pixel_limit:
        raise PixelLimitError(
            f"image too large: {width} x {height} = {width * height} pixels,"
            f" more than the limit of {pixel_limit}{where}"
        )


def load_vips(data: bytes, image_format: str, where: str = "", **options: Any) -> pyvips.Image:
    """A lazy libvips image of the first page of ``data``: nothing is decoded yet.

    ``options`` go to the loader (e.g. ``shrink`` for JPEG, ``scale`` for WebP). Decoding
    failures show up later, when pixels are computed: wrap that in ``vips_errors``.
    """
    with vips_errors(image_format, where, "header"):
        image = _open_vips(data, image_format, options)
        # sharp decodes a multi-image HEIF's primary image, not its first one.
        if image_format in ("heif", "avif") and "page" not in options:
            primary = _primary_heif_page(image)
            if primary:
                image = _open_vips(data, image_format, options | {"page": primary})
    return image


def _open_vips(data: bytes, image_format: str, options: dict[str, Any]) -> pyvips.Image:
    # sharp fails on libjpeg warnings ("warning"); we still hash what decodes with warnings
    # (sharp gives no hash there at all) and fail only on truncated or broken data. The
    # format's loader is called by name: asking each loader whether the bytes are its own
    # took a third of opening a web-sized image.
    return pyvips.Operation.call(
        _VIPS_LOADERS[image_format], data, access="sequential", fail_on="truncated", **options
    )


@contextmanager
def vips_errors(image_format: str, where: str, stage: str) -> Iterator[None]:
    """Turn a libvips failure inside the block into a one-line DecodeError."""
    try:
        with vips_messages_decoded():
            yield
    except pyvips.Error as exc:
        raise _decode_failure(image_format, stage, _last_line(exc), where) from None


def _decode_failure(image_format: str, stage: str, reason: str, where: str) -> ImageError:
    """A decoder's failure as a typed error: MemoryExhaustedError where it ran out of memory
    (the extraction process's cap), DecodeError otherwise."""
    if any(words in reason.lower() for words in _OUT_OF_MEMORY):
        return MemoryExhaustedError(
            f"ran out of memory decoding {image_format} {stage}: {reason}{where}"
        )
    return DecodeError(f"cannot decode {image_format} {stage}: {reason}{where}")


@contextmanager
def vips_messages_decoded() -> Iterator[None]:
    """A libvips failure inside the block raises pyvips.Error, whatever its message holds.

    pyvips decodes libvips' message as strict UTF-8 while it makes its Error; a message
    quoting bytes of the file (libheif names a damaged box type) raises UnicodeDecodeError
    instead and stays in libvips' buffer, to be prepended to the next failure's message.
    Here it is read with replacement characters and cleared.
    """
    try:
        yield
    except UnicodeDecodeError:
        detail = _glib_text(pyvips.vips_lib.vips_error_buffer())
        pyvips.vips_lib.vips_error_clear()
        raise pyvips.Error("", detail or "libvips error") from None


def decode_jpeg_as_libvips(data: bytes, header: ImageHeader, shrink: int) -> Image.Image | None:
    """The pixels libvips' JPEG loader gives with ``shrink`` (1, 2, 4 or 8), decoded by Pillow.

    Both hand the work to libjpeg's scaled decoding, so the pixels are the same once the
    partial last row and column libjpeg rounds up to are cut off, as libvips does. Pillow's
    libjpeg-turbo build decodes a photo about 10% faster than the one inside libvips. None
    (decode with libvips instead) where Pillow could differ or fails: CMYK/YCCK, a colour
    profile only one of them reads, damaged data. Orientation is not applied.
    """
    libvips_size = (header.width // shrink, header.height // shrink)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            picture = _pillow_open(data, "jpg")
            if (
                picture.mode not in _LIBVIPS_IDENTICAL_JPEG_MODES
                or picture.size != (header.width, header.height)
                or ("icc_profile" in picture.info) != header.has_color_profile
            ):
                return None
            if shrink > 1:
                # Pillow picks the largest libjpeg scale that keeps this size: exactly ``shrink``.
                picture.draft(picture.mode, libvips_size)
            picture.load()
    except (UnidentifiedImageError, *_PILLOW_ERRORS):
        return None
    return picture if picture.size == libvips_size else picture.crop((0, 0, *libvips_size))


def decode_webp_as_libvips(
    data: bytes, header: ImageHeader, scale: float, where: str = ""
) -> Image.Image | None:
    """The pixels libvips' WebP loader gives with ``scale``, decoded by libwebp directly
    (``libwebp``): a lossy WebP without alpha, colour profile or animation. None (decode
    with libvips instead) for any other WebP, or where libwebp fails."""
    chunks = decode_cost.webp_chunks(data)
    if b"VP8 " not in chunks or chunks & {b"VP8L", b"ALPH", b"ICCP", b"ANIM"}:
        return None
    if b"VP8X" in chunks:  # its flags may still say alpha or animation: ask libvips
        options = {"scale": scale} if scale != 1 else {}
        image = load_vips(data, "webp", where, **options)
        if (
            image.bands != 3
            or image.get_typeof("icc-profile-data")
            or (image.get_typeof("n-pages") and image.get("n-pages") > 1)
        ):
            return None
        width, height = image.width, image.height
    else:  # libvips' scaled size: each side times the scale, rounded half to even (rint)
        width, height = round(header.width * scale), round(header.height * scale)
    pixels = libwebp.decode_rgb(data, width, height, scaled=scale != 1)
    return None if pixels is None else Image.fromarray(pixels)


def decode_palette_as_libvips(data: bytes, header: ImageHeader) -> png.PalettePixels | None:
    """A PNG's or GIF's palette indices, where the colours they index are the pixels libvips
    gives: no transparency, a first frame that covers the canvas, no index past the
    palette. Read by ``png`` where the PNG is plain, else decoded by Pillow; None (decode
    with libvips instead) for any other image or damage.

    The pHash then converts the palette's colours instead of every pixel's.
    """
    if header.format == "png" and (plain := png.palette_indices(data)) is not None:
        return plain if plain.size == (header.width, header.height) else None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            picture = _pillow_open(data, header.format)
            if (
                picture.mode != "P"
                or "transparency" in picture.info
                or picture.size != (header.width, header.height)
                or any(tile.extents != (0, 0, *picture.size) for tile in picture.tile)
            ):
                return None
            picture.load()
            colours = len(picture.getpalette("RGB") or ()) // 3
    except (UnidentifiedImageError, *_PILLOW_ERRORS):
        return None
    highest_index = picture.getextrema()[1]
    if picture.mode != "P" or not isinstance(highest_index, int) or highest_index >= colours:
        return None
    return png.PalettePixels.from_pillow(picture)


def decode_with_pillow(
    data: bytes, header: ImageHeader, where: str = "", *, min_size: int = 0
) -> Image.Image:
    """The pixels of ``data`` decoded by Pillow (pillow-heif for HEIF), orientation applied.

    For JPEG, ``min_size`` lets Pillow decode at a reduced scale (``draft``) that still keeps
    both sides at least that long.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            picture = _pillow_open(data, header.format)
            # The limits were checked on the header; never decode more than it promised.
            if picture.width * picture.height > header.width * header.height:
                raise DecodeError(
                    f"cannot decode {header.format} pixels: {picture.width} x {picture.height}"
                    f" is more than the header's {header.width} x {header.height}{where}"
                )
            if picture.format == "JPEG" and min_size:
                picture.draft(picture.mode, _draft_size(header, min_size))
            picture.load()
    except UnidentifiedImageError:
        raise DecodeError(f"cannot decode {header.format} pixels: unreadable{where}") from None
    except _PILLOW_ERRORS as exc:
        raise _decode_failure(header.format, "pixels", one_line(str(exc)), where) from None
    return apply_orientation(picture, header.orientation)


def decoded_bytes(image: pyvips.Image) -> int:
    """The bytes ``image`` takes once all its pixels are decoded into memory."""
    return image.width * image.height * image.bands * _SAMPLE_BYTES.get(image.format, 8)


def _pillow_open(data: bytes, image_format: str) -> ImageFile.ImageFile:
    """Pillow's lazy image of ``data``, opened by the plugin of ``image_format``.

    Not through ``Image.open``, whose decompression-bomb check would put Pillow's own pixel
    limit (178,956,970) on the formats it decodes: the header was checked against
    ``extract.pixel_limit`` and ``extract.memory_limit``, one limit for every decoder.
    """
    return _PILLOW_PLUGINS[image_format](io.BytesIO(data))


def _draft_size(header: ImageHeader, min_size: int) -> tuple[int, int]:
    return (min(min_size, header.width), min(min_size, header.height))


def apply_orientation(picture: Image.Image, orientation: int) -> Image.Image:
    """``picture`` as shown: turned and mirrored for its EXIF ``orientation``."""
    transpose = _ORIENTATION_TRANSPOSE.get(orientation)
    return picture.transpose(transpose) if transpose is not None else picture


def _header_from_vips(image_format: str, image: pyvips.Image) -> ImageHeader:
    return ImageHeader(
        format=image_format,
        width=image.width,
        height=image.height,
        has_color_profile=image.get_typeof("icc-profile-data") != 0,
        density=_density_dpi(image.xres),
        has_transparency=bool(image.hasalpha()),
        orientation=_orientation(image),
    )


def _header_from_plain(image_format: str, plain: plain_headers.PlainHeader) -> ImageHeader:
    return ImageHeader(
        format=image_format,
        width=plain.width,
        height=plain.height,
        has_color_profile=plain.has_color_profile,
        density=_density_dpi(plain.pixels_per_mm),
        has_transparency=False,
        orientation=plain.orientation,
    )


def _read_bmp_header(data: bytes, where: str) -> tuple[ImageHeader, int]:
    """The header of a BMP, and the bands of its decoded pixels."""
    try:
        with _pillow_open(data, "bmp") as picture:
            dpi = picture.info.get("dpi", (0, 0))[0]
            header = ImageHeader(
                format="bmp",
                width=picture.width,
                height=picture.height,
                has_color_profile="icc_profile" in picture.info,
                density=_density_dpi(dpi / _MM_PER_INCH),
                has_transparency=picture.mode in ("RGBA", "LA", "PA")
                or "transparency" in picture.info,
                orientation=1,
            )
            return header, len(picture.getbands())
    except UnidentifiedImageError:
        raise DecodeError(f"cannot decode bmp header: truncated or corrupt{where}") from None
    except _PILLOW_ERRORS as exc:
        raise DecodeError(f"cannot decode bmp header: {one_line(str(exc))}{where}") from None


def _density_dpi(pixels_per_mm: float) -> int | None:
    """sharp's density: dpi rounded half away from zero, only above 1 pixel per mm, and
    only what its 32-bit integer holds (beyond, the conversion gives a negative number,
    which sharp leaves out)."""
    if pixels_per_mm <= 1.0:
        return None
    dpi = math.floor(pixels_per_mm * _MM_PER_INCH + 0.5)
    return dpi if dpi <= _INT32_MAX else None


def _orientation(image: pyvips.Image) -> int:
    if image.get_typeof("orientation") == 0:
        return 1
    orientation = image.get("orientation")
    return orientation if 1 <= orientation <= 8 else 1


def _primary_heif_page(image: pyvips.Image) -> int:
    if image.get_typeof("heif-primary") == 0 or image.get_typeof("n-pages") == 0:
        return 0
    return image.get("heif-primary") if image.get("n-pages") > 1 else 0


def _iso_media_format(data: bytes, where: str) -> str:
    box_size = int.from_bytes(data[:4], "big")
    major_brand = data[8:12]
    compatible = {data[i : i + 4] for i in range(16, min(box_size, len(data), 4096) - 3, 4)}
    if major_brand in AVIF_BRANDS:
        return "avif"
    if major_brand in _HEIF_BRANDS - {b"mif1", b"msf1"}:
        return "heif"
    if compatible & AVIF_BRANDS:
        return "avif"
    if ({major_brand} | compatible) & _HEIF_BRANDS:
        return "heif"
    brand = major_brand.decode("latin-1").strip()
    raise UnsupportedFormatError(f"unsupported format: ISO media of brand {brand!r}{where}")


def _looks_like_svg(data: bytes) -> bool:
    head = data[:_TEXT_PROBE_BYTES].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    return head.startswith(b"<svg") or (head.startswith(b"<?xml") and b"<svg" in head)


def _last_line(exc: pyvips.Error) -> str:
    """The most specific line of a libvips error: libvips stacks many lines."""
    lines = [
        line.strip()
        for line in f"{exc.message}\n{exc.detail}".splitlines()
        if line.strip() and not line.strip().startswith("unable to call")
    ]
    return one_line(lines[-1] if lines else "truncated or corrupt data")


def one_line(text: str, limit: int = 160) -> str:
    """``text`` on one line, whitespace collapsed, cut to ``limit`` characters."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
