"""Thumbnails: a small WebP of an image, made from the pixels its pHash decoded.

No second decode: a JPEG's pixels are the pHash's shrink-on-load (1/2 to 1/8), a WebP's are
scaled on load, other formats are decoded whole. A thumbnail is never enlarged, so where
those pixels are fewer than ``extract.thumbnail_size`` (a JPEG under 8 x that size along
its longest side, any WebP) it is as big as they are.
"""

from typing import Final

from PIL import Image

from crawler.extract.image import vips_errors
from crawler.extract.phash import DecodedPixels, oriented_vips, vips_from_pillow
from crawler.metadata import Thumbnail

# libwebp's quality and effort (0-6): about 5 KB for a 192-pixel photo; effort 2 encodes
# in about half the time of its default 4 for 2-3% more bytes.
_QUALITY: Final = 75
_EFFORT: Final = 2


def make(pixels: DecodedPixels, size: int, image_format: str, where: str = "") -> Thumbnail:
    """A WebP of ``pixels`` as shown (EXIF orientation applied), its longest side ``size``
    or the pixels' own, whichever is smaller; colours converted to sRGB by the embedded
    profile, transparency kept, no metadata.

    Raises DecodeError where libvips fails on the pixels.
    """
    with vips_errors(image_format, where, "thumbnail"):
        image = pixels.image
        if isinstance(image, Image.Image):
            image = vips_from_pillow(image)
        small = image.thumbnail_image(
            size, height=size, size="down", no_rotate=True, export_profile="srgb"
        )
        shown = oriented_vips(small, pixels.orientation)
        webp = shown.webpsave_buffer(Q=_QUALITY, effort=_EFFORT, keep="none")
    return Thumbnail(shown.width, shown.height, webp)
