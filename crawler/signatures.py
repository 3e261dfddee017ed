"""Image formats by their magic numbers: what the first bytes of a body announce.

The fetcher checks a body's first bytes before it downloads the rest (``not_an_image``);
extraction sniffs the format with the same table before it reads the header. Kept apart
from ``crawler.extract``, which loads libvips, so that the crawl's own process needs none.
"""

from typing import Final

SIGNATURE_SIZE: Final = 16  # every signature is within the first 16 bytes
AVIF_BRANDS: Final = frozenset({b"avif", b"avis"})
_SIGNATURES: Final = (
    (b"\xff\xd8\xff", "jpg"),
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"GIF87a", "gif"),
    (b"GIF89a", "gif"),
    (b"II*\x00", "tiff"),
    (b"MM\x00*", "tiff"),
    (b"II+\x00", "tiff"),  # BigTIFF
    (b"MM\x00+", "tiff"),
    (b"BM", "bmp"),  # also the start of text: extraction checks the header after it
)


def image_signature(head: bytes) -> str | None:
    """The image format the first ``SIGNATURE_SIZE`` bytes announce, or None: the magic
    numbers alone (an ISO media file's major brand tells AVIF from HEIF)."""
    for signature, image_format in _SIGNATURES:
        if head.startswith(signature):
            return image_format
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head[4:8] == b"ftyp":
        return "avif" if head[8:12] in AVIF_BRANDS else "heif"
    return None
