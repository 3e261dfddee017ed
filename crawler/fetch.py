"""Reading image bytes: one HTTP request, or one local file, bounded in every direction.

This is the downloader's hand, not its head: which URL to fetch when, retries, redirects
and robots.txt are the scheduler's and the downloader's (``crawler.scheduler``,
``crawler.downloader``). Every request passes ``check_url`` first (the HTTP API plugs its
address policy in there). Bodies are streamed and abandoned as soon as they pass
``crawl.max_size`` or their first bytes are not an image.
"""

import email.utils
import functools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Self

import aiofiles
import aiohttp
from aiohttp import hdrs
from aiohttp.abc import AbstractResolver
from yarl import URL

from crawler.config import CrawlSettings
from crawler.errors import CrawlerError
from crawler.files import file_errors, regular_file_opener, within_limit
from crawler.seeds import host_problem, local_path
from crawler.signatures import image_signature

log = logging.getLogger(__name__)

RETRY_AFTER_STATUSES = frozenset({429, 503})
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
SNIFF_SIZE = 16  # enough bytes for every signature in image_signature()
ROBOTS_MAX_SIZE = 500 * 1024  # RFC 9309: parse at least 500 KiB
ROBOTS_REDIRECTS = 5  # RFC 9309: follow at least five
DNS_CACHE_SECONDS = 300

UrlCheck = Callable[[URL], Awaitable[None]]


class FetchError(CrawlerError):
    """A URL could not be fetched; ``reason`` is the short machine reason stored with the row."""

    status = 502

    def __init__(
        self,
        message: str,
        reason: str,
        *,
        http_status: int | None = None,
        final_url: str | None = None,
        skipped: bool = False,
        retry_after: float | None = None,
        status: int | None = None,
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.http_status = http_status
        self.final_url = final_url
        self.skipped = skipped
        self.retry_after = retry_after
        if status is not None:
            self.status = status


@dataclass(frozen=True)
class Validators:
    """What a stored copy was served with, for a conditional request."""

    etag: str | None = None
    last_modified: str | None = None

    def headers(self) -> dict[str, str]:
        headers: dict[str, str] = {}
        if self.etag:
            headers[hdrs.IF_NONE_MATCH] = self.etag
        if self.last_modified:
            headers[hdrs.IF_MODIFIED_SINCE] = self.last_modified
        return headers


@dataclass(frozen=True)
class Fetched:
    """A successful fetch: the image bytes, or ``not_modified`` with no bytes after a 304.

    The body is kept as it arrived, in chunks: the crawl writes them straight into the
    memory its extraction processes read, and never pays for joining them.
    """

    url: str
    final_url: str
    chunks: tuple[bytes, ...]
    http_status: int | None = None
    etag: str | None = None
    last_modified: str | None = None
    content_type: str | None = None
    not_modified: bool = False

    @functools.cached_property
    def data(self) -> bytes:
        return b"".join(self.chunks)

    @functools.cached_property
    def size(self) -> int:
        return sum(map(len, self.chunks))


@dataclass(frozen=True)
class Redirect:
    """A redirect answer: where to go next."""

    location: URL
    http_status: int


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    current = datetime.now(UTC).timestamp() if now is None else now
    return max(0.0, when.timestamp() - current)


class Fetcher:
    """One shared aiohttp session for every request (and aiofiles for local files).

    ``check_url`` is awaited with every URL before it is requested, robots.txt and its
    redirect hops included; it raises to refuse one. ``resolver`` replaces aiohttp's DNS
    resolver (to pin checked addresses). Use as an async context manager.
    """

    def __init__(
        self,
        settings: CrawlSettings,
        *,
        check_url: UrlCheck | None = None,
        resolver: AbstractResolver | None = None,
    ) -> None:
        self._settings = settings
        self._check_url = check_url
        self._resolver = resolver
        self._session: aiohttp.ClientSession | None = None
        timeouts = settings.timeouts
        self._timeout = aiohttp.ClientTimeout(
            total=timeouts.total, sock_connect=timeouts.connect, sock_read=timeouts.read
        )

    async def __aenter__(self) -> Self:
        connector = aiohttp.TCPConnector(
            limit=self._settings.concurrency,
            limit_per_host=self._settings.per_host_concurrency,
            ttl_dns_cache=DNS_CACHE_SECONDS,
            resolver=self._resolver,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=self._timeout,
            headers={hdrs.USER_AGENT: self._settings.user_agent},
        )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def read_local(self, url: str) -> Fetched:
        """The bytes of the local file a ``file://`` URL names."""
        path = local_path(url)
        assert path is not None, f"{url} is not a file:// URL"
        limit = self._settings.max_size
        with file_errors(url):
            async with aiofiles.open(path, "rb", opener=regular_file_opener(url)) as handle:
                data = within_limit(url, await handle.read(limit + 1), limit)
        _require_image(url, data)
        return Fetched(url=url, final_url=url, chunks=(data,))

    async def admit(self, url: URL) -> None:
        """Refuse ``url`` unless it is http(s) and passes ``check_url``: before anything is
        requested for it, its robots.txt included."""
        if url.scheme not in ("http", "https"):
            raise FetchError(f"{url}: redirect to unsupported scheme", "bad_url", status=400)
        if self._check_url is not None:
            await self._check_url(url)

    async def request(
        self, url: URL, validators: Validators | None = None, *, total: float | None = None
    ) -> Fetched | Redirect:
        """One GET of ``url`` (which has passed ``admit``; no redirect followed): the image,
        or where it redirects. ``total``: seconds for the whole request, if less than
        ``crawl.timeouts.total``. Raises ``FetchError``."""
        validators = validators or Validators()
        session = self._require_session()
        timeout = self._timeout
        if total is not None and total < self._settings.timeouts.total:
            timeouts = self._settings.timeouts
            timeout = aiohttp.ClientTimeout(  # aiohttp takes a total of 0 or less for none
                total=max(total, 0.001), sock_connect=timeouts.connect, sock_read=timeouts.read
            )
        try:
            async with session.get(
                url, headers=validators.headers(), allow_redirects=False, timeout=timeout
            ) as response:
                return await self._handle(url, response, validators)
        except TimeoutError:
            raise FetchError(f"{url}: timed out", "timeout", status=504) from None
        except aiohttp.ClientError as exc:
            raise FetchError(
                f"{url}: connection failed: {exc or type(exc).__name__}", "connection_error"
            ) from None

    async def _handle(
        self, url: URL, response: aiohttp.ClientResponse, validators: Validators
    ) -> Fetched | Redirect:
        status = response.status
        if status in REDIRECT_STATUSES and hdrs.LOCATION in response.headers:
            location = response.headers[hdrs.LOCATION]
            try:
                return Redirect(_redirect_target(url, location), status)
            except ValueError:
                raise FetchError(
                    f"{url}: redirect to an invalid URL {location!r}",
                    "bad_redirect",
                    http_status=status,
                    final_url=str(url),
                ) from None
        not_modified = status == 304 and bool(validators.etag or validators.last_modified)
        if not (not_modified or 200 <= status < 300):
            raise _http_error(url, response)
        return Fetched(
            url=str(url),
            final_url=str(url),
            chunks=() if not_modified else await self._read_body(url, response),
            http_status=status,
            etag=response.headers.get(hdrs.ETAG),
            last_modified=response.headers.get(hdrs.LAST_MODIFIED),
            content_type=response.headers.get(hdrs.CONTENT_TYPE),
            not_modified=not_modified,
        )

    async def _read_body(self, url: URL, response: aiohttp.ClientResponse) -> tuple[bytes, ...]:
        """The body's chunks, refused as soon as its length or its first bytes disqualify it."""
        limit = self._settings.max_size
        declared = response.content_length
        if declared is not None and declared > limit:
            raise _too_large(str(url), limit, response.status)
        head = await _read_head(response)
        try:
            _require_image(str(url), head, response.content_type)
        except FetchError as exc:
            exc.http_status = response.status
            response.close()  # do not download the rest
            raise
        chunks = [head]
        size = len(head)
        while size <= limit and (chunk := await _next_chunk(response)):
            chunks.append(chunk)
            size += len(chunk)
        if size > limit:  # only without Content-Length: aiohttp stops there
            response.close()  # abandon the rest of the download
            raise _too_large(str(url), limit, response.status)
        return tuple(chunks)

    async def robots_text(self, url: URL) -> tuple[int, str]:
        """The status and text of the robots.txt at ``url``, following up to
        ``ROBOTS_REDIRECTS`` redirects by hand, each hop through ``check_url`` like any other
        request. Raises ``FetchError`` (with its HTTP status for 4xx and 5xx answers)."""
        for _ in range(ROBOTS_REDIRECTS + 1):
            if self._check_url is not None:
                await self._check_url(url)
            status, location, text = await self._get_robots_hop(url)
            if location is None:
                return status, text
            url = location
        raise FetchError(f"{url}: too many redirects for robots.txt", "too_many_redirects")

    async def _get_robots_hop(self, url: URL) -> tuple[int, URL | None, str]:
        session = self._require_session()
        try:
            async with session.get(url, allow_redirects=False) as response:
                if response.status in REDIRECT_STATUSES and hdrs.LOCATION in response.headers:
                    return response.status, url.join(URL(response.headers[hdrs.LOCATION])), ""
                if response.status >= 400:
                    raise _http_error(url, response)
                raw = bytearray()
                while len(raw) < ROBOTS_MAX_SIZE and (chunk := await response.content.readany()):
                    raw += chunk
                text = raw[:ROBOTS_MAX_SIZE].decode("utf-8", errors="replace")
                return response.status, None, text
        except TimeoutError:
            raise FetchError(f"{url}: timed out", "timeout") from None
        except (aiohttp.ClientError, ValueError) as exc:  # ValueError: a bad Location
            raise FetchError(f"{url}: {exc or type(exc).__name__}", "connection_error") from None

    def _require_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("Fetcher used outside 'async with'")
        return self._session


def _http_error(url: URL, response: aiohttp.ClientResponse) -> FetchError:
    status = response.status
    retry_after = None
    if status in RETRY_AFTER_STATUSES:
        retry_after = parse_retry_after(response.headers.get(hdrs.RETRY_AFTER))
    return FetchError(
        f"{url}: HTTP {status}",
        f"http_{status}",
        http_status=status,
        final_url=str(url),
        retry_after=retry_after,
    )


def _too_large(url: str, limit: int, http_status: int | None = None) -> FetchError:
    return FetchError(
        f"{url}: larger than {limit} bytes (crawl.max_size)",
        "too_large",
        http_status=http_status,
        status=413,
    )


def _redirect_target(url: URL, location: str) -> URL:
    """``location`` resolved against ``url``. Raises ValueError if it is not a usable URL,
    a host name the resolver would refuse included (yarl decodes the host only when asked:
    UnicodeError, a ValueError, for invalid punycode)."""
    try:
        target = url.join(URL(location))
    except IndexError:  # yarl, on some broken authorities such as "[::1]:80x@"
        raise ValueError(f"cannot split {location!r} into a URL") from None
    if target.host is not None and (problem := host_problem(target.host)):
        raise ValueError(problem)
    return target


async def _read_head(response: aiohttp.ClientResponse) -> bytes:
    """At least the first ``SNIFF_SIZE`` bytes of the body (all of it if it is shorter)."""
    head = b""
    while len(head) < SNIFF_SIZE and (chunk := await _next_chunk(response)):
        head += chunk
    return head


async def _next_chunk(response: aiohttp.ClientResponse) -> bytes:
    """The next piece of the body as it arrived, b"" at its end. Not ``readany()``, which
    joins everything buffered into new bytes: a copy of the whole body."""
    while True:
        data, end_of_http_chunk = await response.content.readchunk()
        if data or not end_of_http_chunk:
            return data


def _require_image(url: str, data: bytes, content_type: str | None = None) -> None:
    if image_signature(data[:SNIFF_SIZE]) is None:
        served_as = f" (served as {content_type})" if content_type else ""
        raise FetchError(
            f"{url}: the bytes are not an image{served_as}", "not_an_image", status=415
        )
