"""Typed errors. Each carries a one-line message that says what was wrong and where.

The CLI turns any ``CrawlerError`` into a one-line message and a non-zero exit; the HTTP API
turns it into a JSON error with ``status``.
"""


class CrawlerError(Exception):
    """Base of every error the library raises on bad input or a failed operation."""

    status = 500  # the HTTP status the API answers with
    reason = "error"  # a short machine-readable reason, stored with failed crawl rows


class ConfigError(CrawlerError):
    status = 400
    reason = "bad_config"


class HashFormatError(CrawlerError, ValueError):
    status = 400
    reason = "bad_hash"


class ImageError(CrawlerError):
    """The bytes could not be turned into a metadata object."""

    status = 422
    reason = "undecodable"


class NotAnImageError(ImageError):
    status = 415
    reason = "not_an_image"


class UnsupportedFormatError(ImageError):
    status = 415
    reason = "unsupported_format"


class DecodeError(ImageError):
    status = 422
    reason = "undecodable"


class PixelLimitError(ImageError):
    status = 413
    reason = "too_many_pixels"


class MemoryLimitError(ImageError):
    """Decoding the image would need more memory than ``extract.memory_limit``."""

    status = 413
    reason = "too_much_memory"


class MemoryExhaustedError(MemoryLimitError):
    """Decoding ran out of memory: in an extraction process, its hard cap stopped it."""


class ExifError(CrawlerError):
    """The EXIF block is broken; the rest of the metadata object is still valid."""

    status = 422
    reason = "bad_exif"


class SourceError(CrawlerError):
    """A path or URL given to read an image from cannot be read."""

    status = 400
    reason = "bad_source"


class CatalogueError(CrawlerError):
    status = 500
    reason = "catalogue"
