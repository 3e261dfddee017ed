"""Hostile images, each a few hundred bytes, made here: the shapes that fuzzing and hand-made
bombs found (issue 15). Each claims a picture its bytes cannot hold or that would cost
gigabytes to decode; each has the reason extraction must give it, or "ok" and the pHash
sharp gives (checked with ../shared/oracle)."""

import io
import struct
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from hypothesis import strategies as st
from PIL import Image

from tests.heif_builder import grid
from tests.tiff_builder import LONG, SHORT, entry, tiff_block, tiff_image


@dataclass(frozen=True)
class Hostile:
    name: str
    make: Callable[[], bytes]
    reason: str  # the failed row's reason, or "ok"
    phash: str | None = None  # for "ok": sharp's pHash


def jpeg(mode: str, width: int, height: int, **options: object) -> bytes:
    """A tiny JPEG of 8 x 8 pixels whose frame header claims ``width`` x ``height``."""
    out = io.BytesIO()
    Image.new(mode, (8, 8), (10, 20, 30, 40)[: len(mode)]).save(out, "JPEG", **options)
    data = bytearray(out.getvalue())
    position = 2
    while data[position + 1] not in (0xC0, 0xC1, 0xC2):
        position += 2 + int.from_bytes(data[position + 2 : position + 4], "big")
    struct.pack_into(">HH", data, position + 5, height, width)
    return bytes(data)


def tiff_of_many_samples() -> bytes:
    """1000 x 1000 pixels of 2000 samples each, one deflated strip of 64 bytes."""
    image = [
        entry(0x0100, LONG, [1000]),
        entry(0x0101, LONG, [1000]),
        entry(0x0102, SHORT, [8]),
        entry(0x0103, SHORT, [8]),  # deflate
        entry(0x0106, SHORT, [1]),
        entry(0x0111, LONG, [0]),
        entry(0x0115, SHORT, [2000]),
        entry(0x0117, LONG, [64]),
    ]
    structure = tiff_block({"image": image})
    strip_at = structure.index(struct.pack("<HHL", 0x0111, LONG, 1)) + 8
    structure = structure[:strip_at] + struct.pack("<L", len(structure)) + structure[strip_at + 4 :]
    return structure + bytes(64)


def _patched_tiff(tag: int, value: int, *tags: int) -> bytes:
    """An 8 x 6 TIFF of one strip with the LONG value of ``tag`` (and ``tags``) replaced."""
    data = bytearray(tiff_image(bytes(8 * 6 * 3), 8, 6))
    for patched in (tag, *tags):
        at = data.index(struct.pack("<HHL", patched, LONG, 1)) + 8
        struct.pack_into("<L", data, at, value)
    return bytes(data)


def webp_lossless_header(width: int, height: int) -> bytes:
    """A lossless WebP whose header claims ``width`` x ``height`` and holds nothing else."""
    bits = (width - 1) | (height - 1) << 14
    payload = b"\x2f" + struct.pack("<I", bits) + bytes(9)
    return _riff(b"VP8L" + struct.pack("<I", len(payload)) + payload)


def webp_animated(width: int, height: int) -> bytes:
    """An animated WebP of one 1 x 1 frame on a ``width`` x ``height`` canvas."""
    out = io.BytesIO()
    Image.new("RGBA", (1, 1), (1, 2, 3, 255)).save(out, "WEBP", lossless=True)
    frame = out.getvalue()[12:]

    def u24(value: int) -> bytes:
        return struct.pack("<I", value)[:3]

    vp8x = b"VP8X" + struct.pack("<I", 10) + bytes([0x12, 0, 0, 0]) + u24(width - 1)
    vp8x += u24(height - 1)
    anim = b"ANIM" + struct.pack("<I", 6) + bytes(6)
    payload = u24(0) + u24(0) + u24(0) + u24(0) + u24(100) + b"\0" + frame
    anmf = b"ANMF" + struct.pack("<I", len(payload)) + payload + b"\0" * (len(payload) & 1)
    return _riff(vp8x + anim + anmf)


def _riff(chunks: bytes) -> bytes:
    return b"RIFF" + struct.pack("<I", 4 + len(chunks)) + b"WEBP" + chunks


def _claiming(
    image_format: str, mode: str, size_at: int, layout: str
) -> Callable[[int, int], bytes]:
    """A maker of tiny images of ``image_format`` whose header claims another size: the
    width and height packed with ``layout`` at ``size_at`` (a PNG's CRC is not checked
    before decoding)."""

    def make(width: int, height: int) -> bytes:
        out = io.BytesIO()
        Image.new(mode, (4, 4)).save(out, image_format)
        data = bytearray(out.getvalue())
        struct.pack_into(layout, data, size_at, width, height)
        return bytes(data)

    return make


bmp_header = _claiming("BMP", "RGB", 18, "<ii")
gif_canvas = _claiming("GIF", "P", 6, "<HH")  # the canvas; its frame stays 4 x 4
png_header = _claiming("PNG", "RGB", 16, ">II")


# Up to eight bytes replaced (at positions taken modulo the length), for ``damaged``.
BYTE_CHANGES = st.lists(st.tuples(st.integers(0, 4095), st.integers(0, 255)), max_size=8)


def damaged(data: bytes, changes: list[tuple[int, int]], keep: float) -> bytes:
    """``data`` with the bytes at the ``changes``' positions (modulo its length) replaced,
    cut to the fraction ``keep`` of it (one byte at least)."""
    bytes_ = bytearray(data)
    for position, value in changes:
        bytes_[position % len(bytes_)] = value
    return bytes(bytes_[: max(1, int(len(bytes_) * keep))])


def small_photo() -> bytes:
    rng = np.random.default_rng(7)
    pixels = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "JPEG", quality=85)
    return out.getvalue()


HOSTILE = [
    Hostile("tiff-2000-samples-a-pixel", tiff_of_many_samples, "too_much_memory"),
    Hostile(
        "jpeg-progressive-cmyk-16383",
        lambda: jpeg("CMYK", 16383, 16383, progressive=True),
        "too_much_memory",
    ),
    Hostile(
        "jpeg-progressive-444-16383",
        lambda: jpeg("RGB", 16383, 16383, progressive=True, subsampling=0),
        "too_much_memory",
    ),
    Hostile("jpeg-baseline-16383", lambda: jpeg("RGB", 16383, 16383), "undecodable"),
    Hostile("jpeg-65500", lambda: jpeg("RGB", 65500, 65500), "too_many_pixels"),
    Hostile("heic-grid-256-cells-13300", lambda: grid("HEIF", 13300, 13300), "too_much_memory"),
    Hostile("avif-grid-16383", lambda: grid("AVIF", 16383, 16383), "too_much_memory"),
    Hostile(
        "avif-grid-256-cells-1024",
        lambda: grid("AVIF", 1024, 1024),
        "ok",
        phash="272bb783ff951d55",
    ),
    Hostile("webp-animated-16383", lambda: webp_animated(16383, 16383), "too_much_memory"),
    Hostile("webp-lossless-16383", lambda: webp_lossless_header(16383, 16383), "too_much_memory"),
    Hostile("tiff-patched-16383", lambda: _patched_tiff(0x0100, 16383, 0x0101), "undecodable"),
    Hostile("tiff-strip-outside", lambda: _patched_tiff(0x0111, 10_000_000), "undecodable"),
    Hostile("bmp-16383", lambda: bmp_header(16383, 16383), "too_much_memory"),
    # libnsgif (and so sharp) takes the 1 x 1 frame for the picture: a black pixel
    Hostile("gif-canvas-16383", lambda: gif_canvas(16383, 16383), "ok", phash="0000000000000000"),
    Hostile("png-100000x2000", lambda: png_header(100_000, 2_000), "undecodable"),
    Hostile("png-100000x100000", lambda: png_header(100_000, 100_000), "too_many_pixels"),
]
