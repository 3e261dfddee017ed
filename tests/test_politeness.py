"""Scheduling and politeness as the remote sites see them: real servers on loopback
addresses (a host each), counted on the server side, on SQLite and PostgreSQL.

A slow host must not delay fast ones; per-host limits, Crawl-delay and Retry-After must
hold summed over every crawler; robots.txt that fails at first must recover; a crawler's
lease must keep its rows its own while it lives and free them soon after it dies; URLs of
any length must be stored; a URL's deadline must hold across its tries.
"""

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from crawler.catalogue import create_catalogue_engine, open_catalogue
from crawler.config import load_settings
from crawler.engine import CrawlSummary, run_crawl
from crawler.models import crawlers, images
from crawler.query import show
from tests.faultserver import FaultServer
from tests.webhosts import JPEG, Profile, WebHosts, gaps, starts

CRAWLER = Path(sys.executable).parent / "crawler"
SETTINGS = """
[crawl]
concurrency = 8
per_host_concurrency = 2
extract_workers = 1
batch_size = 20
lease_seconds = 10

[crawl.timeouts]
connect = 2.0
read = 5.0
total = 10.0
url = 30.0

[crawl.retries]
attempts = 3
backoff_base = 0.05
backoff_max = 0.2
retry_after_max = 10.0
"""


@pytest.fixture(autouse=True)
def no_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CRAWLER_DATABASE_URL", raising=False)
    monkeypatch.delenv("CRAWLER_CONFIG", raising=False)


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "crawler.toml"
    path.write_text(SETTINGS)
    return path


def with_settings(config: Path, text: str) -> Path:
    config.write_text(SETTINGS + text)
    return config


def crawl(config: Path, db_url: str, urls: list[str], seeds: Path) -> CrawlSummary:
    seeds.write_text("".join(f"{url}\n" for url in urls))
    return run_crawl(seeds, load_settings(config, {"database.url": db_url}))


def crawler_process(config: Path, db_url: str, seeds: Path, *extra: str) -> subprocess.Popen[str]:
    command = [str(CRAWLER), "--config", str(config), "--db", db_url, "run", str(seeds), "--json"]
    return subprocess.Popen([*command, *extra], text=True, stdout=subprocess.PIPE)


def rows(db_url: str) -> dict[str, Any]:
    engine = create_catalogue_engine(db_url)
    try:
        with engine.connect() as connection:
            return {row.url: row for row in connection.execute(sa.select(images))}
    finally:
        engine.dispose()


def statuses(db_url: str) -> dict[str, str]:
    return {url: row.status for url, row in rows(db_url).items()}


@pytest.fixture
def web() -> Iterator[WebHosts]:
    profiles = {"slow": Profile(seconds=0.5)} | {
        f"fast{n}": Profile(seconds=0.02) for n in range(6)
    }
    with WebHosts(profiles) as hosts:
        yield hosts


def test_a_slow_host_first_in_the_list_does_not_hold_up_the_fast_ones(
    db_url: str, config: Path, web: WebHosts, tmp_path: Path
) -> None:
    slow = web.images("slow", 24)  # 24 x 0.5 s at 2 in flight: 6 s, three times the workers
    fast = [url for n in range(6) for url in web.images(f"fast{n}", 4)]
    started = time.monotonic()

    summary = crawl(config, db_url, slow + fast, tmp_path / "seeds.txt")

    assert summary.by_status == {"ok": len(slow) + len(fast)}
    fast_done = max(r.end for n in range(6) for r in web.requests(f"fast{n}"))
    assert fast_done - started < 2.5, "the fast hosts waited for the slow one"
    slow_done = max(r.end for r in web.requests("slow"))
    assert slow_done - started < 6 * 1.3 + 1.5  # the slow host at its allowed rate, and no more
    assert web.most_in_flight("slow") == 2
    assert set(web.hits().values()) == {1}  # robots.txt once per host, every image once


def test_crawl_delay_is_kept_between_request_starts(
    db_url: str, config: Path, tmp_path: Path
) -> None:
    with WebHosts({"delayed": Profile(crawl_delay=0.4)}) as web:
        summary = crawl(config, db_url, web.images("delayed", 5), tmp_path / "seeds.txt")
        everything = web.requests("delayed", prefix="/")

    assert summary.by_status == {"ok": 5}
    assert len(everything) == 6  # robots.txt, then the five images
    assert min(gaps(everything)) >= 0.39


def test_retry_after_pauses_the_whole_host(db_url: str, config: Path, tmp_path: Path) -> None:
    # Its answers take 0.1 s, so that the requests sent before the first 429 arrived all
    # start well before that answer ends (the window a crawler can keep).
    with WebHosts({"busy": Profile(seconds=0.1, throttle_for=0.3, retry_after=2)}) as web:
        summary = crawl(config, db_url, web.images("busy", 6), tmp_path / "seeds.txt")
        windows = web.throttle_windows("busy")
        requests = web.requests("busy")

    assert summary.by_status == {"ok": 6}
    assert windows, "the host never said 429"
    inside = [r for r in requests for low, high in windows if low <= r.start < high]
    assert inside == []
    assert len(requests) <= 6 + 2  # only the requests in flight when the first 429 came


def test_robots_txt_that_fails_at_first_is_tried_again(
    db_url: str, config: Path, tmp_path: Path
) -> None:
    with WebHosts({"shaky": Profile(robots_unavailable=2)}) as web:
        summary = crawl(config, db_url, web.images("shaky", 3), tmp_path / "seeds.txt")
        robots = web.requests("shaky", prefix="/robots.txt")
        first_image = min(starts(web.requests("shaky")))

    assert summary.by_status == {"ok": 3}
    assert [r.status for r in robots] == [503, 503, 200]
    assert first_image > robots[-1].start  # nothing fetched while robots.txt was unavailable


def test_robots_txt_that_stays_unavailable_fails_the_host_after_the_attempts(
    db_url: str, config: Path, tmp_path: Path
) -> None:
    with WebHosts({"broken": Profile(robots_unavailable=100)}) as web:
        summary = crawl(config, db_url, web.images("broken", 4), tmp_path / "seeds.txt")
        assert web.requests("broken") == []
        assert len(web.requests("broken", prefix="/robots.txt")) == 3  # crawl.retries.attempts

    assert summary.by_reason == {"robots_unavailable": 4}
    assert set(statuses(db_url).values()) == {"failed"}


@pytest.mark.parametrize(
    ("robots", "reason", "says"),
    [
        ("true", "robots_unavailable", "robots.txt: unavailable 3 times"),
        ("false", "connection_error", "127.0.0.250 is down"),
    ],
)
def test_a_dead_host_fails_all_its_urls_without_each_burning_its_tries(
    db_url: str, config: Path, web: WebHosts, tmp_path: Path, robots: str, reason: str, says: str
) -> None:
    dead = [f"http://127.0.0.250:{web.port}/img/{n}.jpg" for n in range(30)]  # nothing listens
    config.write_text(
        SETTINGS.replace("[crawl]\n", f"[crawl]\nrobots = {robots}\n") + "host_failures = 4\n"
    )
    started = time.monotonic()

    summary = crawl(config, db_url, [*dead, *web.images("fast0", 3)], tmp_path / "seeds.txt")

    assert summary.by_status == {"failed": 30, "ok": 3}
    assert summary.by_reason == {reason: 30}
    assert time.monotonic() - started < 8
    assert all(says in row.error for row in rows(db_url).values() if row.error)


def test_a_url_of_ten_thousand_characters_is_crawled_and_stored(
    db_url: str, config: Path, tmp_path: Path
) -> None:
    config.write_text(SETTINGS.replace("[crawl]\n", "[crawl]\nmax_url_length = 20000\n"))
    with WebHosts({"cdn": Profile()}) as web:
        long_url = web.url("cdn", "/img/signed.jpg?sig=" + "a1b2c3d4" * 1250)
        too_long = web.url("cdn", "/img/x.jpg?sig=" + "z" * 20000)
        summary = crawl(config, db_url, [long_url, too_long], tmp_path / "seeds.txt")

    assert len(long_url) > 10_000
    assert summary.by_status == {"ok": 1, "failed": 1}
    stored = rows(db_url)
    assert stored[long_url].status == "ok"
    assert stored[too_long].reason == "url_too_long"
    with open_catalogue(db_url) as catalogue:
        assert show(catalogue, long_url)["size"] == len(JPEG)


def test_a_urls_deadline_holds_across_its_tries(db_url: str, config: Path, tmp_path: Path) -> None:
    config.write_text(
        SETTINGS.replace("url = 30.0", "url = 1.5").replace("attempts = 3", "attempts = 100")
    )
    with FaultServer({"a.jpg": JPEG}) as server:
        started = time.monotonic()
        summary = crawl(
            config, db_url, [server.url("/unavailable"), server.url("/slow/a.jpg")], tmp_path / "s"
        )
        ended = time.monotonic()
        tries = server.times["/unavailable"]

    assert len(tries) > 2  # tried again and again, within its deadline only
    assert tries[-1] - tries[0] < 1.5
    assert ended - started < 10  # and the stalled one did not hold the crawl either
    assert summary.by_reason == {"http_503": 1, "timeout": 1}
    stored = rows(db_url)
    assert "no time left (crawl.timeouts.url = 1.5 s)" in stored[server.url("/unavailable")].error


@pytest.mark.postgres
def test_per_host_limits_hold_summed_over_two_crawlers(
    postgres_url: str, config: Path, tmp_path: Path
) -> None:
    # Eight hosts: each crawler's 8 workers keep four of them busy at 2 in flight.
    profiles = {f"host{n}": Profile(seconds=0.3) for n in range(8)}
    with WebHosts(profiles) as web:
        urls = [url for n in range(8) for url in web.images(f"host{n}", 12)]
        seeds = tmp_path / "seeds.txt"
        seeds.write_text("".join(f"{url}\n" for url in urls))
        processes = [crawler_process(config, postgres_url, seeds) for _ in range(2)]
        summaries = [json.loads(p.communicate(timeout=120)[0]) for p in processes]
        most = [web.most_in_flight(f"host{n}") for n in range(8)]
        hits = web.hits()

    assert [p.returncode for p in processes] == [0, 0]
    assert most == [2] * 8  # per_host_concurrency, over both crawlers
    assert [hits[url] for url in urls] == [1] * len(urls)
    assert all(summary["stored"] > 0 for summary in summaries)
    assert set(statuses(postgres_url).values()) == {"ok"}


@pytest.mark.postgres
def test_a_live_crawlers_rows_stay_its_own_past_the_lease_time(
    postgres_url: str, config: Path, tmp_path: Path
) -> None:
    config.write_text(SETTINGS.replace("lease_seconds = 10", "lease_seconds = 2"))
    with WebHosts({"slow": Profile(seconds=0.5)}) as web:
        urls = web.images("slow", 12)  # 3 s at 2 in flight: longer than the lease
        seeds = tmp_path / "seeds.txt"
        seeds.write_text("".join(f"{url}\n" for url in urls))
        processes = [crawler_process(config, postgres_url, seeds) for _ in range(2)]
        for process in processes:
            process.communicate(timeout=120)
        hits = web.hits()

    assert [hits[url] for url in urls] == [1] * len(urls)
    assert set(statuses(postgres_url).values()) == {"ok"}


@pytest.mark.postgres
def test_a_killed_crawlers_rows_are_taken_over_within_the_lease_time(
    postgres_url: str, config: Path, tmp_path: Path
) -> None:
    lease = 3.0
    config.write_text(
        SETTINGS.replace("lease_seconds = 10", f"lease_seconds = {lease}").replace(
            "per_host_concurrency = 2", "per_host_concurrency = 1"
        )
    )
    with WebHosts({"slow": Profile(seconds=0.3)}) as web:
        urls = web.images("slow", 20)
        seeds = tmp_path / "seeds.txt"
        seeds.write_text("".join(f"{url}\n" for url in urls))
        first = crawler_process(config, postgres_url, seeds)
        wait_for(lambda: len(web.requests("slow")) >= 3)
        # As if it ran on another machine: its death cannot be seen from here, only its
        # lease lapsing.
        elsewhere(postgres_url)
        os.kill(first.pid, signal.SIGKILL)
        killed = time.monotonic()
        first.wait(timeout=10)
        done_before = len(web.requests("slow"))
        stored_before = {url for url, status in statuses(postgres_url).items() if status == "ok"}

        second = crawler_process(config, postgres_url, seeds)
        second.communicate(timeout=120)
        taken_over = min(r.start for r in web.requests("slow")[done_before:])
        hits = web.hits()

    assert second.returncode == 0
    assert taken_over - killed < lease + 2.5  # the lease, a heartbeat's slack, start-up
    assert set(statuses(postgres_url).values()) == {"ok"}
    # Fetched again: only what the killed crawler had fetched but not stored yet.
    assert max(hits[url] for url in urls) <= 2
    assert not {url for url in urls if hits[url] == 2} & stored_before


def wait_for(condition: Any, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def elsewhere(db_url: str) -> None:
    engine = create_catalogue_engine(db_url)
    try:
        with engine.begin() as connection:
            connection.execute(sa.update(crawlers).values(machine="elsewhere"))
    finally:
        engine.dispose()
