"""Reading a local image file within a crawl's limits: the one place where a file's problems
become a crawl's reasons (``not_found``, ``not_a_file``, ``unreadable``, ``too_large``).

Only regular files are read. A file is opened without blocking (``O_NONBLOCK``: opening a
named pipe would otherwise wait for a writer, for ever) and without becoming the process's
terminal (``O_NOCTTY``), and the open descriptor is checked (``fstat``, so nothing can be
swapped in between): a pipe, a socket, a device such as ``/dev/zero`` or a directory fails
``not_a_file`` at once, before a byte is read.

The fetcher reads through ``aiofiles`` inside the crawl's event loop; ``crawler extract`` of a
few local images reads them with ``read_image_file``, without an event loop or the HTTP stack.
Both open with ``regular_file_opener``.
"""

import errno
import os
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from crawler.errors import CrawlerError

_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a named pipe"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


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
        raise _not_a_file(url, "a directory") from None
    except OSError as exc:
        problem = exc.strerror or exc
        raise FileReadError(f"{url}: cannot read: {problem}", "unreadable", 502) from None


def regular_file_opener(url: str) -> Callable[[str, int], int]:
    """An ``opener`` for ``open()`` that opens only a regular file (the one ``url`` names, in
    errors) and raises ``FileReadError`` (``not_a_file``) for anything else, without
    blocking on it."""

    def opener(path: str, _flags: int) -> int:
        try:
            descriptor = os.open(path, _OPEN_FLAGS)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # a socket, or a device without a driver
                raise _not_a_file(url, _kind_at(path)) from None
            raise
        try:
            mode = os.fstat(descriptor).st_mode
            if not stat.S_ISREG(mode):
                raise _not_a_file(url, _kind(mode))
        except BaseException:
            os.close(descriptor)
            raise
        return descriptor

    return opener


def _not_a_file(url: str, kind: str) -> FileReadError:
    return FileReadError(f"{url}: not a regular file but {kind}", "not_a_file", 400)


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "a special file")


def _kind_at(path: str) -> str:
    try:
        return _kind(os.stat(path).st_mode)
    except OSError:
        return "a special file"


def within_limit(url: str, data: bytes, limit: int) -> bytes:
    """``data``, read as up to ``limit + 1`` bytes, unless that shows the file is too large."""
    if len(data) > limit:
        raise FileReadError(f"{url}: larger than {limit} bytes (crawl.max_size)", "too_large", 413)
    return data


def read_image_file(url: str, path: Path, limit: int) -> bytes:
    """The bytes of the file ``path`` (named ``url`` in errors), at most ``limit`` of them."""
    with file_errors(url), open(path, "rb", opener=regular_file_opener(url)) as handle:
        return within_limit(url, handle.read(limit + 1), limit)
