"""HEIF and AVIF grid images built box by box: a grid item whose cells all refer to one
coded tile, over a canvas far larger than the tile (a shape fuzzing found)."""

import io
import struct

import pillow_heif
from PIL import Image


def box(kind: bytes, *payload: bytes) -> bytes:
    body = b"".join(payload)
    return struct.pack(">I", 8 + len(body)) + kind + body


def full_box(kind: bytes, version: int, flags: int, *payload: bytes) -> bytes:
    return box(kind, struct.pack(">I", version << 24 | flags), *payload)


def boxes(data: bytes, start: int = 0, end: int | None = None) -> dict[bytes, tuple[int, int]]:
    """Payload start and end of the first box of each type between ``start`` and ``end``."""
    found: dict[bytes, tuple[int, int]] = {}
    end = len(data) if end is None else end
    while start + 8 <= end:
        size, kind = struct.unpack_from(">I4s", data, start)
        found.setdefault(kind, (start + 8, start + size))
        start += size
    return found


def _single_image(image_format: str) -> bytes:
    pillow_heif.register_heif_opener()
    out = io.BytesIO()
    Image.new("RGB", (64, 64), (40, 90, 160)).save(out, image_format, quality=50)
    return out.getvalue()


def _tile(data: bytes) -> tuple[bytes, bytes, bytes]:
    """(item type, coding configuration box, coded bytes) of a one-image file's primary item,
    which libheif and Pillow write with one iloc extent and the configuration first in ipco."""
    meta = boxes(data)[b"meta"]
    inside = boxes(data, meta[0] + 4, meta[1])
    iinf_start, iinf_end = inside[b"iinf"]
    items = boxes(data, iinf_start + 6, iinf_end)
    infe_start = items[b"infe"][0]
    item_type = data[infe_start + 8 : infe_start + 12]
    ipco = boxes(data, *boxes(data, *inside[b"iprp"])[b"ipco"])
    config_kind = b"hvcC" if item_type == b"hvc1" else b"av1C"
    config_start, config_end = ipco[config_kind]
    config = box(config_kind, data[config_start:config_end])
    iloc_start = inside[b"iloc"][0]
    version = data[iloc_start]
    offset_size, length_size = data[iloc_start + 4] >> 4, data[iloc_start + 4] & 0xF
    base_size, index_size = data[iloc_start + 5] >> 4, data[iloc_start + 5] & 0xF
    with_method = version in (1, 2)
    position = iloc_start + 6 + (2 if version < 2 else 4)  # version, flags, sizes, count
    # the first item: id, construction method, data reference, base offset, extent count
    position += (2 if version < 2 else 4) + (2 if with_method else 0) + 2
    base = int.from_bytes(data[position : position + base_size], "big")
    position += base_size + 2 + (index_size if with_method else 0)
    offset = base + int.from_bytes(data[position : position + offset_size], "big")
    length = int.from_bytes(
        data[position + offset_size : position + offset_size + length_size], "big"
    )
    return item_type, config, data[offset : offset + length]


def grid(image_format: str, width: int, height: int, cells: int = 256) -> bytes:
    """A ``width`` x ``height`` grid of ``cells`` cells (a square number), every one the same
    64 x 64 tile; ``image_format`` is "HEIF" or "AVIF"."""
    item_type, config, coded = _tile(_single_image(image_format))
    side = int(cells**0.5)
    brand = b"heic" if item_type == b"hvc1" else b"avif"
    ftyp = box(b"ftyp", brand, b"\0\0\0\0", b"mif1", brand)
    hdlr = full_box(b"hdlr", 0, 0, b"\0\0\0\0pict", b"\0" * 12, b"\0")
    pitm = full_box(b"pitm", 0, 0, struct.pack(">H", 1))
    grid_item = full_box(b"infe", 2, 0, struct.pack(">HH", 1, 0), b"grid", b"\0")
    tile_item = full_box(b"infe", 2, 1, struct.pack(">HH", 2, 0), item_type, b"\0")
    iinf = full_box(b"iinf", 0, 0, struct.pack(">H", 2), grid_item, tile_item)
    dimg = box(b"dimg", struct.pack(">HH", 1, cells), struct.pack(">H", 2) * cells)
    iref = full_box(b"iref", 0, 0, dimg)
    ispe_tile = full_box(b"ispe", 0, 0, struct.pack(">II", 64, 64))
    ispe_grid = full_box(b"ispe", 0, 0, struct.pack(">II", width, height))
    ipco = box(b"ipco", config, ispe_tile, ispe_grid)
    # item 1 (the grid): ispe 3; item 2 (the tile): configuration 1 (essential), ispe 2
    ipma = full_box(
        b"ipma",
        0,
        0,
        struct.pack(">I", 2),
        struct.pack(">HBB", 1, 1, 0x03),
        struct.pack(">HBBB", 2, 2, 0x81, 0x02),
    )
    iprp = box(b"iprp", ipco, ipma)
    descriptor = struct.pack(">BBBBHH", 0, 0, side - 1, side - 1, width, height)
    idat = box(b"idat", descriptor)

    def meta(mdat_at: int) -> bytes:
        # iloc v1: 4-byte offsets and lengths; the grid in idat, the tile in mdat
        items = struct.pack(">HHHH", 1, 1, 0, 1) + struct.pack(">II", 0, len(descriptor))
        items += struct.pack(">HHHH", 2, 0, 0, 1) + struct.pack(">II", mdat_at, len(coded))
        iloc = full_box(b"iloc", 1, 0, bytes([0x44, 0x00]), struct.pack(">H", 2), items)
        return full_box(b"meta", 0, 0, hdlr, pitm, iloc, iinf, iref, iprp, idat)

    head = ftyp + meta(0)
    return ftyp + meta(len(head) + 8) + box(b"mdat", coded)
