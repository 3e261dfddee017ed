"""libvips' sRGB-to-grey conversion and Lanczos-3 reduction of 8-bit images, in numpy.

The pHash runs sharp's libvips operations (``colourspace("b-w")``, then ``resize`` with the
Lanczos-3 kernel). On a web-sized image libvips spends more time setting those operations up
than computing them, so for 8-bit images the same arithmetic runs here: the same lookup
tables, the same single-precision sums for the grey, the same fixed-point coefficients,
box shrinks and edge copies for the reduction. The tests compare both with libvips on
every 8-bit colour and on images of many sizes; every result is equal, bit for bit.

Sources (libvips 8.18): ``colour/LabQ2sRGB.c`` (the tables and ``vips_col_scRGB2BW``),
``resample/resize.c``, ``reducev.cpp``, ``reduceh.cpp``, ``shrinkv.c``, ``shrinkh.c`` and
``templates.h`` (the masks).
"""

import ctypes
import functools
import math
from typing import Final

import numpy as np

_GAP: Final = 2.0  # vips_resize's default reducing gap
_TRANSFORM_SCALE: Final = 64  # VIPS_TRANSFORM_SCALE: mask positions between two pixels
_INTERPOLATE_SHIFT: Final = 12  # fixed-point coefficients are 1.12
_ROUND: Final = 1 << (_INTERPOLATE_SHIFT - 1)
_FATSTRIP_HEIGHT: Final = 16  # vips__fatstrip_height
_SEQUENTIAL_TILE_HEIGHT: Final = 10  # reducev's line cache on a sequential pipeline
_LANCZOS_A: Final = 3
_LUMINANCE: Final = (np.float32(0.2126), np.float32(0.7152), np.float32(0.0722))


def _libm() -> ctypes.CDLL:
    library = ctypes.CDLL("libm.so.6")  # glibc's, which libvips calls (Linux only, as the crawler)
    library.powf.restype = ctypes.c_float
    library.powf.argtypes = [ctypes.c_float, ctypes.c_float]
    library.rintf.restype = ctypes.c_float
    library.rintf.argtypes = [ctypes.c_float]
    return library


# libvips' calcul_tables(), with the C library's powf and rintf as libvips calls them. (Not
# read back from libvips: a libvips operation at import would start its threads in the
# extraction pool's fork server, and a process forked from it would hang on their locks.)
_LIBM: Final = _libm()


def _linear_to_srgb_table() -> np.ndarray:
    """libvips' ``vips_Y2v_8``: 8-bit linear light to sRGB, one extra entry for interpolating."""
    table = []
    for i in range(256):
        f = np.float32(i) / np.float32(255)
        if float(f) <= 0.0031308:  # a float compared with a double constant, as in C
            v = np.float32(12.92) * f
        else:
            scale = np.float32(1.0) + np.float32(0.055)
            v = scale * np.float32(_LIBM.powf(f, np.float32(1.0) / np.float32(2.4)))
            v -= np.float32(0.055)
        table.append(int(_LIBM.rintf(np.float32(255) * v)))
    return np.array([*table, table[-1]], dtype=np.int32)


def _srgb_to_linear_table() -> np.ndarray:
    """libvips' ``vips_v2Y_8``: sRGB 0..255 to linear light."""
    table = []
    for i in range(256):
        f = np.float32(i) / np.float32(255)
        if float(f) <= 0.04045:
            table.append(f / np.float32(12.92))
        else:
            base = (f + np.float32(0.055)) / (np.float32(1) + np.float32(0.055))
            table.append(np.float32(_LIBM.powf(base, np.float32(2.4))))
    return np.array(table, dtype=np.float32)


_LINEAR_TO_SRGB: Final = _linear_to_srgb_table()
_LINEAR_BASE: Final = _LINEAR_TO_SRGB[:-1].astype(np.float32)
_LINEAR_STEPS: Final = (_LINEAR_TO_SRGB[1:] - _LINEAR_TO_SRGB[:-1]).astype(np.float32)
# Each band's share of the luminance, by 8-bit value: vips_col_scRGB2BW's weights times
# linear light, in single precision.
_LINEAR_BY_BAND: Final = tuple(weight * _srgb_to_linear_table() for weight in _LUMINANCE)
# The grey of a luminance is a step function of it: see _grey_tables.
_RANGE_SHIFT: Final = 12
# Up to this many pixels (a reduced JPEG or WebP, a palette) the formula itself is faster
# than _grey_tables' half-megabyte lookups, which miss the cache between two images.
_FORMULA_MOST_PIXELS: Final = 16_384


def _grey_of_luminance(luminance: np.ndarray) -> np.ndarray:
    """vips_col_scRGB2BW_8 after the sum: the 8-bit sRGB grey of float32 linear luminance."""
    scaled = np.clip(luminance * np.float32(255), 0, 255)
    whole = scaled.astype(np.int32)
    fraction = scaled - whole.astype(np.float32)
    return np.rint(_LINEAR_BASE[whole] + _LINEAR_STEPS[whole] * fraction).astype(np.uint8)


@functools.cache
def _grey_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Lookup tables for ``srgb_to_grey``, made on first use (~25 ms).

    vips_col_scRGB2BW's luminance sum (R + G) + B in single precision: R + G for each
    red * 256 + green, and B for each blue. Then, indexed by the top 20 bits of the
    luminance's float32 (a range of 4096 floats), the grey where it is one value over the
    whole range, and which ranges hold a step of it and need the exact formula.
    """
    red, green, blue = _LINEAR_BY_BAND
    red_green = (red[:, None] + green[None, :]).reshape(-1)
    # Luminance is at most 1 (the weights sum to 1), a few ulps more by rounding.
    ranges = (int(np.float32(1.01).view(np.uint32)) >> _RANGE_SHIFT) + 1
    starts = np.arange(ranges, dtype=np.uint32) << _RANGE_SHIFT
    first = _grey_of_luminance(starts.view(np.float32))
    last = _grey_of_luminance((starts + ((1 << _RANGE_SHIFT) - 1)).view(np.float32))
    return red_green, blue, first, first != last


def srgb_to_grey(rgb: np.ndarray) -> np.ndarray:
    """``colourspace("b-w")`` of an 8-bit sRGB image (height x width x 3, uint8)."""
    pixels = np.ascontiguousarray(rgb).reshape(-1, 3)
    if len(pixels) <= _FORMULA_MOST_PIXELS:
        red, green, blue = _LINEAR_BY_BAND
        luminance = (red[pixels[:, 0]] + green[pixels[:, 1]]) + blue[pixels[:, 2]]
        return _grey_of_luminance(luminance).reshape(rgb.shape[:2])
    red_green, blue, grey_by_range, step_in_range = _grey_tables()
    luminance = np.take(red_green, pixels[:, :2].view(">u2")[:, 0]) + np.take(blue, pixels[:, 2])
    ranges = luminance.view(np.uint32) >> _RANGE_SHIFT
    grey = np.take(grey_by_range, ranges, mode="clip")
    exact = np.flatnonzero(np.take(step_in_range, ranges, mode="clip"))
    grey[exact] = _grey_of_luminance(luminance[exact])
    return grey.reshape(rgb.shape[:2])


def reduce_to(grey: np.ndarray, width: int, height: int, *, sequential: bool) -> np.ndarray:
    """``resize(width / w, vscale=height / h, kernel="lanczos3")`` of an 8-bit grey image.

    ``sequential``: the pixels came from a libvips loader opened with sequential access
    (else from memory, as Pillow's). Only reductions are ported (libvips enlarges with
    another operation): a side shorter than its target is a ValueError.
    """
    in_height, in_width = grey.shape
    if in_width < width or in_height < height:
        raise ValueError(f"{in_width} x {in_height} is smaller than {width} x {height}")
    # sharp asks for scale 1 / (w / 32); libvips reduces by 1 / scale.
    hshrink = 1.0 / max(1.0 / (in_width / width), 1.0 / in_width)
    vshrink = 1.0 / max(1.0 / (in_height / height), 1.0 / in_height)
    pixels = grey
    if vshrink > 1.0:
        pixels = _reduce(
            pixels, vshrink, _reducev_tile_height(grey.shape, hshrink, vshrink, sequential)
        )
    if hshrink > 1.0:
        pixels = _reduce(pixels.T, hshrink, None).T
    return np.ascontiguousarray(pixels)


def _reducev_tile_height(
    shape: tuple[int, ...], hshrink: float, vshrink: float, sequential: bool
) -> int | None:
    """How many output rows libvips' reducev computes from one starting position (None:
    all of them). Each tile sums its row positions up from its own first row, and the
    last bits of those sums decide some masks.

    On a sequential pipeline reducev caches its output in strips of 10 rows. From memory,
    its consumer asks for 16 rows (FATSTRIP), or for all rows at once (a 128-row tile) when
    a box shrink of the rows makes the pipeline SMALLTILE and no box shrink of the columns
    (which asks for 16 rows) comes after it.
    """
    if sequential:
        return _SEQUENTIAL_TILE_HEIGHT
    rows_shrunk = _int_shrink(shape[0], vshrink) > 1
    columns_shrunk = _int_shrink(shape[1], hshrink) > 1
    return None if rows_shrunk and not columns_shrunk else _FATSTRIP_HEIGHT


def _int_shrink(size: int, shrink: float) -> int:
    """The box shrink vips_reducev and vips_reduceh do first, for a ``gap`` of 2."""
    return max(1, math.floor(size / int(size / shrink + 0.5) / _GAP))


def _reduce(pixels: np.ndarray, shrink: float, tile_height: int | None) -> np.ndarray:
    """vips_reducev along axis 0: an integer box shrink by ``gap``, then Lanczos-3.

    reduceh is the same arithmetic on columns.
    """
    int_shrink, taps = _reduction(pixels.shape[0], shrink, tile_height)
    if int_shrink > 1:
        pixels = _box_shrink(pixels, int_shrink)
    if taps is None:
        return pixels
    sources, weights = taps
    rows = np.einsum("rp,rpc->rc", weights, pixels[sources].astype(np.int32))
    return np.clip((rows + _ROUND) >> _INTERPOLATE_SHIFT, 0, 255).astype(np.uint8)


@functools.lru_cache(maxsize=512)
def _reduction(
    size: int, shrink: float, tile_height: int | None
) -> tuple[int, tuple[np.ndarray, np.ndarray] | None]:
    """The box shrink and the taps with which vips_reducev reduces ``size`` rows by
    ``shrink``: for each output row, the input rows (edge copies where the mask reaches
    past an edge) and their fixed-point Lanczos-3 weights.

    The position of each output row is summed up from the start of the tile it is
    computed in (``tile_height``; None: one tile): the last bits of those sums pick masks.
    """
    out_size = int(size / shrink + 0.5)
    extra = out_size * shrink - size
    residual = shrink
    int_shrink = _int_shrink(size, shrink)
    if int_shrink > 1:
        size = -(-size // int_shrink)
        extra /= int_shrink
        residual /= int_shrink
    if residual == 1.0:
        return int_shrink, None
    points = 2 * round(_LANCZOS_A * residual) + 1  # rint: half to even, as round()
    masks = _masks(points, residual)
    offset = (1 + extra) / 2.0 - 1
    top = math.ceil(points / 2.0) - 1  # edge copies above the first row
    firsts, phases = [], []
    step = tile_height or out_size
    for start in range(0, out_size, step):
        position = (start + 0.5) * residual - 0.5 - offset
        for _row in range(start, min(start + step, out_size)):
            firsts.append(int(position) - top)
            phases.append(int(position * 2 * _TRANSFORM_SCALE) & (2 * _TRANSFORM_SCALE - 1))
            position += residual
    sources = np.clip(np.array(firsts)[:, None] + np.arange(points), 0, size - 1)
    return int_shrink, (sources, masks[(np.array(phases) + 1) >> 1])


def _box_shrink(pixels: np.ndarray, factor: int) -> np.ndarray:
    """vips_shrinkv with ``ceil``: rows averaged in groups, the last row repeated to fill the
    last group, rounded with libvips' fixed-point reciprocal."""
    whole, left = divmod(pixels.shape[0], factor)
    sums = np.empty((whole + (left > 0), *pixels.shape[1:]), dtype=np.uint32)
    body = pixels[: whole * factor]
    sums[:whole] = body[::factor]
    for row in range(1, factor):  # strided adds: faster than a casting sum over an axis
        sums[:whole] += body[row::factor]
    if left:
        rest = pixels[whole * factor :]
        sums[whole] = rest.sum(axis=0, dtype=np.uint32) + np.uint32(factor - left) * rest[-1]
    multiplier = np.uint32((1 << 32) // (256 * factor))
    return (((sums + np.uint32(factor // 2)) * multiplier) >> np.uint32(24)).astype(np.uint8)


@functools.lru_cache(maxsize=256)
def _masks(points: int, shrink: float) -> np.ndarray:
    """The 65 fixed-point Lanczos-3 masks of vips_reduce_make_mask, one per sub-pixel position."""
    masks = np.empty((_TRANSFORM_SCALE + 1, points), dtype=np.int32)
    for position in range(_TRANSFORM_SCALE + 1):
        half = position / _TRANSFORM_SCALE + points / 2.0 - 1
        weights = [_lanczos3((i - half) / shrink) for i in range(points)]
        total = 0.0
        for weight in weights:
            total += weight
        masks[position] = [int(weight / total * (1 << _INTERPOLATE_SHIFT)) for weight in weights]
    return masks


def _lanczos3(x: float) -> float:
    if not -_LANCZOS_A <= x <= _LANCZOS_A:
        return 0.0
    return _sinc(x) * _sinc(x / _LANCZOS_A)


def _sinc(x: float) -> float:
    if x == 0.0:
        return 1.0
    x = x * math.pi
    return math.sin(x) / x
