"""64-bit perceptual hashes: the two algorithms and the arithmetic on their values.

A hash travels as 16 lower-case hex digits (what ImageKit's API returns) and is stored as a
signed 64-bit integer (two's complement of the same bits), because SQL's BIGINT is signed.
"""

from typing import Final

from crawler.errors import HashFormatError

HASH_BITS: Final = 64
_SIGN_BIT: Final = 1 << 63
_ALL_BITS: Final = (1 << 64) - 1


def parse_hex(text: str) -> int:
    """The unsigned 64-bit value of a hash written as 1 to 16 hex digits."""
    cleaned = text.strip().lower().removeprefix("0x")
    if not 0 < len(cleaned) <= 16 or any(c not in "0123456789abcdef" for c in cleaned):
        raise HashFormatError(f"bad pHash {text!r}: expected 16 hex digits, e.g. 63433b3ccf8e1ebe")
    return int(cleaned, 16)


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
