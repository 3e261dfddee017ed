"""Extraction: the bytes of an image in, ImageKit's metadata object out.

``extract(data)`` is the one entry point. It reads the header facts (``image``), the JPEG
quality estimate (``quality``), the EXIF sections (``exif``) and the perceptual hash
(``phash``), and assembles them in the documented key order; beside the object, a
thumbnail from the pixels the pHash decoded, or decoded again where those are too few
(``thumbnail``).
"""

import dataclasses
from typing import Any, Final

from crawler.config import ExtractSettings
from crawler.errors import DecodeError, ExifError, MemoryExhaustedError, MemoryLimitError
from crawler.extract import exif, image, phash, quality, thumbnail
from crawler.hashes import to_hex
from crawler.metadata import Extraction, Thumbnail

# The most bytes a streamed decode may be held in memory for its thumbnail, as a share of
# extract.memory_limit (128 MiB by default: a 40-megapixel 8-bit RGB PNG or TIFF).
_HELD_SHARE: Final = 8


def extract(
    data: bytes, source: str | None = None, settings: ExtractSettings | None = None
) -> Extraction:
    """The metadata object of the image in ``data``, and its thumbnail of
    ``settings.thumbnail_size`` pixels (none for 0).

    ``source`` (a path or URL) only names the image in error messages. Raises an
    ``ImageError`` subclass when the bytes are not a readable image, or would cost more to
    decode than ``settings`` allow (estimated from the header); broken EXIF does not
    raise: what can be read of it is kept, and each problem is in ``warnings`` (``exif`` is
    ``{}`` where even its header is unreadable), nor does a thumbnail that cannot be made.
    """
    settings = settings or ExtractSettings()
    where = f" ({source})" if source else ""
    try:
        return _extract(data, settings, where)
    except MemoryError:
        # A decoder asked for more than the process may have: in an extraction process,
        # its cap (extract.memory_limit beyond what it holds idle) stopped a bad estimate.
        raise MemoryExhaustedError(
            f"ran out of memory decoding the image (extract.memory_limit){where}"
        ) from None


def _extract(data: bytes, settings: ExtractSettings, where: str) -> Extraction:
    header = image.read_header(
        data,
        pixel_limit=settings.pixel_limit,
        memory_limit=settings.memory_limit,
        full_decode=settings.hash_algorithm == "imagehash",
        where=where,
    )
    exif_problems: list[str] = []
    try:
        exif_sections = exif.read_exif(data, header.format, exif_problems)
    except ExifError as exc:
        exif_sections = {}
        exif_problems.append(str(exc))
    warnings = [f"exif: {problem}" for problem in exif_problems]
    hold_most = settings.memory_limit // _HELD_SHARE if settings.thumbnail_size else 0
    hash_value, pixels = phash.compute_keeping_pixels(
        data, header, settings.hash_algorithm, where, hold_most=hold_most
    )
    metadata = {
        "height": header.height,
        "width": header.width,
        "size": len(data),
        "format": header.format,
        "hasColorProfile": header.has_color_profile,
        "quality": quality.estimate(data) if header.format == "jpg" else 0,
        "density": header.density,
        "hasTransparency": header.has_transparency,
        "pHash": to_hex(hash_value),
        "exif": exif_sections,
    }
    made = _thumbnail(data, header, pixels, settings, where, warnings)
    return Extraction(metadata, settings.hash_algorithm, warnings, made)


def _thumbnail(
    data: bytes,
    header: image.ImageHeader,
    pixels: phash.DecodedPixels | None,
    settings: ExtractSettings,
    where: str,
    warnings: list[str],
) -> Thumbnail | None:
    """The thumbnail (``settings.thumbnail_size``, 0: none) of the image, from the pHash's
    decoded ``pixels`` or a decode of its own where those are too few; where it cannot be
    made, None and a warning: the image's metadata stands without it. Where its own
    decode fails, it is made (smaller) from the pHash's pixels, with a warning."""
    size = settings.thumbnail_size
    if not size:
        return None
    if pixels is None:
        warnings.append(
            f"thumbnail: not made: its decoded pixels take more than extract.memory_limit"
            f" / {_HELD_SHARE} to hold"
        )
        return None
    try:
        pixels = thumbnail.pixels_for(data, header, pixels, size, settings.memory_limit, where)
    except (DecodeError, MemoryLimitError) as exc:
        warnings.append(f"thumbnail: made from the pHash's fewer pixels: {exc}")
    try:
        return thumbnail.make(pixels, size, header.format, where)
    except DecodeError as exc:
        warnings.append(f"thumbnail: {exc}")
        return None


def extract_metadata(
    data: bytes, source: str | None = None, settings: ExtractSettings | None = None
) -> dict[str, Any]:
    """Just the metadata object: ``extract(...).metadata``, with no thumbnail made."""
    no_thumbnail = dataclasses.replace(settings or ExtractSettings(), thumbnail_size=0)
    return extract(data, source, no_thumbnail).metadata
