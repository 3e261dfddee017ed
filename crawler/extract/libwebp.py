"""libwebp's scaled decoding of a lossy WebP, called directly.

libvips' WebP loader with ``scale`` (sharp's shrink-on-load, so the pHash's) asks libwebp to
scale while it decodes, then copies the rows into its pipeline. Calling libwebp ourselves,
with the same options into a numpy buffer, gives the same pixels (the tests compare them)
~1 ms sooner on a web-sized image: 25-30% of its hash.

The libwebp is the one Pillow's WebP plugin links (its wheels bundle one, distributions link
the system's); it is found among the process's loaded libraries. Where it cannot be found,
or has another ABI, ``decode_rgb`` gives None and libvips decodes as before.
"""

import ctypes
import functools
from typing import Final

import numpy as np

from crawler.extract import native

_DECODER_ABI: Final = 0x0209  # WEBP_DECODER_ABI_VERSION of libwebp 1.x
_MODE_RGB: Final = 0


class _BitstreamFeatures(ctypes.Structure):
    _fields_ = [
        ("width", ctypes.c_int),
        ("height", ctypes.c_int),
        ("has_alpha", ctypes.c_int),
        ("has_animation", ctypes.c_int),
        ("format", ctypes.c_int),
        ("pad", ctypes.c_uint32 * 5),
    ]


class _RGBABuffer(ctypes.Structure):
    _fields_ = [("rgba", ctypes.c_void_p), ("stride", ctypes.c_int), ("size", ctypes.c_size_t)]


class _YUVABuffer(ctypes.Structure):
    _fields_ = [
        *((plane, ctypes.c_void_p) for plane in ("y", "u", "v", "a")),
        *((f"{plane}_stride", ctypes.c_int) for plane in ("y", "u", "v", "a")),
        *((f"{plane}_size", ctypes.c_size_t) for plane in ("y", "u", "v", "a")),
    ]


class _Buffers(ctypes.Union):
    _fields_ = [("rgba", _RGBABuffer), ("yuva", _YUVABuffer)]


class _DecBuffer(ctypes.Structure):
    _fields_ = [
        ("colorspace", ctypes.c_int),
        ("width", ctypes.c_int),
        ("height", ctypes.c_int),
        ("is_external_memory", ctypes.c_int),
        ("u", _Buffers),
        ("pad", ctypes.c_uint32 * 4),
        ("private_memory", ctypes.c_void_p),
    ]


class _DecoderOptions(ctypes.Structure):
    _fields_ = [
        *(
            (name, ctypes.c_int)
            for name in (
                "bypass_filtering",
                "no_fancy_upsampling",
                "use_cropping",
                "crop_left",
                "crop_top",
                "crop_width",
                "crop_height",
                "use_scaling",
                "scaled_width",
                "scaled_height",
                "use_threads",
                "dithering_strength",
                "flip",
                "alpha_dithering_strength",
            )
        ),
        ("pad", ctypes.c_uint32 * 5),
    ]


class _DecoderConfig(ctypes.Structure):
    _fields_ = [
        ("input", _BitstreamFeatures),
        ("output", _DecBuffer),
        ("options", _DecoderOptions),
    ]


def decode_rgb(data: bytes, width: int, height: int, scaled: bool) -> np.ndarray | None:
    """The RGB pixels of the WebP in ``data``, ``width`` x ``height``: scaled to that size
    by libwebp as it decodes where ``scaled`` (libwebp then upsamples chroma plainly, as
    libvips asks for with any scale but 1), else decoded at full size with libwebp's
    defaults. None where libwebp is not at hand or fails (libvips then decodes it and says
    why)."""
    library = _libwebp()
    if library is None:
        return None
    config = _DecoderConfig()
    if not library.WebPInitDecoderConfigInternal(ctypes.byref(config), _DECODER_ABI):
        return None
    pixels = np.empty((height, width, 3), dtype=np.uint8)
    if scaled:
        config.options.use_scaling = 1
        config.options.scaled_width, config.options.scaled_height = width, height
    config.output.colorspace = _MODE_RGB
    config.output.is_external_memory = 1
    config.output.u.rgba.rgba = pixels.ctypes.data
    config.output.u.rgba.stride = width * 3
    config.output.u.rgba.size = pixels.nbytes
    status = library.WebPDecode(data, len(data), ctypes.byref(config))
    return pixels if status == 0 else None


@functools.cache
def _libwebp() -> ctypes.CDLL | None:
    """Pillow's libwebp (or the system's), with the 1.x decoder ABI, or None."""
    for library in native.load("libwebp", "PIL._webp", "webp"):
        try:
            version = library.WebPGetDecoderVersion()
        except AttributeError:
            continue
        if version >> 16 == 1:
            library.WebPInitDecoderConfigInternal.argtypes = [ctypes.c_void_p, ctypes.c_int]
            library.WebPDecode.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_void_p]
            library.WebPDecode.restype = ctypes.c_int
            return library
    return None
