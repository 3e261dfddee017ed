"""Reading a local image file within a crawl's limits: the one place where a file's problems
become a crawl's reasons (``not_found``, ``not_a_file``, ``unreadable``, ``too_large``).

The fetcher reads through ``aiofiles`` inside the crawl's event loop; ``crawler extract`` of a
few local images reads them with ``read_image_file``, without an event loop or the HTTP stack.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from crawler.errors import CrawlerError


class FileReadError(CrawlerError):
    """A local file that could not be read as an image's bytes."""

    def __init__(self, message: str, reason: str, status: int) -> None:
        super().__init__(message)
        self.reason = reason
        self.status = status


@contextmanager
def file_errors(url: str) -> Iterator[None]:
    """Turn the errors of opening and reading the file at ``url`` into ``FileReadError``."""
    try:
        yield
    except FileNotFoundError:
        raise FileReadError(f"{url}: no such file", "not_found", 404) from None
    except IsADirectoryError:
        raise FileReadError(f"{url}: is a directory", "not_a_file", 400) from None
    except OSError as exc:
        problem = exc.strerror or exc
        raise FileReadError(f"{url}: cannot read: {problem}", "unreadable", 502) from None


def within_limit(url: str, data: bytes, limit: int) -> bytes:
    """``data``, read as up to ``limit + 1`` bytes, unless that shows the file is too large."""
    if len(data) > limit:
        raise FileReadError(f"{url}: larger than {limit} bytes (crawl.max_size)", "too_large", 413)
    return data


def read_image_file(url: str, path: Path, limit: int) -> bytes:
    """The bytes of the file ``path`` (named ``url`` in errors), at most ``limit`` of them."""
    with file_errors(url), path.open("rb") as handle:
        return within_limit(url, handle.read(limit + 1), limit)
