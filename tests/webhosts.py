"""Many web hosts on loopback, for scheduling and politeness tests: one aiohttp server that
listens on several 127.0.0.x addresses (a distinct host each, to the crawler) and logs
every request with its host, path, start and end, as the remote sites would see them.

Each host has a ``Profile``: how long an image takes to answer, a first stretch of time
in which it answers 429 with Retry-After, how many times its robots.txt answers 503 before
it answers 200, and a Crawl-delay. Routes: ``/robots.txt`` and ``/img/N.jpg`` (any N, the
same small JPEG), and paths as long as you like (the server accepts long request lines).
Runs its own event loop in a thread, so crawler subprocesses can use it.
"""

import asyncio
import itertools
import threading
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Self

from aiohttp import web

JPEG = (Path(__file__).resolve().parents[1] / "samples" / "images" / "first-640px.jpg").read_bytes()
ADDRESSES = (f"127.0.0.{n}" for n in itertools.count(2))  # 127.0.0.1 is everyone's


@dataclass(frozen=True)
class Profile:
    seconds: float = 0.0  # per answer to an image request
    throttle_for: float = 0.0  # 429 with Retry-After for this long after its first request
    retry_after: int = 0
    robots_unavailable: int = 0  # robots.txt answers 503 this many times first
    crawl_delay: float | None = None


@dataclass(frozen=True)
class Request:
    host: str
    path: str
    start: float
    end: float
    status: int


@dataclass
class _HostState:
    profile: Profile
    first_request: float | None = None
    robots_requests: int = 0
    in_flight: int = 0
    most_in_flight: int = 0


class WebHosts:
    """``hosts`` maps a name to a profile; ``url(name, path)`` is a URL on that host."""

    def __init__(self, hosts: dict[str, Profile]) -> None:
        self._addresses = {name: next(ADDRESSES) for name in hosts}
        self._state = {self._addresses[name]: _HostState(p) for name, p in hosts.items()}
        self.log: list[Request] = []
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None

    def address(self, name: str) -> str:
        return self._addresses[name]

    def url(self, name: str, path: str) -> str:
        return f"http://{self._addresses[name]}:{self.port}{path}"

    def images(self, name: str, count: int) -> list[str]:
        return [self.url(name, f"/img/{n}.jpg") for n in range(count)]

    def most_in_flight(self, name: str) -> int:
        return self._state[self._addresses[name]].most_in_flight

    def requests(self, name: str, prefix: str = "/img/") -> list[Request]:
        address = self._addresses[name]
        return [r for r in self.log if r.host == address and r.path.startswith(prefix)]

    def hits(self) -> Counter[str]:
        """Requests per URL, over every host."""
        return Counter(f"http://{r.host}:{self.port}{r.path}" for r in self.log)

    def __enter__(self) -> Self:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=10)
        return self

    def __exit__(self, *exc_info: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_get("/robots.txt", self._robots)
        app.router.add_get("/{path:.*}", self._image)
        self._runner = web.AppRunner(
            app,
            shutdown_timeout=0.5,
            handler_cancellation=True,
            access_log=None,
            max_line_size=65536,
        )
        await self._runner.setup()
        for number, address in enumerate(self._state):
            site = web.TCPSite(self._runner, address, self.port)
            await site.start()
            if number == 0:
                self.port = self._runner.addresses[0][1]

    async def _stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _robots(self, request: web.Request) -> web.StreamResponse:
        state = self._state[request.host.split(":")[0]]
        state.robots_requests += 1
        if state.robots_requests <= state.profile.robots_unavailable:
            return self._logged(request, time.monotonic(), web.Response(status=503))
        rules = "User-agent: *\nDisallow: /private/\n"
        if state.profile.crawl_delay is not None:
            rules += f"Crawl-delay: {state.profile.crawl_delay:g}\n"
        return self._logged(request, time.monotonic(), web.Response(text=rules))

    async def _image(self, request: web.Request) -> web.StreamResponse:
        started = time.monotonic()
        state = self._state[request.host.split(":")[0]]
        state.first_request = state.first_request or started
        state.in_flight += 1
        state.most_in_flight = max(state.most_in_flight, state.in_flight)
        try:
            profile = state.profile
            await asyncio.sleep(profile.seconds)
            if started < state.first_request + profile.throttle_for:
                response = web.Response(
                    status=429, headers={"Retry-After": str(profile.retry_after)}
                )
                return self._logged(request, started, response)
            return self._logged(
                request, started, web.Response(body=JPEG, content_type="image/jpeg")
            )
        finally:
            state.in_flight -= 1

    def _logged(self, request: web.Request, started: float, response: web.Response) -> web.Response:
        host = request.host.split(":")[0]
        self.log.append(Request(host, request.path_qs, started, time.monotonic(), response.status))
        return response

    def throttle_windows(self, name: str) -> list[tuple[float, float]]:
        """From each 429 answer of the host to the end of its Retry-After."""
        retry_after = self._state[self._addresses[name]].profile.retry_after
        answers = [r for r in self.requests(name) if r.status == 429]
        return [(answer.end, answer.end + retry_after) for answer in answers]


def starts(requests: Iterable[Request]) -> list[float]:
    return sorted(request.start for request in requests)


def gaps(requests: Iterable[Request]) -> list[float]:
    times = starts(requests)
    return [later - earlier for earlier, later in itertools.pairwise(times)]
