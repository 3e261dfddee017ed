"""Settings: defaults, a TOML file, environment and command-line overrides, in that order.

Every setting has a dotted key (``crawl.concurrency``) that names it in the file, in errors
and in ``config.example.toml``. A bad value raises ``ConfigError`` naming the key.
"""

import dataclasses
import math
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crawler.errors import ConfigError

DEFAULT_DATABASE_URL = "sqlite:///crawler.db"
DATABASE_URL_ENV = "CRAWLER_DATABASE_URL"
CONFIG_PATH_ENV = "CRAWLER_CONFIG"
HASH_ALGORITHMS = ("imagekit", "imagehash")
DEFAULT_HASH_ALGORITHM = HASH_ALGORITHMS[0]


@dataclass(frozen=True)
class DatabaseSettings:
    url: str = DEFAULT_DATABASE_URL
    outage_timeout: float = 300.0  # seconds a crawl waits for its database to come back


@dataclass(frozen=True)
class TimeoutSettings:
    connect: float = 10.0
    read: float = 30.0
    total: float = 120.0
    url: float = 180.0  # one URL's deadline, across tries and redirects


@dataclass(frozen=True)
class RetrySettings:
    attempts: int = 4
    backoff_base: float = 0.5
    backoff_max: float = 30.0
    retry_after_max: float = 120.0
    host_failures: int = 8  # requests in a row that fail to connect before a host is down


@dataclass(frozen=True)
class CrawlSettings:
    concurrency: int = 32
    per_host_concurrency: int = 4
    per_host_delay: float = 0.0
    per_host_delay_max: float = 15.0  # the longest robots.txt Crawl-delay honoured
    user_agent: str = "crawler/0.1 (+https://github.com/crawler-project/crawler)"
    robots: bool = True
    max_redirects: int = 5
    max_size: int = 50 * 1024 * 1024
    extract_workers: int = 0  # 0: one per core
    extract_timeout: float = 60.0
    batch_size: int = 100
    lease_seconds: float = 30.0
    max_url_length: int = 8192
    max_seed_line_length: int = 65536
    timeouts: TimeoutSettings = field(default_factory=TimeoutSettings)
    retries: RetrySettings = field(default_factory=RetrySettings)


@dataclass(frozen=True)
class ExtractSettings:
    pixel_limit: int = 268_402_689  # libvips' and sharp's default: 0x3FFF * 0x3FFF
    hash_algorithm: str = DEFAULT_HASH_ALGORITHM
    memory_limit: int = 1 << 30  # bytes one image's decode may take; each process's cap
    thumbnail_size: int = 192  # longest side of the stored WebP thumbnail in pixels; 0: none


@dataclass(frozen=True)
class ServeSettings:
    host: str = "127.0.0.1"
    port: int = 8080
    api_keys: tuple[str, ...] = ()
    allow_hosts: tuple[str, ...] = ()
    max_upstream_fetches: int = 16
    rate_limit_per_minute: int = 600
    auth_failures_per_minute: int = 10
    header_timeout: float = 10.0
    max_connections: int = 1000
    allow_all_hosts: bool = False


@dataclass(frozen=True)
class Settings:
    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    crawl: CrawlSettings = field(default_factory=CrawlSettings)
    extract: ExtractSettings = field(default_factory=ExtractSettings)
    serve: ServeSettings = field(default_factory=ServeSettings)


def load_settings(
    path: str | Path | None = None, overrides: dict[str, Any] | None = None
) -> Settings:
    """Defaults, then the TOML file (``path``, else ``$CRAWLER_CONFIG``, else ``crawler.toml``
    if present), then ``$CRAWLER_DATABASE_URL``, then ``overrides`` (dotted keys; ``None``
    values are ignored so that unset CLI flags keep the file's value)."""
    values: dict[str, Any] = {}
    config_path = path or os.environ.get(CONFIG_PATH_ENV)
    if config_path is None and Path("crawler.toml").is_file():
        config_path = "crawler.toml"
    if config_path is not None:
        values = _read_toml(Path(config_path))
    if url := os.environ.get(DATABASE_URL_ENV):
        values.setdefault("database", {})["url"] = url
    for dotted, value in (overrides or {}).items():
        if value is not None:
            _set_dotted(values, dotted, value)
    settings = _build(Settings, values, prefix="")
    _validate(settings)
    return settings


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None


def _set_dotted(values: dict[str, Any], dotted: str, value: Any) -> None:
    *sections, key = dotted.split(".")
    for section in sections:
        values = values.setdefault(section, {})
    values[key] = value


# Settings that are gone, and what took their place.
RENAMED = {"crawl.claim_timeout": "crawl.lease_seconds (a lease its crawler's heartbeat renews)"}


def _build(cls: type, values: dict[str, Any], prefix: str) -> Any:
    if not isinstance(values, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a table of settings")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    for name in unknown:
        if (key := f"{prefix}{name}") in RENAMED:
            raise ConfigError(f"{key}: no longer a setting; see {RENAMED[key]}")
    if unknown:
        raise ConfigError(f"{prefix}{unknown[0]}: unknown setting")
    kwargs = {}
    for name, value in values.items():
        kind = fields[name].type
        key = f"{prefix}{name}"
        if isinstance(kind, type) and dataclasses.is_dataclass(kind):
            kwargs[name] = _build(kind, value, prefix=f"{key}.")
        else:
            kwargs[name] = _coerce(key, kind, value)
    return cls(**kwargs)


def _coerce(key: str, kind: Any, value: Any) -> Any:
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if kind is int:
        # int(2.5) would quietly make it 2
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        try:
            return int(value)
        except (TypeError, ValueError, OverflowError):
            raise ConfigError(f"{key}: expected an integer, got {value!r}") from None
    if kind is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected a number, got {value!r}") from None
        if not math.isfinite(number):  # TOML has nan and inf; no setting means either
            raise ConfigError(f"{key}: expected a finite number, got {value!r}")
        return number
    if kind is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    if kind == tuple[str, ...]:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{key}: expected a list of strings, got {value!r}")
        return tuple(value)
    raise ConfigError(f"{key}: unsupported setting type")  # pragma: no cover - table is fixed


DAY = 86_400.0
GIB = 1024**3
MAX_THUMBNAIL_SIZE = 1024


def _bounded(settings: Settings) -> dict[str, tuple[float, float]]:
    """Every number's upper bound. Counts the crawl makes that many tasks, processes or
    buffered results of, and sizes it holds in memory: a typo with three more zeros must be
    an error, not a machine out of memory. Durations: a day at most, which every timer and
    timestamp handles (a TOML integer of 2**63 - 1 seconds would overflow them)."""
    crawl, timeouts, retries, serve = (
        settings.crawl,
        settings.crawl.timeouts,
        settings.crawl.retries,
        settings.serve,
    )
    return {
        "database.outage_timeout": (settings.database.outage_timeout, DAY),
        "crawl.concurrency": (crawl.concurrency, 10_000),
        "crawl.per_host_concurrency": (crawl.per_host_concurrency, 1_000),
        "crawl.per_host_delay": (crawl.per_host_delay, DAY),
        "crawl.per_host_delay_max": (crawl.per_host_delay_max, DAY),
        "crawl.max_redirects": (crawl.max_redirects, 100),
        # A body is held in memory whole; 2 GiB - 1 is also what one read() returns and
        # what the decoders' 32-bit lengths hold.
        "crawl.max_size": (crawl.max_size, 2 * GIB - 1),
        "crawl.extract_workers": (crawl.extract_workers, 256),
        "crawl.extract_timeout": (crawl.extract_timeout, DAY),
        "crawl.batch_size": (crawl.batch_size, 10_000),
        "crawl.lease_seconds": (crawl.lease_seconds, DAY),
        "crawl.max_url_length": (crawl.max_url_length, 1_000_000),
        "crawl.max_seed_line_length": (crawl.max_seed_line_length, 1_000_000),
        "crawl.timeouts.connect": (timeouts.connect, DAY),
        "crawl.timeouts.read": (timeouts.read, DAY),
        "crawl.timeouts.total": (timeouts.total, DAY),
        "crawl.timeouts.url": (timeouts.url, DAY),
        "crawl.retries.attempts": (retries.attempts, 100),
        "crawl.retries.backoff_base": (retries.backoff_base, DAY),
        "crawl.retries.backoff_max": (retries.backoff_max, DAY),
        "crawl.retries.retry_after_max": (retries.retry_after_max, DAY),
        "crawl.retries.host_failures": (retries.host_failures, 1_000),
        "extract.pixel_limit": (settings.extract.pixel_limit, 10**12),  # a terapixel
        "extract.memory_limit": (settings.extract.memory_limit, 1 << 40),  # a terabyte
        # one is stored with every row: a typo must not store a full-size copy of each image
        "extract.thumbnail_size": (settings.extract.thumbnail_size, MAX_THUMBNAIL_SIZE),
        "serve.port": (serve.port, 65_535),
        "serve.max_upstream_fetches": (serve.max_upstream_fetches, 1_000),
        "serve.rate_limit_per_minute": (serve.rate_limit_per_minute, 1_000_000),
        "serve.auth_failures_per_minute": (serve.auth_failures_per_minute, 10_000),
        "serve.header_timeout": (serve.header_timeout, 3_600.0),
        "serve.max_connections": (serve.max_connections, 1_000_000),
    }


def _validate(settings: Settings) -> None:
    positive = {
        "database.outage_timeout": settings.database.outage_timeout,
        "crawl.concurrency": settings.crawl.concurrency,
        "crawl.per_host_concurrency": settings.crawl.per_host_concurrency,
        "crawl.max_size": settings.crawl.max_size,
        "crawl.batch_size": settings.crawl.batch_size,
        "crawl.lease_seconds": settings.crawl.lease_seconds,
        "crawl.max_url_length": settings.crawl.max_url_length,
        "crawl.retries.host_failures": settings.crawl.retries.host_failures,
        "crawl.timeouts.url": settings.crawl.timeouts.url,
        "crawl.extract_timeout": settings.crawl.extract_timeout,
        "crawl.timeouts.connect": settings.crawl.timeouts.connect,
        "crawl.timeouts.read": settings.crawl.timeouts.read,
        "crawl.timeouts.total": settings.crawl.timeouts.total,
        "crawl.retries.attempts": settings.crawl.retries.attempts,
        "extract.pixel_limit": settings.extract.pixel_limit,
        "extract.memory_limit": settings.extract.memory_limit,
        "serve.max_upstream_fetches": settings.serve.max_upstream_fetches,
        "serve.rate_limit_per_minute": settings.serve.rate_limit_per_minute,
        "crawl.max_seed_line_length": settings.crawl.max_seed_line_length,
        "serve.auth_failures_per_minute": settings.serve.auth_failures_per_minute,
        "serve.header_timeout": settings.serve.header_timeout,
        "serve.max_connections": settings.serve.max_connections,
    }
    non_negative = {
        "crawl.per_host_delay": settings.crawl.per_host_delay,
        "crawl.per_host_delay_max": settings.crawl.per_host_delay_max,
        "crawl.max_redirects": settings.crawl.max_redirects,
        "crawl.extract_workers": settings.crawl.extract_workers,
        "crawl.retries.backoff_base": settings.crawl.retries.backoff_base,
        "crawl.retries.backoff_max": settings.crawl.retries.backoff_max,
        "crawl.retries.retry_after_max": settings.crawl.retries.retry_after_max,
        "extract.thumbnail_size": settings.extract.thumbnail_size,
    }
    for key, value in positive.items():
        if value <= 0:
            raise ConfigError(f"{key}: must be greater than 0, got {value}")
    for key, (value, most) in _bounded(settings).items():
        if value > most:
            raise ConfigError(f"{key}: at most {_shown(most)}, got {_shown(value)}")
    for key, value in non_negative.items():
        if value < 0:
            raise ConfigError(f"{key}: must be 0 or more, got {value}")
    _validate_delays(settings.crawl)
    _validate_lengths(settings.crawl)
    _validate_header_text("crawl.user_agent", settings.crawl.user_agent)
    if settings.extract.hash_algorithm not in HASH_ALGORITHMS:
        raise ConfigError(
            f"extract.hash_algorithm: expected one of {', '.join(HASH_ALGORITHMS)}, "
            f"got {settings.extract.hash_algorithm!r}"
        )
    if not 0 < settings.serve.port < 65536:
        raise ConfigError(f"serve.port: expected 1..65535, got {settings.serve.port}")
    if not settings.database.url.strip():
        raise ConfigError("database.url: must not be empty")


def _shown(number: float) -> str:
    return str(number) if isinstance(number, int) else f"{number:g}"


def _validate_lengths(crawl: CrawlSettings) -> None:
    """A seed line is cut before it is parsed; the URL it gives is measured after it is
    normalised (whitespace, a fragment and dot segments gone). A line limit below the URL
    limit would refuse URLs the URL limit allows."""
    if crawl.max_seed_line_length < crawl.max_url_length:
        raise ConfigError(
            f"crawl.max_seed_line_length: at least crawl.max_url_length "
            f"({crawl.max_url_length}), got {crawl.max_seed_line_length}"
        )


# Visible ASCII, with single spaces inside: what an HTTP field value can carry unchanged.
_HEADER_TEXT = re.compile(r"[\x21-\x7e]+(?: [\x21-\x7e]+)*")


def _validate_header_text(key: str, value: str) -> None:
    """Text sent as an HTTP header: a CR or LF in it would end the header (and let it add
    others), and aiohttp refuses control characters in every request."""
    if not _HEADER_TEXT.fullmatch(value):
        raise ConfigError(
            f"{key}: must be printable ASCII, without line breaks, control characters or "
            f"spaces at either end (it is sent as an HTTP header), got {value!r}"
        )


def _validate_delays(crawl: CrawlSettings) -> None:
    """A host's delay must fit in a lease: a crawler starts a request only while its lease
    will still hold when the delay has passed, so the next holder cannot start too soon.
    (A robots.txt Crawl-delay is capped at half the lease too: see ``longest_delay``.)"""
    if crawl.per_host_delay > longest_delay(crawl):
        raise ConfigError(
            f"crawl.per_host_delay: at most half of crawl.lease_seconds "
            f"({longest_delay(crawl):g} s), got {crawl.per_host_delay:g}; "
            "raise crawl.lease_seconds for longer delays"
        )


def longest_delay(crawl: CrawlSettings) -> float:
    """The longest delay a host can be given: half the lease."""
    return crawl.lease_seconds / 2
