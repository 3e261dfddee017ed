"""Plain palette PNGs read without a decoder: the pixels libvips gives, or no answer."""

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from crawler.extract import png
from crawler.extract.image import load_vips
from tests.test_plain_headers import SRGB_PROFILE, png_chunk, saved


def palette_png(
    indices: np.ndarray,
    colours: int = 256,
    filters: bytes = b"\0",
    extra: bytes = b"",
) -> bytes:
    """A palette PNG of ``indices`` with ``colours`` colours, each row filtered by the next
    of ``filters`` (as stored: the filter byte only, the row's bytes left as they are)."""
    height, width = indices.shape
    rows = b"".join(
        filters[y % len(filters) : y % len(filters) + 1] + indices[y].tobytes()
        for y in range(height)
    )
    palette = b"".join(bytes((i * 7 % 256, i * 13 % 256, 255 - i)) for i in range(colours))
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 3, 0, 0, 0))
        + png_chunk(b"PLTE", palette)
        + extra
        + png_chunk(b"IDAT", zlib.compress(rows))
        + png_chunk(b"IEND", b"")
    )


INDICES = np.random.default_rng(3).integers(0, 200, (48, 64), dtype=np.uint8)


def libvips_rgb(data: bytes) -> np.ndarray:
    image = load_vips(data, "png")
    return np.ndarray((image.height, image.width, image.bands), np.uint8, image.write_to_memory())


def looked_up(pixels: png.PalettePixels) -> np.ndarray:
    return np.frombuffer(pixels.palette, np.uint8).reshape(-1, 3)[pixels.indices]


@pytest.mark.parametrize(
    "data",
    [
        palette_png(INDICES),
        palette_png(INDICES, extra=png_chunk(b"tEXt", b"Comment\0made here")),
        saved(Image.fromarray(INDICES, "L").convert("P"), "PNG"),
    ],
    ids=["made here", "with text", "saved by Pillow"],
)
def test_plain_palette_pngs_give_the_pixels_libvips_gives(data: bytes) -> None:
    pixels = png.palette_indices(data)
    assert pixels is not None
    assert np.array_equal(looked_up(pixels), libvips_rgb(data))


def test_the_colour_profile_comes_with_the_pixels() -> None:
    picture = Image.fromarray(INDICES, "L").convert("P")
    pixels = png.palette_indices(saved(picture, "PNG", icc_profile=SRGB_PROFILE))
    assert pixels is not None and pixels.icc_profile == SRGB_PROFILE
    assert pixels.to_pillow().info["icc_profile"] == SRGB_PROFILE


PLAIN = palette_png(INDICES)


@pytest.mark.parametrize(
    "data",
    [
        palette_png(INDICES, filters=b"\0\1"),  # a filtered row
        palette_png(INDICES, colours=100),  # indices past the palette
        palette_png(INDICES, extra=png_chunk(b"tRNS", b"\0")),
        PLAIN[:-40] + PLAIN[-12:],  # IDAT cut short
        PLAIN[:40] + bytes([PLAIN[40] ^ 1]) + PLAIN[41:],  # a CRC that fails
        saved(Image.fromarray(INDICES, "L"), "PNG"),  # grey, not palette
        PLAIN[:8] + png_chunk(b"IHDR", PLAIN[16:28] + b"\1") + PLAIN[33:],  # interlaced
    ],
    ids=["filtered", "past the palette", "transparency", "short", "bad crc", "grey", "interlaced"],
)
def test_other_pngs_get_no_answer(data: bytes) -> None:
    assert png.palette_indices(data) is None


def test_no_more_than_the_rows_is_ever_inflated() -> None:
    # 10 MB of zeros deflate to a few KB: a stream longer than its rows is refused unread
    bomb = palette_png(np.zeros((48, 64), np.uint8))
    rows = zlib.compress(bytes(10_000_000))
    start = bomb.index(b"IDAT") - 4
    end = bomb.index(b"IEND") - 4
    assert png.palette_indices(bomb[:start] + png_chunk(b"IDAT", rows) + bomb[end:]) is None


def test_pillow_reads_the_same_picture() -> None:
    pixels = png.palette_indices(PLAIN)
    assert pixels is not None
    reference = Image.open(io.BytesIO(PLAIN))
    assert pixels.to_pillow().tobytes() == reference.tobytes()
    assert pixels.to_pillow().getpalette() == reference.getpalette()


@pytest.mark.parametrize(
    ("height", "width", "skip"), [(48, 64, 1), (47, 64, 1), (5, 7, 0), (6, 7, 0)]
)
def test_palette_lookups_two_at_a_time_give_each_pixels_entry(
    height: int, width: int, skip: int
) -> None:
    rng = np.random.default_rng(height * width)
    rows = rng.integers(0, 256, (height, width + skip), dtype=np.uint8)
    table = rng.integers(0, 256, 256, dtype=np.uint8)
    pixels = png.PalettePixels(rows, skip, bytes(768), None)
    assert np.array_equal(pixels.looked_up(table), table[rows[:, skip:]])
