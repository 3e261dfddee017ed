"""Extraction: the bytes of an image in, ImageKit's metadata object out.

``extract(data)`` is the one entry point. It reads the header facts (``image``), the JPEG
quality estimate (``quality``), the EXIF sections (``exif``) and the perceptual hash
(``phash``), and assembles them in the documented key order.
"""

from typing import Any

from crawler.config import ExtractSettings
from crawler.errors import ExifError, MemoryExhaustedError
from crawler.extract import exif, image, phash, quality
from crawler.hashes import to_hex
from crawler.metadata import Extraction


def extract(
    data: bytes, source: str | None = None, settings: ExtractSettings | None = None
) -> Extraction:
    """The metadata object of the image in ``data``.

    ``source`` (a path or URL) only names the image in error messages. Raises an
    ``ImageError`` subclass when the bytes are not a readable image, or would cost more to
    decode than ``settings`` allow (estimated from the header); broken EXIF does not
    raise: what can be read of it is kept, and each problem is in ``warnings`` (``exif`` is
    ``{}`` where even its header is unreadable).
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
    hash_value = phash.compute(data, header, settings.hash_algorithm, where=where)
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
    return Extraction(metadata, settings.hash_algorithm, warnings)


def extract_metadata(
    data: bytes, source: str | None = None, settings: ExtractSettings | None = None
) -> dict[str, Any]:
    """Just the metadata object: ``extract(...).metadata``."""
    return extract(data, source, settings).metadata
