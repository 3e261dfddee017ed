"""64-bit pHash values: their text form, their stored form and the distance between two.

A hash travels as exactly 16 lower-case hex digits (what ImageKit's API returns) and is stored
as a signed 64-bit integer (two's complement of the same bits), because SQL's BIGINT is
signed. Distance is the Hamming distance of the 64 bits, similarity ``1 - distance / 64``.

Kept apart from ``crawler.extract.phash``, which computes hashes (libvips, numpy), so that
comparing hashes costs no image library's import.
"""

import re
from typing import Final

from crawler.errors import HashFormatError

HASH_BITS: Final = 64
HEX_DIGITS: Final = HASH_BITS // 4
# The radius near-duplicate search uses unless told otherwise, everywhere: the CLI, the
# Python API, the HTTP API and its page.
DEFAULT_MAX_DISTANCE: Final = 10
_SIGN_BIT: Final = 1 << 63
_ALL_BITS: Final = (1 << 64) - 1
_HEX: Final = re.compile(rf"(?:0x)?([0-9a-f]{{{HEX_DIGITS}}})")


def parse_hex(text: str) -> int:
    """The unsigned 64-bit value of a hash written as 16 hex digits (either case, an optional
    ``0x`` and surrounding spaces allowed). Fewer digits are refused, not padded: a hash
    with a digit missing is a copying mistake, and padding would answer for another hash."""
    match = _HEX.fullmatch(text.strip().lower())
    if match is None:
        raise HashFormatError(f"bad pHash {text!r}: expected 16 hex digits, e.g. 63433b3ccf8e1ebe")
    return int(match.group(1), 16)


def to_hex(value: int) -> str:
    """16 lower-case hex digits of a hash given as a signed or unsigned 64-bit integer."""
    return f"{value & _ALL_BITS:016x}"


def to_signed(value: int) -> int:
    """The signed BIGINT that holds the same 64 bits as the unsigned ``value``."""
    value &= _ALL_BITS
    return value - (1 << 64) if value & _SIGN_BIT else value


def hex_to_signed(text: str) -> int:
    return to_signed(parse_hex(text))


def distance(a: int | str, b: int | str) -> int:
    """Hamming distance (0..64) between two hashes, each hex text or a 64-bit integer."""
    bits_a = parse_hex(a) if isinstance(a, str) else a & _ALL_BITS
    bits_b = parse_hex(b) if isinstance(b, str) else b & _ALL_BITS
    return (bits_a ^ bits_b).bit_count()


def similarity(a: int | str, b: int | str) -> float:
    """ImageKit's similarity score: ``1 - distance / 64``."""
    return 1 - distance(a, b) / HASH_BITS
