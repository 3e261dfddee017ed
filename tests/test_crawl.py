"""End-to-end crawls against a real server on 127.0.0.1, on SQLite and PostgreSQL.

Every seed must end as exactly one row with the right status and reason, good images' rows
must hold what ``crawler.extract`` gives for the same bytes, re-runs must do only what they
are asked to, and killed or interrupted crawls must resume without losing or repeating URLs.
"""

import contextlib
import dataclasses
import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from crawler import catalogue, engine
from crawler.catalogue import create_catalogue_engine, open_catalogue
from crawler.cli import cli
from crawler.config import Settings, load_settings
from crawler.engine import CrawlOptions, run_crawl
from crawler.errors import CatalogueError
from crawler.extract import extract
from crawler.models import images
from crawler.seeds import SeedError, normalise_url
from tests.faultserver import FaultServer
from tests.slow_image import interlaced_png

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "samples" / "images"
FILES = {
    "a.jpg": (SAMPLES / "Canon_40D.jpg").read_bytes(),
    "b.tiff": (SAMPLES / "Jobagent.tiff").read_bytes(),
    "c.jpg": (SAMPLES / "first-640px.jpg").read_bytes(),
    "broken.jpg": b"\xff\xd8\xff\xe0" + b"not really a jpeg" * 20,
}
CRAWLER = Path(sys.executable).parent / "crawler"
FAST_SETTINGS = """
[crawl]
concurrency = 4
per_host_concurrency = 4
max_size = 1048576
max_redirects = 3
extract_workers = 1
batch_size = 5
lease_seconds = 10

[crawl.timeouts]
connect = 2.0
read = 0.3
total = 5.0

[crawl.retries]
attempts = 2
backoff_base = 0.01
backoff_max = 0.05
retry_after_max = 5.0
"""


@pytest.fixture(autouse=True)
def no_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CRAWLER_DATABASE_URL", raising=False)
    monkeypatch.delenv("CRAWLER_CONFIG", raising=False)


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "crawler.toml"
    path.write_text(FAST_SETTINGS)
    return path


@pytest.fixture
def server() -> Iterator[FaultServer]:
    with FaultServer(FILES, image_delay=0.1) as running:
        yield running


def settings_for(config: Path, db_url: str) -> Settings:
    return load_settings(config, {"database.url": db_url})


def stored_rows(db_url: str) -> dict[str, Any]:
    engine = create_catalogue_engine(db_url)
    try:
        with engine.connect() as connection:
            return {row.url: row for row in connection.execute(sa.select(images))}
    finally:
        engine.dispose()


def write_seeds(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(f"{line}\n" for line in lines))
    return path


def fault_seeds(server: FaultServer) -> dict[str, tuple[str, str | None]]:
    """Seed line -> the (status, reason) its row must end with."""
    return {
        server.url("/img/a.jpg"): ("ok", None),
        server.url("/img/b.tiff"): ("ok", None),
        server.url("/redirect/2/c.jpg"): ("ok", None),
        server.url("/flaky/a.jpg"): ("ok", None),
        server.url("/ratelimited/b.tiff"): ("ok", None),
        str((SAMPLES / "Nikon_D70.jpg").relative_to(REPO)): ("ok", None),
        server.url("/missing"): ("failed", "http_404"),
        server.url("/unavailable"): ("failed", "http_503"),
        server.url("/reset/a.jpg"): ("failed", "connection_error"),
        server.url("/slow/a.jpg"): ("failed", "timeout"),
        server.url("/huge"): ("failed", "too_large"),
        server.url("/html-as-jpeg"): ("failed", "not_an_image"),
        server.url("/img/broken.jpg"): ("failed", "undecodable"),
        server.url("/loop/a"): ("failed", "redirect_loop"),
        server.url("/redirect/9/a.jpg"): ("failed", "too_many_redirects"),
        server.url("/private/a.jpg"): ("skipped", "robots"),
        "samples/images/no-such-file.jpg": ("failed", "not_found"),
        "gopher://example.com/a.jpg": ("failed", "bad_url"),
    }


def normalised(seed: str) -> str:
    try:
        return normalise_url(seed)
    except SeedError:
        return seed


def test_every_seed_ends_as_one_right_row(
    db_url: str, config: Path, server: FaultServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(REPO)
    expected = fault_seeds(server)
    duplicate = server.url("/img/a.jpg").replace("http://", "HTTP://") + "#again"
    seeds = write_seeds(tmp_path / "seeds.txt", [*expected, duplicate, "# comment", ""])

    summary = run_crawl(seeds, settings_for(config, db_url))

    rows = stored_rows(db_url)
    assert {url: (row.status, row.reason) for url, row in rows.items()} == {
        normalised(seed): outcome for seed, outcome in expected.items()
    }
    assert summary.by_status == {"ok": 6, "failed": 11, "skipped": 1}
    assert all(row.claimed_by is None and row.attempts <= 1 for row in rows.values())
    assert server.hits["/img/a.jpg"] == 1  # the duplicate line was not fetched again
    good = {
        server.url("/img/a.jpg"): FILES["a.jpg"],
        server.url("/img/b.tiff"): FILES["b.tiff"],
        server.url("/redirect/2/c.jpg"): FILES["c.jpg"],
        (SAMPLES / "Nikon_D70.jpg").as_uri(): (SAMPLES / "Nikon_D70.jpg").read_bytes(),
    }
    for url, data in good.items():
        assert rows[url].metadata == extract(data).metadata
        assert rows[url].phash_algorithm == "imagekit"
    assert rows[server.url("/redirect/2/c.jpg")].final_url == server.url("/img/c.jpg")
    assert rows[server.url("/missing")].http_status == 404


def test_reruns_skip_done_retry_failed_and_refresh(
    db_url: str, config: Path, server: FaultServer, tmp_path: Path
) -> None:
    settings = settings_for(config, db_url)
    ok_url, missing_url = server.url("/img/a.jpg"), server.url("/missing")
    seeds = write_seeds(tmp_path / "seeds.txt", [ok_url, missing_url])
    run_crawl(seeds, settings)
    first_fetch = stored_rows(db_url)[ok_url].fetched_at

    again = run_crawl(seeds, settings)
    assert (again.stored, server.hits["/img/a.jpg"], server.hits["/missing"]) == (0, 1, 1)

    retried = run_crawl(seeds, settings, options=CrawlOptions(retry_failed=True))
    assert retried.by_status == {"failed": 1}
    assert (server.hits["/img/a.jpg"], server.hits["/missing"]) == (1, 2)

    refreshed = run_crawl(seeds, settings, options=CrawlOptions(refresh=True))
    row = stored_rows(db_url)[ok_url]
    assert refreshed.by_reason == {"not_modified": 1}
    assert (server.hits["/img/a.jpg"], server.hits["/missing"]) == (2, 2)
    assert (row.status, row.http_status) == ("ok", 304)
    assert row.fetched_at > first_fetch
    assert row.metadata == extract(FILES["a.jpg"]).metadata


COPY_COLUMNS = ("status", "http_status", "sha256", "width", "metadata_json", "fetched_at")


def test_a_failed_refresh_keeps_the_stored_copy_and_records_the_check(
    db_url: str, config: Path, server: FaultServer, tmp_path: Path
) -> None:
    settings = settings_for(config, db_url)
    local = tmp_path / "local.jpg"
    local.write_bytes(FILES["a.jpg"])
    urls = [server.url("/img/a.jpg"), server.url("/img/b.tiff"), local.as_uri()]
    seeds = write_seeds(tmp_path / "seeds.txt", urls)
    assert run_crawl(seeds, settings).by_status == {"ok": 3}
    before = stored_rows(db_url)

    server.image_status = 503  # the host goes bad, and the file goes away
    local.unlink()
    refreshed = run_crawl(seeds, settings, options=CrawlOptions(refresh=True))

    assert refreshed.by_reason == {"http_503": 2, "not_found": 1}
    after = stored_rows(db_url)
    for url in urls:
        kept = [getattr(after[url], column) for column in COPY_COLUMNS]
        assert kept == [getattr(before[url], column) for column in COPY_COLUMNS]
        assert after[url].status == "ok" and after[url].metadata is not None
        assert after[url].check_status == "failed"
        assert after[url].checked_at > before[url].fetched_at
        assert after[url].claimed_by is None
    web = after[urls[0]]
    assert (web.check_reason, web.check_http_status) == ("http_503", 503)
    assert "HTTP 503" in web.check_error
    assert (after[urls[2]].check_reason, after[urls[2]].check_http_status) == ("not_found", None)

    server.image_status = None
    web_seeds = write_seeds(tmp_path / "web.txt", urls[:2])
    again = run_crawl(web_seeds, settings, options=CrawlOptions(refresh=True))
    assert again.by_reason == {"not_modified": 2}
    confirmed = stored_rows(db_url)[urls[0]]
    assert (confirmed.check_status, confirmed.check_reason) == ("ok", None)
    assert (confirmed.check_http_status, confirmed.http_status) == (304, 304)
    assert confirmed.checked_at > web.checked_at


def test_retrying_a_failed_image_is_no_revalidation(
    db_url: str, config: Path, server: FaultServer, tmp_path: Path
) -> None:
    settings = settings_for(config, db_url)
    broken = server.url("/img/broken.jpg")  # served with an ETag, answers 304 on a match
    seeds = write_seeds(tmp_path / "seeds.txt", [broken])
    run_crawl(seeds, settings)
    assert stored_rows(db_url)[broken].sha256 is not None  # of bytes that do not decode

    retried = run_crawl(seeds, settings, options=CrawlOptions(retry_failed=True))

    row = stored_rows(db_url)[broken]
    assert retried.by_reason == {"undecodable": 1}  # fetched again, not "not modified"
    assert (row.status, row.reason, row.http_status) == ("failed", "undecodable", 200)
    assert row.checked_at is None


def crawl_command(config: Path, db_url: str, seeds: Path, *extra: str) -> list[str]:
    return [str(CRAWLER), "--config", str(config), "--db", db_url, "run", str(seeds), *extra]


def wait_for_ok_rows(db_url: str, at_least: int, process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 60
    engine = create_catalogue_engine(db_url)
    try:
        while time.monotonic() < deadline and process.poll() is None:
            try:
                with engine.connect() as connection:
                    count = connection.execute(
                        sa.select(sa.func.count()).where(images.c.status == "ok")
                    ).scalar_one()
            except sa.exc.DatabaseError:  # the table is not there yet
                count = 0
            if count >= at_least:
                return
            time.sleep(0.05)
    finally:
        engine.dispose()
    pytest.fail(f"the crawl did not store {at_least} rows in time (exit {process.poll()})")


def children(pid: int) -> list[int]:
    """The processes ``pid`` started (Linux /proc)."""
    return [
        int(child)
        for task in Path(f"/proc/{pid}/task").iterdir()
        for child in (task / "children").read_text().split()
    ]


def descendants(pid: int) -> list[int]:
    """Every process below ``pid``."""
    return [process for child in children(pid) for process in (child, *descendants(child))]


def wait_until(condition: Callable[[], bool], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not true after {seconds}s")
        time.sleep(0.1)


def slow_seeds(server: FaultServer, path: Path, count: int) -> tuple[Path, list[str]]:
    urls = [server.url(f"/slowimg/a.jpg?n={number}") for number in range(count)]
    return write_seeds(path, urls), urls


def test_killed_crawl_resumes_with_one_row_per_url(
    db_url: str, config: Path, server: FaultServer, tmp_path: Path
) -> None:
    seeds, urls = slow_seeds(server, tmp_path / "seeds.txt", 40)
    command = crawl_command(config, db_url, seeds, "--quiet")
    process = subprocess.Popen(command, text=True)
    try:
        wait_for_ok_rows(db_url, 6, process)
        helpers = descendants(process.pid)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert process.returncode == -signal.SIGKILL
    assert any(row.status == "pending" for row in stored_rows(db_url).values())
    assert helpers  # the extraction processes, which must not outlive the crawler
    wait_until(lambda: not any(Path(f"/proc/{pid}").exists() for pid in helpers), seconds=10)

    subprocess.run(command, check=True, timeout=120)

    rows = stored_rows(db_url)
    assert sorted(rows) == sorted(urls)
    assert {row.status for row in rows.values()} == {"ok"}
    assert all(row.claimed_by is None for row in rows.values())
    refetched = [url for url in urls if server.hits[url.removeprefix(server.base)] > 1]
    assert len(refetched) <= 16  # at most what was in flight when it was killed


def test_interrupt_drains_in_flight_work_and_saves_it(
    config: Path, server: FaultServer, tmp_path: Path
) -> None:
    db_url = f"sqlite:///{tmp_path / 'catalogue.db'}"
    seeds, urls = slow_seeds(server, tmp_path / "seeds.txt", 40)
    command = crawl_command(config, db_url, seeds, "--json")
    process = subprocess.Popen(command, text=True, stdout=subprocess.PIPE)
    wait_for_ok_rows(db_url, 4, process)
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=60)
    summary = json.loads(output)
    rows = stored_rows(db_url).values()

    assert process.returncode == 130
    assert summary["interrupted"] is True
    assert summary["by_status"]["ok"] == sum(row.status == "ok" for row in rows) < len(urls)
    assert {row.status for row in rows} == {"ok", "pending"}
    assert all(row.claimed_by is None for row in rows)

    subprocess.run(command, check=True, timeout=120, stdout=subprocess.DEVNULL)
    assert {row.status for row in stored_rows(db_url).values()} == {"ok"}
    assert all(server.hits[url.removeprefix(server.base)] == 1 for url in urls)


def test_a_dead_extraction_process_costs_at_most_the_images_it_held(
    config: Path, server: FaultServer, tmp_path: Path
) -> None:
    db_url = f"sqlite:///{tmp_path / 'catalogue.db'}"
    seeds, urls = slow_seeds(server, tmp_path / "seeds.txt", 40)
    process = subprocess.Popen(crawl_command(config, db_url, seeds, "--quiet"), text=True)
    wait_for_ok_rows(db_url, 4, process)
    # The extraction processes are the fork server's children.
    (extraction,) = [pid for child in children(process.pid) for pid in children(child)]
    os.kill(extraction, signal.SIGKILL)

    assert process.wait(timeout=120) == 0
    rows = stored_rows(db_url)
    assert sorted(rows) == sorted(urls)
    lost = [row.reason for row in rows.values() if row.status != "ok"]
    # Only the image it was on: the one queued behind it goes to the new process.
    assert lost in ([], ["extract_crashed"])


def test_an_image_over_the_extraction_time_limit_fails_alone(
    db_url: str, config: Path, server: FaultServer, tmp_path: Path
) -> None:
    config.write_text(FAST_SETTINGS.replace("[crawl]\n", "[crawl]\nextract_timeout = 0.5\n", 1))
    slow = tmp_path / "slow.png"
    slow.write_bytes(interlaced_png(16000))  # ~1.9 s to extract on the project's VM
    good = [server.url("/img/a.jpg"), server.url("/img/b.tiff"), server.url("/img/c.jpg")]
    # One extraction process: the slow image first, the others queued behind it.
    seeds = write_seeds(tmp_path / "seeds.txt", [str(slow), *good])

    summary = run_crawl(seeds, settings_for(config, db_url))

    rows = stored_rows(db_url)
    timed_out = rows[slow.as_uri()]
    assert (timed_out.status, timed_out.reason) == ("failed", "extract_timeout")
    assert "over 0.5 s (crawl.extract_timeout)" in timed_out.error
    assert timed_out.sha256 == hashlib.sha256(slow.read_bytes()).hexdigest()
    assert [rows[url].status for url in good] == ["ok"] * 3
    assert summary.by_reason == {"extract_timeout": 1}


@pytest.mark.postgres
def test_two_crawlers_share_a_catalogue_without_fetching_twice(
    postgres_url: str, config: Path, server: FaultServer, tmp_path: Path
) -> None:
    # Crawlers share the work host by host (a host is fetched by one crawler at a time),
    # so the seeds are spread over four hosts.
    with contextlib.ExitStack() as stack:
        servers = [server] + [
            stack.enter_context(FaultServer(FILES, image_delay=0.1, address=f"127.0.0.{n}"))
            for n in (2, 3, 4)
        ]
        urls = [s.url(f"/slowimg/a.jpg?n={n}") for n in range(15) for s in servers]
        seeds = write_seeds(tmp_path / "seeds.txt", urls)
        command = crawl_command(config, postgres_url, seeds, "--json", "--per-host", "2")
        crawlers = [subprocess.Popen(command, text=True, stdout=subprocess.PIPE) for _ in range(2)]
        summaries = [json.loads(crawler.communicate(timeout=120)[0]) for crawler in crawlers]
        hits = Counter(
            s.base + path for s in servers for path, count in s.hits.items() for _ in range(count)
        )

    rows = stored_rows(postgres_url)
    assert sorted(rows) == sorted(urls)
    assert {row.status for row in rows.values()} == {"ok"}
    assert [hits[url] for url in urls] == [1] * len(urls)
    assert all(summary["stored"] > 0 for summary in summaries)
    assert sum(summary["stored"] for summary in summaries) == len(urls)


def test_cli_crawls_the_sample_seed_list(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    db_url = f"sqlite:///{tmp_path / 'catalogue.db'}"
    result = CliRunner().invoke(cli, ["--db", db_url, "run", "samples/seeds.txt"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("Crawl done: 8 URLs stored")
    assert lines[-1].split() == ["ok", "8"]
    rows = stored_rows(db_url)
    for path in SAMPLES.iterdir():
        assert rows[path.as_uri()].metadata == extract(path.read_bytes()).metadata


def test_cli_reports_a_missing_seed_list_in_one_line(tmp_path: Path) -> None:
    db_url = f"sqlite:///{tmp_path / 'catalogue.db'}"
    result = CliRunner().invoke(cli, ["--db", db_url, "run", str(tmp_path / "nope.txt")])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        f"Error: {tmp_path / 'nope.txt'}: no such seed list"
    ]


@pytest.mark.timeout(60)
def test_a_crawl_whose_results_cannot_be_stored_stops_with_the_error(
    config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # It used to wait forever: the fetch workers blocked on a results queue nobody emptied.
    def database_gone(*_args: object) -> None:
        raise sa.exc.OperationalError("INSERT INTO images ...", {}, Exception("disk I/O error"))

    monkeypatch.setattr(engine, "store_results", database_gone)
    seeds = write_seeds(tmp_path / "seeds.txt", [str(path) for path in SAMPLES.iterdir()])
    db_url = f"sqlite:///{tmp_path / 'catalogue.db'}"
    settings = settings_for(config, db_url)
    settings = dataclasses.replace(
        settings, crawl=dataclasses.replace(settings.crawl, batch_size=2, concurrency=2)
    )
    with pytest.raises(CatalogueError, match=r"^cannot store crawl results: .*disk I/O error"):
        run_crawl(seeds, settings)
    rows = stored_rows(db_url)  # every URL is still to do, and free for the next run
    assert len(rows) == len(list(SAMPLES.iterdir()))
    assert {(row.status, row.claimed_by) for row in rows.values()} == {("pending", None)}


@pytest.mark.timeout(60)
def test_cli_reports_a_catalogue_another_program_keeps_locked_in_one_line(
    config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(catalogue, "SQLITE_BUSY_TIMEOUT_MS", 200)
    config.write_text(config.read_text() + "\n[database]\noutage_timeout = 1.0\n")
    path = tmp_path / "catalogue.db"
    db_url = f"sqlite:///{path}"
    open_catalogue(db_url).close()  # the schema exists: the crawl waits at its first write
    seeds = write_seeds(tmp_path / "seeds.txt", [str(SAMPLES / "Canon_40D.jpg")])
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another program's long write transaction
    try:
        result = CliRunner().invoke(
            cli, ["--config", str(config), "--db", db_url, "run", str(seeds)]
        )
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        "Error: the catalogue was unreachable for over 1 s (database.outage_timeout): "
        "database is locked"
    ]


def test_cli_refuses_a_seed_list_that_is_not_a_regular_file(tmp_path: Path) -> None:
    pipe = tmp_path / "seeds.fifo"
    os.mkfifo(pipe)
    db_url = f"sqlite:///{tmp_path / 'catalogue.db'}"
    result = CliRunner().invoke(cli, ["--db", db_url, "run", str(pipe)])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        f"Error: {pipe}: a seed list must be a regular file (or - for standard input)"
    ]


def test_cli_crawls_seeds_from_standard_input(
    config: Path, server: FaultServer, tmp_path: Path
) -> None:
    db_url = f"sqlite:///{tmp_path / 'catalogue.db'}"
    urls = [server.url("/img/a.jpg"), server.url("/img/b.tiff"), server.url("/missing")]
    lines = f"# piped\n{urls[0]}\r\n\n{urls[1]}\n{urls[2]}"  # no newline at the end
    command = [str(CRAWLER), "--config", str(config), "--db", db_url, "run", "-", "--json"]

    finished = subprocess.run(command, input=lines, capture_output=True, text=True, timeout=60)

    assert finished.returncode == 0, finished.stderr
    assert json.loads(finished.stdout)["by_status"] == {"ok": 2, "failed": 1}
    assert {url: row.status for url, row in stored_rows(db_url).items()} == {
        urls[0]: "ok",
        urls[1]: "ok",
        urls[2]: "failed",
    }


def test_interrupt_stops_a_crawl_whose_standard_input_stays_open(
    config: Path, server: FaultServer, tmp_path: Path
) -> None:
    db_url = f"sqlite:///{tmp_path / 'catalogue.db'}"
    _, urls = slow_seeds(server, tmp_path / "seeds.txt", 6)
    command = [str(CRAWLER), "--config", str(config), "--db", db_url, "run", "-", "--json"]
    process = subprocess.Popen(command, text=True, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert process.stdin is not None
    process.stdin.write("".join(f"{url}\n" for url in urls))
    process.stdin.flush()  # and left open, as a producer that has more to say would
    wait_for_ok_rows(db_url, len(urls), process)

    process.send_signal(signal.SIGINT)
    output = process.stdout.read() if process.stdout else ""
    assert process.wait(timeout=10) == 130
    assert json.loads(output)["by_status"] == {"ok": len(urls)}
    process.stdin.close()
