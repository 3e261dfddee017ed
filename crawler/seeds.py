"""Seed lists: one URL or local path per line, streamed, normalised.

A line is an ``http``/``https``/``file`` URL or a plain path (relative paths are relative to
the working directory); a directory stands for every image file under it, recursively. Blank
lines and ``#`` comments are skipped, and so is a UTF-8 byte order mark at the start. Any
other ``scheme:`` (``javascript:``, ``data:``, ``mailto:``) is a bad seed, not a relative path,
unless a file of that name exists or the scheme is one letter (a Windows drive, ``c:\\``).

Reading is a generator over the file, ``READ_SIZE`` characters at a time, so a ten-million
line list needs no more memory than a short one, and no line is held whole beyond
``crawl.max_seed_line_length`` characters: a longer one is a bad seed (``url_too_long``)
whose row keeps its first ``CUT_LINE_KEEPS``. Duplicates are removed later by the
catalogue's unique key on the normalised URL, not by remembering every line here. The list
``-`` is standard input, read as it arrives, under the same rules.
"""

import codecs
import ipaddress
import logging
import os
import queue
import re
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from yarl import URL

from crawler.errors import SourceError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset(
    {
        ".jpg",
        ".jpeg",
        ".jpe",
        ".png",
        ".gif",
        ".webp",
        ".tif",
        ".tiff",
        ".heic",
        ".heif",
        ".avif",
        ".bmp",
    }
)
STDIN = "-"  # the seed list that stands for standard input
LOCAL_HOST = ""  # the host of local files: read without politeness, by any crawler
DEFAULT_MAX_URL_LENGTH = 8192
DEFAULT_MAX_SEED_LINE_LENGTH = 64 * 1024
CUT_LINE_KEEPS = 1024  # characters of an over-long line that its row keeps as its url
READ_SIZE = 16 * 1024  # characters of a seed file (bytes of standard input) read at a time
WEB_SCHEMES = ("http", "https")
DEFAULT_PORTS = {"http": 80, "https": 443}
_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*):")
_BOM = "\ufeff"
# A web URL that is canonical already, but for a fragment: lower-case host (no IDNA labels,
# which must be checked), a port that is not the default, path segments and query of
# unreserved characters only (no dot segments, no percent-encoding). Most seed lines look
# like this and then need no parsing: yarl costs ~6 us a line, a minute of CPU for a
# 10-million-line list. Anything else, or a port that needs checking, goes through yarl.
_LABEL = r"(?!xn--)[a-z0-9-]{1,63}"
_SEGMENT = r"[A-Za-z0-9_~-][A-Za-z0-9._~-]*"
_CANONICAL_WEB_URL = re.compile(
    rf"(?P<url>(?P<scheme>https?)://{_LABEL}(?:\.{_LABEL})*(?::(?P<port>[1-9][0-9]{{0,4}}))?"
    rf"/(?:{_SEGMENT}(?:/{_SEGMENT})*/?)?(?:\?[A-Za-z0-9._~=&-]+)?)(?:#.*)?"
)
_NOT_IN_A_HOST = re.compile(r"[\s\x00-\x1f\x7f]")
_PLAIN_AUTHORITY = re.compile(r"https?://([a-z0-9.-]+)(?::[0-9]+)?/")


class SeedError(SourceError):
    """A seed line that is neither a usable URL nor a path."""

    reason = "bad_url"


class UrlTooLongError(SeedError):
    """A seed (or a redirect target) longer than ``crawl.max_url_length``."""

    reason = "url_too_long"


@dataclass(frozen=True)
class Seed:
    """One unit of work: a normalised URL and the host it is scheduled under, or the raw
    line and why it cannot be crawled (with U+0000 as U+FFFD in both: PostgreSQL text
    cannot hold it, and the catalogue keeps the line as the row's key)."""

    url: str
    problem: str | None = None
    reason: str | None = None  # with a problem: bad_url or url_too_long
    host: str | None = None


def normalise_url(text: str) -> str:
    """The canonical form of a seed, the catalogue's key for it.

    Web URLs: lower-case scheme and host, no default port, no fragment, ``/`` for an empty
    path, percent-encoding made uniform. Files (``file://`` or a plain path): an absolute
    ``file://`` URL of the resolved path. Raises ``SeedError`` for anything else.
    """
    text = text.strip()
    canonical = _CANONICAL_WEB_URL.fullmatch(text)
    if canonical is not None and _usual_port(canonical["scheme"], canonical["port"]):
        return canonical["url"]
    return _normalise_parsed(text)


def _usual_port(scheme: str, port: str | None) -> bool:
    return port is None or (int(port) != DEFAULT_PORTS[scheme] and int(port) <= 65535)


def _normalise_parsed(text: str) -> str:
    """``normalise_url`` for any seed, parsing it with yarl."""
    if not text:
        raise SeedError("empty seed")
    scheme = _SCHEME.match(text)
    if scheme is None or _names_a_path(text, scheme.group(1)):
        return _file_url(text, text)
    name = scheme.group(1).lower()
    if name not in (*WEB_SCHEMES, "file"):
        raise SeedError(
            f"{text}: unsupported scheme {name!r} (use http, https, file or a path; "
            f"./{text} for a file of that name)"
        )
    try:
        url = URL(text)
        host = url.host  # decodes IDNA: UnicodeError, a ValueError, for invalid punycode
    except (ValueError, IndexError) as exc:  # IndexError: yarl on some broken hosts
        raise SeedError(f"{text}: not a valid URL ({exc or type(exc).__name__})") from None
    if name == "file":
        return _file_url(text, url.path)
    if not host:
        raise SeedError(f"{text}: URL has no host")
    if problem := host_problem(host):
        raise SeedError(f"{text}: not a valid URL ({problem})")
    # yarl lower-cases a valid host name but not one with characters DNS has no use for
    # (a comma, say) and a non-ASCII label: its key must not depend on how it was typed.
    user_info, at, host_and_port = url.raw_authority.rpartition("@")
    canonical = URL.build(
        scheme=url.scheme,
        authority=user_info + at + host_and_port.lower(),
        path=url.raw_path or "/",
        query_string=url.raw_query_string,
        encoded=True,
    )
    return str(canonical)


def host_problem(host: str) -> str | None:
    """Why no resolver could look ``host`` (decoded, as yarl gives it) up, or None.

    One rule for seeds and redirect targets alike. The resolver encodes the name as IDNA,
    which refuses empty labels and labels over 63 characters with a UnicodeError; a space
    or control character would reach it as part of a name."""
    if _NOT_IN_A_HOST.search(host):
        return f"space or control character in the host {host!r}"
    if ":" in host and not _is_ipv6_address(host):  # yarl keeps '[:1]' as host ':1'
        return f"{host!r} is not an IPv6 address"
    try:
        host.encode("idna")
    except UnicodeError:
        return f"empty or over-long label in {host!r}"
    return None


def _is_ipv6_address(host: str) -> bool:
    try:
        ipaddress.IPv6Address(host)
    except ValueError:
        return False
    return True


def _names_a_path(text: str, scheme: str) -> bool:
    """Whether ``text``, which starts like a URL with ``scheme``, is a path after all: a
    Windows drive letter (no URL scheme has one letter), or a file that exists here."""
    if scheme.lower() in (*WEB_SCHEMES, "file"):
        return False
    if len(scheme) == 1:
        return True
    try:
        return os.path.lexists(text)
    except ValueError:  # a NUL byte: no such file
        return False


def _file_url(text: str, path: str) -> str:
    """The absolute ``file://`` URL of ``path``, from the seed ``text``."""
    try:
        return _path_url(Path(path).expanduser())
    except (ValueError, RuntimeError, OSError) as exc:  # a NUL byte, ~nobody, a symlink loop
        raise SeedError(f"{text}: not a usable path ({exc})") from None


def _path_url(path: Path) -> str:
    return path.resolve().as_uri()


def host_of(url: str) -> str | None:
    """The host a normalised URL is scheduled under: its host name as the URL spells it
    (IDNA-encoded, lower case, no port), ``LOCAL_HOST`` for a file, None if it has none."""
    if url.startswith("file:"):
        return LOCAL_HOST
    if plain := _PLAIN_AUTHORITY.match(url):
        return plain.group(1)
    try:
        host = URL(url).raw_host
    except (ValueError, IndexError):  # IndexError: yarl on some broken authorities
        return None
    return host.lower() if host else None


def local_path(url: str) -> Path | None:
    """The file a normalised ``file://`` URL names, or None for a web URL."""
    return Path(URL(url).path) if url.startswith("file:") else None


def iter_seeds(
    seeds: str | Path | Iterable[str],
    should_stop: Callable[[], bool] = lambda: False,
    max_url_length: int = DEFAULT_MAX_URL_LENGTH,
    max_line_length: int = DEFAULT_MAX_SEED_LINE_LENGTH,
) -> Iterator[Seed | None]:
    """Every seed of the list at the path ``seeds`` (``-``: standard input), or of the lines
    ``seeds`` (any other iterable of strings), in order, streamed line by line. From standard
    input, ``None`` where the input pauses (the seeds so far can be crawled meanwhile), and
    the end once ``should_stop()``: a pipe can stay open. A line over ``max_line_length``
    characters (never held whole), or a URL over ``max_url_length`` once normalised, is a
    bad seed with reason ``url_too_long``."""
    lines: Iterable[str | _LongLine | None]
    if not isinstance(seeds, str | Path):
        lines, name = _given_lines(seeds, max_line_length), "the seeds given"
    elif str(seeds) == STDIN:
        lines, name = _stdin_lines(should_stop, max_line_length), "standard input"
    else:
        lines, name = _file_lines(seeds, max_line_length), str(seeds)
    try:
        for line in lines:
            if line is None:
                yield None
            elif isinstance(line, _LongLine):
                if not line.head.lstrip().startswith("#"):
                    yield line.seed(max_line_length)
            elif (text := line.strip()) and not text.startswith("#"):
                yield from _expand(text, max_url_length)
    except OSError as exc:
        reason = exc.strerror or exc
        raise SourceError(f"{name}: cannot read the seed list: {reason}") from None


@dataclass
class _LongLine:
    """A line over the limit, never held whole: its first characters and its length."""

    head: str
    length: int

    def seed(self, limit: int) -> Seed:
        """The bad seed it is. Its row's url is its first ``CUT_LINE_KEEPS`` characters,
        marked as cut (two long lines that share those and their length share the row)."""
        head = self.head.strip()
        problem = (
            f"{head[:80]}...: a line of {self.length} characters, over {limit} "
            "(crawl.max_seed_line_length)"
        )
        url = f"{head}... (cut: a line of {self.length} characters)"
        return Seed(_without_nul(url), _without_nul(problem), UrlTooLongError.reason)


class _LineSplitter:
    """Splits text fed piece by piece into lines at LF, holding at most ``limit``
    characters of one line: a longer one comes out as a ``_LongLine`` once it ends."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._partial: list[str] = []  # the start of a line that has not ended yet
        self._held = 0  # characters in it
        self._cut: _LongLine | None = None  # the line over the limit being passed over

    def feed(self, piece: str) -> Iterator[str | _LongLine]:
        *ended, unfinished = piece.split("\n")
        for line in ended:
            if self._partial or self._cut is not None:
                yield self._joined(line)
            elif len(line) > self._limit:
                yield _LongLine(line[:CUT_LINE_KEEPS], len(line))
            else:
                yield line
        self._hold(unfinished)

    def end(self) -> Iterator[str | _LongLine]:
        """The last line, if the input did not end with a line break."""
        if self._partial or self._cut is not None:
            yield self._joined("")

    def _joined(self, end: str) -> str | _LongLine:
        self._hold(end)
        line = self._cut or "".join(self._partial)
        self._partial, self._held, self._cut = [], 0, None
        return line

    def _hold(self, text: str) -> None:
        if self._cut is not None:
            self._cut.length += len(text)
            return
        self._partial.append(text)
        self._held += len(text)
        if self._held > self._limit:
            self._cut = _LongLine("".join(self._partial)[:CUT_LINE_KEEPS], self._held)
            self._partial, self._held = [], 0


def _file_lines(path: str | Path, limit: int) -> Iterator[str | _LongLine]:
    # utf-8-sig drops a leading byte order mark; text mode ends lines at CR, LF and CRLF.
    lines = _LineSplitter(limit)
    with Path(path).open(encoding="utf-8-sig", errors="replace") as handle:
        while piece := handle.read(READ_SIZE):
            yield from lines.feed(piece)
    yield from lines.end()


def _given_lines(seeds: Iterable[str], limit: int) -> Iterator[str | _LongLine]:
    """The lines given, checked as a file's would be (they are in memory already)."""
    for number, line in enumerate(seeds):
        text = line.removeprefix(_BOM) if number == 0 else line
        yield _LongLine(text[:CUT_LINE_KEEPS], len(text)) if len(text) > limit else text


_STDIN_POLL_SECONDS = 0.1
_STDIN_PIECES_BUFFERED = 64  # of up to READ_SIZE bytes each


def _stdin_lines(should_stop: Callable[[], bool], limit: int) -> Iterator[str | _LongLine | None]:
    """Lines of standard input as they arrive, and None when it pauses, until its end or
    ``should_stop()``.

    A daemon thread does the reading: a read blocked on a pipe that stays open would hold
    a stopping crawl, and the interpreter's exit, for as long as the pipe's writer likes.
    It reads whatever is there (not whole blocks), so a slow producer's lines are crawled
    as they come."""
    pieces: queue.Queue[bytes | OSError] = queue.Queue(_STDIN_PIECES_BUFFERED)
    threading.Thread(target=_read_stdin, args=(pieces,), name="stdin", daemon=True).start()
    decoder = codecs.getincrementaldecoder("utf-8-sig")(errors="replace")
    lines = _LineSplitter(limit)
    paused = True
    while not should_stop():
        try:
            piece = pieces.get(timeout=_STDIN_POLL_SECONDS)
        except queue.Empty:
            if not paused:
                paused = True
                yield None
            continue
        paused = False
        if isinstance(piece, OSError):
            raise piece
        # CR ends a line as in a file (CRLF gives an empty line more, which is skipped).
        yield from lines.feed(decoder.decode(piece, final=not piece).replace("\r", "\n"))
        if not piece:  # the end of the input
            yield from lines.end()
            return


def _read_stdin(pieces: "queue.Queue[bytes | OSError]") -> None:
    try:
        while piece := os.read(sys.stdin.fileno(), READ_SIZE):
            pieces.put(piece)
        pieces.put(b"")
    except OSError as exc:
        pieces.put(exc)


def _expand(text: str, max_url_length: int) -> Iterator[Seed]:
    try:
        url = normalise_url(text)
        check_url_length(url, max_url_length)
    except SeedError as exc:
        yield Seed(_without_nul(text), problem=_without_nul(str(exc)), reason=exc.reason)
        return
    path = local_path(url)
    if path is not None and is_directory(path):
        yield from (Seed(_path_url(file), host=LOCAL_HOST) for file in image_files(path))
    else:
        yield Seed(url, host=host_of(url))


def check_url_length(url: str, max_url_length: int) -> None:
    """Raise ``UrlTooLongError`` when ``url`` is over ``max_url_length`` characters."""
    if len(url) > max_url_length:
        raise UrlTooLongError(
            f"{url[:80]}...: {len(url)} characters, over {max_url_length} (crawl.max_url_length)"
        )


def _without_nul(text: str) -> str:
    return text.replace("\x00", "\ufffd")


def is_directory(path: Path) -> bool:
    """Whether ``path`` is a directory; a path the system cannot even look up (a name too
    long, say) is not: its URL fails when it is read, like any unreadable file."""
    try:
        return path.is_dir()
    except OSError:
        return False


def image_files(directory: Path) -> Iterator[Path]:
    """Image files under ``directory``, recursively, in a stable order: a directory's files
    by name, then its subdirectories by name (links to directories are not followed).

    Only regular files (or links to them) count, told by the directory entry's type
    without opening anything: a pipe, socket or device named ``*.jpg`` is skipped. A
    dangling link is kept: it fails ``not_found`` like any file that went away."""
    waiting = [str(directory)]  # depth first, without recursion: trees can be deep
    while waiting:
        try:
            with os.scandir(waiting.pop()) as listing:
                entries = sorted(listing, key=lambda entry: entry.name)
        except OSError:  # unreadable, or gone meanwhile: as os.walk, go on with the rest
            continue
        for entry in entries:
            if Path(entry.name).suffix.lower() in IMAGE_SUFFIXES and _is_image_file(entry):
                yield Path(entry.path)
        waiting.extend(entry.path for entry in reversed(entries) if _is_directory(entry))


def _is_image_file(entry: "os.DirEntry[str]") -> bool:
    try:
        if entry.is_file() or (entry.is_symlink() and not os.path.exists(entry.path)):
            return True
    except OSError:
        return False
    log.debug("%s: skipped, not a regular file", entry.path)
    return False


def _is_directory(entry: "os.DirEntry[str]") -> bool:
    try:
        return entry.is_dir(follow_symlinks=False)
    except OSError:
        return False
