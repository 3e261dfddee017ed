"""The EXIF block of an image, read into ImageKit's six ``exif`` sections.

For JPEG the result follows node-exif 0.6.0 (what ImageKit runs) plus ImageKit's clean-up of
its output, as /work/shared/spec/metadata-object.md pins down: only the first APP1 segment,
IFD0, IFD1, the Exif, GPS and interoperability directories, node-exif's tag table and value
rules. TIFF, HEIF/AVIF, WebP and PNG carry the same TIFF-structured block in another wrapper;
it is found there and read by the same rules.

Unlike node-exif, every read is bounds-checked. As the reference does, a broken block costs only
what is broken: an entry whose value lies outside the block, or a directory that does, is
left out, a directory that points back to one already read is not read again, and each such
problem is reported as a warning; every other entry and section is kept. Only a TIFF header
that cannot be read (or a container whose EXIF cannot be found) raises ``ExifError``.
BigTIFF (8-byte offsets) is read too, as exiftool reads it.
"""

import struct
import zlib
from collections.abc import Callable, Iterator
from typing import Any

from crawler.errors import ExifError
from crawler.extract.exif_tags import EXIF_TAGS, GPS_TAGS

SECTIONS = ("image", "thumbnail", "exif", "gps", "interoperability", "makernote")
# node-exif reads at most this many entries of IFD0, IFD1, GPS and Interop; every entry of
# the Exif directory.
MAX_ENTRIES = 128
# More entries than a classic TIFF directory can count are not read (a BigTIFF count is 64
# bits: without a bound, a hostile file would keep the reader busy for minutes).
MOST_ENTRIES = 0xFFFF
EXIF_HEADER = b"Exif\x00\x00"

_PADDING_TAG = 0xEA1C
_MAKERNOTE_TAG = 0x927C
# EXIF field type -> (bytes per component, struct code); None: read as raw bytes.
_FIELD_TYPES: dict[int, tuple[int, str | None]] = {
    1: (1, "B"),  # BYTE
    2: (1, None),  # ASCII
    3: (2, "H"),  # SHORT
    4: (4, "L"),  # LONG
    5: (8, "L"),  # RATIONAL: two LONGs
    6: (1, "b"),  # SBYTE
    7: (1, None),  # UNDEFINED
    8: (2, "h"),  # SSHORT
    9: (4, "l"),  # SLONG
    10: (8, "l"),  # SRATIONAL: two SLONGs
}
# Beyond node-exif's table: BigTIFF's 64-bit integers and offsets, as exiftool reads them.
_BIGTIFF_FIELD_TYPES: dict[int, tuple[int, str | None]] = {16: (8, "Q"), 17: (8, "q"), 18: (8, "Q")}
# A value of type IFD (13), such as a pointer to the Exif directory, is a LONG; node-exif
# (JPEG) does not know the type and leaves such entries out.
_IFD_FIELD_TYPE: dict[int, tuple[int, str | None]] = {13: (4, "L")}
# Directories read beyond node-exif's 128 entries, and the one whose walk ends at an unknown tag.
_ENTRY_CAPS = {"Exif": MOST_ENTRIES}
_STOPS_AT_UNKNOWN_TAG = "Interop"
_ASCII, _UNDEFINED = 2, 7
_RATIONALS = frozenset({5, 10})
# Makernote headers for which node-exif runs a vendor parser that, through a bug of its own
# (it passes an undefined offset), always returns no entries.
_EMPTY_MAKERNOTE_HEADERS = (
    b"OLYMP\x00\x01",
    b"OLYMP\x00\x02",
    b"AGFA \x00\x01",
    b"EPSON\x00\x01\x00",
    b"FUJIFILM",
    b"Panasonic",
    b"SANYO",
)
UNSUPPORTED_MAKERNOTE = (
    "Unable to extract Makernote information as it is in an unsupported or unrecognized format."
)
_PRINTABLE_ASCII = bytes(range(0x20, 0x7F))
_RAW_PROFILE_KEYWORDS = (b"Raw profile type exif\0", b"Raw profile type APP1\0")
_MAX_RAW_PROFILE_TEXT = 1 << 22  # the hex text of a 64 KiB APP1 is ~130 KiB; this is plenty

Block = tuple[memoryview, int]  # the bytes holding the TIFF structure, where its header starts


def read_exif(data: bytes, image_format: str, warnings: list[str] | None = None) -> dict[str, Any]:
    """The six EXIF sections of an image, or ``{}`` when it carries no EXIF.

    ``image_format`` is the metadata ``format`` ('jpg', 'png', 'webp', 'tiff', 'heif', ...).
    What was broken and left out is appended to ``warnings``, one line each. Raises
    ``ExifError`` when there is an EXIF block but its header cannot be read.
    """
    locate = _LOCATORS.get(image_format)
    block = locate(memoryview(data)) if locate else None
    if block is None:
        return {}
    reader = _TiffReader(*block, node_exif=image_format == "jpg")
    sections = reader.read_sections()
    if warnings is not None:
        warnings.extend(reader.problems)
    if "MakerNote" in sections["exif"]:
        sections["makernote"] = _makernote_section(sections["exif"]["MakerNote"])
    return {name: _imagekit_clean(entries) for name, entries in sections.items()}


_LAYOUT_NAMES = frozenset(
    {
        "ImageWidth", "ImageHeight", "BitsPerSample", "Compression", "SamplesPerPixel",
        "PlanarConfiguration", "RowsPerStrip", "StripOffsets", "StripByteCounts",
        "TileWidth", "TileLength", "TileOffsets", "TileByteCounts",
    }
)  # fmt: skip
_LAYOUT_TAGS = {tag: name for tag, name in EXIF_TAGS.items() if name in _LAYOUT_NAMES}


def tiff_layout(data: bytes) -> dict[str, Any]:
    """How a TIFF file stores the pixels of its first image: the sizes, samples, strips and
    tiles of its first directory, by their tag names (every entry read, not node-exif's
    128); ``{}`` where the TIFF header cannot be read."""
    try:
        reader = _TiffReader(memoryview(data), 0, node_exif=False)
    except ExifError:
        return {}
    layout: dict[str, Any] = {}
    reader._read_ifd(reader.ifd0, "IFD0", _LAYOUT_TAGS, layout, cap=MOST_ENTRIES)
    return layout


# --- Finding the block in each container ------------------------------------------------------


def _jpeg_block(data: memoryview) -> Block | None:
    """The first APP1 segment, found by walking the markers as node-exif does.

    Unlike node-exif, the walk stops at the start of the scan: no metadata segment follows it.
    """
    if data[:2] != b"\xff\xd8":
        return None
    offset = 2
    while offset + 4 <= len(data) and data[offset] == 0xFF:
        marker = data[offset + 1]
        if marker in (0xDA, 0xD9):  # start of scan, end of image
            return None
        if marker == 0xE1:
            start = offset + 4
            # Only an APP1 that starts with the EXIF header counts (XMP first: no EXIF).
            return (data, start + 6) if data[start : start + 6] == EXIF_HEADER else None
        offset += 2 + int.from_bytes(data[offset + 2 : offset + 4], "big")
    return None


def _tiff_block(data: memoryview) -> Block:
    return data, 0


def _after_exif_header(payload: memoryview) -> Block:
    """A block that holds a TIFF structure, with or without the ``Exif\\0\\0`` prefix."""
    return payload, len(EXIF_HEADER) if payload[:6] == EXIF_HEADER else 0


def _webp_block(data: memoryview) -> Block | None:
    if data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        return None
    offset = 12
    while offset + 8 <= len(data):
        kind = bytes(data[offset : offset + 4])
        size = int.from_bytes(data[offset + 4 : offset + 8], "little")
        payload = data[offset + 8 : offset + 8 + size]
        if kind == b"EXIF":
            return _after_exif_header(payload)
        offset += 8 + size + (size & 1)
    return None


def _png_block(data: memoryview) -> Block | None:
    offset = 8
    while offset + 8 <= len(data):
        size = int.from_bytes(data[offset : offset + 4], "big")
        kind = bytes(data[offset + 4 : offset + 8])
        payload = data[offset + 8 : offset + 8 + size]
        if kind == b"eXIf":
            return _after_exif_header(payload)
        if kind in (b"tEXt", b"zTXt") and bytes(payload[:22]) in _RAW_PROFILE_KEYWORDS:
            return _raw_profile_block(payload, compressed=kind == b"zTXt")
        if kind == b"IEND":
            return None
        offset += 12 + size
    return None


def _raw_profile_block(payload: memoryview, compressed: bool) -> Block:
    """ImageMagick's legacy text chunk: ``\\nexif\\n   LENGTH\\nHEX...`` of an APP1 payload."""
    text_start = len(_RAW_PROFILE_KEYWORDS[0]) + (1 if compressed else 0)  # + method byte
    raw = bytes(payload[text_start:])
    try:
        if compressed:
            raw = zlib.decompressobj().decompress(raw, _MAX_RAW_PROFILE_TEXT)
        _name, length, hex_digits = raw.split(maxsplit=2)
        exif_bytes = bytes.fromhex(hex_digits.decode("ascii"))[: int(length)]
    except (zlib.error, ValueError, UnicodeDecodeError) as exc:
        raise ExifError(f"PNG raw EXIF profile is unreadable: {exc}") from None
    return _after_exif_header(memoryview(exif_bytes))


def _heif_block(data: memoryview) -> Block | None:
    """The ``Exif`` item of an ISOBMFF file (HEIC, HEIF, AVIF), found through meta/iinf/iloc."""
    meta = _child_box(data, 0, len(data), b"meta")
    if meta is None:
        return None
    children = meta[0] + 4  # meta is a full box: version and flags come first
    iinf = _child_box(data, children, meta[1], b"iinf")
    iloc = _child_box(data, children, meta[1], b"iloc")
    item_id = _exif_item_id(data, *iinf) if iinf else None
    if item_id is None or iloc is None:
        return None
    payload = _item_payload(data, iloc, item_id, _child_box(data, children, meta[1], b"idat"))
    if len(payload) < 4:
        raise ExifError("HEIF Exif item is shorter than its 4-byte header")
    return payload, 4 + int.from_bytes(payload[:4], "big")


def _boxes(data: memoryview, start: int, end: int) -> Iterator[tuple[bytes, int, int]]:
    """(type, payload start, box end) of each box between ``start`` and ``end``."""
    offset = start
    while offset + 8 <= end:
        size, kind = struct.unpack_from(">I4s", data, offset)
        header = 8
        if size == 1 and offset + 16 <= end:
            (size,) = struct.unpack_from(">Q", data, offset + 8)
            header = 16
        elif size == 0:
            size = end - offset
        if size < header or offset + size > end:
            raise ExifError(f"ISOBMFF box {kind!r} at offset {offset} overruns its container")
        yield kind, offset + header, offset + size
        offset += size


def _child_box(data: memoryview, start: int, end: int, kind: bytes) -> tuple[int, int] | None:
    """Payload start and end of the first box of type ``kind`` between ``start`` and ``end``."""
    return next(((s, e) for k, s, e in _boxes(data, start, end) if k == kind), None)


_INFE_LAYOUTS = {2: struct.Struct(">H2x4s"), 3: struct.Struct(">I2x4s")}


def _exif_item_id(data: memoryview, start: int, end: int) -> int | None:
    if start >= end:
        return None
    entries = start + (6 if data[start] == 0 else 8)  # version 0: 16-bit entry count
    for kind, item, item_end in _boxes(data, entries, end):
        # Versions 0 and 1 carry no item type; 2 has a 16-bit item id, 3 a 32-bit one.
        version = data[item] if kind == b"infe" and item < item_end else 0
        layout = _INFE_LAYOUTS.get(version)
        if layout is None or item + 4 + layout.size > item_end:
            continue
        item_id, item_type = layout.unpack_from(data, item + 4)
        if item_type == b"Exif":
            return int(item_id)
    return None


_ILOC_FIELD_CODES = {0: "", 4: "I", 8: "Q"}  # the field widths ISO/IEC 14496-12 allows


class _Record:
    """A run of big-endian fields, some of which may be absent (0 bytes wide: value 0)."""

    def __init__(self, fields: list[tuple[str, str]]) -> None:
        present = [(name, code) for name, code in fields if code]
        self.names = [name for name, _code in present]
        self.layout = struct.Struct(">" + "".join(code for _name, code in present))

    def read(self, data: memoryview, offset: int, end: int) -> dict[str, int]:
        if offset + self.layout.size > end:
            raise ExifError(f"ISOBMFF iloc box is truncated at offset {offset}")
        return dict(zip(self.names, self.layout.unpack_from(data, offset), strict=True))


def _iloc_records(version: int, sizes: int) -> tuple[_Record, _Record]:
    """The layouts of one item's head (id ... extent count) and of one of its extents."""
    widths = (sizes >> 12, (sizes >> 8) & 0xF, (sizes >> 4) & 0xF, sizes & 0xF)
    if any(width not in _ILOC_FIELD_CODES for width in widths):
        raise ExifError(f"ISOBMFF iloc box has field widths {widths}, expected 0, 4 or 8")
    offset, length, base, index = (_ILOC_FIELD_CODES[width] for width in widths)
    with_method = version in (1, 2)  # version 0 has neither method nor index fields
    head = [("id", "H" if version < 2 else "I"), ("method", "H" if with_method else "")]
    head += [("reference", "H"), ("base", base), ("extents", "H")]
    extent = [("index", index if with_method else ""), ("offset", offset), ("length", length)]
    if not (index or offset or length):  # extents of no bytes: a count could spin for nothing
        raise ExifError("ISOBMFF iloc box gives its extents no fields")
    return _Record(head), _Record(extent)


def _item_payload(
    data: memoryview, iloc: tuple[int, int], item_id: int, idat: tuple[int, int] | None
) -> memoryview:
    position, end = iloc
    if end - position < 8:
        raise ExifError("ISOBMFF iloc box is truncated")
    version, sizes = data[position], int.from_bytes(data[position + 4 : position + 6], "big")
    head, extent = _iloc_records(version, sizes)
    count_size = 2 if version < 2 else 4
    count = int.from_bytes(data[position + 6 : position + 6 + count_size], "big")
    position += 6 + count_size
    for _ in range(count):
        item = head.read(data, position, end)
        position += head.layout.size
        extents = []
        for _ in range(item["extents"]):
            fields = extent.read(data, position, end)
            extents.append((item.get("base", 0) + fields.get("offset", 0), fields.get("length", 0)))
            position += extent.layout.size
        if item["id"] == item_id:
            method = item.get("method", 0) & 0xF
            return _join_extents(data, extents, idat if method == 1 else (0, len(data)))
    raise ExifError(f"HEIF Exif item {item_id} has no location in iloc")


def _join_extents(
    data: memoryview, extents: list[tuple[int, int]], space: tuple[int, int] | None
) -> memoryview:
    if space is None:
        raise ExifError("HEIF Exif item is stored in an idat box that is missing")
    start, end = space
    for offset, length in extents:
        if start + offset + length > end:
            raise ExifError(f"HEIF Exif item extent at {offset} overruns the file")
    if len(extents) == 1:
        offset, length = extents[0]
        return data[start + offset : start + offset + length]
    return memoryview(b"".join(data[start + o : start + o + n] for o, n in extents))


_LOCATORS: dict[str, Callable[[memoryview], Block | None]] = {
    "jpg": _jpeg_block,
    "tiff": _tiff_block,
    "heif": _heif_block,
    "avif": _heif_block,
    "webp": _webp_block,
    "png": _png_block,
}


# --- Reading the TIFF structure ----------------------------------------------------------------


class _OutsideTheBlock(Exception):
    """A read that would go past the end of the EXIF block."""


class _TiffReader:
    """node-exif's walk over IFD0, IFD1 and the Exif, GPS and interoperability directories,
    keeping what can be read; ``problems`` says what was left out.

    ``node_exif``: read the value types node-exif reads (JPEG, the reference's format);
    else pointers of type IFD too, as exiftool does.
    """

    def __init__(self, data: memoryview, tiff_start: int, node_exif: bool = True) -> None:
        self.data = data
        self.tiff_start = tiff_start
        self.visited: set[int] = set()
        self.problems: list[str] = []
        order = bytes(data[tiff_start : tiff_start + 2])
        if order not in (b"II", b"MM"):
            raise ExifError(f"bad TIFF header: byte order {order!r}, expected b'II' or b'MM'")
        self.endian = "<" if order == b"II" else ">"
        self.u16 = struct.Struct(self.endian + "H")
        magic = self._header_number(self.u16, tiff_start + 2)
        self.big = magic == 43
        if magic not in (42, 43) or (
            self.big
            and data[tiff_start + 4 : tiff_start + 8]
            != (b"\x08\x00\x00\x00" if self.endian == "<" else b"\x00\x08\x00\x00")
        ):
            raise ExifError("bad TIFF header: magic number is not 42 (TIFF) or 43 (BigTIFF)")
        # BigTIFF: 8-byte counts and offsets, 20-byte entries with 8 bytes for the value.
        self.offset = struct.Struct(self.endian + ("Q" if self.big else "L"))
        self.count = struct.Struct(self.endian + ("Q" if self.big else "H"))
        self.entry = struct.Struct(self.endian + ("HHQ" if self.big else "HHL"))
        self.entry_size = self.entry.size + self.offset.size
        self.field_types = dict(_FIELD_TYPES)
        if not node_exif:
            self.field_types |= _IFD_FIELD_TYPE
        if self.big:
            self.field_types |= _BIGTIFF_FIELD_TYPES
        self.ifd0 = tiff_start + self._header_number(
            self.offset, tiff_start + (8 if self.big else 4)
        )

    def read_sections(self) -> dict[str, dict[str, Any]]:
        sections: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
        next_pointer = self._read_ifd(self.ifd0, "IFD0", EXIF_TAGS, sections["image"])
        next_ifd = self._next_ifd(next_pointer) if next_pointer is not None else 0
        if next_ifd:
            self._read_ifd(self.tiff_start + next_ifd, "IFD1", EXIF_TAGS, sections["thumbnail"])
        pointers = (
            ("image", "ExifOffset", "exif", EXIF_TAGS),
            ("image", "GPSInfo", "gps", GPS_TAGS),
            ("exif", "InteropOffset", "interoperability", EXIF_TAGS),
        )
        for parent, pointer_tag, section, tags in pointers:
            pointer = sections[parent].get(pointer_tag)
            # node-exif follows a pointer only when it is a truthy number.
            if isinstance(pointer, int) and pointer > 0:
                name = _DIRECTORY_NAMES[section]
                self._read_ifd(self.tiff_start + pointer, name, tags, sections[section])
        return sections

    def _header_number(self, layout: struct.Struct, offset: int) -> int:
        try:
            return self._unpack(layout, offset)
        except _OutsideTheBlock:
            raise ExifError(f"TIFF header is cut short: {self._block_size()}-byte block") from None

    def _next_ifd(self, pointer_at: int) -> int:
        try:
            return self._unpack(self.offset, pointer_at)
        except _OutsideTheBlock:
            self.problems.append(
                f"IFD0's pointer to IFD1 lies outside the {self._block_size()}-byte block"
            )
            return 0

    def _unpack(self, layout: struct.Struct, offset: int) -> int:
        self._check_range(offset, layout.size)
        return int(layout.unpack_from(self.data, offset)[0])

    def _check_range(self, offset: int, size: int) -> None:
        if offset + size > len(self.data):
            raise _OutsideTheBlock()

    def _block_size(self) -> int:
        return len(self.data) - self.tiff_start

    def _read_ifd(
        self,
        offset: int,
        name: str,
        tags: dict[int, str],
        into: dict[str, Any],
        cap: int | None = None,
    ) -> int | None:
        """Read one directory's entries into ``into``, at most ``cap`` (node-exif's, by
        default); returns where its next-IFD pointer is (None where it has none we read)."""
        where = f"{name} at offset {offset - self.tiff_start}"
        if offset in self.visited:
            self.problems.append(f"{where} loops back to a directory already read")
            return None
        self.visited.add(offset)
        try:
            stored_count = self._unpack(self.count, offset)
        except _OutsideTheBlock:
            self.problems.append(f"{where} lies outside the {self._block_size()}-byte block")
            return None
        cap = cap or _ENTRY_CAPS.get(name, MAX_ENTRIES)
        count = min(stored_count, cap)
        # Past node-exif's cap it takes entry 129 for the next-IFD pointer; we take none.
        has_next = stored_count <= MAX_ENTRIES
        if stored_count > cap and cap != MAX_ENTRIES:
            self.problems.append(f"{where} has {stored_count} entries; the first {cap} read")
        entries_start = offset + self.count.size
        inside = max(0, (len(self.data) - entries_start) // self.entry_size)
        if count > inside:
            self.problems.append(
                f"{where} has {stored_count} entries, {inside} of them inside the"
                f" {self._block_size()}-byte block"
            )
            count, has_next = inside, False
        entries_end = entries_start + count * self.entry_size
        for entry_offset in range(entries_start, entries_end, self.entry_size):
            tag, field_type, components = self.entry.unpack_from(self.data, entry_offset)
            tag_name = tags.get(tag)
            if tag_name is None or field_type not in self.field_types:
                if name == _STOPS_AT_UNKNOWN_TAG:
                    break
                continue
            if tag == _PADDING_TAG:
                continue
            try:
                into[tag_name] = self._value(field_type, components, entry_offset + self.entry.size)
            except _OutsideTheBlock as outside:
                self.problems.append(f"{name} {tag_name}: {outside}")
                if tag == _MAKERNOTE_TAG:
                    into[tag_name] = b""  # as in node-exif: a maker note, but none to read
        return entries_end if has_next else None

    def _value(self, field_type: int, components: int, field_offset: int) -> Any:
        unit, code = self.field_types[field_type]
        size = unit * components
        start = field_offset
        if size > self.offset.size or (field_type in _RATIONALS and not self.big):
            start = self.tiff_start + self._unpack(self.offset, field_offset)
        if components == 0:
            return "" if field_type == _ASCII else b"" if field_type == _UNDEFINED else []
        if start + size > len(self.data):
            end = "runs past the end of" if start < len(self.data) else "lies outside"
            raise _OutsideTheBlock(
                f"its {size}-byte value at offset {start - self.tiff_start} {end} the"
                f" {self._block_size()}-byte block"
            )
        if field_type == _UNDEFINED:
            return bytes(self.data[start : start + size])
        if field_type == _ASCII:
            text = str(self.data[start : start + size], "latin-1")
            return text[:-1] if text.endswith("\0") else text
        count = components * 2 if field_type in _RATIONALS else components
        numbers = struct.unpack_from(f"{self.endian}{count}{code}", self.data, start)
        values = _ratios(numbers) if field_type in _RATIONALS else list(numbers)
        return values[0] if len(values) == 1 else values


_DIRECTORY_NAMES = {"exif": "Exif", "gps": "GPS", "interoperability": "Interop"}


def _ratios(numbers: tuple[int, ...]) -> list[float | int | None]:
    """Numerator/denominator pairs as JavaScript numbers would print: x/0 is None, 72.0 is 72."""
    values: list[float | int | None] = []
    for numerator, denominator in zip(numbers[::2], numbers[1::2], strict=True):
        if denominator == 0:
            values.append(None)
            continue
        value = numerator / denominator
        values.append(int(value) if value.is_integer() else value)
    return values


# --- ImageKit's clean-up ---------------------------------------------------------------------


def _makernote_section(makernote: Any) -> dict[str, str]:
    if not isinstance(makernote, bytes):
        raise ExifError("MakerNote is not of the UNDEFINED type")
    for header in _EMPTY_MAKERNOTE_HEADERS:
        if makernote[: len(header)].ljust(len(header), b"\0") == header:
            return {}
    return {"error": UNSUPPORTED_MAKERNOTE}


def _imagekit_clean(entries: dict[str, Any]) -> dict[str, Any]:
    """Raw bytes become text when every byte is printable ASCII; otherwise the key goes."""
    cleaned: dict[str, Any] = {}
    for name, value in entries.items():
        if not isinstance(value, bytes):
            cleaned[name] = value
        elif value and not value.translate(None, _PRINTABLE_ASCII):
            cleaned[name] = value.decode("ascii")
    return cleaned
