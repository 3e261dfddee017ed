"""The simulated web of ``bench/web.py``: many loopback hosts in one server process, and
the log of every request they get.

    .venv/bin/python -m bench.simulated_web CONFIG.json    (bench/web.py starts it)

One address per host (127.13.0.2, 127.13.0.3, ...: every 127.x.y.z address is its own host
to the crawler), all on one port; a host whose profile is "dead" gets an address on which
nothing listens. Every request is logged: the host (the address it came in on), path, start
(its headers read) and end (its last byte written, or the client gone), both by
``time.monotonic()``, one clock for every process of the machine; status, User-Agent, and
the Retry-After of a 429. On SIGTERM the server writes the log as JSON lines and exits.

A minimal asyncio server on uvloop, not aiohttp's: it shares the two cores with the
crawlers, so it must cost little CPU, and it must notice at once when a client gives up on
an answer.
"""

import asyncio
import contextlib
import dataclasses
import functools
import json
import math
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from bench.crawl import cpu_seconds

REPO = Path(__file__).resolve().parents[1]
IMAGES = REPO / "bench" / ".data" / "web" / "images"
IMAGE_COUNT = 8
ADDRESS_PREFIX = "127.13"  # issue 13; away from 127.0.0.x, which tests use
DRIP_INTERVAL = 0.1  # seconds between two pieces of a slow-drip body
SERVER_START_SECONDS = 15.0
STOP_GRACE_SECONDS = 15.0  # after SIGTERM, before SIGKILL
POLL_SECONDS = 0.05


@dataclass(frozen=True)
class Host:
    """One simulated host: its profile, address and how many image URLs it has."""

    kind: str  # fast, slow, outlast, wide, drip, limited, robots-503, crawl-delay, dead
    urls: int
    latency: float = 0.05  # seconds before each answer (robots.txt is answered at once)
    address: str = ""
    crawl_delay: float = 0.0  # robots.txt's Crawl-delay
    retry_after: float = 0.0  # limited: 429s for this long after its first image request
    robots_outage: float = 0.0  # robots-503: 503s for this long after its first robots request
    drip_seconds: float = 0.0  # drip: each body trickles over this long

    @property
    def served(self) -> bool:
        return self.kind != "dead"


def with_addresses(hosts: Sequence[Host]) -> tuple[Host, ...]:
    return tuple(
        dataclasses.replace(host, address=f"{ADDRESS_PREFIX}.{number // 250}.{number % 250 + 2}")
        for number, host in enumerate(hosts)
    )


@dataclass
class _Answer:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    drip_seconds: float = 0.0


class _Web:
    """What every host answers, and the log of every request."""

    def __init__(self, hosts: Iterable[Host], images: list[bytes]) -> None:
        self.hosts = {host.address: host for host in hosts if host.served}
        self._images = images
        self._opened: dict[tuple[str, str], float] = {}  # (host, what): when it began
        self._log: list[dict[str, Any]] = []
        self._in_flight: dict[int, dict[str, Any]] = {}

    def begin(self, host: Host, path: str, agent: str) -> dict[str, Any]:
        entry = {"host": host.address, "path": path, "start": time.monotonic(), "ua": agent}
        self._in_flight[id(entry)] = entry
        return entry

    def finish(self, entry: dict[str, Any], status: int, complete: bool) -> None:
        entry.update(end=time.monotonic(), status=status, complete=complete)
        del self._in_flight[id(entry)]
        self._log.append(entry)

    def answer(self, host: Host, path: str, now: float) -> _Answer:
        if path == "/robots.txt":
            return self._robots(host, now)
        if not path.startswith("/img/"):
            return _Answer(404)
        if host.kind == "limited":
            until = self._opened.setdefault((host.address, "429"), now) + host.retry_after
            if now < until:
                return _Answer(429, headers={"Retry-After": str(math.ceil(until - now))})
        body = self._images[sum(path.encode()) % len(self._images)]
        return _Answer(200, body, {"Content-Type": "image/jpeg"}, host.drip_seconds)

    def _robots(self, host: Host, now: float) -> _Answer:
        if host.kind == "robots-503":
            opened = self._opened.setdefault((host.address, "robots"), now)
            if now < opened + host.robots_outage:
                return _Answer(503)
        rules = "User-agent: *\n" + (
            f"Crawl-delay: {host.crawl_delay:g}\n" * bool(host.crawl_delay)
        )
        return _Answer(200, (rules + "Allow: /\n").encode(), {"Content-Type": "text/plain"})

    def write_log(self, path: Path) -> None:
        now = time.monotonic()
        with path.open("w") as handle:
            for entry in self._log:
                handle.write(json.dumps(entry) + "\n")
            for entry in self._in_flight.values():  # still being answered at shutdown
                handle.write(json.dumps(entry | {"end": now, "status": 0, "complete": False}))
                handle.write("\n")


class _Connection(asyncio.Protocol):
    """One client connection to one host: HTTP/1.1 GETs, keep-alive, no pipelining needed.

    A protocol rather than streams: the server must see at once when a client gives up on a
    slow answer (it closes the connection), or its log would show that request in flight
    after the crawler had moved on.
    """

    def __init__(self, web: _Web, host: Host) -> None:
        self._web = web
        self._host = host
        self._buffer = bytearray()
        self._readable = asyncio.Event()
        self._closed = asyncio.Event()
        self._transport: asyncio.Transport | None = None
        self._task: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass
        self._task = asyncio.get_running_loop().create_task(self._serve())

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        self._readable.set()

    def eof_received(self) -> None:
        self.connection_lost(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed.set()
        self._readable.set()

    async def _serve(self) -> None:
        assert self._transport is not None
        with contextlib.suppress(ConnectionError):
            while (head := await self._read_head()) is not None:
                if not await self._respond(head):
                    break
        self._transport.close()

    async def _read_head(self) -> bytes | None:
        while (end := self._buffer.find(b"\r\n\r\n")) < 0:
            if self._closed.is_set():
                return None
            self._readable.clear()
            await self._readable.wait()
        head = bytes(self._buffer[:end])
        del self._buffer[: end + 4]
        return head

    async def _respond(self, head: bytes) -> bool:
        """Answer one request; False when the connection is to be closed."""
        lines = head.decode("latin-1").split("\r\n")
        path = lines[0].split(" ")[1] if lines[0].count(" ") >= 2 else "/"
        headers = dict(_header(line) for line in lines[1:])
        entry = self._web.begin(self._host, path, headers.get("user-agent", ""))
        answer = self._web.answer(self._host, path, entry["start"])
        if path != "/robots.txt" and not await self._pause(self._host.latency):
            self._web.finish(entry, answer.status, complete=False)
            return False
        if answer.status == 429:
            entry["retry_after"] = float(answer.headers["Retry-After"])
        complete = await self._send(answer)
        self._web.finish(entry, answer.status, complete)
        return complete and headers.get("connection", "").lower() != "close"

    async def _send(self, answer: _Answer) -> bool:
        reason = {200: "OK", 404: "Not Found", 429: "Too Many Requests"}.get(answer.status, "")
        head = f"HTTP/1.1 {answer.status} {reason or 'Service Unavailable'}\r\n"
        head += f"Content-Length: {len(answer.body)}\r\n"
        head += "".join(f"{name}: {value}\r\n" for name, value in answer.headers.items())
        if not answer.drip_seconds:
            return self._write(head.encode() + b"\r\n" + answer.body)
        pieces = max(1, round(answer.drip_seconds / DRIP_INTERVAL))
        size = math.ceil(len(answer.body) / pieces)
        self._write(head.encode() + b"\r\n")
        for start in range(0, len(answer.body), size):
            if not await self._pause(DRIP_INTERVAL) or not self._write(
                answer.body[start : start + size]
            ):
                return False
        return True

    def _write(self, data: bytes) -> bool:
        if self._closed.is_set() or self._transport is None:
            return False
        self._transport.write(data)
        return True

    async def _pause(self, seconds: float) -> bool:
        """Wait ``seconds``; False at once if the client goes away meanwhile."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._closed.wait(), seconds)
        return not self._closed.is_set()


def _header(line: str) -> tuple[str, str]:
    name, _, value = line.partition(":")
    return name.strip().lower(), value.strip()


async def _listen(web: _Web) -> tuple[list[asyncio.Server], int]:
    """Listen on every served host's address, all on one port (found free on the first)."""
    loop = asyncio.get_running_loop()
    hosts = list(web.hosts.values())
    for _ in range(20):
        servers: list[asyncio.Server] = []
        port = 0
        try:
            for host in hosts:
                connection = functools.partial(_Connection, web, host)
                server = await loop.create_server(connection, host.address, port)
                port = port or server.sockets[0].getsockname()[1]
                servers.append(server)
            return servers, port
        except OSError:  # the port is taken on a later address: try another one
            for server in servers:
                server.close()
    raise SystemExit("cannot find one free port on every host address")


async def _serve_web(config_path: Path) -> None:
    config = json.loads(config_path.read_text())
    hosts = [Host(**host) for host in config["hosts"]]
    web = _Web(hosts, [Path(name).read_bytes() for name in config["images"]])
    servers, port = await _listen(web)
    stop = asyncio.Event()
    for number in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(number, stop.set)
    ready = Path(config["ready"])
    ready.with_suffix(".part").write_text(str(port))
    ready.with_suffix(".part").rename(ready)
    await stop.wait()
    for server in servers:
        server.close()
    web.write_log(Path(config["log"]))


def main() -> None:
    """The server process: runs until SIGTERM, then writes its request log."""
    import uvloop

    uvloop.run(_serve_web(Path(sys.argv[1])))


def make_images() -> list[Path]:
    """Small valid JPEGs (a few KB each), made once."""
    paths = [IMAGES / f"{number}.jpg" for number in range(IMAGE_COUNT)]
    if all(path.exists() for path in paths):
        return paths
    import random

    from PIL import Image

    IMAGES.mkdir(parents=True, exist_ok=True)
    for number, path in enumerate(paths):
        rng = random.Random(number)
        image = Image.linear_gradient("L").resize((160, 120)).convert("RGB")
        noise = Image.effect_noise((160, 120), 30 + 5 * number).convert("RGB")
        tint = Image.new("RGB", (160, 120), tuple(rng.randrange(256) for _ in range(3)))
        Image.blend(Image.blend(image, noise, 0.4), tint, 0.3).save(path, "JPEG", quality=85)
    return paths


class WebServer:
    """The simulated web in its own process, for one run."""

    def __init__(self, hosts: Sequence[Host], images: list[Path], directory: Path) -> None:
        self.log_path = directory / "requests.jsonl"
        ready = directory / "server.ready"
        config = directory / "server.json"
        config.write_text(
            json.dumps(
                {
                    "hosts": [dataclasses.asdict(host) for host in hosts],
                    "images": [str(path) for path in images],
                    "log": str(self.log_path),
                    "ready": str(ready),
                }
            )
        )
        command = [sys.executable, "-m", "bench.simulated_web", str(config)]
        self.process = subprocess.Popen(command, cwd=REPO)
        self.port = self._wait_ready(ready)
        self.cpu_seconds = 0.0

    def _wait_ready(self, ready: Path) -> int:
        deadline = time.monotonic() + SERVER_START_SECONDS
        while not ready.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.process.kill()
                raise SystemExit("the simulated web did not start (see its output above)")
            time.sleep(POLL_SECONDS)
        return int(ready.read_text())

    def stop(self) -> list[dict[str, Any]]:
        """Stop the server; its request log."""
        self.cpu_seconds = cpu_seconds(self.process.pid)
        self.process.terminate()
        try:
            self.process.wait(STOP_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if not self.log_path.exists():
            return []
        return [json.loads(line) for line in self.log_path.read_text().splitlines()]


if __name__ == "__main__":
    main()
