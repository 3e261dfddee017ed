"""robots.txt (RFC 9309): which URLs of an origin may be fetched, and how slowly.

Rules are parsed with Protego and kept per origin (scheme, host and port) for the most
recent origins, at most a day (RFC 9309: a cached copy should not be used for longer). A
4xx answer means no rules; 5xx and unreachable are the downloader's to retry (meanwhile
nothing is fetched). ``Crawl-delay`` and ``Request-rate`` become the host's delay.
"""

import time
from collections import OrderedDict
from dataclasses import dataclass

from protego import Protego

CACHED_ORIGINS = 10_000
CACHE_SECONDS = 24 * 3600


@dataclass(frozen=True)
class RobotsRules:
    """An origin's rules; ``None`` inside: no rules, everything allowed."""

    parsed: Protego | None = None

    @classmethod
    def from_answer(cls, status: int, text: str) -> "RobotsRules":
        """The rules a robots.txt answer stands for: its text if 2xx, else (4xx) none."""
        return cls(Protego.parse(text) if 200 <= status < 300 else None)

    def allows(self, url: str, agent: str) -> bool:
        return self.parsed is None or bool(self.parsed.can_fetch(url, agent))

    def delay(self, agent: str) -> float | None:
        """Seconds between requests the rules ask of ``agent`` (Crawl-delay, or the
        interval of Request-rate), or None."""
        if self.parsed is None:
            return None
        crawl_delay = self.parsed.crawl_delay(agent)
        rate = self.parsed.request_rate(agent)
        delays = [float(crawl_delay)] if crawl_delay is not None else []
        if rate is not None and rate.requests > 0:
            delays.append(rate.seconds / rate.requests)
        return max(delays, default=None)


class RobotsCache:
    """Rules per origin, for the ``CACHED_ORIGINS`` most recently used, each for a day."""

    def __init__(self) -> None:
        self._rules: OrderedDict[str, tuple[float, RobotsRules]] = OrderedDict()

    def get(self, origin: str) -> RobotsRules | None:
        """The origin's rules, or None when they must be fetched (again)."""
        entry = self._rules.get(origin)
        if entry is None:
            return None
        fetched, rules = entry
        if time.monotonic() - fetched > CACHE_SECONDS:
            del self._rules[origin]
            return None
        self._rules.move_to_end(origin)
        return rules

    def put(self, origin: str, rules: RobotsRules) -> None:
        self._rules[origin] = (time.monotonic(), rules)
        self._rules.move_to_end(origin)
        if len(self._rules) > CACHED_ORIGINS:
            self._rules.popitem(last=False)
