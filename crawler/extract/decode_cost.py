"""What decoding an image will take, judged from its header before any pixel is decoded.

A few hundred bytes can claim a picture that costs gigabytes and seconds to decode: a
progressive JPEG whose decoder holds every coefficient, a TIFF strip of 2,000 samples a
pixel, an animated WebP's canvas. ``check`` estimates the memory the decode of this
pipeline needs (the decoder's buffers as each library allocates them: the reduced output
of a shrink-on-load, whole images where a decoder holds one, a strip or a row of tiles
where it streams) and refuses above ``extract.memory_limit``. It also refuses data that
cannot fill the picture it claims (strips outside the file or too few of them, a JPEG scan
shorter than its blocks need, a BMP shorter than its rows), which decoders would turn
into a hash of zeros.

Each process that extracts is capped besides (``memory_cap``: the extraction processes,
and ``crawler extract`` of a few images in its own process), so an estimate that is wrong
costs one image, never the machine.
"""

import math
import resource
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any, Final

from crawler.errors import DecodeError, MemoryLimitError
from crawler.extract import exif
from crawler.extract.quality import jpeg_segments

# What the pHash decodes: a 32 x 32 target, JPEG shrink-on-load by up to 8 (phash.py).
_SAMPLE_SIZE: Final = 32
# Measured on 12-megapixel images of every format (README, "Decoding limits"): a decode's
# fixed cost (codec and libvips state), and what libvips' pipeline holds of a streamed image:
# a few operations' worth of float rows.
_FIXED_COST: Final = 32 * 1024 * 1024
_PIPELINE_ROWS: Final = 128
_PIPELINE_STAGES: Final = 4
# Bytes a pixel beyond the decoded image that libheif (YCbCr planes, the decoder's frames)
# and Pillow's WebP decoder (the canvas it composites on) hold.
_HEIF_EXTRA_PER_SAMPLE_BYTE: Final = 8
_PILLOW_WEBP_EXTRA: Final = 16
_NUMPY_MAX_PIXELS: Final = 4_200_000  # phash.py holds images up to this size whole
# Huffman-coded JPEG frames (not 0xC4, 0xC8, 0xCC, nor the arithmetic ones 0xC9..0xCF)
_HUFFMAN_SOF: Final = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7})
_PROGRESSIVE_SOF: Final = frozenset({0xC2, 0xC6, 0xCA, 0xCE})
_LOSSLESS_SOF: Final = frozenset({0xC3, 0xC7, 0xCB, 0xCF})
_SOS: Final = 0xDA
_COEFFICIENT_BLOCK: Final = 64 * 2  # libjpeg's JBLOCK: 64 16-bit coefficients
# TIFF: the most one byte of each compression can expand to (LZW: a 12-bit code for up to
# 4096 bytes; deflate: 1032; PackBits: 128 from 2; JPEG: 6 subsampled blocks of a 16 x 16
# pixel area from 12 bits).
_TIFF_MOST_EXPANSION: Final = {1: 1, 5: 2731, 7: 512, 8: 1032, 32946: 1032, 32773: 64}
_TIFF_UNCOMPRESSED: Final = 1
_BMP_UNCOMPRESSED: Final = frozenset({0, 3, 6})  # BI_RGB, BI_BITFIELDS, BI_ALPHABITFIELDS
_WEBP_MOST_CHUNKS: Final = 64
_PNG_CHANNELS: Final = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # by IHDR colour type
_DEFLATE_MAX_RATIO: Final = 1032


@dataclass(frozen=True)
class Cost:
    """What a decode needs: ``memory`` bytes for ``what`` (``coefficients`` of them a JPEG
    decoder's, whatever the scale); ``unfilled`` says why its data cannot fill the picture,
    if it cannot."""

    memory: int
    what: str
    unfilled: str | None = None
    coefficients: int = 0


def check(
    data: bytes,
    image_format: str,
    size: tuple[int, int],
    bands: int,
    sample_bytes: int,
    *,
    memory_limit: int | None,
    full_decode: bool = False,
    shrink: float | None = None,
    where: str = "",
) -> None:
    """Raise DecodeError when the data of ``data`` cannot fill the picture it claims, and
    MemoryLimitError when its decode needs more than ``memory_limit`` bytes (None: any).

    ``size`` is (width, height); ``bands`` and ``sample_bytes`` as the decoder gives them.
    ``full_decode``: the pixels are decoded at full size (the imagehash algorithm), not as
    far as the pHash reduces them; ``shrink``: a JPEG or WebP is decoded reduced by this
    factor instead (a thumbnail's decode: a JPEG's DCT scale, 1 to 8; a WebP's scaling).
    """
    cost = _cost(data, image_format, size, bands, sample_bytes, full_decode, shrink)
    if memory_limit is not None and cost.memory > memory_limit:
        width, height = size
        raise MemoryLimitError(
            f"image needs too much memory to decode: about {_megabytes(cost.memory)} for"
            f" {width} x {height} {cost.what}, more than extract.memory_limit"
            f" ({_megabytes(memory_limit)}){where}"
        )
    if cost.unfilled:
        raise DecodeError(f"cannot decode {image_format} pixels: {cost.unfilled}{where}")


def estimate(
    data: bytes,
    image_format: str,
    size: tuple[int, int],
    bands: int,
    sample_bytes: int,
    full_decode: bool = False,
) -> int:
    """The bytes decoding ``data`` is estimated to need (see ``check``)."""
    return _cost(data, image_format, size, bands, sample_bytes, full_decode).memory


def _cost(
    data: bytes,
    image_format: str,
    size: tuple[int, int],
    bands: int,
    sample_bytes: int,
    full_decode: bool,
    shrink: float | None = None,
) -> Cost:
    scaled = _SCALED_ESTIMATES.get(image_format) if shrink else None
    if scaled is not None:
        cost = scaled(data, size, bands, sample_bytes, shrink)
    else:
        cost = _ESTIMATES.get(image_format, _heif)(data, size, bands, sample_bytes)
    if full_decode:
        # imagehash: Pillow decodes the whole image, turns it upright and to grey
        width, height = size
        whole = width * height * (max(bands, 3) * sample_bytes * 3 + 2)
        extra = width * height * _PILLOW_EXTRA.get(image_format, 0) * sample_bytes
        memory = whole + extra + cost.coefficients
        cost = replace(cost, memory=memory, what=f"{image_format} pixels")
    return replace(cost, memory=cost.memory + _FIXED_COST)


Estimate = Callable[[bytes, tuple[int, int], int, int], Cost]
# the estimate of a decode reduced by the factor given (None: as far as the pHash reduces)
ScaledEstimate = Callable[[bytes, tuple[int, int], int, int, float | None], Cost]


def _megabytes(count: int) -> str:
    return f"{count / 1e6:,.0f} MB" if count >= 10_000_000 else f"{count / 1e6:.1f} MB"


def _pipeline(width: int, bands: int) -> int:
    """What libvips' pipeline holds of a streamed image ``width`` pixels wide."""
    return _PIPELINE_ROWS * width * max(bands, 3) * 4 * _PIPELINE_STAGES


def _heif(data: bytes, size: tuple[int, int], bands: int, sample_bytes: int) -> Cost:
    """libheif decodes the whole image (a grid's whole canvas) and converts it to RGB,
    which libvips (or pillow-heif, for HEVC) copies."""
    width, height = size
    per_pixel = sample_bytes * (bands * 3 + _HEIF_EXTRA_PER_SAMPLE_BYTE)
    return Cost(width * height * per_pixel, "HEIF pixels")


def _jpeg(
    data: bytes, size: tuple[int, int], bands: int, sample_bytes: int, shrink: float | None = None
) -> Cost:
    width, height = size
    frame = _jpeg_frame(data)
    if frame is None:  # libvips read the header; let the decoder report what is wrong
        return Cost(width * height * max(bands, 3) * 2, "JPEG pixels")
    marker, components, first_scan_components = frame
    factor = shrink or _jpeg_shrink(width, height)
    output = 2 * math.ceil(width / factor) * math.ceil(height / factor) * max(bands, 3)
    h_max = max(h for h, _ in components)
    v_max = max(v for _, v in components)
    blocks = [
        (math.ceil(math.ceil(width * h / h_max) / 8), math.ceil(math.ceil(height * v / v_max) / 8))
        for h, v in components
    ]
    unfilled = _jpeg_scan_unfilled(data, marker, blocks, size)
    progressive = marker in _PROGRESSIVE_SOF
    if not progressive and first_scan_components >= len(components):
        return Cost(output, "baseline JPEG pixels", unfilled)
    # libjpeg holds every coefficient of a progressive or multi-scan image, rounded up to
    # whole MCUs, for the whole decode.
    coefficients = sum(
        _round_up(across, h) * _round_up(down, v) * _COEFFICIENT_BLOCK
        for (across, down), (h, v) in zip(blocks, components, strict=True)
    )
    kind = "progressive" if progressive else "multi-scan"
    return Cost(coefficients + output, f"{kind} JPEG coefficients", unfilled, coefficients)


def _jpeg_frame(data: bytes) -> tuple[int, list[tuple[int, int]], int] | None:
    """(SOF marker, (h, v) sampling of each component, components in the first scan)."""
    frame: tuple[int, list[tuple[int, int]]] | None = None
    for marker, payload in jpeg_segments(data):
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC) and len(payload) >= 6:
            count = payload[5]
            sampling = [
                (payload[7 + 3 * i] >> 4, payload[7 + 3 * i] & 0x0F)
                for i in range(count)
                if 8 + 3 * i < len(payload)
            ]
            if len(sampling) != count or not sampling or not all(h and v for h, v in sampling):
                return None
            frame = (marker, sampling)
        elif marker == _SOS and frame is not None and payload:
            return frame[0], frame[1], payload[0]
    return None if frame is None else (frame[0], frame[1], len(frame[1]))


def _jpeg_scan_unfilled(
    data: bytes, marker: int, blocks: list[tuple[int, int]], size: tuple[int, int]
) -> str | None:
    """A Huffman code is at least one bit: a sequential scan needs two bits a block (the DC
    difference and the end of block), a progressive file at least one a block of the
    component its first (DC) scan codes. Data shorter than that is cut short; libjpeg
    would fill the rest with grey, after spending the whole decode on it."""
    if marker not in _HUFFMAN_SOF or marker in _LOSSLESS_SOF:
        return None  # arithmetic coding can spend a fraction of a bit on a block
    counts = [across * down for across, down in blocks]
    fewest_bits = min(counts) if marker in _PROGRESSIVE_SOF else 2 * sum(counts)
    if len(data) * 8 >= fewest_bits:
        return None
    width, height = size
    return f"{len(data)} bytes cannot hold the scan of {width} x {height} pixels (truncated)"


def _jpeg_shrink(width: int, height: int) -> int:
    shrink = min(width, height) / _SAMPLE_SIZE
    return next((f for f in (8, 4, 2) if shrink >= f), 1)


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def _png(data: bytes, size: tuple[int, int], bands: int, sample_bytes: int) -> Cost:
    width, height = size
    unfilled = _png_rows_unfilled(data, size)
    interlaced = len(data) > 28 and data[28] == 1
    if interlaced or width * height <= _NUMPY_MAX_PIXELS:
        # libvips decodes an interlaced PNG whole; small ones numpy holds whole
        return Cost(2 * width * height * bands * sample_bytes, "PNG pixels", unfilled)
    return Cost(_pipeline(width, bands), "PNG rows", unfilled)


def _png_rows_unfilled(data: bytes, size: tuple[int, int]) -> str | None:
    """A damaged IHDR can claim millions of pixels in a few bytes; libvips would then spend
    many seconds resizing rows it can never fill. Deflate packs at most 1032 bytes into one."""
    width, height = size
    bit_depth, colour_type = data[24], data[25]
    row_bytes = 1 + math.ceil(width * _PNG_CHANNELS.get(colour_type, 4) * bit_depth / 8)
    if len(data) >= row_bytes * height // _DEFLATE_MAX_RATIO:
        return None
    return f"{len(data)} bytes cannot hold {width} x {height} pixels"


def _gif(data: bytes, size: tuple[int, int], bands: int, sample_bytes: int) -> Cost:
    # libnsgif composites the first frame into an RGBA canvas; libvips copies it out
    width, height = size
    return Cost(2 * width * height * 4, "GIF canvas")


def _webp(
    data: bytes, size: tuple[int, int], bands: int, sample_bytes: int, shrink: float | None = None
) -> Cost:
    width, height = size
    canvas = width * height * 4
    chunks = webp_chunks(data)
    flags = data[20] if b"VP8X" in chunks and len(data) > 20 else 0
    if flags & 0x02:  # animation: each frame is composited onto the canvas
        return Cost(2 * canvas, "animated WebP canvas")
    if b"VP8L" in chunks:
        # the lossless decoder holds the whole ARGB image, and allocates it as libvips
        # reads the header (untouched yet, but the process's cap counts it)
        return Cost(2 * canvas, "WebP pixels")
    # libwebp scales while it decodes
    factor = shrink or max(1.0, min(width, height) / _SAMPLE_SIZE)
    reduced = 2 * math.ceil(width / factor) * math.ceil(height / factor) * 4
    alpha = width * height if flags & 0x10 else 0  # the alpha plane is decoded whole
    return Cost(reduced + alpha + width * 64 * 4, "lossy WebP pixels")


def webp_size(data: bytes) -> tuple[int, int] | None:
    """The canvas size a WebP's first chunk states (VP8X, VP8L or VP8), or None.

    libvips' loader allocates a lossless WebP's whole image while it reads the header:
    read here, the size can be checked against the limits before that."""
    kind = data[12:16]
    if kind == b"VP8X" and len(data) >= 30:
        return 1 + int.from_bytes(data[24:27], "little"), 1 + int.from_bytes(data[27:30], "little")
    if kind == b"VP8L" and len(data) >= 25 and data[20] == 0x2F:
        bits = int.from_bytes(data[21:25], "little")
        return 1 + (bits & 0x3FFF), 1 + (bits >> 14 & 0x3FFF)
    if kind == b"VP8 " and len(data) >= 30 and data[23:26] == b"\x9d\x01\x2a":
        return int.from_bytes(data[26:28], "little") & 0x3FFF, int.from_bytes(
            data[28:30], "little"
        ) & 0x3FFF
    return None


def webp_chunks(data: bytes) -> set[bytes]:
    """The kinds of the WebP's chunks (at most the first few dozen)."""
    kinds: set[bytes] = set()
    offset = 12
    while offset + 8 <= len(data) and len(kinds) < _WEBP_MOST_CHUNKS:
        kinds.add(data[offset : offset + 4])
        offset += 8 + _round_up(int.from_bytes(data[offset + 4 : offset + 8], "little"), 2)
    return kinds


def _tiff(data: bytes, size: tuple[int, int], bands: int, sample_bytes: int) -> Cost:
    """libtiff reads a strip, or a tile, whole; libvips asks for a row of tiles at once and
    its pipeline holds a few rows of the decoded image."""
    width, height = size
    layout = exif.tiff_layout(data)
    samples = _first(layout.get("SamplesPerPixel"), 1)
    bits = _first(layout.get("BitsPerSample"), 1)
    row_bytes = math.ceil(width * samples * bits / 8)
    planes = samples if _first(layout.get("PlanarConfiguration"), 1) == 2 else 1
    if "TileWidth" in layout and "TileLength" in layout:
        tile_width = max(1, _first(layout["TileWidth"], 1))
        tile_height = max(1, _first(layout["TileLength"], 1))
        across, down = math.ceil(width / tile_width), math.ceil(height / tile_height)
        pieces = across * down * planes
        offsets, counts = layout.get("TileOffsets"), layout.get("TileByteCounts")
        held = across * math.ceil(tile_width * samples * bits / 8) * tile_height
        kind = "TIFF tiles"
    else:
        rows = min(height, max(1, _first(layout.get("RowsPerStrip"), height)))
        pieces = math.ceil(height / rows) * planes
        offsets, counts = layout.get("StripOffsets"), layout.get("StripByteCounts")
        held = row_bytes * rows
        kind = "TIFF strip"
    compression = _first(layout.get("Compression"), _TIFF_UNCOMPRESSED)
    unfilled = _tiff_pieces_unfilled(
        len(data), compression, _listed(offsets), _listed(counts), pieces, row_bytes * height
    )
    memory = 2 * held + _pipeline(width, samples)
    return Cost(memory, f"{kind} of {samples} samples a pixel", unfilled)


def _tiff_pieces_unfilled(
    file_size: int,
    compression: int,
    offsets: list[int],
    counts: list[int],
    pieces: int,
    image_bytes: int,
) -> str | None:
    """Strips or tiles outside the file, or too few of them, or too few bytes for what
    they must decompress to: libtiff leaves those pixels black, libvips hashes them."""
    if len(offsets) < pieces:
        return f"{len(offsets)} strips or tiles for the {pieces} the image needs"
    for index, (offset, count) in enumerate(zip(offsets, counts, strict=False)):
        if offset + count > file_size:
            return (
                f"strip or tile {index} at offset {offset} (+{count} bytes) lies outside"
                f" the {file_size}-byte file"
            )
    expansion = _TIFF_MOST_EXPANSION.get(compression)
    stored = sum(counts[:pieces])
    if counts and expansion is not None and stored * expansion < image_bytes:
        return f"{stored} bytes of strips or tiles cannot hold {image_bytes} bytes of pixels"
    return None  # without byte counts libtiff works the sizes out itself


def _first(value: Any, default: int) -> int:
    """The first number of a TIFF field (one value, or one per sample)."""
    if isinstance(value, list):
        value = value[0] if value else default
    return value if isinstance(value, int) else default


def _listed(value: Any) -> list[int]:
    values = value if isinstance(value, list) else [value] if value is not None else []
    return [v for v in values if isinstance(v, int)]


def _bmp(data: bytes, size: tuple[int, int], bands: int, sample_bytes: int) -> Cost:
    """Pillow decodes the whole image; the pHash converts and copies it twice."""
    width, height = size
    bits, compression = int.from_bytes(data[28:30], "little"), int.from_bytes(data[30:34], "little")
    rows = height * (((width * bits + 31) // 32) * 4)
    cost = Cost(width * height * max(bands, 3) * 4, "BMP pixels")
    if compression in _BMP_UNCOMPRESSED and int.from_bytes(data[10:14], "little") + rows > len(
        data
    ):
        unfilled = f"{len(data)} bytes cannot hold {width} x {height} pixels of {bits} bits"
        return replace(cost, unfilled=f"{unfilled} (truncated)")
    return cost


_ESTIMATES: Final[dict[str, Estimate]] = {
    "jpg": _jpeg,
    "png": _png,
    "gif": _gif,
    "webp": _webp,
    "tiff": _tiff,
    "bmp": _bmp,
    "heif": _heif,
    "avif": _heif,
}
_SCALED_ESTIMATES: Final[dict[str, ScaledEstimate]] = {"jpg": _jpeg, "webp": _webp}
# Bytes a pixel (per byte of a sample) that Pillow's decoders hold besides the image.
_PILLOW_EXTRA: Final = {
    "webp": _PILLOW_WEBP_EXTRA,
    "heif": _HEIF_EXTRA_PER_SAMPLE_BYTE,
    "avif": _HEIF_EXTRA_PER_SAMPLE_BYTE,
}


@contextmanager
def memory_cap(limit: int) -> Iterator[None]:
    """While inside, this process may hold at most ``limit`` bytes more than it holds now
    (``RLIMIT_DATA``: its heap and private mappings, not shared memory files). A decode the
    estimate let through then fails its allocation (MemoryExhaustedError) instead of taking
    the machine's memory. The soft limit only, restored on leaving."""
    soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
    cap = _held_bytes() + limit
    for bound in (soft, hard):
        if bound != resource.RLIM_INFINITY:
            cap = min(cap, bound)
    resource.setrlimit(resource.RLIMIT_DATA, (cap, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_DATA, (soft, hard))


def _held_bytes() -> int:
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmData:"))
    return int(line.split()[1]) * 1024
