"""Fetching one URL (the downloader's one-by-one API, ``Downloads``) against a real server
on 127.0.0.1: every fault ends in the right outcome."""

import asyncio
import dataclasses
import itertools
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import pytest
from yarl import URL

from crawler.config import CrawlSettings, RetrySettings, TimeoutSettings
from crawler.downloader import Downloads
from crawler.errors import CrawlerError
from crawler.fetch import FetchError, Validators, image_signature, parse_retry_after
from tests.faultserver import FaultServer

SAMPLES = Path(__file__).resolve().parents[1] / "samples" / "images"
JPEG = (SAMPLES / "Canon_40D.jpg").read_bytes()
TIFF = (SAMPLES / "Jobagent.tiff").read_bytes()

FAST = CrawlSettings(
    concurrency=8,
    per_host_concurrency=4,
    max_size=1024 * 1024,
    max_redirects=3,
    timeouts=TimeoutSettings(connect=2.0, read=0.3, total=5.0),
    retries=RetrySettings(attempts=3, backoff_base=0.01, backoff_max=0.05, retry_after_max=5.0),
)


@pytest.fixture(scope="module")
def server() -> Iterator[FaultServer]:
    with FaultServer({"a.jpg": JPEG, "b.tiff": TIFF}, image_delay=0.2) as running:
        yield running


async def fetch(url: str, settings: CrawlSettings = FAST, **kwargs: object) -> object:
    async with Downloads(settings, workers=settings.concurrency) as downloads:
        return await downloads.fetch(url, **kwargs)  # type: ignore[arg-type]


async def fetch_error(url: str, settings: CrawlSettings = FAST) -> CrawlerError:
    """The error of fetching ``url``: a FetchError, or for a local file a FileReadError."""
    with pytest.raises(CrawlerError) as caught:
        await fetch(url, settings)
    return caught.value


async def test_image_is_fetched_with_its_validators(server: FaultServer) -> None:
    fetched = await fetch(server.url("/img/a.jpg"))
    assert fetched.data == JPEG
    assert fetched.http_status == 200
    assert fetched.etag == '"a.jpg-v1"'
    assert fetched.content_type == "image/jpeg"


async def test_a_chunked_body_arrives_whole(server: FaultServer) -> None:
    fetched = await fetch(server.url("/chunked/a.jpg"))
    assert fetched.data == JPEG
    assert len(fetched.chunks) > 1  # kept as it arrived, not joined on the way


async def test_404_fails_at_once(server: FaultServer) -> None:
    error = await fetch_error(server.url("/missing"))
    assert (error.reason, error.http_status) == ("http_404", 404)
    assert server.hits["/missing"] == 1


async def test_500_is_retried_until_it_succeeds(server: FaultServer) -> None:
    fetched = await fetch(server.url("/flaky/a.jpg"))
    assert fetched.data == JPEG
    assert server.hits["/flaky/a.jpg"] == 2


async def test_503_fails_after_every_attempt(server: FaultServer) -> None:
    error = await fetch_error(server.url("/unavailable"))
    assert error.reason == "http_503"
    assert server.hits["/unavailable"] == FAST.retries.attempts


async def test_429_waits_for_retry_after(server: FaultServer) -> None:
    fetched = await fetch(server.url("/ratelimited/a.jpg"))
    first, second = server.times["/ratelimited/a.jpg"]
    assert fetched.data == JPEG
    assert second - first >= 0.95


async def test_connection_reset_is_retried_then_fails(server: FaultServer) -> None:
    error = await fetch_error(server.url("/reset/a.jpg"))
    assert error.reason == "connection_error"
    # aiohttp itself may retry once on a fresh connection within an attempt.
    assert server.hits["/reset/a.jpg"] >= FAST.retries.attempts


async def test_stalled_body_times_out(server: FaultServer) -> None:
    started = time.monotonic()
    error = await fetch_error(server.url("/slow/a.jpg"))
    assert error.reason == "timeout"
    assert server.hits["/slow/a.jpg"] == FAST.retries.attempts
    assert time.monotonic() - started < 3


async def test_body_over_the_limit_is_abandoned(server: FaultServer) -> None:
    error = await fetch_error(server.url("/huge"))
    assert error.reason == "too_large"
    assert server.hits["/huge"] == 1


async def test_declared_length_over_the_limit_is_refused_before_the_body(
    server: FaultServer,
) -> None:
    started = time.monotonic()
    error = await fetch_error(server.url("/declared-huge"))
    assert error.reason == "too_large"
    assert time.monotonic() - started < FAST.timeouts.read


async def test_html_served_as_jpeg_is_not_an_image(server: FaultServer) -> None:
    error = await fetch_error(server.url("/html-as-jpeg"))
    assert error.reason == "not_an_image"
    assert "image/jpeg" in str(error)


async def test_redirect_chain_is_followed_hop_by_hop(server: FaultServer) -> None:
    hops: list[URL] = []

    async def record(url: URL) -> None:
        hops.append(url)

    async with Downloads(FAST, workers=8, check_url=record) as downloads:
        fetched = await downloads.fetch(server.url("/redirect/3/b.tiff"))
    assert fetched.data == TIFF
    assert fetched.final_url == server.url("/img/b.tiff")
    assert [hop.path for hop in hops] == [
        "/redirect/3/b.tiff",
        "/robots.txt",
        "/redirect/2/b.tiff",
        "/redirect/1/b.tiff",
        "/img/b.tiff",
    ]


async def test_too_many_redirects(server: FaultServer) -> None:
    before = server.hits["/img/b.tiff"]
    error = await fetch_error(server.url("/redirect/4/b.tiff"))
    assert error.reason == "too_many_redirects"
    assert server.hits["/img/b.tiff"] == before


async def test_redirect_loop_is_detected(server: FaultServer) -> None:
    error = await fetch_error(server.url("/loop/a"))
    assert error.reason == "redirect_loop"
    assert server.hits["/loop/a"] == 1


@pytest.mark.parametrize(
    ("kind", "host"),
    [
        ("punycode", "xn--a.example"),
        ("empty-label", ".example"),
        ("space", "a b.example"),
        ("broken", "[::1]:80x@"),
    ],
)
async def test_redirect_to_a_host_name_the_resolver_refuses_is_a_bad_redirect(
    server: FaultServer, kind: str, host: str
) -> None:
    error = await fetch_error(server.url(f"/bad-host-redirect/{kind}"))
    assert error.reason == "bad_redirect"
    assert host in str(error)


async def test_check_url_refusal_stops_the_hop(server: FaultServer) -> None:
    class Refused(CrawlerError):
        reason = "refused"

    async def refuse_images(url: URL) -> None:
        if url.path.startswith("/img/"):
            raise Refused(f"{url}: not allowed")

    before = server.hits["/img/a.jpg"]
    async with Downloads(FAST, workers=8, check_url=refuse_images) as downloads:
        with pytest.raises(Refused):
            await downloads.fetch(server.url("/redirect/1/a.jpg"))
    assert server.hits["/img/a.jpg"] == before


async def test_robots_disallow_skips_and_robots_txt_is_read_once() -> None:
    with FaultServer({"a.jpg": JPEG}) as own:
        async with Downloads(FAST, workers=8) as downloads:
            with pytest.raises(FetchError) as caught:
                await downloads.fetch(own.url("/private/a.jpg"))
            await asyncio.gather(*(downloads.fetch(own.url("/img/a.jpg")) for _ in range(3)))
    assert (caught.value.reason, caught.value.skipped) == ("robots", True)
    assert own.hits["/private/a.jpg"] == 0
    assert own.hits["/robots.txt"] == 1


async def test_robots_redirects_pass_check_url() -> None:
    hops: list[str] = []

    async def record(url: URL) -> None:
        hops.append(url.path)

    with FaultServer({"a.jpg": JPEG}, robots_status=302) as own:
        async with Downloads(FAST, workers=8, check_url=record) as downloads:
            with pytest.raises(FetchError) as caught:
                await downloads.fetch(own.url("/private/a.jpg"))
    assert caught.value.reason == "robots"
    assert hops == ["/private/a.jpg", "/robots.txt", "/real-robots.txt"]


async def test_robots_can_be_turned_off(server: FaultServer) -> None:
    fetched = await fetch(server.url("/private/a.jpg"), dataclasses.replace(FAST, robots=False))
    assert fetched.data == JPEG


@pytest.mark.parametrize(
    ("robots_status", "outcome"), [(404, "fetched"), (500, "robots_unavailable")]
)
async def test_robots_txt_errors_follow_rfc_9309(robots_status: int, outcome: str) -> None:
    with FaultServer({"a.jpg": JPEG}, robots_status=robots_status) as own:
        if outcome == "fetched":
            assert (await fetch(own.url("/private/a.jpg"))).data == JPEG
        else:
            error = await fetch_error(own.url("/img/a.jpg"))
            assert (error.reason, error.skipped) == (outcome, False)
            assert own.hits["/img/a.jpg"] == 0


async def test_conditional_request_gets_not_modified(server: FaultServer) -> None:
    fetched = await fetch(server.url("/img/a.jpg"), validators=Validators(etag='"a.jpg-v1"'))
    assert fetched.not_modified
    assert fetched.data == b""


async def test_per_host_concurrency_limit(server: FaultServer) -> None:
    settings = dataclasses.replace(FAST, per_host_concurrency=1)
    async with Downloads(settings, workers=8) as downloads:
        started = time.monotonic()
        await asyncio.gather(*(downloads.fetch(server.url("/slowimg/a.jpg")) for _ in range(3)))
    assert time.monotonic() - started >= 3 * server.image_delay


async def test_per_host_delay_spaces_requests(server: FaultServer) -> None:
    settings = dataclasses.replace(FAST, per_host_delay=0.15)
    async with Downloads(settings, workers=8) as downloads:
        await asyncio.gather(*(downloads.fetch(server.url("/img/b.tiff")) for _ in range(3)))
    times = server.times["/img/b.tiff"][-3:]
    assert all(later - earlier >= 0.14 for earlier, later in itertools.pairwise(times))


async def test_local_file(tmp_path: Path) -> None:
    html = tmp_path / "page.jpg"
    html.write_bytes(b"<html></html>")
    big = tmp_path / "big.jpg"
    big.write_bytes(JPEG[:4] + b"\0" * FAST.max_size)
    assert (await fetch((SAMPLES / "Canon_40D.jpg").as_uri())).data == JPEG
    assert (await fetch_error((tmp_path / "gone.jpg").as_uri())).reason == "not_found"
    assert (await fetch_error(html.as_uri())).reason == "not_an_image"
    assert (await fetch_error(big.as_uri())).reason == "too_large"


def test_retry_after_accepts_seconds_and_http_dates() -> None:
    now = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
    later = format_datetime(now + timedelta(seconds=30), usegmt=True)
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(later, now=now.timestamp()) == pytest.approx(30)
    assert parse_retry_after(format_datetime(now, usegmt=True), now=now.timestamp() + 5) == 0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


def test_image_signatures() -> None:
    assert image_signature(JPEG[:16]) == "jpg"
    assert image_signature(TIFF[:16]) == "tiff"
    assert image_signature(b"II+\0\x08\0\0\0\x10\0\0\0\0\0\0\0") == "tiff"  # BigTIFF
    assert image_signature(b"MM\0+\0\x08\0\0\0\0\0\0\0\0\0\x10") == "tiff"
    assert image_signature(b"\x89PNG\r\n\x1a\n" + b"\0" * 8) == "png"
    assert image_signature(b"RIFF\0\0\0\0WEBPVP8 ") == "webp"
    assert image_signature(b"\0\0\0\x1cftypavif\0\0") == "avif"
    assert image_signature(b"\0\0\0\x18ftypheic\0\0") == "heif"
    assert image_signature(b"<!doctype html>") is None
