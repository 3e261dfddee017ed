"""sharp's colour conversion of 8-bit RGB pixels with an embedded ICC profile to sRGB.

sharp (and so the pHash) turns such pixels into sRGB with libvips' ``icc_transform``: a
little-cms transform from the embedded profile to libvips' own sRGB profile, perceptual
intent, 8 bits in and out. libvips builds that transform again for every image, which costs
more than the rest of a web-sized image's hash; most images carry one of a few profiles, so
here the same transform (same profiles, intent, pixel formats and flags) is built once per
profile and kept. The tests compare the pixels with libvips' on every 8-bit colour.

little-cms is called through ctypes (``native``: the copy Pillow loads): through Pillow's
ImageCms, the images it wants around the pixels cost as much as converting a reduced
web-sized photo (0.34 against 0.17 ms with cold caches). Where it cannot be found, no
profile ``can_convert`` and libvips converts them.
"""

import ctypes
import functools
from typing import Any, Final

import numpy as np
import pyvips

from crawler.extract import native

_KEPT_TRANSFORMS: Final = 32
_TYPE_RGB_8: Final = (4 << 16) | (3 << 3) | 1  # COLORSPACE_SH(PT_RGB) | CHANNELS_SH(3) | 1 byte
_PERCEPTUAL: Final = 0
_USED_AS_INPUT: Final = 0
_NOCACHE: Final = 0x0040  # libvips' flags; the cache is a speed detail
_RGB_DATA: Final = 0x52474220  # cmsSigRgbData, "RGB "


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
    return transform.apply(rgb)


class _Transform:
    """A little-cms transform, deleted with this object."""

    def __init__(self, library: ctypes.CDLL, handle: int) -> None:
        self._library, self._handle = library, handle

    def __del__(self) -> None:
        self._library.cmsDeleteTransform(self._handle)

    def apply(self, rgb: np.ndarray) -> np.ndarray:
        pixels = np.ascontiguousarray(rgb, dtype=np.uint8)
        converted = np.empty_like(pixels)
        count = pixels.size // 3
        self._library.cmsDoTransform(self._handle, pixels.ctypes.data, converted.ctypes.data, count)
        return converted


@functools.lru_cache(maxsize=_KEPT_TRANSFORMS)
def _transform(profile: bytes) -> _Transform | None:
    library, target = _lcms(), _libvips_srgb()
    if library is None or target is None:
        return None
    source = library.cmsOpenProfileFromMem(profile, len(profile))
    if not source:
        return None
    try:
        if library.cmsGetColorSpace(source) != _RGB_DATA or not library.cmsIsIntentSupported(
            source, _PERCEPTUAL, _USED_AS_INPUT
        ):
            return None
        handle = library.cmsCreateTransform(
            source, _TYPE_RGB_8, target, _TYPE_RGB_8, _PERCEPTUAL, _NOCACHE
        )
    finally:
        library.cmsCloseProfile(source)  # the transform keeps what it needs
    return _Transform(library, handle) if handle else None


@functools.cache
def _libvips_srgb() -> int | None:
    """The sRGB profile libvips converts to (``icc_transform("srgb")``), opened once."""
    library = _lcms()
    if library is None:
        return None
    data = pyvips.Operation.call("profile_load", "srgb")
    return library.cmsOpenProfileFromMem(data, len(data)) or None


_POINTER, _NUMBER = ctypes.c_void_p, ctypes.c_uint32
# (result, arguments) of each little-cms function called
_SIGNATURES: Final[dict[str, tuple[Any, list[Any]]]] = {
    "cmsOpenProfileFromMem": (_POINTER, [ctypes.c_char_p, _NUMBER]),
    "cmsCloseProfile": (ctypes.c_int, [_POINTER]),
    "cmsGetColorSpace": (_NUMBER, [_POINTER]),
    "cmsIsIntentSupported": (ctypes.c_int, [_POINTER, _NUMBER, _NUMBER]),
    "cmsCreateTransform": (_POINTER, [_POINTER, _NUMBER, _POINTER, _NUMBER, _NUMBER, _NUMBER]),
    "cmsDoTransform": (None, [_POINTER, _POINTER, _POINTER, _NUMBER]),
    "cmsDeleteTransform": (None, [_POINTER]),
}


@functools.cache
def _lcms() -> ctypes.CDLL | None:
    """little-cms 2, as Pillow's ImageCms loads it, or None."""
    for library in native.load("liblcms2", "PIL._imagingcms", "lcms2"):
        if all(hasattr(library, name) for name in _SIGNATURES):
            for name, (result, arguments) in _SIGNATURES.items():
                getattr(library, name).restype = result
                getattr(library, name).argtypes = arguments
            return library
    return None
