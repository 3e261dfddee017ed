"""The pHash's numpy steps equal the libvips operations sharp runs, pixel for pixel.

``crawler.extract.resample`` (greyscale, Lanczos-3 reduction) and ``crawler.extract.icc``
(colour profiles) replace libvips operations for speed; a pHash bit depends on every
pixel, so each is compared with libvips itself: the greyscale and the profile conversions
on every 8-bit colour, the reduction on images of many sizes from memory and from a
libvips loader, and the whole pHash path on small images of each format.
"""

import io
from typing import Any

import numpy as np
import pytest
import pyvips
from PIL import Image

from crawler.extract import icc, resample
from crawler.extract.image import read_header
from crawler.extract.phash import _dct_hash, compute
from tests.conftest import CORPUS, require_shared
from tests.test_image import IMAGES, PIXEL_LIMIT

EVERY_COLOUR = np.arange(1 << 24, dtype=np.uint32)
EVERY_COLOUR_RGB = (
    np.stack([EVERY_COLOUR >> 16, EVERY_COLOUR >> 8, EVERY_COLOUR], axis=-1)
    .astype(np.uint8)
    .reshape(4096, 4096, 3)
)


def libvips_pixels(image: pyvips.Image) -> np.ndarray:
    pixels = np.ndarray((image.height, image.width, image.bands), np.uint8, image.write_to_memory())
    return pixels[:, :, 0] if image.bands == 1 else pixels


def srgb(pixels: np.ndarray) -> pyvips.Image:
    return pyvips.Image.new_from_array(pixels).copy(interpretation="srgb")


def test_greyscale_equals_libvips_on_every_colour() -> None:
    expected = libvips_pixels(srgb(EVERY_COLOUR_RGB).colourspace("b-w"))
    assert np.array_equal(resample.srgb_to_grey(EVERY_COLOUR_RGB), expected)
    # small images take the formula instead of the lookup tables: every colour again,
    # as 1,024 images of 128 x 128
    tiles = EVERY_COLOUR_RGB.reshape(32, 128, 32, 128, 3).swapaxes(1, 2).reshape(-1, 128, 128, 3)
    small = np.stack([resample.srgb_to_grey(tile) for tile in tiles])
    assert np.array_equal(
        small, expected.reshape(32, 128, 32, 128).swapaxes(1, 2).reshape(-1, 128, 128)
    )


SIZES = [(32, 32), (33, 900), (65, 1540), (100, 75), (127, 128), (300, 1959), (640, 480)]
SIZES += [(800, 600), (1600, 1200), (2000, 40), (44, 1286), (1031, 437), (500, 375)]


def photo_like(width: int, height: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    waves = np.sin(x / rng.uniform(2, 60)) * np.cos(y / rng.uniform(2, 60)) * 100 + 128
    noise = rng.normal(0, rng.uniform(1, 50), (height, width, 3))
    return np.clip(waves[..., None] + noise, 0, 255).astype(np.uint8)


def libvips_reduced(image: pyvips.Image) -> np.ndarray:
    grey = image.colourspace("b-w")
    return libvips_pixels(
        grey.resize(1.0 / (image.width / 32), vscale=1.0 / (image.height / 32), kernel="lanczos3")
    )


@pytest.mark.parametrize(("width", "height"), SIZES)
def test_reduction_equals_libvips_from_memory(width: int, height: int) -> None:
    rgb = photo_like(width, height, seed=width * height)
    grey = resample.srgb_to_grey(rgb)
    ours = resample.reduce_to(grey, 32, 32, sequential=False)
    assert np.array_equal(ours, libvips_reduced(srgb(rgb)))


@pytest.mark.parametrize(("width", "height"), SIZES)
def test_reduction_equals_libvips_from_a_sequential_loader(width: int, height: int) -> None:
    # A loader's pipeline computes the reduction in other strips than one from memory,
    # which moves some rows' sub-pixel positions by their last bits.
    rgb = photo_like(width, height, seed=width + height)
    png = srgb(rgb).pngsave_buffer(compression=1)
    loaded = pyvips.Image.new_from_buffer(png, "", access="sequential")
    ours = resample.reduce_to(resample.srgb_to_grey(rgb), 32, 32, sequential=True)
    assert np.array_equal(ours, libvips_reduced(loaded))


def test_enlarging_is_left_to_libvips() -> None:
    with pytest.raises(ValueError, match="100 x 20 is smaller than 32 x 32"):
        resample.reduce_to(np.zeros((20, 100), np.uint8), 32, 32, sequential=False)


def _profiles() -> list[tuple[str, bytes]]:
    found = [("libvips p3", pyvips.Operation.call("profile_load", "p3"))]
    for name in ("imagekit-docs/second.jpg", "exif-samples/jpg/Nikon_D70.jpg"):
        path = CORPUS / name
        if path.is_file():
            found.append((name, Image.open(path).info["icc_profile"]))
    return found


@pytest.mark.parametrize(("name", "profile"), _profiles(), ids=lambda value: str(value)[:20])
def test_colour_profiles_convert_as_libvips_on_every_colour(name: str, profile: bytes) -> None:
    if name != "libvips p3":
        require_shared()
    image = srgb(EVERY_COLOUR_RGB)
    image.set_type(pyvips.GValue.blob_type, "icc-profile-data", profile)
    expected = libvips_pixels(
        image.icc_transform("srgb", embedded=True, depth=8, intent="perceptual")
    )
    assert icc.can_convert(profile)
    assert np.array_equal(icc.to_srgb(EVERY_COLOUR_RGB, profile), expected)


def test_profiles_libvips_treats_otherwise_are_left_to_it() -> None:
    grey_profile = pyvips.Operation.call("profile_load", "sgrey")
    assert not icc.can_convert(grey_profile)
    assert not icc.can_convert(b"not a profile")


def test_without_little_cms_at_hand_libvips_converts_profiles(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    require_shared()
    data = (CORPUS / "imagekit-docs/second.jpg").read_bytes()  # sharp's pHash: conformance
    header = read_header(data, pixel_limit=PIXEL_LIMIT)
    expected = compute(data, header, "imagekit")
    icc._transform.cache_clear()
    monkeypatch.setattr(icc, "_lcms", lambda: None)
    try:
        assert not icc.can_convert(Image.open(io.BytesIO(data)).info["icc_profile"])
        assert compute(data, header, "imagekit") == expected
    finally:
        icc._transform.cache_clear()


def _sharp_operations(data: bytes) -> int:
    """The pHash through libvips alone, the operations of sharp 0.35.5's pipeline."""
    image = pyvips.Image.new_from_buffer(data, "", access="sequential")
    shrink = min(image.width, image.height) / 32
    if data.startswith(b"RIFF") and shrink > 1:  # WebP: shrink-on-load
        image = pyvips.Image.new_from_buffer(data, "", access="sequential", scale=1 / shrink)
    hshrink, vshrink = image.width / 32, image.height / 32
    if image.get_typeof("icc-profile-data"):
        image = image.icc_transform("srgb", embedded=True, depth=8, intent="perceptual")
    image = image.colourspace("b-w").resize(1 / hshrink, vscale=1 / vshrink, kernel="lanczos3")
    return _dct_hash(libvips_pixels(image))


def _encoded(picture: Image.Image, image_format: str, **options: Any) -> bytes:
    out = io.BytesIO()
    picture.save(out, image_format, **options)
    return out.getvalue()


def _formats() -> list[tuple[str, bytes]]:
    photo = Image.open(IMAGES / "orientation-6-dpcm.jpg").convert("RGB")
    profile = pyvips.Operation.call("profile_load", "p3")
    cases = []
    for width, height in ((100, 75), (333, 250), (64, 64), (40, 700)):
        picture = photo.resize((width, height))
        cases += [
            (f"{width}x{height} palette png", _encoded(picture.quantize(200), "PNG")),
            (f"{width}x{height} gif", _encoded(picture.quantize(256), "GIF")),
            (f"{width}x{height} grey png", _encoded(picture.convert("L"), "PNG")),
            (f"{width}x{height} rgb png", _encoded(picture, "PNG")),
            (f"{width}x{height} p3 png", _encoded(picture, "PNG", icc_profile=profile)),
            (
                f"{width}x{height} p3 palette png",
                _encoded(picture.quantize(64), "PNG", icc_profile=profile),
            ),
            (f"{width}x{height} webp", _encoded(picture, "WEBP", lossless=True)),
        ]
    return cases


@pytest.mark.parametrize(("name", "data"), _formats(), ids=lambda value: str(value)[:28])
def test_phash_equals_sharps_libvips_operations(name: str, data: bytes) -> None:
    header = read_header(data, pixel_limit=PIXEL_LIMIT)
    assert compute(data, header, "imagekit") == _sharp_operations(data)
