"""TIFF structures built byte by byte, classic and BigTIFF, for tests that need files no
library writes: EXIF blocks with chosen entries, types and damage, whole images with strips."""

import struct
from typing import Any

# EXIF field types
BYTE, ASCII, SHORT, LONG, RATIONAL, SBYTE, UNDEFINED, SSHORT, SLONG, SRATIONAL, FLOAT, DOUBLE = (
    range(1, 13)
)
IFD, LONG8 = 13, 16
_CODES = {BYTE: "B", SHORT: "H", LONG: "L", SBYTE: "b", SSHORT: "h", SLONG: "l", FLOAT: "f"}
_CODES |= {LONG8: "Q"}
_CODES |= {DOUBLE: "d", RATIONAL: "L", SRATIONAL: "l"}

Entry = tuple[int, int, int, bytes]  # tag, field type, component count, encoded value


def entry(tag: int, field_type: int, value: Any, order: str = "<") -> Entry:
    """One IFD entry: bytes for ASCII/UNDEFINED, a list of numbers or (num, den) pairs else."""
    if field_type in (ASCII, UNDEFINED):
        return tag, field_type, len(value), value
    flat = value
    if field_type in (RATIONAL, SRATIONAL):
        flat = [part for pair in value for part in pair]
    return (
        tag,
        field_type,
        len(value),
        struct.pack(f"{order}{len(flat)}{_CODES[field_type]}", *flat),
    )


def ifd_size(entries: list[Entry], big: bool = False) -> int:
    inline = 8 if big else 4
    out_of_line = sum(len(e[3]) + (len(e[3]) & 1) for e in entries if len(e[3]) > inline)
    return (8 + 20 * len(entries) + 8 if big else 2 + 12 * len(entries) + 4) + out_of_line


def encode_ifd(
    entries: list[Entry], at: int, order: str = "<", next_ifd: int = 0, big: bool = False
) -> bytes:
    """A directory at offset ``at`` with its out-of-line values right after it; ``big``:
    BigTIFF's (8-byte counts and offsets, 20-byte entries)."""
    count, offset, inline = ("Q", "Q", 8) if big else ("H", "L", 4)
    data_at = at + ifd_size([(0, 0, 0, b"")] * len(entries), big)
    head, tail = [struct.pack(order + count, len(entries))], []
    for tag, field_type, components, value in entries:
        if len(value) > inline:
            head.append(
                struct.pack(f"{order}HH{offset}{offset}", tag, field_type, components, data_at)
            )
            padded = value + b"\0" * (len(value) & 1)
            tail.append(padded)
            data_at += len(padded)
        else:
            fields = struct.pack(f"{order}HH{offset}", tag, field_type, components)
            head.append(fields + value.ljust(inline, b"\0"))
    return b"".join([*head, struct.pack(order + offset, next_ifd), *tail])


POINTERS = {
    "exif": ("image", 0x8769),
    "gps": ("image", 0x8825),
    "interoperability": ("exif", 0xA005),
}


def tiff_block(
    sections: dict[str, list[Entry]],
    order: str = "<",
    big: bool = False,
    pointer_type: int = LONG,
) -> bytes:
    """A TIFF structure holding the given sections; pointer tags (of ``pointer_type``) are
    appended to their parents. ``big``: a BigTIFF, whose pointers are 8 bytes."""
    sections = {name: list(entries) for name, entries in sections.items()}
    sections.setdefault("image", [])
    if "interoperability" in sections:
        sections.setdefault("exif", [])
    names = [n for n in ("image", "exif", "gps", "interoperability", "thumbnail") if n in sections]
    pointer_code = "Q" if big else "L"
    for child, (parent, tag) in POINTERS.items():
        if child in sections:  # a placeholder of the final size, so the layout is known
            sections[parent].append((tag, pointer_type, 1, b"\0" * (8 if big else 4)))
    offsets, at = {}, 16 if big else 8
    for name in names:
        offsets[name] = at
        at += ifd_size(sections[name], big)
    for child, (parent, tag) in POINTERS.items():
        if child in sections:
            index = next(i for i, e in enumerate(sections[parent]) if e[0] == tag)
            pointer = struct.pack(order + pointer_code, offsets[child])
            sections[parent][index] = (tag, pointer_type, 1, pointer)
    if big:
        header = (b"II+\0\x08\0\0\0" if order == "<" else b"MM\0+\0\x08\0\0") + struct.pack(
            order + "Q", 16
        )
    else:
        header = (b"II*\0" if order == "<" else b"MM\0*") + struct.pack(order + "L", 8)
    thumbnail_at = offsets.get("thumbnail", 0)
    return header + b"".join(
        encode_ifd(sections[n], offsets[n], order, thumbnail_at if n == "image" else 0, big)
        for n in names
    )


def tiff_image(
    pixels: bytes,
    width: int,
    height: int,
    *,
    big: bool = False,
    image_entries: tuple[Entry, ...] = (),
    sections: dict[str, list[Entry]] | None = None,
) -> bytes:
    """An uncompressed 8-bit RGB TIFF of one strip holding ``pixels``, with more IFD0
    entries (ascending tags, below 0x0111 or between 0x0118 and 0x8769) and EXIF sections."""
    offset_type = LONG8 if big else LONG
    head = [
        entry(0x0100, LONG, [width]),
        entry(0x0101, LONG, [height]),
        entry(0x0102, SHORT, [8, 8, 8]),
        entry(0x0103, SHORT, [1]),  # no compression
        entry(0x0106, SHORT, [2]),  # RGB
    ]
    tail = [
        entry(0x0115, SHORT, [3]),
        entry(0x0116, LONG, [height]),
        entry(0x0117, offset_type, [len(pixels)]),
    ]
    early = [e for e in image_entries if e[0] < 0x0111]
    late = [e for e in image_entries if e[0] > 0x0117]
    layout = {name: list(entries) for name, entries in (sections or {}).items()}

    def structure(strip_at: int) -> bytes:
        strip_offsets = entry(0x0111, offset_type, [strip_at])
        image = [*head, *early, strip_offsets, *tail, *late]
        return tiff_block(layout | {"image": image}, big=big, pointer_type=offset_type)

    # The strip follows the directories, whose size does not depend on where it is.
    return structure(len(structure(0))) + pixels
