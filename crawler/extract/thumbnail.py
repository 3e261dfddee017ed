"""Thumbnails: a small WebP of an image, made from the pixels its pHash decoded where
they are enough.

A JPEG's pixels are the pHash's shrink-on-load (1/2 to 1/8), a WebP's are scaled on load
toward 32 pixels, other formats are decoded whole. Where the pHash's pixels are fewer than
the thumbnail needs (a JPEG under 8 x ``extract.thumbnail_size`` along its longest side,
any WebP), the image is decoded a second time for the thumbnail alone, as little reduced
as gives enough (``pixels_for``); the pHash keeps its own decode (decoded less reduced, 17
of 47 such corpus JPEGs got other pHash bits). A thumbnail is never enlarged.

Reduced, converted to sRGB and encoded by Pillow, with the colour profile's transform kept
from one image to the next (``icc``); libvips reduces and converts first what Pillow does
not take (16-bit, CMYK, other profiles).
"""

import contextlib
import io
from typing import Final

import numpy as np
import pyvips
from PIL import Image

from crawler.errors import DecodeError
from crawler.extract import decode_cost, icc
from crawler.extract.image import (
    ImageHeader,
    apply_orientation,
    decode_jpeg_as_libvips,
    decode_webp_as_libvips,
    load_vips,
    one_line,
    vips_errors,
)
from crawler.extract.phash import DecodedPixels, ReducedImage
from crawler.metadata import Thumbnail

# libwebp's quality and method (effort, 0-6): on a 128 x 192 photo method 0 took 1.0 ms,
# method 2 1.3 ms for 20% fewer bytes (3.2 KB), 4 (its default) 2.5 ms for 4% fewer again.
_QUALITY: Final = 70
_METHOD: Final = 2
_MODES: Final = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}  # by libvips bands
_ENCODED_MODE: Final = {"L": "RGB", "LA": "RGBA", "RGB": "RGB", "RGBA": "RGBA"}
_JPEG_SHRINKS: Final = (8, 4, 2)  # libjpeg's DCT scales, most reduced first
_SCALED_FORMATS: Final = frozenset({"jpg", "webp"})  # the formats decoded reduced


def pixels_for(
    data: bytes,
    header: ImageHeader,
    decoded: DecodedPixels,
    size: int,
    memory_limit: int,
    where: str = "",
) -> DecodedPixels:
    """The pixels to make the thumbnail of ``size`` from: ``decoded`` (the pHash's) where
    they are as big as the thumbnail (``size``, or the image's own size where that is
    smaller); else ``data`` decoded again, as little reduced as still gives that (a JPEG at
    libjpeg's most reduced scale that does, 1/8 to 1/2, else whole; a WebP scaled to it by
    libwebp as it decodes), held in memory.

    ``header`` is the image's, already checked against the limits. Raises MemoryLimitError
    where that decode would need more than ``memory_limit`` bytes, DecodeError where it fails.
    """
    longest = max(header.width, header.height)
    target = min(size, longest)
    if _longest(decoded.image) >= target or header.format not in _SCALED_FORMATS:
        return decoded
    if header.format == "jpg":
        shrink: float = next((f for f in _JPEG_SHRINKS if longest // f >= target), 1)
    else:
        shrink = longest / target
    decode_cost.check(
        data,
        header.format,
        (header.width, header.height),
        _bands(decoded.image),
        1,
        memory_limit=memory_limit,
        shrink=shrink,
        where=where,
    )
    return DecodedPixels(_decode_reduced(data, header, shrink, where), header.orientation)


def _decode_reduced(data: bytes, header: ImageHeader, shrink: float, where: str) -> ReducedImage:
    """``data`` decoded reduced by ``shrink``, orientation not applied: a JPEG by Pillow
    where it gives libvips' pixels (as for the pHash), a lossy WebP by libwebp, else by
    libvips."""
    if header.format == "jpg":
        picture = decode_jpeg_as_libvips(data, header, int(shrink))
        if picture is not None:
            return picture
        options: dict[str, float] = {"shrink": int(shrink)} if shrink > 1 else {}
    else:
        picture = decode_webp_as_libvips(data, header, 1 / shrink, where)
        if picture is not None:
            return picture
        options = {"scale": 1 / shrink}
    image = load_vips(data, header.format, where, **options)
    with vips_errors(header.format, where, "thumbnail pixels"):
        return image.copy_memory()


def _longest(image: ReducedImage) -> int:
    return max(image.size) if isinstance(image, Image.Image) else max(image.width, image.height)


def _bands(image: ReducedImage) -> int:
    return len(image.getbands()) if isinstance(image, Image.Image) else image.bands


def make(pixels: DecodedPixels, size: int, image_format: str, where: str = "") -> Thumbnail:
    """A WebP of ``pixels`` as shown (EXIF orientation applied), its longest side ``size``
    or the pixels' own, whichever is smaller; colours converted to sRGB by the embedded
    profile, transparency kept, no metadata.

    Raises DecodeError where the pixels cannot be converted.
    """
    with vips_errors(image_format, where, "thumbnail"):
        picture = _reduced_in_srgb(pixels.image, size)
    shown = apply_orientation(picture, pixels.orientation)
    out = io.BytesIO()
    try:
        shown.convert(_ENCODED_MODE[shown.mode]).save(out, "WEBP", quality=_QUALITY, method=_METHOD)
    except (OSError, ValueError) as exc:
        raise DecodeError(f"cannot encode a thumbnail: {one_line(str(exc))}{where}") from None
    return Thumbnail(shown.width, shown.height, out.getvalue())


def _reduced_in_srgb(image: ReducedImage, size: int) -> Image.Image:
    """``image`` at most ``size`` pixels along its longest side, in 8-bit sRGB (or grey),
    alpha kept: a Pillow image of mode L, LA, RGB or RGBA."""
    if isinstance(image, pyvips.Image):
        image = _as_pillow(image, size)
    picture, profile = _reduced_by_pillow(image, size)
    if profile is None:
        return picture
    converted = Image.fromarray(icc.to_srgb(np.asarray(picture.convert("RGB")), profile), "RGB")
    if picture.mode == "RGBA":
        converted.putalpha(picture.getchannel("A"))
    return converted


def _as_pillow(image: pyvips.Image, size: int) -> Image.Image:
    """The pixels of ``image`` as an 8-bit Pillow image, its colour profile in its info.

    8-bit RGB and grey are copied as they are: Pillow reduces them faster than a libvips
    pipeline is set up. The rest (16-bit, CMYK, profiles ``icc`` cannot convert) are
    reduced and converted to sRGB by libvips first.
    """
    profile = image.get("icc-profile-data") if image.get_typeof("icc-profile-data") else None
    eight_bit = image.format == "uchar" and image.interpretation in ("srgb", "b-w")
    if not eight_bit or (profile and not icc.can_convert(profile)):
        image = image.thumbnail_image(size, height=size, size="down", no_rotate=True)
        if profile or image.interpretation == "cmyk":
            image = _vips_srgb(image)
        image = image.colourspace("srgb" if image.bands >= 3 else "b-w").cast("uchar")
        profile = None
    pixels = np.ndarray((image.height, image.width, image.bands), np.uint8, image.write_to_memory())
    picture = Image.fromarray(pixels[:, :, 0] if image.bands == 1 else pixels, _MODES[image.bands])
    if profile:
        picture.info["icc_profile"] = profile
    return picture


def _vips_srgb(image: pyvips.Image) -> pyvips.Image:
    """``image`` converted to sRGB by its embedded profile (CMYK without one: libvips')."""
    source = {"input_profile": "cmyk"} if image.interpretation == "cmyk" else {}
    # as sharp (and the pHash) go on without a profile they cannot use
    with contextlib.suppress(pyvips.Error):
        return image.icc_transform("srgb", embedded=True, intent="perceptual", **source)
    return image


def _reduced_by_pillow(picture: Image.Image, size: int) -> tuple[Image.Image, bytes | None]:
    """The reduced picture, and the colour profile its pixels are still in (None: sRGB)."""
    profile = picture.info.get("icc_profile")
    if picture.mode not in _ENCODED_MODE:
        picture = picture.convert("RGBA" if picture.has_transparency_data else "RGB")
    longest = max(picture.size)
    if longest > size:
        width, height = (max(1, round(side * size / longest)) for side in picture.size)
        # a box reduction as far as it goes first: 40% faster than Pillow's thumbnail() (2.0)
        picture = picture.resize((width, height), Image.Resampling.BICUBIC, reducing_gap=1.0)
    convertible = profile and picture.mode in ("RGB", "RGBA") and icc.can_convert(profile)
    return picture, profile if convertible else None
