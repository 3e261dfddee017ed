"""The Metadata API over HTTP: ImageKit's two metadata endpoints, similarity search and a page
of near-duplicate groups, served from the catalogue with aiohttp.web.

``create_app(settings)`` builds the application; ``run_server(settings)`` listens. Every error
is JSON ``{"message": ..., "help": ...}`` with its HTTP status. URLs are fetched with the
crawler's fetcher under the address policy of ``crawler.netpolicy`` (on every redirect hop, and
through a resolver that returns only checked addresses). Images are extracted in the crawl's
extraction processes, started on the first request that needs them: a decoder that crashes
or loops on a hostile image costs that request, not the server.

The server holds up against clients and its database: its connections are limited in number
and in how long they may wait (``crawler.serve_connections``), failed authentications are
throttled per client, and while the catalogue's database is unreachable the requests that
need it get 503 with Retry-After, until it is back (no restart).
"""

import asyncio
import base64
import binascii
import dataclasses
import functools
import hashlib
import hmac
import ipaddress
import logging
import math
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, Self

import sqlalchemy as sa
from aiohttp import hdrs, web
from aiohttp.abc import AbstractResolver
from yarl import URL

from crawler import browse, hashes
from crawler.batching import BatchedReads
from crawler.catalogue import Catalogue, database_problem, open_catalogue
from crawler.config import ServeSettings, Settings
from crawler.downloader import Downloads
from crawler.duplicates import DuplicateGroup, duplicates
from crawler.errors import ConfigError, CrawlerError
from crawler.extraction_pool import ExtractionPool, pool_size
from crawler.fetch import Fetched
from crawler.hashes import DEFAULT_MAX_DISTANCE
from crawler.metadata import Extraction, Thumbnail
from crawler.models import STATUSES
from crawler.netpolicy import AddressPolicy, BadURLError, PolicyResolver, parse_url
from crawler.outage import is_transient
from crawler.output import to_json
from crawler.query import ImageNotFoundError, show, similar
from crawler.seeds import SeedError, normalise_url
from crawler.serve_connections import GuardedSite, connection_limits, track_requests
from crawler.store import CrawlResult, store_results
from crawler.thumbnails import thumbnails_of

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
OPENAPI_PATH = STATIC_DIR / "openapi.json"
MAX_LIMIT = 1000
# Five text parameters of 100 characters, percent-encoded, fit in the 8 KB request line.
MAX_TEXT_PARAMETER = 100
DEFAULT_SIMILAR_LIMIT = 100
DEFAULT_GROUPS_LIMIT = 100
# Past 16 bits the pHashes of unrelated images link up (a catalogue becomes a few huge
# groups), and the work grows with the pairs found.
MAX_DUPLICATE_DISTANCE = 16
# Grouping reads every hash: about 1 s for 100,000 images at radius 10, and the time grows
# with the square of the catalogue; a page view asks for it every time.
DUPLICATES_TTL_SECONDS = 60.0
PUBLIC_PATHS = frozenset({"/openapi.json"})
# Routes that do not count against serve.rate_limit_per_minute (they still need a key): a
# thumbnail is one indexed read, read together with the others asked for meanwhile, and a
# page of tiles asks for dozens at once.
UNMETERED_ROUTES = frozenset({"/v1/files/{id}/thumbnail"})
# An API key is a password that anyone who reaches the server may guess at: 16 characters
# of a URL-safe alphabet are 96 bits, and failed guesses are throttled per client.
MIN_API_KEY_LENGTH = 16
CATALOGUE_RETRY_SECONDS = 2.0  # while the database is away: no request tries it for this long
MAX_TRACKED_CLIENTS = 100_000  # rate-limit buckets kept; full ones are dropped first

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

HELP = {
    400: "Check the query parameters against /openapi.json.",
    401: "Send your private API key as the HTTP Basic user name, with an empty password.",
    404: "Check the image id (`crawler export` lists them) or the path (see /openapi.json).",
    405: "Every endpoint of this API answers GET only.",
    413: "The image is larger than crawl.max_size bytes or extract.pixel_limit pixels, or "
    "needs more than extract.memory_limit bytes to decode.",
    415: "The URL must point to a JPEG, PNG, GIF, WebP, TIFF, HEIF, AVIF or BMP image.",
    422: "The image's bytes could not be decoded; open the URL in an image viewer to check it.",
    429: "Too many requests for this key: wait Retry-After seconds (serve.rate_limit_per_minute).",
    503: "The server cannot reach its catalogue, or has too many connections; retry after "
    "Retry-After seconds.",
    502: "The image's server failed or refused; check the URL in a browser.",
    504: "The image's server did not answer within crawl.timeouts.",
}
HELP_BY_REASON = {
    "forbidden_address": "The server does not fetch from loopback, private, link-local, "
    "multicast or reserved addresses; serve.allow_hosts exempts trusted hosts.",
    "bad_url": "Give an absolute http or https URL, percent-encoded in the query string.",
    "extract_timeout": "The image took longer than crawl.extract_timeout seconds to decode.",
    "extract_crashed": "The image crashed its decoder; open the URL in an image viewer to "
    "check it.",
    "auth_throttled": "Too many failed authentications from your address: wait Retry-After "
    "seconds, then send a valid key (serve.auth_failures_per_minute).",
}
THUMBNAIL_CACHING = "public, max-age=31536000, immutable"
DEFAULT_HELP = "See /openapi.json for the API's endpoints and parameters."
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
# The page loads nothing from any other host: its thumbnails are the catalogue's own.
PAGE_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


class ApiError(CrawlerError):
    """An error of the HTTP layer itself, with extra response headers."""

    def __init__(self, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.headers = headers or {}


class BadParameterError(ApiError):
    status = 400
    reason = "bad_parameter"


class UnauthorizedError(ApiError):
    status = 401
    reason = "unauthorized"


class NotFoundError(ApiError):
    status = 404
    reason = "not_found"


class RateLimitedError(ApiError):
    status = 429
    reason = "rate_limited"


class AuthThrottledError(RateLimitedError):
    reason = "auth_throttled"


class CatalogueUnavailableError(ApiError):
    status = 503
    reason = "catalogue_unavailable"


class RateLimiter:
    """A token bucket per client: ``per_minute`` requests a minute, in bursts of that many.

    At most ``max_clients`` buckets are kept: past that, the full ones (clients quiet long
    enough to have refilled) are forgotten, then the oldest."""

    def __init__(
        self,
        per_minute: int,
        clock: Callable[[], float] = time.monotonic,
        max_clients: int = MAX_TRACKED_CLIENTS,
    ) -> None:
        self._capacity = float(per_minute)
        self._per_second = per_minute / 60
        self._clock = clock
        self._max_clients = max_clients
        self._buckets: dict[str, tuple[float, float]] = {}

    def wait_needed(self, client: str, *, spend: bool = True) -> float:
        """0 if ``client`` may go now (taking one request from its bucket if ``spend``),
        else the seconds until it may."""
        now = self._clock()
        tokens = self._tokens(client, now)
        if tokens >= 1:
            if spend:
                self._keep(client, tokens - 1, now)
            return 0.0
        self._keep(client, tokens, now)
        return (1 - tokens) / self._per_second

    def _tokens(self, client: str, now: float) -> float:
        tokens, since = self._buckets.get(client, (self._capacity, now))
        return min(self._capacity, tokens + (now - since) * self._per_second)

    def _keep(self, client: str, tokens: float, now: float) -> None:
        self._buckets[client] = (tokens, now)
        if len(self._buckets) > self._max_clients:
            full = [name for name in self._buckets if self._tokens(name, now) >= self._capacity]
            for name in full:
                del self._buckets[name]
            while len(self._buckets) > self._max_clients:
                del self._buckets[next(iter(self._buckets))]


class CatalogueCalls:
    """The handlers' catalogue work, run in threads, with the database's outages turned into
    503 answers: after a failure that says the database is away for now
    (``crawler.outage.is_transient``: unreachable, restarting, locked past the busy
    timeout), requests get 503 at once for ``retry_seconds``, then the next one tries it
    again. Nothing is restarted: the connection pool makes new connections once the
    database answers. (A crawl waits through an outage instead; a request cannot.)"""

    def __init__(
        self,
        catalogue: Catalogue,
        retry_seconds: float = CATALOGUE_RETRY_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.catalogue = catalogue
        self._retry_seconds = retry_seconds
        self._clock = clock
        self._retry_at: float | None = None  # while the database is away

    async def run(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``function(catalogue, *args, **kwargs)`` in a thread."""
        if self._retry_at is not None and (wait := self._retry_at - self._clock()) > 0:
            raise self._unavailable(wait, "is unreachable")
        try:
            result = await asyncio.to_thread(function, self.catalogue, *args, **kwargs)
        except sa.exc.SQLAlchemyError as exc:
            # A pool with no connection free is the database too busy to answer, for now.
            if not (is_transient(exc) or isinstance(exc, sa.exc.TimeoutError)):
                raise
            if self._retry_at is None:
                log.warning(
                    "the catalogue is unreachable (%s); requests that need it get 503 "
                    "until it is back",
                    database_problem(exc),
                )
            self._retry_at = self._clock() + self._retry_seconds
            raise self._unavailable(self._retry_seconds, "is unreachable") from None
        if self._retry_at is not None:
            log.warning("the catalogue is reachable again")
            self._retry_at = None
        return result

    def _unavailable(self, wait: float, problem: str) -> CatalogueUnavailableError:
        seconds = max(1, math.ceil(wait))
        return CatalogueUnavailableError(
            f"the catalogue {problem}; retry in {seconds} s", {hdrs.RETRY_AFTER: str(seconds)}
        )


class DuplicatesCache:
    """The duplicate groups per radius, computed once for every caller that asks meanwhile and
    then kept ``ttl`` seconds, because grouping a large catalogue takes seconds to minutes."""

    def __init__(
        self,
        compute: Callable[[int], Awaitable[list[DuplicateGroup]]],
        ttl: float = DUPLICATES_TTL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._compute = compute
        self._ttl = ttl
        self._clock = clock
        self._entries: dict[int, tuple[float, asyncio.Task[list[DuplicateGroup]]]] = {}

    async def groups(self, max_distance: int) -> list[DuplicateGroup]:
        entry = self._entries.get(max_distance)
        if entry is None or (entry[1].done() and self._clock() - entry[0] > self._ttl):
            entry = (self._clock(), asyncio.ensure_future(self._compute(max_distance)))
            self._entries[max_distance] = entry
        try:
            return await asyncio.shield(entry[1])
        except Exception:
            if self._entries.get(max_distance) is entry:
                del self._entries[max_distance]  # let the next caller try again
            raise

    def invalidate(self) -> None:
        """Forget finished results (the catalogue changed); running ones still complete."""
        self._entries = {key: e for key, e in self._entries.items() if not e[1].done()}


class UpstreamFetcher:
    """The crawler's fetcher (same limits, timeouts and retries) behind the address policy,
    with at most ``serve.max_upstream_fetches`` fetches and extractions at a time; the
    crawl's extraction processes (``crawl.extract_workers``, ``crawl.extract_timeout``)."""

    def __init__(
        self, settings: Settings, policy: AddressPolicy, resolver: AbstractResolver
    ) -> None:
        self._settings = settings
        self._policy = policy
        # robots.txt is for crawlers; this fetches the one URL a client asked for, as a
        # browser would.
        crawl = dataclasses.replace(settings.crawl, robots=False)
        self._downloads = Downloads(
            crawl,
            workers=settings.serve.max_upstream_fetches,
            check_url=self._check_hop,
            resolver=resolver,
        )
        self._slots = asyncio.Semaphore(settings.serve.max_upstream_fetches)
        self._pool: ExtractionPool | None = None
        self._pool_starting = asyncio.Lock()
        self._exit_stack = AsyncExitStack()

    async def __aenter__(self) -> Self:
        await self._exit_stack.enter_async_context(self._downloads)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._exit_stack.aclose()

    async def _check_hop(self, url: URL) -> None:
        self._policy.check_url(url)

    async def extract_url(self, text: str) -> tuple[Fetched, Extraction, str]:
        """Fetch the image at ``text`` (an http or https URL) and extract its metadata;
        also returns the SHA-256 of its bytes."""
        # Checked before normalising, which would resolve a plain path on the disk.
        self._policy.check_url(parse_url(text))
        try:
            url = normalise_url(text)
        except SeedError as exc:
            raise BadURLError(str(exc)) from None
        async with self._slots:
            fetched = await self._downloads.fetch(url)
            pool = await self._started_pool()
            extraction, sha256 = await pool.extraction(fetched.chunks, fetched.url)
        return fetched, extraction, sha256

    async def _started_pool(self) -> ExtractionPool:
        async with self._pool_starting:
            if self._pool is None:
                crawl = self._settings.crawl
                pool = ExtractionPool(
                    pool_size(crawl.extract_workers), self._settings.extract, crawl.extract_timeout
                )
                self._pool = await self._exit_stack.enter_async_context(pool)
        return self._pool


def store_fetched(
    catalogue: Catalogue, fetched: Fetched, extraction: Extraction, sha256: str
) -> None:
    """Catalogue one image fetched through the API, as a crawl would have."""
    result = CrawlResult(
        url=fetched.url,
        status="ok",
        final_url=fetched.final_url,
        http_status=fetched.http_status,
        etag=fetched.etag,
        last_modified=fetched.last_modified,
        content_type=fetched.content_type,
        sha256=sha256,
        fetched_at=datetime.now(UTC),
        metadata=extraction.metadata,
        hash_algorithm=extraction.hash_algorithm,
        warnings=tuple(extraction.warnings),
        thumbnail=extraction.thumbnail,
    )
    store_results(catalogue, [result])


@dataclass
class Services:
    """What the handlers share, opened when the server starts and closed when it stops."""

    settings: Settings
    catalogue: CatalogueCalls
    upstream: UpstreamFetcher
    limiter: RateLimiter
    auth_failures: RateLimiter
    duplicates: DuplicatesCache
    thumbnails: BatchedReads[int, Thumbnail]


SERVICES = web.AppKey("services", Services)


def create_app(settings: Settings, *, resolver: AbstractResolver | None = None) -> web.Application:
    """The API application. ``resolver`` replaces the system's DNS (tests use a fixed table);
    the address policy filters its answers either way. Raises ``ConfigError`` for serve
    settings it cannot serve with (``check_serve_settings``)."""
    policy = check_serve_settings(settings.serve)
    app = web.Application(
        middlewares=[track_requests, _error_middleware, _auth_and_rate_middleware]
    )
    app.cleanup_ctx.append(_services_context(settings, policy, resolver))
    app.router.add_get("/", _index_page)
    app.router.add_get("/openapi.json", _openapi)
    app.router.add_get("/v1/metadata", _metadata_from_url)
    app.router.add_get("/v1/files/{id}/metadata", _stored_metadata)
    app.router.add_get("/v1/files/{id}/thumbnail", _stored_thumbnail)
    app.router.add_get("/v1/similar", _similar)
    app.router.add_get("/v1/phash-distance", _phash_distance)
    app.router.add_get("/v1/duplicates", _duplicates)
    app.router.add_get("/v1/images", _grid)
    app.router.add_get("/v1/images/{id}", _image_record)
    app.router.add_get("/v1/summary", _summary)
    app.router.add_get("/static/{name}", _static_file)
    app.on_response_prepare.append(_add_security_headers)
    return app


def _services_context(
    settings: Settings, policy: AddressPolicy, resolver: AbstractResolver | None
) -> Callable[[web.Application], AsyncIterator[None]]:
    async def services(app: web.Application) -> AsyncIterator[None]:
        catalogue = await asyncio.to_thread(
            functools.partial(open_catalogue, settings.database.url, create=False)
        )
        calls = CatalogueCalls(catalogue)
        pinned = PolicyResolver(policy, resolver)  # needs the running loop
        try:
            async with UpstreamFetcher(settings, policy, pinned) as upstream:
                serve = settings.serve
                algorithm = settings.extract.hash_algorithm

                async def grouping(max_distance: int) -> list[DuplicateGroup]:
                    return await calls.run(duplicates, max_distance, algorithm=algorithm)

                async def thumbnails(image_ids: list[int]) -> dict[int, Thumbnail]:
                    return await calls.run(thumbnails_of, image_ids)

                app[SERVICES] = Services(
                    settings,
                    calls,
                    upstream,
                    RateLimiter(serve.rate_limit_per_minute),
                    RateLimiter(serve.auth_failures_per_minute),
                    DuplicatesCache(grouping),
                    BatchedReads(thumbnails),
                )
                yield
        finally:
            await pinned.close()
            await asyncio.to_thread(catalogue.close)

    return services


def check_serve_settings(serve: ServeSettings) -> AddressPolicy:
    """Refuse API keys that are too easy to guess or cannot be sent, and a bad allow-list;
    returns the address policy of ``serve.allow_hosts``."""
    for position, key in enumerate(serve.api_keys):
        where = f"serve.api_keys[{position}]"  # never the key itself: it is a secret
        if len(key) < MIN_API_KEY_LENGTH:
            raise ConfigError(
                f"{where}: {len(key)} characters, at least {MIN_API_KEY_LENGTH} are needed "
                "(a key is a password anyone who reaches the server can guess at); "
                'make one with python -c "import secrets; print(secrets.token_urlsafe())"'
            )
        if ":" in key or not key.isprintable() or any(c.isspace() for c in key):
            raise ConfigError(
                f"{where}: spaces, control characters and ':' cannot be sent as an HTTP "
                "Basic user name"
            )
    return AddressPolicy(serve.allow_hosts, allow_all=serve.allow_all_hosts)


def check_listen_address(serve: ServeSettings) -> None:
    """Refuse to listen beyond loopback without API keys: an open API that fetches URLs is a
    proxy into the network for anyone who can reach it."""
    if serve.api_keys or _is_loopback(serve.host):
        return
    raise ConfigError(
        f"serve.host: refusing to listen on {serve.host} without serve.api_keys; "
        "set API keys or listen on 127.0.0.1"
    )


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def run_server(settings: Settings, on_listening: Callable[[str], None] | None = None) -> None:
    """Serve the API on ``serve.host``:``serve.port`` until SIGINT or SIGTERM.

    The catalogue is opened and the socket bound first; then ``on_listening`` is called with
    the server's URL. Every problem before that (a refused address or key, no catalogue, the
    port taken) raises a ``CrawlerError`` with a one-line message, and nothing was
    announced."""
    check_listen_address(settings.serve)
    asyncio.run(_serve(settings, on_listening or (lambda _url: None)))


async def _serve(settings: Settings, on_listening: Callable[[str], None]) -> None:
    async with listening(settings, access_log=log) as site:
        stopped = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(_log_loop_error)
        for number in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(number, stopped.set)
        on_listening(site.url)
        await stopped.wait()


@asynccontextmanager
async def listening(
    settings: Settings,
    *,
    resolver: AbstractResolver | None = None,
    access_log: logging.Logger | None = None,
) -> AsyncIterator[GuardedSite]:
    """The API listening on ``serve.host``:``serve.port`` (0: a free port) under its
    connection limits, until the block ends; yields the site (``site.url``)."""
    limits = connection_limits(settings.serve)
    runner = web.AppRunner(create_app(settings, resolver=resolver), access_log=access_log)
    try:
        await runner.setup()  # opens the catalogue
        host, port = settings.serve.host, settings.serve.port
        site = GuardedSite(runner, host, port, limits, error_response, access_log)
        try:
            await site.start()
        except OSError as exc:
            raise ConfigError(
                f"serve.host, serve.port: cannot listen on {host}:{port}: {exc.strerror or exc}"
            ) from None
        yield site
    finally:
        await runner.cleanup()


def _log_loop_error(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """One line for an operating system error the loop met (an accept that failed for want
    of descriptors, say), not a traceback each time; anything else as asyncio logs it."""
    exc = context.get("exception")
    if isinstance(exc, OSError):
        log.warning("%s: %s", context.get("message", "server error"), exc)
    else:
        loop.default_exception_handler(context)


# Middleware


def error_response(
    status: int, message: str, headers: dict[str, str] | None = None, reason: str = ""
) -> web.Response:
    """The API's JSON error body, ImageKit style (with the security headers: the errors the
    HTTP layer answers by itself pass no response hook)."""
    help_text = HELP_BY_REASON.get(reason) or HELP.get(status, DEFAULT_HELP)
    body = {"message": message, "help": help_text}
    headers = SECURITY_HEADERS | (headers or {})
    return web.json_response(body, status=status, headers=headers, dumps=to_json)


@web.middleware
async def _error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except CrawlerError as exc:
        return error_response(exc.status, str(exc), getattr(exc, "headers", None), exc.reason)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error_response(exc.status, exc.reason, _allow_header(exc))
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("internal error on %s", request.rel_url)
        return error_response(500, "internal error; the server log has the details")


def _allow_header(exc: web.HTTPException) -> dict[str, str] | None:
    allow = exc.headers.get(hdrs.ALLOW)
    return {hdrs.ALLOW: allow} if allow else None


@web.middleware
async def _auth_and_rate_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path in PUBLIC_PATHS:
        return await handler(request)
    services = request.app[SERVICES]
    client = _authenticated_client(request, services)
    resource = request.match_info.route.resource
    if resource is not None and resource.canonical in UNMETERED_ROUTES:
        return await handler(request)
    wait = services.limiter.wait_needed(client)
    if wait > 0:
        seconds = max(1, round(wait + 0.5))
        raise RateLimitedError(
            f"rate limit of {services.settings.serve.rate_limit_per_minute} requests a minute "
            f"reached; retry in {seconds} s",
            {hdrs.RETRY_AFTER: str(seconds)},
        )
    return await handler(request)


def _authenticated_client(request: web.Request, services: Services) -> str:
    """Who is asking: the API key's position among the keys, or the peer address without
    keys. A client (an address; IPv6: its /64) whose failed authentications used up
    ``serve.auth_failures_per_minute`` gets 429, whatever it sends, until they refill."""
    api_keys = services.settings.serve.api_keys
    peer = _client_network(request.remote)
    if not api_keys:
        return f"address {peer}"
    if (wait := services.auth_failures.wait_needed(peer, spend=False)) > 0:
        seconds = max(1, math.ceil(wait))
        raise AuthThrottledError(
            f"too many failed authentications from {peer}; retry in {seconds} s",
            {hdrs.RETRY_AFTER: str(seconds)},
        )
    challenge: dict[str, str] = {hdrs.WWW_AUTHENTICATE: 'Basic realm="crawler", charset="UTF-8"'}
    header = request.headers.get(hdrs.AUTHORIZATION)
    if header is None:  # a browser's first request: no guess, nothing counted
        raise UnauthorizedError("an API key is required", challenge)
    login = _basic_auth_login(header)
    if login is None:
        services.auth_failures.wait_needed(peer)
        raise UnauthorizedError("the Authorization header is not HTTP Basic", challenge)
    # Compare with every key in constant time, so timing tells nothing about a key's prefix.
    matches = [hmac.compare_digest(login.encode(), key.encode()) for key in api_keys]
    if not any(matches):
        services.auth_failures.wait_needed(peer)
        raise UnauthorizedError("unknown API key", challenge)
    return f"key {matches.index(True)}"


def _client_network(remote: str | None) -> str:
    """The client that limits count against: its address, or for IPv6 its /64 (one machine
    is often given a whole /64)."""
    try:
        address = ipaddress.ip_address(remote or "")
    except ValueError:
        return remote or "unknown"
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


def _basic_auth_login(header: str) -> str | None:
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    login, colon, _ = decoded.partition(":")
    return login if colon else None


async def _add_security_headers(request: web.Request, response: web.StreamResponse) -> None:
    response.headers.update(SECURITY_HEADERS)
    if response.content_type == "text/html":
        response.headers["Content-Security-Policy"] = PAGE_POLICY


# Parameters


def _required(request: web.Request, name: str) -> str:
    value = request.query.get(name)
    if value is None or not value.strip():
        raise BadParameterError(f"parameter {name} is required")
    return value.strip()


def _int_param(request: web.Request, name: str, default: int, lowest: int, highest: int) -> int:
    text = request.query.get(name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        raise BadParameterError(f"parameter {name}: expected an integer, got {text!r}") from None
    if not lowest <= value <= highest:
        raise BadParameterError(f"parameter {name}: expected {lowest}..{highest}, got {value}")
    return value


def _bool_param(request: web.Request, name: str) -> bool:
    text = request.query.get(name, "false").lower()
    if text not in ("true", "false", "1", "0"):
        raise BadParameterError(f"parameter {name}: expected true or false, got {text!r}")
    return text in ("true", "1")


def _optional_bool_param(request: web.Request, name: str) -> bool | None:
    return _bool_param(request, name) if name in request.query else None


def _text_param(request: web.Request, name: str) -> str | None:
    """A text parameter as given (``None`` when absent)."""
    text = request.query.get(name)
    if text is None:
        return None
    if not text:
        raise BadParameterError(f"parameter {name} is empty: leave it out to match any")
    if len(text) > MAX_TEXT_PARAMETER:
        raise BadParameterError(
            f"parameter {name}: at most {MAX_TEXT_PARAMETER} characters, got {len(text)}"
        )
    return text


def _choice_param(request: web.Request, name: str, choices: Sequence[str]) -> str | None:
    text = _text_param(request, name)
    if text is not None and text not in choices:
        raise BadParameterError(
            f"parameter {name}: expected one of {', '.join(choices)}, got {text!r}"
        )
    return text


def _date_param(request: web.Request, name: str) -> date | None:
    text = _text_param(request, name)
    if text is None:
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise BadParameterError(
            f"parameter {name}: expected a date as YYYY-MM-DD, got {text!r}"
        ) from None


def _hash_param(request: web.Request, name: str) -> str:
    text = _required(request, name)
    return hashes.to_hex(hashes.parse_hex(text))


def _json(value: Any) -> web.Response:
    return web.json_response(value, dumps=to_json)


# Handlers


async def _metadata_from_url(request: web.Request) -> web.Response:
    """``GET /v1/metadata?url=URL[&store=true]``: fetch, extract, optionally catalogue."""
    url = _required(request, "url")
    store = _bool_param(request, "store")
    services = request.app[SERVICES]
    fetched, extraction, sha256 = await services.upstream.extract_url(url)
    if store:
        await services.catalogue.run(store_fetched, fetched, extraction, sha256)
        services.duplicates.invalidate()
    return _json(extraction.metadata)


def _image_id(request: web.Request) -> int:
    text = request.match_info["id"]
    if not (text.isascii() and text.isdigit()) or len(text) > 18:
        raise NotFoundError(f"no image with id {text!r}: ids are positive integers")
    return int(text)


async def _stored_metadata(request: web.Request) -> web.Response:
    """``GET /v1/files/{id}/metadata``: the stored object of a catalogued image."""
    image_id = _image_id(request)
    services = request.app[SERVICES]
    try:
        metadata = await services.catalogue.run(show, image_id)
    except ImageNotFoundError as exc:
        # Clients need not know where the catalogue lives.
        where = f" at {services.catalogue.catalogue.url}"
        raise NotFoundError(str(exc).replace(where, "")) from None
    return _json(metadata)


async def _stored_thumbnail(request: web.Request) -> web.Response:
    """``GET /v1/files/{id}/thumbnail``: the stored WebP thumbnail of a catalogued image,
    with a strong ETag (of its bytes) and a year's caching; 304 when If-None-Match has it."""
    image_id = _image_id(request)
    # read together with the others asked for meanwhile: a page's tiles come at once
    thumbnail = await request.app[SERVICES].thumbnails.get(image_id)
    if thumbnail is None:
        raise NotFoundError(f"no thumbnail of an image with id {image_id}")
    etag = f'"{hashlib.sha256(thumbnail.webp).hexdigest()[:32]}"'
    headers = {hdrs.ETAG: etag, hdrs.CACHE_CONTROL: THUMBNAIL_CACHING}
    if _matches(request.headers.get(hdrs.IF_NONE_MATCH), etag):
        return web.Response(status=304, headers=headers)
    return web.Response(body=thumbnail.webp, content_type="image/webp", headers=headers)


def _matches(if_none_match: str | None, etag: str) -> bool:
    """Whether an If-None-Match header names ``etag`` (weak comparison, as RFC 9110 has
    it for If-None-Match) or is ``*``."""
    if if_none_match is None:
        return False
    tags = {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}
    return etag in tags or "*" in tags


async def _grid(request: web.Request) -> web.Response:
    """``GET /v1/images?sort=newest&limit=60&after=CURSOR&status=ok&...``: a page of the grid."""
    filters = browse.Filters(
        status=_choice_param(request, "status", STATUSES),
        format=_text_param(request, "format"),
        make=_text_param(request, "make"),
        model=_text_param(request, "model"),
        taken_from=_date_param(request, "taken_from"),
        taken_to=_date_param(request, "taken_to"),
        has_gps=_optional_bool_param(request, "gps"),
        url_text=_text_param(request, "url"),
    )
    sort = _choice_param(request, "sort", browse.SORTS) or "newest"
    limit = _int_param(request, "limit", browse.DEFAULT_PAGE_SIZE, 1, browse.MAX_PAGE_SIZE)
    after = _text_param(request, "after")
    page = await request.app[SERVICES].catalogue.run(browse.grid, filters, sort, limit, after)
    return _json({"sort": sort, "images": page.images, "next": page.next})


async def _image_record(request: web.Request) -> web.Response:
    """``GET /v1/images/{id}``: one image's record and metadata object, for the page."""
    image_id = _image_id(request)
    try:
        record = await request.app[SERVICES].catalogue.run(browse.image_record, image_id)
    except ImageNotFoundError as exc:
        raise NotFoundError(str(exc)) from None
    return _json(record)


async def _summary(request: web.Request) -> web.Response:
    """``GET /v1/summary``: the counts that the page charts and offers as filters."""
    return _json(await request.app[SERVICES].catalogue.run(browse.summary))


async def _similar(request: web.Request) -> web.Response:
    """``GET /v1/similar?phash=HEX&max_distance=N&limit=K``: nearest first."""
    hash_hex = _hash_param(request, "phash")
    max_distance = _int_param(request, "max_distance", DEFAULT_MAX_DISTANCE, 0, 64)
    limit = _int_param(request, "limit", DEFAULT_SIMILAR_LIMIT, 1, MAX_LIMIT)
    services = request.app[SERVICES]
    rows = await services.catalogue.run(
        similar,
        hash_hex,
        max_distance,
        limit,
        algorithm=services.settings.extract.hash_algorithm,
    )
    results = [dataclasses.asdict(row) for row in rows]
    return _json({"pHash": hash_hex, "max_distance": max_distance, "results": results})


async def _phash_distance(request: web.Request) -> web.Response:
    """``GET /v1/phash-distance?a=HEX&b=HEX``."""
    a, b = _hash_param(request, "a"), _hash_param(request, "b")
    distance = hashes.distance(a, b)
    return _json({"a": a, "b": b, "distance": distance, "similarity": hashes.similarity(a, b)})


async def _duplicates(request: web.Request) -> web.Response:
    """``GET /v1/duplicates?max_distance=N&limit=K``: the groups the page shows."""
    max_distance = _int_param(
        request, "max_distance", DEFAULT_MAX_DISTANCE, 0, MAX_DUPLICATE_DISTANCE
    )
    limit = _int_param(request, "limit", DEFAULT_GROUPS_LIMIT, 1, MAX_LIMIT)
    groups = await request.app[SERVICES].duplicates.groups(max_distance)
    return _json(
        {
            "max_distance": max_distance,
            "total_groups": len(groups),
            "groups": [_group_json(group) for group in groups[:limit]],
        }
    )


def _group_json(group: DuplicateGroup) -> dict[str, Any]:
    images = [
        {
            "id": member.id,
            "url": member.url,
            "sha256": member.sha256,
            "pHash": member.pHash,
            "distance": member.distance,
            "width": member.width,
            "height": member.height,
            "size": member.size,
            "format": member.format,
            "takenAt": None if member.taken_at is None else member.taken_at.isoformat(),
            "keep": member.keep,
        }
        for member in group.members
    ]
    return {"kind": group.kind, "keep": group.keep, "images": images}


async def _openapi(request: web.Request) -> web.FileResponse:
    return web.FileResponse(OPENAPI_PATH, headers={hdrs.CONTENT_TYPE: "application/json"})


STATIC_TYPES = {".js": "text/javascript", ".css": "text/css", ".json": "application/json"}


async def _static_file(request: web.Request) -> web.FileResponse:
    """``GET /static/NAME``: the page's scripts and styles. (aiohttp's static route answers a
    missing file with an empty 404 of its own, past the JSON error middleware.)"""
    name = request.match_info["name"]
    content_type = STATIC_TYPES.get(Path(name).suffix)
    path = STATIC_DIR / name
    if content_type is None or "/" in name or name.startswith(".") or not path.is_file():
        raise NotFoundError(f"no file {name!r} here")
    return web.FileResponse(path, headers={hdrs.CONTENT_TYPE: f"{content_type}; charset=utf-8"})


async def _index_page(request: web.Request) -> web.FileResponse:
    return web.FileResponse(
        STATIC_DIR / "index.html", headers={hdrs.CONTENT_TYPE: "text/html; charset=utf-8"}
    )
