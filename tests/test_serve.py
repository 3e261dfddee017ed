"""``crawler serve`` against the running server on 127.0.0.1: every endpoint, every error
status, auth on and off, limits, and request-forgery attempts that must reach nothing."""

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from click.testing import CliRunner
from yarl import URL

from crawler.catalogue import open_catalogue
from crawler.cli import cli
from crawler.config import ExtractSettings, ServeSettings, Settings
from crawler.errors import ConfigError
from crawler.extract import extract
from crawler.serve import DuplicatesCache, RateLimiter, check_listen_address, create_app
from crawler.store import store_results
from tests.hostile_images import HOSTILE
from tests.serve_support import TEST_HOSTS, UpstreamServer, api_settings, make_jpeg, serving
from tests.slow_image import interlaced_png
from tests.test_duplicates import BASE, image, near
from tests.test_hostile import peak_rss

IMAGES = {
    "a.jpg": make_jpeg(1),
    "a-near.jpg": make_jpeg(1, touch=40),
    "b.jpg": make_jpeg(2),
}
ZERO, ONE = "0000000000000000", "0000000000000001"
KEY = "private_key_0123456789"
OTHER_KEY = "another_key_0123456789"


@dataclass
class Running:
    """The API under test, and a client session for it."""

    url: URL
    client: aiohttp.ClientSession

    async def get(self, path: str, **params: str) -> tuple[int, dict, aiohttp.ClientResponse]:
        async with self.client.get(self.url.with_path(path).with_query(params)) as response:
            return response.status, await response.json(), response


@asynccontextmanager
async def api(settings: Settings, key: str | None = None) -> AsyncIterator[Running]:
    """The API over the catalogue of ``settings``, made first if need be (the server itself
    refuses a catalogue that does not exist)."""
    await asyncio.to_thread(lambda: open_catalogue(settings.database.url).close())
    async with (
        serving(create_app(settings, resolver=TEST_HOSTS)) as url,
        aiohttp.ClientSession(headers=key_header(key)) as client,
    ):
        yield Running(url, client)


def key_header(key: str | None) -> dict[str, str]:
    """ImageKit's scheme: the private key as the Basic user name, no password."""
    return {} if key is None else {"Authorization": aiohttp.encode_basic_auth(key, "")}


@pytest.fixture
async def upstream() -> AsyncIterator[tuple[UpstreamServer, URL]]:
    server = UpstreamServer(IMAGES)
    async with serving(server.app) as url:
        yield server, url


@pytest.fixture
async def victim() -> AsyncIterator[tuple[UpstreamServer, URL]]:
    """A loopback server that request forgery would reach: it must receive nothing."""
    server = UpstreamServer(IMAGES)
    async with serving(server.app) as url:
        yield server, url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'catalogue.db'}"


def allowing(url: URL) -> tuple[str, ...]:
    return (f"127.0.0.1:{url.port}",)


def assert_error(status: int, body: dict, expected: int, fragment: str) -> None:
    assert status == expected, body
    assert set(body) == {"message", "help"}
    assert fragment in body["message"]
    assert body["help"]


async def test_metadata_of_a_url_is_the_extracted_object_and_is_not_stored(
    upstream: tuple[UpstreamServer, URL], sqlite_url: str
) -> None:
    server, base = upstream
    async with api(api_settings(sqlite_url, allow_hosts=allowing(base))) as running:
        status, body, response = await running.get("/v1/metadata", url=str(base / "img/a.jpg"))
        assert status == 200
        assert response.content_type == "application/json"
        assert body == extract(IMAGES["a.jpg"]).metadata
        status, similar, _ = await running.get("/v1/similar", phash=body["pHash"])
    assert similar["results"] == []
    assert server.requests["/img/a.jpg"] == 1


async def test_store_true_catalogues_the_image_for_the_other_endpoints(
    upstream: tuple[UpstreamServer, URL], db_url: str
) -> None:
    _, base = upstream
    image_url = str(base / "img/a.jpg")
    async with api(api_settings(db_url, allow_hosts=allowing(base))) as running:
        status, metadata, _ = await running.get("/v1/metadata", url=image_url, store="true")
        assert status == 200
        status, found, _ = await running.get("/v1/similar", phash=metadata["pHash"])
        assert status == 200
        [match] = found["results"]
        assert (match["url"], match["distance"], match["similarity"]) == (image_url, 0, 1.0)
        status, stored, _ = await running.get(f"/v1/files/{match['id']}/metadata")
    assert status == 200
    assert stored == metadata


async def test_similar_and_duplicates_find_the_near_duplicate(
    upstream: tuple[UpstreamServer, URL], sqlite_url: str
) -> None:
    _, base = upstream
    async with api(api_settings(sqlite_url, allow_hosts=allowing(base))) as running:
        hashes = {}
        for name in IMAGES:
            _, body, _ = await running.get("/v1/metadata", url=str(base / "img" / name), store="1")
            hashes[name] = body["pHash"]
            if name == "a.jpg":
                _, before, _ = await running.get("/v1/duplicates")
        near = bin(int(hashes["a.jpg"], 16) ^ int(hashes["a-near.jpg"], 16)).count("1")
        far = bin(int(hashes["a.jpg"], 16) ^ int(hashes["b.jpg"], 16)).count("1")
        assert 0 < near < 10 < far  # the generated images are what the test needs
        _, body, _ = await running.get("/v1/similar", phash=hashes["a.jpg"], max_distance="10")
        assert [r["url"].rsplit("/", 1)[1] for r in body["results"]] == ["a.jpg", "a-near.jpg"]
        assert [r["distance"] for r in body["results"]] == [0, near]
        assert body["results"][1]["similarity"] == 1 - near / 64
        _, limited, _ = await running.get("/v1/similar", phash=hashes["a.jpg"], limit="1")
        assert len(limited["results"]) == 1
        _, everything, _ = await running.get(
            "/v1/similar", phash=hashes["a.jpg"], max_distance="64"
        )
        assert len(everything["results"]) == 3
        status, after, _ = await running.get("/v1/duplicates", max_distance="10")
    assert before == {"max_distance": 10, "total_groups": 0, "groups": []}
    assert status == 200
    [group] = after["groups"]
    assert (after["total_groups"], group["kind"]) == (1, "similar")
    # The same pixels: the larger file is the copy to keep, listed first.
    kept, other = sorted(["a.jpg", "a-near.jpg"], key=lambda name: -len(IMAGES[name]))
    assert len(IMAGES[kept]) > len(IMAGES[other])
    names = [image["url"].rsplit("/", 1)[1] for image in group["images"]]
    assert names == [kept, other]
    assert group["keep"] == group["images"][0]["id"]
    assert [image["keep"] for image in group["images"]] == [True, False]
    assert [image["distance"] for image in group["images"]] == [0, near]
    assert [
        (image["width"], image["height"], image["size"], image["format"], image["takenAt"])
        for image in group["images"]
    ] == [(96, 64, len(IMAGES[name]), "jpg", None) for name in names]


async def test_duplicate_images_carry_their_details_and_the_copy_to_keep(
    sqlite_url: str,
) -> None:
    with open_catalogue(sqlite_url) as catalogue:
        store_results(
            catalogue,
            [
                image("old.jpg", BASE, 1024, 768, 200_000, taken="2019:07:14 08:30:00"),
                image("new.jpg", near(BASE, 3, 1), 2048, 1536, 150_000),
            ],
        )
    async with api(api_settings(sqlite_url)) as running:
        status, body, _ = await running.get("/v1/duplicates")
    assert status == 200
    [group] = body["groups"]
    assert group == {
        "kind": "similar",
        "keep": 2,
        "images": [
            {
                "id": 2,
                "url": "https://a.test/new.jpg",
                "sha256": "new.jpg".ljust(64, "0"),
                "pHash": f"{near(BASE, 3, 1):016x}",
                "distance": 0,
                "width": 2048,
                "height": 1536,
                "size": 150_000,
                "format": "jpg",
                "takenAt": None,
                "keep": True,
            },
            {
                "id": 1,
                "url": "https://a.test/old.jpg",
                "sha256": "old.jpg".ljust(64, "0"),
                "pHash": f"{BASE:016x}",
                "distance": 3,
                "width": 1024,
                "height": 768,
                "size": 200_000,
                "format": "jpg",
                "takenAt": "2019-07-14T08:30:00",
                "keep": False,
            },
        ],
    }


async def test_duplicates_are_computed_once_for_concurrent_callers_and_kept() -> None:
    calls: list[int] = []
    release = asyncio.Event()
    now = [0.0]

    async def compute(max_distance: int) -> list:
        calls.append(max_distance)
        await release.wait()
        return [f"groups at {max_distance}"]

    cache = DuplicatesCache(compute, ttl=60, clock=lambda: now[0])
    waiting = [asyncio.ensure_future(cache.groups(10)) for _ in range(3)]
    await asyncio.sleep(0)
    release.set()
    assert [await task for task in waiting] == [["groups at 10"]] * 3
    assert calls == [10]
    now[0] = 59.0
    await cache.groups(10)
    assert calls == [10]
    now[0] = 61.0  # expired
    await cache.groups(10)
    cache.invalidate()
    await cache.groups(10)
    assert calls == [10, 10, 10]


async def test_a_failed_grouping_is_not_kept() -> None:
    attempts: list[int] = []

    async def compute(max_distance: int) -> list:
        attempts.append(max_distance)
        if len(attempts) == 1:
            raise RuntimeError("database went away")
        return []

    cache = DuplicatesCache(compute)
    with pytest.raises(RuntimeError):
        await cache.groups(4)
    assert await cache.groups(4) == []


async def test_phash_distance_gives_imagekits_documented_values(sqlite_url: str) -> None:
    async with api(api_settings(sqlite_url)) as running:
        _, far, _ = await running.get(
            "/v1/phash-distance", a="63433b3ccf8e1ebe", b="f5d2226cd9d32b16"
        )
        _, near, _ = await running.get(
            "/v1/phash-distance", a="63433B3CCF8E1EBE", b="61433b3fcf8f9faf"
        )
    assert (far["distance"], far["similarity"]) == (27, 0.578125)
    assert (near["a"], near["distance"], near["similarity"]) == ("63433b3ccf8e1ebe", 8, 0.875)


@pytest.mark.parametrize(
    ("path", "params", "fragment"),
    [
        ("/v1/phash-distance", {"a": "63433b3ccf8e1ebe"}, "parameter b is required"),
        ("/v1/phash-distance", {"a": "xyz", "b": ZERO}, "bad pHash"),
        ("/v1/phash-distance", {"a": "3433b3ccf8e1ebe", "b": ZERO}, "expected 16 hex digits"),
        ("/v1/similar", {"phash": "12345678901234567"}, "bad pHash"),
        ("/v1/similar", {"phash": ZERO, "max_distance": "65"}, "max_distance: expected 0..64"),
        ("/v1/similar", {"phash": ZERO, "limit": "0"}, "limit: expected 1..1000"),
        ("/v1/similar", {"phash": ZERO, "limit": "ten"}, "limit: expected an integer"),
        ("/v1/duplicates", {"max_distance": "-1"}, "max_distance"),
        ("/v1/duplicates", {"max_distance": "17"}, "max_distance: expected 0..16"),
        ("/v1/duplicates", {"limit": "0"}, "limit: expected 1..1000"),
        ("/v1/metadata", {}, "parameter url is required"),
        ("/v1/metadata", {"url": "https://example.com/a.jpg", "store": "maybe"}, "store"),
        ("/v1/metadata", {"url": "file:///etc/passwd"}, "only http and https"),
        ("/v1/metadata", {"url": "/etc/passwd"}, "only http and https"),
        ("/v1/metadata", {"url": "http://"}, "refusing to fetch"),
        ("/v1/metadata", {"url": "http://\U000f678a.test/a.jpg"}, "not a valid URL"),
        ("/v1/metadata", {"url": "http://example.com:99999/a.jpg"}, "not a valid URL"),
        ("/v1/metadata", {"url": "http://[::1]:80x@/a.jpg"}, "not a valid URL"),
    ],
)
async def test_bad_parameters_are_400_with_a_json_error(
    sqlite_url: str, path: str, params: dict[str, str], fragment: str
) -> None:
    async with api(api_settings(sqlite_url)) as running:
        status, body, _ = await running.get(path, **params)
    assert_error(status, body, 400, fragment)


@pytest.mark.parametrize(
    ("path", "expected", "fragment"),
    [
        ("/page.html", 415, "not an image"),
        ("/huge.jpg", 413, "crawl.max_size"),
        ("/broken.jpg", 422, ""),
        ("/slow.jpg", 504, "timed out"),
        ("/fail.jpg", 502, "HTTP 500"),
        ("/img/missing.jpg", 502, "HTTP 404"),
    ],
)
async def test_upstream_failures_have_their_status(
    upstream: tuple[UpstreamServer, URL], sqlite_url: str, path: str, expected: int, fragment: str
) -> None:
    _, base = upstream
    async with api(api_settings(sqlite_url, allow_hosts=allowing(base))) as running:
        status, body, _ = await running.get("/v1/metadata", url=str(base.with_path(path)))
    assert_error(status, body, expected, fragment)


async def test_an_image_over_the_extraction_time_limit_costs_only_its_request(
    sqlite_url: str,
) -> None:
    server = UpstreamServer({"slow.png": interlaced_png(16000), "a.jpg": IMAGES["a.jpg"]})
    async with serving(server.app) as base:
        settings = api_settings(sqlite_url, allow_hosts=allowing(base), extract_timeout=0.5)
        async with api(settings) as running:
            slow = running.get("/v1/metadata", url=str(base / "img/slow.png"))
            fine = running.get("/v1/metadata", url=str(base / "img/a.jpg"))
            (slow_status, slow_body, _), (fine_status, fine_body, _) = await asyncio.gather(
                slow, fine
            )
            again_status, again_body, _ = await running.get(
                "/v1/metadata", url=str(base / "img/a.jpg")
            )
    assert_error(slow_status, slow_body, 422, "over 0.5 s (crawl.extract_timeout)")
    assert "crawl.extract_timeout" in slow_body["help"]
    assert fine_status == again_status == 200
    assert fine_body == again_body == extract(IMAGES["a.jpg"]).metadata


def descendants_peak_rss() -> dict[int, int]:
    """The peak resident memory (VmHWM) of every process below this one: the extraction
    processes and the fork server they come from."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # it ended meanwhile
        parents[int(stat.parent.name)] = int(fields[1])
    below, frontier = set(), {os.getpid()}
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier} - below
        below |= frontier
    return {pid: peak_rss(pid) for pid in below if Path(f"/proc/{pid}/status").exists()}


async def test_two_hostile_images_at_once_cost_only_their_requests(sqlite_url: str) -> None:
    hostile = {case.name: case.make() for case in HOSTILE if case.reason == "too_much_memory"}
    bombs = ["jpeg-progressive-444-16383", "heic-grid-256-cells-13300"]
    server = UpstreamServer({**hostile, "a.jpg": IMAGES["a.jpg"]})
    async with (
        serving(server.app) as base,
        api(api_settings(sqlite_url, allow_hosts=allowing(base))) as running,
    ):
        await running.get("/v1/metadata", url=str(base / "img/a.jpg"))  # processes up

        async def timed(name: str) -> tuple[int, dict, float]:
            started = time.monotonic()
            status, body, _ = await running.get("/v1/metadata", url=str(base / "img" / name))
            return status, body, time.monotonic() - started

        *refused, (status, body, seconds) = await asyncio.gather(
            *(timed(name) for name in bombs), timed("a.jpg")
        )
        peaks = descendants_peak_rss()
    for bomb_status, bomb_body, _ in refused:
        assert_error(bomb_status, bomb_body, 413, "more than extract.memory_limit")
    assert (status, body) == (200, extract(IMAGES["a.jpg"]).metadata)
    assert seconds < 1
    assert len(peaks) >= 2  # the fork server and the extraction processes
    assert max(peaks.values()) < ExtractSettings().memory_limit, peaks


async def test_unreachable_upstream_is_502(sqlite_url: str) -> None:
    with socket.socket() as probe:  # a port with nothing listening
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = api_settings(sqlite_url, allow_hosts=(f"127.0.0.1:{port}",))
    async with api(settings) as running:
        status, body, _ = await running.get("/v1/metadata", url=f"http://127.0.0.1:{port}/a.jpg")
    assert_error(status, body, 502, "connection failed")


async def test_unknown_files_routes_and_methods_are_json_errors(sqlite_url: str) -> None:
    async with api(api_settings(sqlite_url)) as running:
        status, body, _ = await running.get("/v1/files/12345/metadata")
        assert_error(status, body, 404, "no image '12345' in the catalogue")
        assert "sqlite" not in body["message"]
        for bad_id in ("abc", "\u00b9", "99999999999999999999"):
            status, body, _ = await running.get(f"/v1/files/{bad_id}/metadata")
            assert_error(status, body, 404, bad_id)
        status, body, _ = await running.get("/v2/nothing")
        assert_error(status, body, 404, "Not Found")
        async with running.client.post(running.url / "v1/similar") as response:
            assert_error(response.status, await response.json(), 405, "Method Not Allowed")
            assert response.headers["Allow"] == "GET,HEAD"


async def test_api_keys_are_required_when_configured(sqlite_url: str) -> None:
    settings = api_settings(sqlite_url, api_keys=(OTHER_KEY, KEY))
    async with api(settings) as anonymous:
        status, body, response = await anonymous.get("/v1/phash-distance", a=ZERO, b=ONE)
        assert_error(status, body, 401, "API key is required")
        assert response.headers["WWW-Authenticate"].startswith("Basic")
        status, body, _ = await anonymous.get("/")
        assert_error(status, body, 401, "API key is required")
        status, _, _ = await anonymous.get("/openapi.json")
        assert status == 200
    async with api(settings, "wrong-key") as wrong:
        status, body, _ = await wrong.get("/v1/phash-distance", a=ZERO, b=ONE)
        assert_error(status, body, 401, "unknown API key")
    async with api(settings, KEY) as authorised:
        status, body, _ = await authorised.get("/v1/phash-distance", a=ZERO, b=ONE)
    assert (status, body["distance"]) == (200, 1)


async def test_no_keys_means_no_auth(sqlite_url: str) -> None:
    async with api(api_settings(sqlite_url)) as running:
        status, _, _ = await running.get("/v1/phash-distance", a=ZERO, b=ONE)
    assert status == 200


async def test_rate_limit_is_per_key(sqlite_url: str) -> None:
    settings = api_settings(sqlite_url, api_keys=(KEY, OTHER_KEY), rate_limit_per_minute=3)
    async with api(settings, KEY) as first:
        statuses = [(await first.get("/v1/phash-distance", a=ZERO, b=ONE))[0] for _ in range(3)]
        assert statuses == [200, 200, 200]
        status, body, response = await first.get("/v1/phash-distance", a=ZERO, b=ONE)
        assert_error(status, body, 429, "rate limit of 3 requests a minute")
        assert int(response.headers["Retry-After"]) >= 1
        async with aiohttp.ClientSession(headers=key_header(OTHER_KEY)) as other:
            status, _, _ = await Running(first.url, other).get("/v1/phash-distance", a=ZERO, b=ONE)
    assert status == 200


def test_rate_limiter_refills_at_the_configured_rate() -> None:
    now = [0.0]
    limiter = RateLimiter(60, clock=lambda: now[0])
    assert [limiter.wait_needed("k") for _ in range(60)] == [0.0] * 60
    assert limiter.wait_needed("k") == pytest.approx(1.0)
    now[0] = 2.0  # two seconds refill two requests at 60 a minute
    assert limiter.wait_needed("k") == 0.0
    assert limiter.wait_needed("k") == 0.0
    assert limiter.wait_needed("k") > 0


def test_rate_limiter_keeps_a_bounded_number_of_clients() -> None:
    now = [0.0]
    limiter = RateLimiter(60, clock=lambda: now[0], max_clients=100)
    for client in range(1000):
        limiter.wait_needed(f"address {client}")
    assert len(limiter._buckets) <= 100
    assert limiter.wait_needed("address 999", spend=False) == 0.0


async def test_the_pages_files_are_served_with_their_types_and_others_are_json_404s(
    sqlite_url: str,
) -> None:
    async with api(api_settings(sqlite_url)) as running:
        for name, kind in [("app.js", "text/javascript"), ("style.css", "text/css")]:
            async with running.client.get(running.url / "static" / name) as response:
                assert (response.status, response.content_type) == (200, kind)
        for name in ("missing.js", "..%2Fserve.py", ".hidden.css"):
            status, body, _ = await running.get(f"/static/{name}")
            assert_error(status, body, 404, "no file")


async def test_upstream_fetches_are_limited(
    upstream: tuple[UpstreamServer, URL], sqlite_url: str
) -> None:
    server, base = upstream
    settings = api_settings(sqlite_url, allow_hosts=allowing(base), max_upstream_fetches=1)
    async with api(settings) as running:
        answers = await asyncio.gather(
            *(running.get("/v1/metadata", url=str(base / "held" / name)) for name in IMAGES)
        )
    assert [status for status, _, _ in answers] == [200] * len(IMAGES)
    assert server.most_in_flight == 1


def loopback_spellings(port: int) -> list[str]:
    return [
        f"http://127.0.0.1:{port}/img/a.jpg",
        f"http://[::1]:{port}/img/a.jpg",
        f"http://localhost:{port}/img/a.jpg",
        f"http://LOCALHOST.:{port}/img/a.jpg",
        f"http://2130706433:{port}/img/a.jpg",
        f"http://0177.0.0.1:{port}/img/a.jpg",
        f"http://0x7f.1:{port}/img/a.jpg",
        f"http://127.1:{port}/img/a.jpg",
        f"http://[::ffff:127.0.0.1]:{port}/img/a.jpg",
        f"http://0.0.0.0:{port}/img/a.jpg",
    ]


async def test_request_forgery_to_loopback_is_refused_and_reaches_nothing(
    victim: tuple[UpstreamServer, URL], sqlite_url: str
) -> None:
    server, base = victim
    async with api(api_settings(sqlite_url)) as running:
        for url in loopback_spellings(base.port):
            status, body, _ = await running.get("/v1/metadata", url=url, store="true")
            assert_error(status, body, 400, "refusing to fetch from")
            assert "serve.allow_hosts" in body["help"]
    assert sum(server.requests.values()) == 0


async def test_redirects_to_loopback_from_an_allowed_server_are_refused(
    upstream: tuple[UpstreamServer, URL], victim: tuple[UpstreamServer, URL], sqlite_url: str
) -> None:
    allowed, allowed_base = upstream
    target, target_base = victim
    async with api(api_settings(sqlite_url, allow_hosts=allowing(allowed_base))) as running:
        status, _, _ = await running.get("/v1/metadata", url=str(allowed_base / "img/a.jpg"))
        assert status == 200  # the allowed server itself is reachable
        for url in loopback_spellings(target_base.port):
            redirect = allowed_base.with_path("/redirect").with_query(to=url)
            status, body, _ = await running.get("/v1/metadata", url=str(redirect))
            assert_error(status, body, 400, "refusing to fetch from")
    assert allowed.requests["/redirect"] == len(loopback_spellings(0))
    assert sum(target.requests.values()) == 0


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_without_keys_loopback_hosts_may_listen(host: str) -> None:
    check_listen_address(ServeSettings(host=host))


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.10", "example.com"])
def test_without_keys_other_hosts_are_refused(host: str) -> None:
    with pytest.raises(ConfigError, match=r"serve\.host: refusing to listen .* without"):
        check_listen_address(ServeSettings(host=host))
    check_listen_address(ServeSettings(host=host, api_keys=(KEY,)))


def test_cli_refuses_a_public_host_without_keys_in_one_line() -> None:
    result = CliRunner().invoke(cli, ["serve", "--host", "0.0.0.0"])
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1].startswith("Error: serve.host: refusing")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _serve_command(database: Path, port: int) -> list[str]:
    crawler = Path(sys.executable).parent / "crawler"
    return [str(crawler), "--db", str(database), "serve", "--port", str(port)]


CLEAN_ENV = {name: value for name, value in os.environ.items() if not name.startswith("CRAWLER_")}


def test_cli_says_it_serves_once_it_listens_and_serves_until_interrupted(tmp_path: Path) -> None:
    database = tmp_path / "c.db"
    open_catalogue(str(database)).close()
    port = _free_port()
    with subprocess.Popen(
        _serve_command(database, port),
        env=CLEAN_ENV,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        text=True,
    ) as server:
        try:
            assert server.stdout is not None
            line = server.stdout.readline()
            assert line == f"Serving on http://127.0.0.1:{port}/ (Ctrl-C stops)\n"
            # Announced after the bind: the first request needs no retry.
            url = f"http://127.0.0.1:{port}/v1/phash-distance?a={ZERO}&b={'0' * 15}3"
            with urllib.request.urlopen(url, timeout=10) as response:
                body = response.read()
        finally:
            server.send_signal(signal.SIGINT)
            server.wait(10)
    assert b'"distance": 2' in body
    assert server.returncode == 0


def test_cli_serve_start_up_errors_are_one_line_and_announce_nothing(tmp_path: Path) -> None:
    database = tmp_path / "c.db"
    missing = subprocess.run(
        _serve_command(database, _free_port()), env=CLEAN_ENV, capture_output=True, text=True
    )
    assert (missing.returncode, missing.stdout) == (1, "")
    assert missing.stderr == (
        f"Error: no catalogue at {database}: the file does not exist "
        "(`crawler run SEEDS` or `crawler db upgrade` makes one)\n"
    )
    assert not database.exists()
    open_catalogue(str(database)).close()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = subprocess.run(
            _serve_command(database, port), env=CLEAN_ENV, capture_output=True, text=True
        )
    assert (busy.returncode, busy.stdout) == (1, "")
    assert busy.stderr.startswith(
        f"Error: serve.host, serve.port: cannot listen on 127.0.0.1:{port}: "
    )
    assert busy.stderr.count("\n") == 1
