"""``crawler serve`` under hostile clients, against the real server on 127.0.0.1: keys that
are too easy to guess, guessing, slow and idle connections, more connections than it may
hold, malformed requests; each refused in a way that costs the server little, with one log
line and the API's JSON error."""

import asyncio
import dataclasses
import json
import logging
import resource
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from crawler import catalogue as catalogue_module
from crawler.catalogue import open_catalogue
from crawler.config import Settings, TimeoutSettings
from crawler.errors import ConfigError
from crawler.extract import extract
from crawler.serve import check_serve_settings, create_app, listening
from crawler.serve_connections import GuardedSite
from crawler.store import CrawlResult, store_results
from tests.dbproxy import DatabaseProxy
from tests.serve_support import TEST_HOSTS, api_settings, make_jpeg, serving
from tests.test_serve import CLEAN_ENV, KEY, ONE, ZERO, key_header

CRAWLER = Path(sys.executable).parent / "crawler"
DISTANCE = f"/v1/phash-distance?a={ZERO}&b={ONE}"
GET_DISTANCE = f"GET {DISTANCE} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'catalogue.db'}"
    open_catalogue(url).close()
    return url


@asynccontextmanager
async def api(settings: Settings) -> AsyncIterator[GuardedSite]:
    async with listening(settings, resolver=TEST_HOSTS) as site:
        yield site


def raw_request(url: URL, data: bytes, timeout: float = 5) -> tuple[int, dict[str, str], dict]:
    """Send ``data`` as it is; the status, headers and JSON body of the answer."""
    with socket.create_connection((url.host, url.port), timeout=timeout) as connection:
        connection.sendall(data)
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in header_lines)
    return int(status_line.split()[1]), headers, json.loads(body)


IMAGE = make_jpeg(3)


def stored_image(url: str) -> CrawlResult:
    extraction = extract(IMAGE)
    return CrawlResult(
        url=url,
        status="ok",
        sha256="ab" * 32,
        fetched_at=datetime.now(UTC),
        metadata=extraction.metadata,
        hash_algorithm=extraction.hash_algorithm,
        thumbnail=extraction.thumbnail,
    )


# Keys


@pytest.mark.parametrize(
    ("keys", "error"),
    [
        ([""], r"serve\.api_keys\[0\]: 0 characters, at least 16"),
        ([KEY, "short"], r"serve\.api_keys\[1\]: 5 characters, at least 16"),
        (["with:colon_0123456789"], r"serve\.api_keys\[0\]: spaces, control characters and ':'"),
        ([" spaced_key_0123456789"], r"serve\.api_keys\[0\]: spaces"),
    ],
)
def test_keys_too_short_or_that_cannot_be_sent_are_refused(keys: list[str], error: str) -> None:
    with pytest.raises(ConfigError, match=error) as caught:
        check_serve_settings(api_settings("sqlite://", api_keys=tuple(keys)).serve)
    assert all(key not in str(caught.value) for key in keys if key)  # a key is a secret


def test_an_empty_key_in_the_config_is_refused_at_start(tmp_path: Path) -> None:
    config = tmp_path / "crawler.toml"
    config.write_text('[serve]\napi_keys = [""]\nhost = "0.0.0.0"\n')
    database = tmp_path / "c.db"
    open_catalogue(str(database)).close()
    command = [str(CRAWLER), "--config", str(config), "--db", str(database), "serve"]
    finished = subprocess.run(command, env=CLEAN_ENV, capture_output=True, text=True, timeout=30)
    assert (finished.returncode, finished.stdout) == (1, "")
    assert finished.stderr.startswith("Error: serve.api_keys[0]: 0 characters, at least 16")
    assert finished.stderr.count("\n") == 1


async def test_wrong_keys_get_429_after_the_burst_from_that_address_only(
    sqlite_url: str,
) -> None:
    settings = api_settings(sqlite_url, api_keys=(KEY,), auth_failures_per_minute=10, port=0)
    async with api(settings) as site, aiohttp.ClientSession() as client:
        url = URL(site.url).with_path("/v1/phash-distance").with_query(a=ZERO, b=ONE)

        async def status_with(key: str) -> tuple[int, str | None]:
            async with client.get(url, headers=key_header(key)) as response:
                body = await response.json()
                assert set(body) == {"message", "help"}
                return response.status, response.headers.get("Retry-After")

        started = time.monotonic()
        answers = [await status_with(f"guess-{n:04d}-0123456789") for n in range(1000)]
        seconds = time.monotonic() - started
        assert Counter(status for status, _ in answers) == {401: 10, 429: 990}
        assert [status for status, _ in answers[:10]] == [401] * 10
        assert all(int(retry) >= 1 for status, retry in answers if status == 429)
        assert (await status_with(KEY))[0] == 429  # the address is throttled, whatever it sends
        other = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
        async with (
            aiohttp.ClientSession(connector=other) as elsewhere,
            elsewhere.get(url, headers=key_header(KEY)) as response,
        ):
            assert response.status == 200
    assert seconds < 20


async def test_thumbnails_do_not_count_against_the_rate_limit_but_need_the_key(
    sqlite_url: str,
) -> None:
    with open_catalogue(sqlite_url) as catalogue:
        store_results(catalogue, [stored_image("https://images.test/a.jpg")])
    settings = api_settings(sqlite_url, api_keys=(KEY,), rate_limit_per_minute=10, port=0)
    async with (
        api(settings) as site,
        aiohttp.ClientSession(headers=key_header(KEY)) as client,
        aiohttp.ClientSession() as anonymous,
    ):
        base = URL(site.url)

        async def status_of(path: str, session: aiohttp.ClientSession = client) -> int:
            async with session.get(base.with_path(path)) as response:
                await response.read()
                return response.status

        # a grid of 60 tiles: six times the rate limit, asked for at once
        tiles = [status_of("/v1/files/1/thumbnail") for _ in range(60)]
        assert await asyncio.gather(*tiles) == [200] * 60
        metadata = [await status_of("/v1/files/1/metadata") for _ in range(11)]
        assert metadata == [200] * 10 + [429]
        assert await status_of("/v1/files/1/thumbnail") == 200
        assert await status_of("/v1/files/1/thumbnail", anonymous) == 401


# Malformed requests


async def test_malformed_requests_get_json_errors_and_one_log_line_each(
    sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    malformed = {
        "a request line over 8 KB": b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
        "a header over 8 KB": b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 9000 + b"\r\n\r\n",
        "TLS to the HTTP port": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\0" * 40,
        "a header without a colon": b"GET / HTTP/1.1\r\nHost: x\r\nnonsense\r\n\r\n",
        "a bad method": b"G(T / HTTP/1.1\r\nHost: x\r\n\r\n",
    }
    async with api(api_settings(sqlite_url, port=0)) as site:
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            for name, data in malformed.items():
                status, headers, body = await asyncio.to_thread(raw_request, URL(site.url), data)
                assert status == 400, name
                assert headers["Content-Type"].startswith("application/json"), name
                assert set(body) == {"message", "help"} and len(body["message"]) < 300, name
                assert headers["X-Content-Type-Options"] == "nosniff"
        records = [r for r in caplog.records if r.name == "crawler.serve_connections"]
    assert len(records) == len(malformed)
    assert all(r.exc_info is None and "\n" not in r.getMessage() for r in records)
    assert "over 8190 bytes" in records[0].getMessage()


async def test_unknown_routes_and_methods_are_json_too(sqlite_url: str) -> None:
    async with api(api_settings(sqlite_url, port=0)) as site:
        base = URL(site.url)
        for request, expected in [
            (b"GET /nothing HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 404),
            (b"DELETE /v1/similar HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 405),
            (b"GET /static/none.js HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 404),
        ]:
            status, _, body = await asyncio.to_thread(raw_request, base, request)
            assert (status, set(body)) == (expected, {"message", "help"})


# Slow, idle and too many connections


def closed_by_server(connection: socket.socket, within: float) -> bool:
    connection.settimeout(within)
    try:
        return connection.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


async def test_idle_and_trickling_connections_are_closed_after_the_header_timeout(
    sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    settings = api_settings(sqlite_url, port=0, header_timeout=1.0)
    async with api(settings) as site:
        base = URL(site.url)
        idle = socket.create_connection((base.host, base.port))
        trickling = socket.create_connection((base.host, base.port))
        trickling.sendall(b"GET / HTTP/1.1\r\n")
        with caplog.at_level(logging.WARNING):
            started = time.monotonic()
            for _ in range(4):  # a byte every 0.3 s, never a whole request
                await asyncio.sleep(0.3)
                trickling.sendall(b"X")
            assert await asyncio.to_thread(closed_by_server, trickling, 2.0)
            assert await asyncio.to_thread(closed_by_server, idle, 2.0)
            waited = time.monotonic() - started
        status, _, _ = await asyncio.to_thread(raw_request, base, GET_DISTANCE)
    idle.close()
    trickling.close()
    assert status == 200
    assert waited < 3.5
    [record] = [r for r in caplog.records if "serve.header_timeout" in r.getMessage()]
    assert record.exc_info is None  # the idle one is closed without a warning


async def test_past_max_connections_the_longest_waiting_is_closed(
    sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    settings = api_settings(sqlite_url, port=0, max_connections=20)
    async with api(settings) as site:
        base = URL(site.url)
        waiting = [socket.create_connection((base.host, base.port)) for _ in range(20)]
        await asyncio.sleep(0.2)
        with caplog.at_level(logging.WARNING):
            status, _, _ = await asyncio.to_thread(raw_request, base, GET_DISTANCE)
            assert await asyncio.to_thread(closed_by_server, waiting[0], 2.0)
        assert not await asyncio.to_thread(closed_by_server, waiting[1], 0.2)
        for connection in waiting:
            connection.close()
    assert status == 200
    assert any("to make room" in r.getMessage() for r in caplog.records)


async def test_when_every_connection_is_busy_a_new_one_gets_503(sqlite_url: str) -> None:
    release = asyncio.Event()

    async def held(_request: web.Request) -> web.Response:
        await release.wait()
        return web.Response(body=make_jpeg(1), content_type="image/jpeg")

    upstream = web.Application()
    upstream.router.add_get("/held.jpg", held)
    async with serving(upstream) as upstream_url:
        settings = api_settings(
            sqlite_url,
            port=0,
            max_connections=3,
            max_upstream_fetches=4,
            allow_hosts=(f"127.0.0.1:{upstream_url.port}",),
        )
        patient = TimeoutSettings(connect=2.0, read=20.0, total=30.0)  # held, not timed out
        settings = dataclasses.replace(
            settings, crawl=dataclasses.replace(settings.crawl, timeouts=patient)
        )
        async with api(settings) as site, aiohttp.ClientSession() as client:
            url = URL(site.url).with_path("/v1/metadata").with_query(url=f"{upstream_url}/held.jpg")
            busy = [asyncio.ensure_future(client.get(url)) for _ in range(3)]
            await asyncio.sleep(0.5)
            status, headers, body = await asyncio.to_thread(
                raw_request, URL(site.url), GET_DISTANCE
            )
            release.set()
            answers = await asyncio.gather(*busy)
            assert [answer.status for answer in answers] == [200] * 3
            for answer in answers:
                answer.release()
    assert (status, headers["Retry-After"]) == (503, "1")
    assert "3 connections open" in body["message"]


# 1,000 slow connections against `crawler serve` at a 1,024-descriptor limit


@contextmanager
def descriptors(at_least: int) -> Iterator[None]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < at_least:
        pytest.skip(f"needs {at_least} file descriptors; the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, at_least), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def limit_descriptors_to_1024() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024))


class Trickler:
    """Many connections that each send a request line and then a byte now and then,
    never finishing their headers (slowloris)."""

    def __init__(self, address: tuple[str, int], count: int, every: float = 0.5) -> None:
        self.connections = []
        for _ in range(count):
            connection = socket.create_connection(address)
            connection.sendall(b"GET / HTTP/1.1\r\nHost: slow\r\nX-Slow: ")
            self.connections.append(connection)
        self.closed_by_server = 0
        self._every = every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._trickle, daemon=True)
        self._thread.start()

    def _trickle(self) -> None:
        alive = list(self.connections)
        while not self._stop.wait(self._every):
            still = []
            for connection in alive:
                try:
                    connection.sendall(b"z")
                    still.append(connection)
                except OSError:  # the server closed it
                    self.closed_by_server += 1
            alive = still

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for connection in self.connections:
            connection.close()


def timed_get(url: str) -> float:
    started = time.monotonic()
    with socket.create_connection((URL(url).host, URL(url).port), timeout=10) as connection:
        connection.sendall(GET_DISTANCE)
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    return time.monotonic() - started


@pytest.mark.timeout(60)
def test_1000_slow_connections_do_not_delay_a_normal_request(tmp_path: Path) -> None:
    database = tmp_path / "c.db"
    open_catalogue(str(database)).close()
    config = tmp_path / "crawler.toml"
    config.write_text("[serve]\nheader_timeout = 4.0\n")
    port = free_port()
    command = [str(CRAWLER), "--config", str(config), "--db", str(database), "serve"]
    log_file = tmp_path / "serve.log"
    with (
        descriptors(4096),
        log_file.open("w") as errors,
        subprocess.Popen(
            [*command, "--port", str(port)],
            env=CLEAN_ENV,
            stdout=subprocess.PIPE,
            stderr=errors,
            text=True,
            preexec_fn=limit_descriptors_to_1024,
        ) as server,
    ):
        try:
            assert server.stdout is not None
            url = server.stdout.readline().split()[2]  # "Serving on URL (Ctrl-C stops)"
            baseline = [timed_get(url) for _ in range(5)]
            started = time.monotonic()
            slow = Trickler(("127.0.0.1", port), 1000)
            opened = time.monotonic() - started
            try:
                during = []
                while time.monotonic() - started < 3.5:  # before the header timeout
                    during.append(timed_get(url))
                    time.sleep(0.2)
                time.sleep(4.0 + 2.0)  # header_timeout and a sweep later
                closed = slow.closed_by_server
            finally:
                slow.close()
            after = timed_get(url)
        finally:
            server.send_signal(2)
            server.wait(15)
    log = log_file.read_text()
    assert max(during) < 1.0, f"opened in {opened:.2f} s; {baseline=}; {during=}"
    assert after < 1.0
    assert closed == 1000  # by the cap (the oldest waiting first) or by the header timeout
    assert "Traceback" not in log
    assert log.count("\n") <= 1000 + 20  # a line per closed connection at most
    assert server.returncode == 0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_a_descriptor_limit_too_low_for_any_connection_is_one_line(tmp_path: Path) -> None:
    database = tmp_path / "c.db"
    open_catalogue(str(database)).close()
    command = [str(CRAWLER), "--db", str(database), "serve", "--port", str(free_port())]

    def limit_to_64() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))

    finished = subprocess.run(
        command, env=CLEAN_ENV, capture_output=True, text=True, timeout=30, preexec_fn=limit_to_64
    )
    assert (finished.returncode, finished.stdout) == (1, "")
    assert finished.stderr.startswith("Error: serve.max_connections: the descriptor limit (64")
    assert finished.stderr.count("\n") == 1


def test_create_app_checks_the_serve_settings(sqlite_url: str) -> None:
    with pytest.raises(ConfigError, match=r"serve\.allow_hosts: .*every IPv4 address"):
        create_app(api_settings(sqlite_url, allow_hosts=("0.0.0.0/0",)))
    create_app(api_settings(sqlite_url, allow_hosts=("0.0.0.0/0",), allow_all_hosts=True))


# The catalogue's database away, and back


async def image_response(_request: web.Request) -> web.Response:
    return web.Response(body=IMAGE, content_type="image/jpeg")


async def until_status(get: Callable[[], Awaitable[int]], wanted: int, seconds: float) -> float:
    """Seconds until ``get()`` answers ``wanted``, asking every 0.1 s; fails after ``seconds``."""
    started = time.monotonic()
    while (status := await get()) != wanted:
        assert time.monotonic() - started < seconds, f"still {status} after {seconds} s"
        await asyncio.sleep(0.1)
    return time.monotonic() - started


@pytest.mark.postgres
async def test_serve_answers_503_while_postgresql_is_away_and_recovers_by_itself(
    postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    with open_catalogue(postgres_url) as catalogue:
        store_results(catalogue, [stored_image("https://images.test/a.jpg")])
    with DatabaseProxy(postgres_url) as proxy:
        async with (
            api(api_settings(proxy.url, port=0)) as site,
            aiohttp.ClientSession() as client,
        ):
            base = URL(site.url)

            async def status_of(path: str) -> int:
                async with client.get(base.with_path(path)) as response:
                    body = await response.json()
                    if response.status == 503:
                        assert int(response.headers["Retry-After"]) >= 1
                        assert "catalogue is unreachable" in body["message"]
                    return response.status

            assert await status_of("/v1/files/1/metadata") == 200
            with caplog.at_level(logging.WARNING):
                proxy.cut()  # as a restart: every connection dropped, new ones refused
                started = time.monotonic()
                outage = [await status_of("/v1/files/1/metadata") for _ in range(5)]
                outage.append(await status_of("/v1/duplicates"))
                answered_in = time.monotonic() - started
                async with client.get(
                    base.with_path("/v1/phash-distance").with_query(a=ZERO, b=ONE)
                ) as response:
                    assert response.status == 200  # what needs no database is answered
                await asyncio.sleep(1.0)
                proxy.restore()
                recovered_in = await until_status(
                    lambda: status_of("/v1/files/1/metadata"), 200, seconds=10
                )
            async with client.get(base.with_path("/v1/similar").with_query(phash=ZERO)) as response:
                assert response.status == 200
    assert outage == [503] * 6
    assert answered_in < 5  # none of them waited on the database
    assert recovered_in < 5
    messages = [r.getMessage() for r in caplog.records if r.name == "crawler.serve"]
    assert [m.split(" (")[0] for m in messages] == [
        "the catalogue is unreachable",
        "the catalogue is reachable again",
    ]


async def test_serve_answers_503_while_sqlite_is_locked_past_its_busy_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(catalogue_module, "SQLITE_BUSY_TIMEOUT_MS", 200)
    path = tmp_path / "c.db"
    open_catalogue(str(path)).close()
    upstream = web.Application()
    upstream.router.add_get("/a.jpg", image_response)
    async with serving(upstream) as upstream_url:
        settings = api_settings(
            f"sqlite:///{path}", port=0, allow_hosts=(f"127.0.0.1:{upstream_url.port}",)
        )
        async with api(settings) as site, aiohttp.ClientSession() as client:
            url = URL(site.url).with_path("/v1/metadata")
            query = {"url": f"{upstream_url}/a.jpg", "store": "true"}

            async def store() -> int:
                async with client.get(url.with_query(query)) as response:
                    return response.status

            holder = sqlite3.connect(path, isolation_level=None)
            holder.execute("BEGIN IMMEDIATE")  # another program's long write transaction
            try:
                locked = await store()
            finally:
                holder.execute("ROLLBACK")
                holder.close()
            recovered_in = await until_status(store, 200, seconds=10)
    assert locked == 503
    assert recovered_in < 5
