"""pHash: ImageKit's bits on the corpus and on synthetic formats, the imagehash variant, broken
input, and the arithmetic on hash values."""

import io
import logging
import sys
import time
from typing import Any

import imagehash
import numpy as np
import PIL
import pytest
import pyvips
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageOps

from crawler.errors import ConfigError, DecodeError, HashFormatError, ImageError
from crawler.extract import libwebp
from crawler.extract.image import (
    decode_jpeg_as_libvips,
    decode_webp_as_libvips,
    load_vips,
    read_header,
)
from crawler.extract.phash import _COS_PRODUCTS, _dct_hash, compute
from crawler.hashes import distance, hex_to_signed, parse_hex, similarity, to_hex, to_signed
from tests.conftest import CORPUS, EXPECTED, require_shared
from tests.hostile_images import BYTE_CHANGES, damaged
from tests.test_image import FIXTURE_REFERENCES, IMAGES, PIXEL_LIMIT, load_references

BROKEN_GLOBS = (
    "exif-samples/jpg/invalid/*",
    "exif-samples/jpg/tests/*",
    "exif-samples/jpg/corrupted.jpg",
)


def imagekit_hex(data: bytes, where: str = "") -> str:
    header = read_header(data, pixel_limit=PIXEL_LIMIT, where=where)
    return to_hex(compute(data, header, "imagekit", where=where))


def test_imagekit_phash_equals_sharp_phash_on_the_corpus() -> None:
    require_shared()
    distances: dict[str, int] = {}
    for reference in load_references(EXPECTED):
        if reference["pHash"] is None:
            continue
        data = (CORPUS / reference["file"]).read_bytes()
        distances[reference["file"]] = distance(imagekit_hex(data), reference["pHash"])
    print(f"\npHash: {len(distances)} files, {sum(d == 0 for d in distances.values())} exact")
    assert len(distances) >= 97
    assert not {f: d for f, d in distances.items() if d}


def test_documented_hash_of_first_jpg() -> None:
    require_shared()
    assert imagekit_hex((CORPUS / "imagekit-docs/first.jpg").read_bytes()) == "63433b3ccf8e1ebe"


@pytest.mark.parametrize(
    "reference",
    [r for r in FIXTURE_REFERENCES if r["pHash"] is not None],
    ids=lambda r: r["file"],
)
def test_imagekit_phash_equals_sharp_phash_on_synthetic_formats(reference: dict[str, Any]) -> None:
    # alpha, palette, GIF, WebP (scale-on-load), AVIF, 16-bit, CMYK, grey, a flat image (all
    # rounding noise), EXIF orientation 6 with JPEG shrink-on-load, TIFF with alpha
    assert imagekit_hex((IMAGES / reference["file"]).read_bytes()) == reference["pHash"]


@pytest.mark.parametrize(
    ("name", "same_picture"),
    [("photo.heic", "photo.webp"), ("plain.bmp", "rgb16.png")],
)
def test_formats_sharp_cannot_hash_get_the_hash_of_the_same_picture(
    name: str, same_picture: str
) -> None:
    # sharp has no HEVC decoder and no BMP loader; the pictures are the same as the references'
    reference = next(r["pHash"] for r in FIXTURE_REFERENCES if r["file"] == same_picture)
    assert distance(imagekit_hex((IMAGES / name).read_bytes()), reference) <= 2


@pytest.mark.parametrize("shrink", [1, 2, 4, 8])
def test_pillow_decodes_corpus_jpegs_to_the_pixels_libvips_gives(shrink: int) -> None:
    # The pHash takes JPEG pixels from Pillow for speed; a hash hides small pixel differences,
    # so compare the pixels themselves (a Pillow or libvips upgrade could change either).
    require_shared()
    compared = 0
    for path in sorted(CORPUS.rglob("*.jp*g")):
        data = path.read_bytes()
        try:
            header = read_header(data, pixel_limit=PIXEL_LIMIT)
            libvips = load_vips(data, "jpg", shrink=shrink).write_to_memory()
        except ImageError:
            continue
        except pyvips.Error:  # libvips cannot decode the pixels: hashed another way
            continue
        picture = decode_jpeg_as_libvips(data, header, shrink)
        if picture is None:
            continue
        assert np.asarray(picture).tobytes() == libvips, path.name
        compared += 1
    assert compared >= 85


def webp_of(size: tuple[int, int], **options: Any) -> bytes:
    """A WebP of a corpus photo resized to ``size`` (or of noise without the corpus)."""
    if CORPUS.is_dir():
        picture = Image.open(CORPUS / "imagekit-docs/first.jpg").convert("RGB").resize(size)
    else:
        noise = np.random.default_rng(7).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        picture = Image.fromarray(noise)
    if options.pop("alpha", False):
        picture.putalpha(200)
    buffer = io.BytesIO()
    picture.save(buffer, "WEBP", **options)
    return buffer.getvalue()


@pytest.mark.parametrize("size", [(800, 600), (333, 517), (1600, 1200), (31, 23)])
@pytest.mark.parametrize("scale", [1.0, 0.5, 0.3, 0.137, 0.05])
def test_libwebp_decodes_lossy_webps_to_the_pixels_libvips_gives(
    size: tuple[int, int], scale: float
) -> None:
    # As for JPEG: the pHash and thumbnails take lossy WebP pixels from libwebp directly,
    # which must be libvips' scaled decode to the byte.
    data = webp_of(size, quality=80)
    header = read_header(data, pixel_limit=PIXEL_LIMIT)
    options = {"scale": scale} if scale < 1 else {}
    libvips = load_vips(data, "webp", **options)
    picture = decode_webp_as_libvips(data, header, scale)
    assert picture is not None
    assert picture.size == (libvips.width, libvips.height)
    assert np.asarray(picture).tobytes() == bytes(libvips.write_to_memory())


@pytest.mark.parametrize(
    "options", [{"lossless": True}, {"quality": 80, "alpha": True}], ids=["lossless", "alpha"]
)
def test_webps_libwebp_is_not_asked_for_are_hashed_by_libvips(options: dict[str, Any]) -> None:
    data = webp_of((320, 240), **options)
    header = read_header(data, pixel_limit=PIXEL_LIMIT)
    assert decode_webp_as_libvips(data, header, 0.5) is None
    assert len(imagekit_hex(data)) == 16


def test_without_libwebp_at_hand_a_webp_is_hashed_by_libvips(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = webp_of((640, 480), quality=80)
    direct = imagekit_hex(data)
    monkeypatch.setattr(libwebp, "_libwebp", lambda: None)
    header = read_header(data, pixel_limit=PIXEL_LIMIT)
    assert decode_webp_as_libvips(data, header, 0.5) is None
    assert imagekit_hex(data) == direct


def test_a_pillow_without_webp_leaves_webps_hashed(monkeypatch: pytest.MonkeyPatch) -> None:
    data = webp_of((640, 480), quality=80)
    expected = imagekit_hex(data)
    monkeypatch.setitem(sys.modules, "PIL._webp", None)  # importing it raises ImportError
    monkeypatch.delattr(PIL, "_webp", raising=False)
    libwebp._libwebp.cache_clear()
    try:
        assert imagekit_hex(data) == expected
    finally:
        libwebp._libwebp.cache_clear()


def sharp_phash_bits(samples: np.ndarray) -> int:
    """sharp-phash's loops as it writes them: each coefficient summed term by term."""
    signal = [float(value) for value in samples.T.reshape(-1)]
    coefficients = []
    for products in _COS_PRODUCTS.tolist():
        total = 0.0
        for product, value in zip(products, signal, strict=True):
            total += product * value
        coefficients.append(total * 0.25)
    mean = 0.0
    for coefficient in coefficients:
        mean += coefficient
    mean /= len(coefficients)
    return int("".join("1" if c > mean else "0" for c in coefficients), 2)


@settings(max_examples=40, deadline=None)
@given(
    base=st.integers(0, 255),
    seed=st.integers(0, 2**32 - 1),
    spread=st.sampled_from([0, 1, 2, 255]),
)
def test_the_dct_gives_sharp_phashs_bits_on_busy_and_flat_samples(
    base: int, seed: int, spread: int
) -> None:
    # The hash takes a matrix product, and sums term by term only where a coefficient lies
    # near the mean: flat and nearly flat samples must still break ties as JavaScript does.
    noise = np.random.default_rng(seed).integers(0, spread + 1, (32, 32))
    samples = np.clip(base + noise, 0, 255).astype(np.uint8)
    assert _dct_hash(samples) == sharp_phash_bits(samples)


def test_corpus_heic_is_hashed() -> None:
    require_shared()
    data = (CORPUS / "exif-samples/heic/samplefilehub.heif").read_bytes()
    assert len(imagekit_hex(data)) == 16


def test_truncated_pixels_raise_decode_error() -> None:
    data = (IMAGES / "orientation-6-dpcm.jpg").read_bytes()
    with pytest.raises(DecodeError, match=r"^cannot decode jpg pixels: .* \(cut\.jpg\)$"):
        imagekit_hex(data[: len(data) * 2 // 3], where=" (cut.jpg)")


def test_broken_corpus_files_give_a_hash_or_a_typed_error_quickly(
    capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    require_shared()
    caplog.set_level(logging.WARNING)  # the CLI's default: libvips warnings must not flood it
    paths = sorted(p for pattern in BROKEN_GLOBS for p in CORPUS.glob(pattern))
    assert len(paths) >= 20
    for path in paths:
        started = time.perf_counter()
        try:
            imagekit_hex(path.read_bytes(), where=f" ({path.name})")
        except ImageError as exc:
            assert "\n" not in str(exc)
        assert time.perf_counter() - started < 2, path
    assert capfd.readouterr().err == ""
    assert [record.getMessage() for record in caplog.records] == []


SMALL_FIXTURES = ("grey.jpg", "alpha.png", "palette.gif", "photo.webp", "photo.heic", "plain.bmp")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(SMALL_FIXTURES), damage=BYTE_CHANGES, keep=st.floats(0.0, 1.0))
def test_damaged_files_give_a_hash_or_a_typed_error(
    name: str, damage: list[tuple[int, int]], keep: float
) -> None:
    data = damaged((IMAGES / name).read_bytes(), damage, keep)
    try:
        value = compute(data, read_header(data, pixel_limit=PIXEL_LIMIT), "imagekit")
    except ImageError as exc:
        assert "\n" not in str(exc)
    else:
        assert 0 <= value < 1 << 64


@pytest.mark.parametrize("name", ["orientation-6-dpcm.jpg", "alpha.png", "photo.heic", "cmyk.jpg"])
def test_imagehash_algorithm_is_imagehash_phash_of_the_oriented_image(name: str) -> None:
    data = (IMAGES / name).read_bytes()
    header = read_header(data, pixel_limit=PIXEL_LIMIT)
    expected = imagehash.phash(ImageOps.exif_transpose(Image.open(io.BytesIO(data))))
    assert to_hex(compute(data, header, "imagehash")) == str(expected)


def test_imagehash_and_imagekit_are_different_algorithms() -> None:
    require_shared()
    data = (CORPUS / "exif-samples/jpg/Canon_40D.jpg").read_bytes()
    header = read_header(data, pixel_limit=PIXEL_LIMIT)
    # the spec measured 32 bits apart; imagehash 4.3.2 with Pillow 13 gives 34: unrelated bits
    assert distance(compute(data, header, "imagekit"), compute(data, header, "imagehash")) >= 24


def test_unknown_algorithm_is_a_config_error() -> None:
    data = (IMAGES / "grey.jpg").read_bytes()
    header = read_header(data, pixel_limit=PIXEL_LIMIT)
    with pytest.raises(ConfigError, match=r"hash_algorithm.*'md5'"):
        compute(data, header, "md5")


@pytest.mark.parametrize(
    ("text", "signed"),
    [
        ("0000000000000000", 0),
        ("ffffffffffffffff", -1),
        ("8000000000000000", -(1 << 63)),
        ("7fffffffffffffff", (1 << 63) - 1),
        ("63433b3ccf8e1ebe", 0x63433B3CCF8E1EBE),
        ("f5d2226cd9d32b16", 0xF5D2226CD9D32B16 - (1 << 64)),
    ],
)
def test_hex_and_signed_integer_round_trip(text: str, signed: int) -> None:
    assert hex_to_signed(text) == signed
    assert to_signed(parse_hex(text)) == signed
    assert to_hex(signed) == text
    assert to_hex(parse_hex(text)) == text


def test_hex_is_read_in_either_case_and_written_canonically() -> None:
    assert to_hex(parse_hex(" 0X63433B3CCF8E1EBE ")) == "63433b3ccf8e1ebe"
    assert to_hex(parse_hex("0000000000000001")) == "0000000000000001"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "xyz",
        "63433b3ccf8e1ebe0",  # 17 digits
        "3433b3ccf8e1ebe",  # 15 digits: refused, not padded
        "1",
        "-1",
        "0x",
        "0x3433b3ccf8e1ebe",
        "63433b3c cf8e1ebe",
        "+63433b3ccf8e1ebe",
    ],
)
def test_bad_hex_raises_hash_format_error(text: str) -> None:
    with pytest.raises(HashFormatError, match="expected 16 hex digits"):
        parse_hex(text)


@pytest.mark.parametrize(
    ("a", "b", "bits", "score"),
    [
        ("63433b3ccf8e1ebe", "f5d2226cd9d32b16", 27, 0.578125),
        ("63433b3ccf8e1ebe", "61433b3fcf8f9faf", 8, 0.875),
        ("0000000000000000", "ffffffffffffffff", 64, 0.0),
        ("63433b3ccf8e1ebe", "63433b3ccf8e1ebe", 0, 1.0),
    ],
)
def test_distance_and_similarity_match_imagekits_documented_pairs(
    a: str, b: str, bits: int, score: float
) -> None:
    assert distance(a, b) == distance(b, a) == bits
    assert distance(hex_to_signed(a), hex_to_signed(b)) == bits  # stored BIGINT form
    assert similarity(a, b) == score
