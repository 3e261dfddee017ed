"""JPEG quality estimated from the quantization tables, as ImageMagick's ``identify %Q`` does.

ImageMagick compares two figures of the file's tables against those the IJG encoder produces at
each quality 1..100: the sum of every table entry, and a "hash" of four sample entries. The
reference tables below are ImageMagick's (coders/jpeg.c); only the data is shared with it.
"""

import struct
from collections.abc import Iterator

# Where each zig-zag position of a DQT segment lands in the 8x8 block, row-major.
_ZIGZAG_TO_NATURAL = (
    0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5,
    12, 19, 26, 33, 40, 48, 41, 34, 27, 20, 13, 6, 7, 14, 21, 28,
    35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51,
    58, 59, 52, 45, 38, 31, 39, 46, 53, 60, 61, 54, 47, 55, 62, 63,
)  # fmt: skip

# Luminance and chrominance tables present (the usual colour JPEG).
_TWO_TABLE_HASH = (
    1020, 1015, 932, 848, 780, 735, 702, 679, 660, 645, 632, 623, 613, 607, 600, 594, 589,
    585, 581, 571, 555, 542, 529, 514, 494, 474, 457, 439, 424, 410, 397, 386, 373, 364, 351,
    341, 334, 324, 317, 309, 299, 294, 287, 279, 274, 267, 262, 257, 251, 247, 243, 237, 232,
    227, 222, 217, 213, 207, 202, 198, 192, 188, 183, 177, 173, 168, 163, 157, 153, 148, 143,
    139, 132, 128, 125, 119, 115, 108, 104, 99, 94, 90, 84, 79, 74, 70, 64, 59, 55, 49, 45,
    40, 34, 30, 25, 20, 15, 11, 6, 4, 0,
)  # fmt: skip
_TWO_TABLE_SUMS = (
    32640, 32635, 32266, 31495, 30665, 29804, 29146, 28599, 28104, 27670, 27225, 26725, 26210,
    25716, 25240, 24789, 24373, 23946, 23572, 22846, 21801, 20842, 19949, 19121, 18386, 17651,
    16998, 16349, 15800, 15247, 14783, 14321, 13859, 13535, 13081, 12702, 12423, 12056, 11779,
    11513, 11135, 10955, 10676, 10392, 10208, 9928, 9747, 9564, 9369, 9193, 9017, 8822, 8639,
    8458, 8270, 8084, 7896, 7710, 7527, 7347, 7156, 6977, 6788, 6607, 6422, 6236, 6054, 5867,
    5684, 5495, 5305, 5128, 4945, 4751, 4638, 4442, 4248, 4065, 3888, 3698, 3509, 3326, 3139,
    2957, 2775, 2586, 2405, 2216, 2037, 1846, 1666, 1483, 1297, 1109, 927, 735, 554, 375, 201,
    128, 0,
)  # fmt: skip
# Luminance table only (greyscale JPEG).
_ONE_TABLE_HASH = (
    510, 505, 422, 380, 355, 338, 326, 318, 311, 305, 300, 297, 293, 291, 288, 286, 284, 283,
    281, 280, 279, 278, 277, 273, 262, 251, 243, 233, 225, 218, 211, 205, 198, 193, 186, 181,
    177, 172, 168, 164, 158, 156, 152, 148, 145, 142, 139, 136, 133, 131, 129, 126, 123, 120,
    118, 115, 113, 110, 107, 105, 102, 100, 97, 94, 92, 89, 87, 83, 81, 79, 76, 74, 70, 68,
    66, 63, 61, 57, 55, 52, 50, 48, 44, 42, 39, 37, 34, 31, 29, 26, 24, 21, 18, 16, 13, 11,
    8, 6, 3, 2, 0,
)  # fmt: skip
_ONE_TABLE_SUMS = (
    16320, 16315, 15946, 15277, 14655, 14073, 13623, 13230, 12859, 12560, 12240, 11861, 11456,
    11081, 10714, 10360, 10027, 9679, 9368, 9056, 8680, 8331, 7995, 7668, 7376, 7084, 6823,
    6562, 6345, 6125, 5939, 5756, 5571, 5421, 5240, 5086, 4976, 4829, 4719, 4616, 4463, 4393,
    4280, 4166, 4092, 3980, 3909, 3835, 3755, 3688, 3621, 3541, 3467, 3396, 3323, 3247, 3170,
    3096, 3021, 2952, 2874, 2804, 2727, 2657, 2583, 2509, 2437, 2362, 2290, 2211, 2136, 2068,
    1996, 1915, 1858, 1773, 1692, 1620, 1552, 1477, 1398, 1326, 1251, 1179, 1109, 1031, 961,
    884, 814, 736, 667, 592, 518, 441, 369, 292, 221, 151, 86, 64, 0,
)  # fmt: skip

_SOI = b"\xff\xd8"
_DQT, _SOS, _EOI = 0xDB, 0xDA, 0xD9
_MARKERS_WITHOUT_LENGTH = frozenset({0x01, *range(0xD0, 0xD8)})


def estimate(data: bytes) -> int:
    """ImageMagick's quality estimate (1..100) of a JPEG; 0 where it cannot tell."""
    tables = quantization_tables(data)
    if 0 not in tables:
        return 0
    total = sum(sum(table) for table in tables.values())
    luma = tables[0]
    if 1 in tables:
        chroma = tables[1]
        sample = luma[2] + luma[53] + chroma[0] + chroma[63]
        return _match(sample, total, _TWO_TABLE_HASH, _TWO_TABLE_SUMS)
    return _match(luma[2] + luma[53], total, _ONE_TABLE_HASH, _ONE_TABLE_SUMS)


def _match(sample: int, total: int, hashes: tuple[int, ...], sums: tuple[int, ...]) -> int:
    for index in range(100):
        if sample < hashes[index] and total < sums[index]:
            continue
        if (sample <= hashes[index] and total <= sums[index]) or index >= 50:
            return index + 1
        return 0
    return 0


def quantization_tables(data: bytes) -> dict[int, list[int]]:
    """The quantization tables defined before the first scan, by table id, in natural order.

    A later definition of the same id replaces the earlier one, as in libjpeg.
    """
    tables: dict[int, list[int]] = {}
    for marker, payload in jpeg_segments(data):
        if marker == _DQT:
            tables.update(_parse_dqt(payload))
    return tables


def jpeg_segments(data: bytes) -> Iterator[tuple[int, bytes]]:
    """(marker, payload) of each marker segment from SOI up to the first scan's header."""
    if not data.startswith(_SOI):
        return
    position = 2
    while position + 4 <= len(data):
        if data[position] != 0xFF:
            return
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte before a marker
            position += 1
            continue
        if marker in _MARKERS_WITHOUT_LENGTH:
            position += 2
            continue
        if marker == _EOI:
            return
        (length,) = struct.unpack_from(">H", data, position + 2)
        if length < 2:
            return
        yield marker, data[position + 4 : position + 2 + length]
        if marker == _SOS:
            return
        position += 2 + length


def _parse_dqt(payload: bytes) -> Iterator[tuple[int, list[int]]]:
    position = 0
    while position < len(payload):
        precision, table_id = payload[position] >> 4, payload[position] & 0x0F
        width = 2 if precision else 1
        end = position + 1 + 64 * width
        if table_id > 3 or end > len(payload):
            return
        raw = struct.unpack_from(">64H" if width == 2 else "64B", payload, position + 1)
        natural = [0] * 64
        for zigzag_index, value in enumerate(raw):
            natural[_ZIGZAG_TO_NATURAL[zigzag_index]] = value
        yield table_id, natural
        position = end
