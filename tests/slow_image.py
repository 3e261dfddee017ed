"""An image that is small to send and slow to extract, for the extraction time limit."""

import math
import struct
import zlib


def interlaced_png(side: int) -> bytes:
    """A blank 1-bit Adam7-interlaced PNG, ``side`` pixels square: ~30 KB for 16,000, and
    seconds to decode (an interlaced picture is decoded whole)."""
    # Adam7's seven passes: (first column, first row, column step, row step). Each row of a
    # pass is a filter byte and its pixels at one bit each.
    passes = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2)]
    passes.append((0, 1, 1, 2))
    raw_size = 0
    for left, top, across, down in passes:
        width, height = math.ceil((side - left) / across), math.ceil((side - top) / down)
        raw_size += height * (1 + math.ceil(width / 8))
    compressor = zlib.compressobj(9)
    block = bytes(1 << 20)
    body = [compressor.compress(block) for _ in range(raw_size // len(block))]
    body += [compressor.compress(bytes(raw_size % len(block))), compressor.flush()]
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 1)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    chunks = chunk(b"IHDR", header) + chunk(b"IDAT", b"".join(body)) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + chunks
