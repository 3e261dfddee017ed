"""64-bit perceptual hashes: the two algorithms that compute them from an image.

The arithmetic on hash values (hex text, the stored signed integer, distance) is in
``crawler.hashes``.
"""

import math
from dataclasses import dataclass, replace
from typing import Final, TypeAlias

import numpy as np
import pyvips
from PIL import Image

from crawler.errors import ConfigError, DecodeError
from crawler.extract import icc, resample
from crawler.extract.image import (
    VIPS_FORMATS,
    ImageHeader,
    decode_jpeg_as_libvips,
    decode_palette_as_libvips,
    decode_webp_as_libvips,
    decode_with_pillow,
    decoded_bytes,
    load_vips,
    vips_errors,
    vips_messages_decoded,
)
from crawler.extract.png import PalettePixels

# ImageKit's pHash is npm sharp-phash 2.2.0: sharp(img).greyscale().resize(32, 32, {fit: 'fill'})
# .rotate().raw(), then a 32 x 32 DCT-II. To give the same bits we repeat the libvips operations
# sharp 0.35.5 runs for that chain (src/pipeline.cc), in its order and with its parameters.

_SAMPLE_SIZE: Final = 32
_LOW_SIZE: Final = 8
_SIXTEEN_BIT: Final = frozenset({"rgb16", "grey16"})
# The 8-bit libvips images that numpy takes, as Pillow's modes; and how big they may be:
# numpy holds the whole image where libvips streams it, and above ~120,000 pixels libvips'
# greyscale conversion is faster than numpy's.
_VIPS_MODES: Final = {(3, "uchar", "srgb"): "RGB", (1, "uchar", "b-w"): "L"}
_NUMPY_MAX_PIXELS: Final = 4_200_000
_NUMPY_RGB_MAX_PIXELS: Final = 120_000
# Where Pillow decodes what libvips cannot: HEVC (pillow-heif has libde265) and JPEG data
# libvips gives up on. Elsewhere Pillow adds nothing but libtiff's noise on stderr.
_PILLOW_FALLBACK_FORMATS: Final = frozenset({"jpg", "heif"})
# sharp's CalculateExifRotationAndFlop: orientation -> (clockwise quarter turns, mirror
# left-right after them)
_EXIF_ROTATION: Final = {
    2: (0, True),
    3: (2, False),
    4: (2, True),
    5: (1, True),
    6: (1, False),
    7: (3, True),
    8: (3, False),
}
# sharp-phash's COS[k][n] = cos((2k + 1) / (2N) * n * pi) for the columns n = 1..8 it uses.
# JavaScript's Math.cos (V8's fdlibm port) rounds these arguments one ulp away from the C
# library: on flat images every coefficient is rounding noise, so the hash depends on them.
_V8_COSINES: Final = {
    (1, 5): float.fromhex("0x1.7b5df226aafb0p-1"),
    (2, 3): float.fromhex("0x1.7b5df226aafb0p-1"),
    (7, 1): float.fromhex("0x1.7b5df226aafb0p-1"),
    (8, 1): float.fromhex("0x1.57d69348ceca0p-1"),
    (9, 6): float.fromhex("0x1.8bc806b15173dp-1"),
    (17, 4): float.fromhex("0x1.a9b66290ea1a6p-1"),
    (21, 1): float.fromhex("-0x1.073879922ffecp-1"),
    (21, 2): float.fromhex("-0x1.e2b5d3806f640p-2"),
    (25, 6): float.fromhex("-0x1.8bc806b151740p-1"),
    (28, 2): float.fromhex("0x1.8bc806b15173dp-1"),
    (29, 7): float.fromhex("0x1.2c8106e8e6145p-3"),
    (31, 8): float.fromhex("0x1.d906bcf328d48p-1"),
}
_LOW_COS: Final = np.array(
    [
        [
            _V8_COSINES.get((k, n), math.cos(((2 * k + 1) / (2.0 * _SAMPLE_SIZE)) * n * math.pi))
            for n in range(1, _LOW_SIZE + 1)
        ]
        for k in range(_SAMPLE_SIZE)
    ]
)
# COS[i][u] * COS[j][v] for each low coefficient (u, v) (rows) and sample (i, j) (columns):
# the first factor of every DCT term, as sharp-phash computes it.
_COS_PRODUCTS: Final = (_LOW_COS.T[:, None, :, None] * _LOW_COS.T[None, :, None, :]).reshape(
    _LOW_SIZE * _LOW_SIZE, _SAMPLE_SIZE * _SAMPLE_SIZE
)
# Summing a coefficient's 1024 terms (each at most 255) in order lands within
# 1023 * 2**-53 * 1024 * 255 (3e-8) of the exact sum, the separable product within
# 64 * 2**-53 * 1024 * 255 (2e-9); this bound leaves room to spare.
_ROUNDING_BOUND: Final = 1e-6


def compute(data: bytes, header: ImageHeader, algorithm: str, where: str = "") -> int:
    """The unsigned 64-bit pHash of the image in ``data`` by ``algorithm``.

    ``header`` is ``image.read_header(data, ...)``, already checked against the pixel limit.
    Raises DecodeError when the pixels cannot be decoded, ConfigError for an unknown algorithm.
    """
    return compute_keeping_pixels(data, header, algorithm, where, hold_most=0)[0]


@dataclass(frozen=True)
class DecodedPixels:
    """The pixels a pHash was computed from: ``image`` turned by ``orientation`` (EXIF, 1..8)
    is the image as it is shown."""

    image: "ReducedImage"
    orientation: int


def compute_keeping_pixels(
    data: bytes, header: ImageHeader, algorithm: str, where: str = "", *, hold_most: int
) -> tuple[int, DecodedPixels | None]:
    """``compute(...)``, and the pixels it decoded for it, for other uses of the same decode.

    A libvips image streams its pixels to the pHash and could not give them again, so it is
    held in memory first: where that takes more than ``hold_most`` bytes (0: never), the
    pixels are not kept (None), and the hash is computed as by ``compute``.
    """
    if algorithm == "imagekit":
        return imagekit_phash(data, header, where, hold_most)
    if algorithm == "imagehash":
        return imagehash_phash(data, header, where)
    raise ConfigError(
        f"extract.hash_algorithm: expected imagekit or imagehash, got {algorithm!r}{where}"
    )


def imagekit_phash(
    data: bytes, header: ImageHeader, where: str = "", hold_most: int = 0
) -> tuple[int, DecodedPixels | None]:
    """ImageKit's pHash (npm sharp-phash 2.2.0), bit for bit where libvips decodes the image,
    and the pixels it was computed from where they fit in ``hold_most`` bytes (see
    ``compute_keeping_pixels``).

    What libvips cannot decode here (HEVC-coded HEIF, BMP, JPEGs whose corrupt data libvips
    gives up on) is decoded by Pillow and then takes the same greyscale/resize steps; sharp
    itself gives no hash for those.
    """
    if header.format not in VIPS_FORMATS:
        return _hash_via_pillow(data, header, where, hold_most)
    try:
        reduced, kept = _held(decode_reduced(data, header, where), header, where, hold_most)
        samples = _greyscale_32(reduced, header, where)
    except DecodeError as vips_failure:
        if header.format not in _PILLOW_FALLBACK_FORMATS:
            raise
        try:
            return _hash_via_pillow(data, header, where, hold_most)
        except DecodeError:
            raise vips_failure from None
    if not kept:
        return _dct_hash(samples), None
    if isinstance(reduced, PalettePixels):
        reduced = reduced.to_pillow()
    return _dct_hash(samples), DecodedPixels(reduced, header.orientation)


def imagehash_phash(data: bytes, header: ImageHeader, where: str = "") -> tuple[int, DecodedPixels]:
    """``imagehash.phash`` of the oriented image, for catalogues hashed with that library,
    and the pixels it was computed from.

    This is a different algorithm from ImageKit's (median threshold, DC term included): the
    two give unrelated bits for the same image (32 apart on Canon_40D.jpg), so hashes of the
    two kinds must never be compared with each other. The image is decoded at full size, as
    imagehash users do: a reduced JPEG decode moved bits on 2 of 90 corpus photos.
    """
    import imagehash  # only catalogues of this algorithm pay for its import

    picture = decode_with_pillow(data, header, where)
    return int(str(imagehash.phash(picture)), 16), DecodedPixels(picture, 1)


# The image as sharp's loader hands it on: decoded at the reduced size shrink-on-load gives
# (JPEG at 1/2 to 1/8, WebP scaled), EXIF orientation not applied, no colour conversion yet.
# JPEG pixels come from Pillow, most WebPs' from libwebp, the rest from libvips (lazy:
# decoded when asked for, once).
ReducedImage: TypeAlias = Image.Image | pyvips.Image


def decode_reduced(
    data: bytes, header: ImageHeader, where: str = ""
) -> ReducedImage | PalettePixels:
    """``data`` decoded as far as sharp's shrink-on-load goes for the pHash's 32 x 32.

    ``header`` is ``image.read_header(data, ...)``, already checked against the limits.
    """
    load_options = _shrink_on_load(header)
    picture: ReducedImage | PalettePixels | None = None
    if header.format == "jpg":
        picture = decode_jpeg_as_libvips(data, header, int(load_options.get("shrink", 1)))
    elif header.format == "webp":
        picture = decode_webp_as_libvips(data, header, float(load_options.get("scale", 1)), where)
    elif header.format in ("png", "gif") and header.width * header.height <= _NUMPY_MAX_PIXELS:
        picture = decode_palette_as_libvips(data, header)
        if picture is not None and not _fits_numpy("P", picture.size, picture.icc_profile):
            picture = None  # libvips keeps the palette's colour profile
    if picture is not None:
        return picture
    return load_vips(data, header.format, where, **load_options)


def _hash_via_pillow(
    data: bytes, header: ImageHeader, where: str, hold_most: int
) -> tuple[int, DecodedPixels | None]:
    picture = decode_with_pillow(data, header, where, min_size=_SAMPLE_SIZE)
    samples = _greyscale_32(picture, replace(header, orientation=1), where)
    return _dct_hash(samples), DecodedPixels(picture, 1) if hold_most else None


def _held(
    reduced: ReducedImage | PalettePixels, header: ImageHeader, where: str, hold_most: int
) -> tuple[ReducedImage | PalettePixels, bool]:
    """``reduced``, and whether it can be read again after the pHash has read it: Pillow's
    and numpy's pixels can; a libvips image once copied to memory, where it takes at most
    ``hold_most`` bytes (the copy keeps the loader's sequential mark, so libvips reduces it
    as before)."""
    if not hold_most:
        return reduced, False
    if not isinstance(reduced, pyvips.Image):
        return reduced, True
    if decoded_bytes(reduced) > hold_most:
        return reduced, False
    with vips_errors(header.format, where, "pixels"):
        return reduced.copy_memory(), True


def _greyscale_32(
    reduced: ReducedImage | PalettePixels, header: ImageHeader, where: str
) -> np.ndarray:
    """The 32 x 32 greyscale samples sharp hands to sharp-phash."""
    with vips_errors(header.format, where, "pixels"):
        grey = _numpy_grey(reduced)
        if grey is None:
            if isinstance(reduced, PalettePixels):
                reduced = reduced.to_pillow()
            if isinstance(reduced, Image.Image):
                reduced = _vips_from_pillow(reduced)
            return _sharp_pipeline(reduced, header.orientation)
    sequential = isinstance(reduced, pyvips.Image)
    samples = resample.reduce_to(grey, _SAMPLE_SIZE, _SAMPLE_SIZE, sequential=sequential)
    return _oriented(samples, header.orientation)


def _numpy_grey(reduced: ReducedImage | PalettePixels) -> np.ndarray | None:
    """sharp's ICC conversion to sRGB and greyscale of a small 8-bit RGB, palette or grey
    image without alpha, computed in numpy as libvips computes them (``icc``,
    ``resample``); None for the other images, which libvips takes.

    A pipeline of libvips operations costs more to set up than small images cost to
    compute; on big RGB images (over ``_NUMPY_RGB_MAX_PIXELS``) libvips is faster.
    """
    if isinstance(reduced, Image.Image) and reduced.mode == "P":
        reduced = PalettePixels.from_pillow(reduced)
    if isinstance(reduced, PalettePixels):
        return _palette_grey(reduced)
    if isinstance(reduced, Image.Image):
        mode, size = reduced.mode, reduced.size
    else:
        mode = _VIPS_MODES.get((reduced.bands, reduced.format, reduced.interpretation), "")
        size = (reduced.width, reduced.height)
    profile = _profile(reduced)
    if not _fits_numpy(mode, size, profile):
        return None
    if isinstance(reduced, pyvips.Image):
        shape = (reduced.height, reduced.width, reduced.bands)
        pixels = np.ndarray(shape, np.uint8, reduced.write_to_memory())
    else:
        pixels = np.asarray(reduced)
    if mode == "L":
        return pixels.reshape(pixels.shape[:2])
    return resample.srgb_to_grey(icc.to_srgb(pixels, profile) if profile else pixels)


def _palette_grey(reduced: PalettePixels) -> np.ndarray | None:
    """The grey of each colour of the palette, looked up for each pixel."""
    if not _fits_numpy("P", reduced.size, reduced.icc_profile):
        return None
    palette = np.frombuffer(reduced.palette, dtype=np.uint8).reshape(1, -1, 3)
    profile = reduced.icc_profile
    grey = resample.srgb_to_grey(icc.to_srgb(palette, profile) if profile else palette)
    table = np.zeros(256, dtype=np.uint8)  # entries past the palette are never looked up
    table[: grey.shape[1]] = grey[0]
    return reduced.looked_up(table)


def _profile(reduced: ReducedImage) -> bytes | None:
    if isinstance(reduced, Image.Image):
        profile = reduced.info.get("icc_profile")
        return bytes(profile) if profile else None
    return reduced.get("icc-profile-data") if reduced.get_typeof("icc-profile-data") else None


def _fits_numpy(mode: str, size: tuple[int, int], profile: bytes | None) -> bool:
    if mode not in ("RGB", "L", "P") or min(size) < _SAMPLE_SIZE:
        return False  # numpy does no enlarging
    most = _NUMPY_RGB_MAX_PIXELS if mode == "RGB" else _NUMPY_MAX_PIXELS
    if size[0] * size[1] > most:
        return False
    return not profile or (mode != "L" and icc.can_convert(profile))


def _shrink_on_load(header: ImageHeader) -> dict[str, int | float]:
    """sharp's loader options for a 32 x 32 target with fastShrinkOnLoad (its default)."""
    shrink = min(header.width / _SAMPLE_SIZE, header.height / _SAMPLE_SIZE)
    if header.format == "jpg":
        factor = next((f for f in (8, 4, 2) if shrink >= f), 1)
        # sharp steps down where libjpeg would round the shrunk size below the target
        if factor > 1 and int(shrink) == factor:
            factor //= 2
        return {"shrink": factor} if factor > 1 else {}
    if header.format == "webp" and shrink > 1.0:
        return {"scale": 1.0 / shrink}
    return {}


def _sharp_pipeline(image: pyvips.Image, orientation: int) -> np.ndarray:
    """ICC to sRGB, greyscale, Lanczos-3 to 32 x 32, orient, back to 8-bit: sharp's order."""
    hshrink = image.width / _SAMPLE_SIZE
    vshrink = image.height / _SAMPLE_SIZE
    image = _to_processing_space(image)
    image = image.colourspace("b-w")
    band_format = image.format
    has_alpha = image.hasalpha()
    if has_alpha:
        image = image.premultiply().cast(band_format)
    if hshrink != 1.0 or vshrink != 1.0:
        image = image.resize(1.0 / hshrink, vscale=1.0 / vshrink, kernel="lanczos3")
    if not has_alpha and image.bands == 1 and image.format == "uchar":
        # Already the 8-bit grey sharp hands over; turning 32 x 32 samples in numpy saves
        # the cost of three more libvips operations.
        return _oriented(_samples(image), orientation)
    quarter_turns, mirror = _EXIF_ROTATION.get(orientation, (0, False))
    if quarter_turns:
        image = image.rot(f"d{90 * quarter_turns}")
    if mirror:
        image = image.fliphor()
    if has_alpha:
        image = image.unpremultiply().cast(band_format)
    if image.interpretation in _SIXTEEN_BIT:
        image = image.cast("ushort")
    if image.interpretation != "srgb":
        image = image.colourspace("srgb", source_space=image.interpretation)
    return _samples(image[0].cast("uchar"))


def _oriented(samples: np.ndarray, orientation: int) -> np.ndarray:
    """32 x 32 samples turned as sharp's ``rotate()`` turns the image for ``orientation``."""
    quarter_turns, mirror = _EXIF_ROTATION.get(orientation, (0, False))
    samples = np.rot90(samples, -quarter_turns)
    return samples[:, ::-1] if mirror else samples


def _samples(grey: pyvips.Image) -> np.ndarray:
    return np.frombuffer(grey.write_to_memory(), dtype=np.uint8).reshape(_SAMPLE_SIZE, _SAMPLE_SIZE)


def _to_processing_space(image: pyvips.Image) -> pyvips.Image:
    processing_profile = "p3" if image.interpretation == "rgb16" else "srgb"
    if image.get_typeof("icc-profile-data") != 0 and image.interpretation not in (
        "labs",
        "grey16",
    ):
        try:
            with vips_messages_decoded():
                return image.icc_transform(
                    processing_profile,
                    embedded=True,
                    depth=16 if image.interpretation in _SIXTEEN_BIT else 8,
                    intent="perceptual",
                )
        except pyvips.Error:
            return image  # sharp, too, goes on without a profile it cannot use
    if image.interpretation == "cmyk":
        return image.icc_transform(processing_profile, input_profile="cmyk", intent="perceptual")
    return image


def _vips_from_pillow(picture: Image.Image) -> pyvips.Image:
    """A libvips image of Pillow's pixels, with the ICC profile when it still applies."""
    icc_profile = picture.info.get("icc_profile")
    if picture.mode not in ("L", "LA", "RGB", "RGBA"):
        picture = picture.convert("RGBA" if picture.has_transparency_data else "RGB")
        icc_profile = None
    image = pyvips.Image.new_from_array(np.asarray(picture)).copy(
        interpretation="b-w" if picture.mode in ("L", "LA") else "srgb"
    )
    if icc_profile:
        image.set_type(pyvips.GValue.blob_type, "icc-profile-data", icc_profile)
    return image


def _dct_hash(samples: np.ndarray) -> int:
    """sharp-phash's DCT and threshold on 32 x 32 samples given as rows of pixels.

    sharp-phash indexes its signal as s[x][y] = pixels[32 * y + x] (a transposition), sums each
    coefficient term by term in order (i outer, j inner) and sets a bit where a coefficient of
    the 8 x 8 low block (DC row and column skipped) is above their mean, first bit highest.

    The separable product COS^T f COS gives each coefficient to within ``_ROUNDING_BOUND``
    of that sequential sum: where no coefficient lies that close to the mean, it has the
    same bits. Where one does (flat images: every coefficient is rounding noise), the
    terms are summed in sharp-phash's order (cumsum is sequential), so ties break as they
    do in JavaScript.
    """
    signal = samples.T.astype(np.float64)
    # (SQRT[u] * SQRT[v]) / 4 with u, v >= 1
    coefficients = (_LOW_COS.T @ signal @ _LOW_COS).reshape(-1) * 0.25
    mean = float(coefficients.mean())
    if float(np.abs(coefficients - mean).min()) <= _ROUNDING_BOUND:
        # terms[u * 8 + v, i * 32 + j] = (COS[i][u] * COS[j][v]) * f[i][j]
        terms = _COS_PRODUCTS * signal.reshape(1, -1)
        coefficients = np.cumsum(terms, axis=1)[:, -1] * 0.25
        mean = float(np.cumsum(coefficients)[-1]) / (_LOW_SIZE * _LOW_SIZE)
    return int.from_bytes(np.packbits(coefficients > mean).tobytes(), "big")
