"""Database outages in the middle of a crawl: a PostgreSQL restart (every connection
dropped, new ones refused for a while: a proxy in front of the real server does it) and
an SQLite write lock held past the busy timeout. The crawl must wait, keep what it has
fetched, store it when the database is back, and end with every URL one row, none
fetched twice because of the outage."""

import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from crawler import catalogue
from crawler.catalogue import create_catalogue_engine
from crawler.config import load_settings
from crawler.engine import run_crawl
from crawler.models import images
from tests.dbproxy import DatabaseProxy
from tests.faultserver import FaultServer

SAMPLES = Path(__file__).resolve().parents[1] / "samples" / "images"
JPEG = (SAMPLES / "first-640px.jpg").read_bytes()
CRAWLER = Path(sys.executable).parent / "crawler"
SETTINGS = """
[crawl]
concurrency = 4
per_host_concurrency = 4
extract_workers = 1
batch_size = 5
"""


def ok_rows(db_url: str) -> int:
    """Rows stored ok so far (0 before the crawl has made the catalogue)."""
    engine = create_catalogue_engine(db_url)
    try:
        with engine.connect() as connection:
            statement = sa.select(sa.func.count()).where(images.c.status == "ok")
            return int(connection.execute(statement).scalar_one())
    except sa.exc.DBAPIError:
        return 0
    finally:
        engine.dispose()


def statuses(db_url: str) -> dict[str, str]:
    engine = create_catalogue_engine(db_url)
    try:
        with engine.connect() as connection:
            return dict(connection.execute(sa.select(images.c.url, images.c.status)).all())
    finally:
        engine.dispose()


def wait_for(condition: object, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.mark.postgres
@pytest.mark.timeout(120)
def test_a_crawl_rides_out_a_database_restart(postgres_url: str, tmp_path: Path) -> None:
    config = tmp_path / "crawler.toml"
    config.write_text(SETTINGS)
    with (
        DatabaseProxy(postgres_url) as proxy,
        FaultServer({"a.jpg": JPEG}, image_delay=0.1) as server,
    ):
        urls = [server.url(f"/slowimg/a.jpg?n={n}") for n in range(120)]  # ~3 s at 4 in flight
        seeds = tmp_path / "seeds.txt"
        seeds.write_text("".join(f"{url}\n" for url in urls))
        command = [str(CRAWLER), "--config", str(config), "--db", proxy.url, "run", str(seeds)]
        crawl = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
        wait_for(lambda: ok_rows(postgres_url) >= 20)
        proxy.cut()  # as a restart: every connection dropped, new ones refused
        stored_at_cut = ok_rows(postgres_url)
        time.sleep(3)
        proxy.restore()
        _, errors = crawl.communicate(timeout=90)
        hits = dict(server.hits)

    assert crawl.returncode == 0, errors
    assert stored_at_cut < len(urls)  # the outage came in the middle of the crawl
    assert "the catalogue is unreachable, retrying" in errors
    assert "the catalogue is back after" in errors
    assert statuses(postgres_url) == dict.fromkeys(urls, "ok")
    assert [hits[url.removeprefix(server.base)] for url in urls] == [1] * len(urls)


@pytest.mark.timeout(120)
def test_a_crawl_waits_out_a_write_lock_held_past_the_busy_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(catalogue, "SQLITE_BUSY_TIMEOUT_MS", 200)
    config = tmp_path / "crawler.toml"
    config.write_text(SETTINGS)
    path = tmp_path / "catalogue.db"
    db_url = f"sqlite:///{path}"
    with FaultServer({"a.jpg": JPEG}, image_delay=0.1) as server:
        urls = [server.url(f"/slowimg/a.jpg?n={n}") for n in range(80)]
        seeds = tmp_path / "seeds.txt"
        seeds.write_text("".join(f"{url}\n" for url in urls))

        def hold_the_lock() -> None:
            wait_for(lambda: path.exists() and ok_rows(db_url) >= 10)
            holder = sqlite3.connect(path, isolation_level=None, timeout=30)
            holder.execute("BEGIN EXCLUSIVE")  # another program's long write
            time.sleep(2.0)  # ten busy timeouts
            holder.execute("ROLLBACK")
            holder.close()

        holder = threading.Thread(target=hold_the_lock)
        holder.start()
        summary = run_crawl(seeds, load_settings(config, {"database.url": db_url}))
        holder.join()
        hits = dict(server.hits)

    assert summary.by_status == {"ok": len(urls)}
    assert "the catalogue is unreachable, retrying" in caplog.text
    assert statuses(db_url) == dict.fromkeys(urls, "ok")
    assert [hits[url.removeprefix(server.base)] for url in urls] == [1] * len(urls)
