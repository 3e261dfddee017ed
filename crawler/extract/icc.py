"""sharp's colour conversion of 8-bit RGB pixels with an embedded ICC profile to sRGB.

sharp (and so the pHash) turns such pixels into sRGB with libvips' ``icc_transform``: a
little-cms transform from the embedded profile to libvips' own sRGB profile, perceptual
intent, 8 bits in and out. libvips builds that transform again for every image, which costs
more than the rest of a web-sized image's hash; most images carry one of a few profiles, so
here the same transform (same profiles, intent, pixel formats and flags, through Pillow's
little-cms) is built once per profile and kept. The tests compare the pixels with libvips'
on every 8-bit colour.
"""

import functools
import io
from typing import TYPE_CHECKING, Final

import numpy as np
import pyvips
from PIL import Image

if TYPE_CHECKING:
    from PIL import ImageCms  # imported where a profile first needs it: ~6 ms

_KEPT_TRANSFORMS: Final = 32


def can_convert(profile: bytes) -> bool:
    """Whether ``to_srgb`` takes this profile. Not where libvips would treat it otherwise
    (not an RGB profile, unreadable, no perceptual intent: it falls back to other
    profiles and intents)."""
    return _transform(profile) is not None


def to_srgb(rgb: np.ndarray, profile: bytes) -> np.ndarray:
    """``rgb`` (height x width x 3, uint8) converted from ``profile`` to sRGB as libvips
    converts it. ``profile`` is one that ``can_convert``."""
    transform = _transform(profile)
    if transform is None:
        raise ValueError("a profile to_srgb cannot convert")
    return np.asarray(transform.apply(Image.fromarray(rgb, "RGB")))


@functools.lru_cache(maxsize=_KEPT_TRANSFORMS)
def _transform(profile: bytes) -> "ImageCms.ImageCmsTransform | None":
    from PIL import ImageCms

    intent = ImageCms.Intent.PERCEPTUAL
    try:
        source = ImageCms.ImageCmsProfile(io.BytesIO(profile))
        if source.profile.xcolor_space != "RGB " or not ImageCms.isIntentSupported(
            source, intent, ImageCms.Direction.INPUT
        ):
            return None
        return ImageCms.buildTransform(
            source,
            _libvips_srgb(),
            "RGB",
            "RGB",
            renderingIntent=intent,
            flags=ImageCms.Flags.NOCACHE,  # libvips' flags; the cache is a speed detail
        )
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError):
        return None


@functools.cache
def _libvips_srgb() -> "ImageCms.ImageCmsProfile":
    """The sRGB profile libvips converts to (``icc_transform("srgb")``)."""
    from PIL import ImageCms

    return ImageCms.ImageCmsProfile(io.BytesIO(pyvips.Operation.call("profile_load", "srgb")))
