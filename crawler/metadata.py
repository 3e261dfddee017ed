"""The metadata object's shape, and an extraction's result, for the code that prints, stores
or passes on objects without making them (and so without importing the extraction code).

The keys are in the order ImageKit's Metadata API documents; ``exif`` is the one nested value.
"""

from dataclasses import dataclass, field
from typing import Any, Final

METADATA_KEYS: Final = (
    "height",
    "width",
    "size",
    "format",
    "hasColorProfile",
    "quality",
    "density",
    "hasTransparency",
    "pHash",
    "exif",
)
# The top-level fields without the nested EXIF sections: the columns of a table or CSV.
FLAT_FIELDS: Final = METADATA_KEYS[:-1]


@dataclass(frozen=True)
class Thumbnail:
    """A small WebP of an image as it is shown (EXIF orientation applied, sRGB)."""

    width: int
    height: int
    webp: bytes


@dataclass(frozen=True)
class Extraction:
    """The metadata object, which algorithm made its pHash, and problems that did not stop it;
    the image's thumbnail where one was asked for and could be made (not part of the object)."""

    metadata: dict[str, Any]
    hash_algorithm: str
    warnings: list[str] = field(default_factory=list)
    thumbnail: Thumbnail | None = None
