"""Benchmark: the page's grid (``GET /v1/images``) on a 1,000,000-row catalogue, on SQLite
and on a scratch PostgreSQL database, first page and filtered pages, one request at a time.

Bulk-loads ``--rows`` generated rows (COPY on PostgreSQL, executemany on SQLite, secondary
indexes dropped while loading and built afterwards, then ANALYZE): 90% ok, 8% failed, 2%
skipped; formats, 40 cameras (a few common, many rare), dates taken 2005-2025, GPS on a
third of the camera photos, sizes log-normal around 400 KB, and every ok row with a real
metadata object in ``metadata`` and ``metadata_json`` as a crawl stores it, so that rows are
as wide as real ones. Then starts ``crawler serve`` over it and times each page (round trip
over loopback, one request at a time: the server's time plus well under a millisecond),
``--runs`` rounds after one warm-up round, the pages interleaved within each round. Prints
medians and maxima. The PostgreSQL database and the SQLite file are dropped at the end
unless ``--keep`` (which also times a kept one again without loading it).

    .venv/bin/python -m bench.page                      # 1,000,000 rows, both databases
    .venv/bin/python -m bench.page --rows 100000 --databases sqlite --keep

Target (issue 17): first page and a filtered page within 300 ms on both databases.
Only 127.0.0.1 is ever contacted.
"""

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import numpy as np
import sqlalchemy as sa

from bench.bulk import bulk_load
from bench.query import ADMIN_URL, recreate
from bench.serve import free_port, start_server, wait_until_up
from crawler.catalogue import Catalogue, open_catalogue
from crawler.errors import CrawlerError
from crawler.extract import extract
from crawler.models import images, phash_chunks, url_key

DATA = Path(__file__).resolve().parent / ".data"
SAMPLE = Path(__file__).resolve().parents[1] / "samples" / "images" / "Canon_40D.jpg"
LOAD_BATCH = 50_000
FORMATS = {"jpg": 0.70, "png": 0.15, "webp": 0.08, "gif": 0.04, "tiff": 0.03}
REASONS = {"http_404": 0.5, "timeout": 0.2, "not_an_image": 0.15, "undecodable": 0.15}
CAMERAS = [(f"Make{n // 4}", f"Model {n}") for n in range(40)]
COLUMNS = (
    "url", "url_hash", "host", "status", "reason", "first_seen_at", "fetched_at", "format",
    "width", "height", "size", "make", "model", "taken_at", "gps_latitude", "gps_longitude",
    "phash", "phash_algorithm", "phash_c0", "phash_c1", "phash_c2", "phash_c3", "metadata",
    "metadata_json",
)  # fmt: skip
# The pages timed: name -> query. The camera of the filtered pages is among the common ones.
PAGES = {
    "first page (ok, newest)": {"status": "ok"},
    "first page, largest first": {"status": "ok", "sort": "largest"},
    "filtered: jpg, camera, GPS, 2015-2020, by date taken": {
        "status": "ok",
        "format": "jpg",
        "make": "Make0",
        "model": "Model 1",
        "gps": "true",
        "taken_from": "2015-01-01",
        "taken_to": "2020-12-31",
        "sort": "taken",
    },
    "filtered: png, without GPS, largest first": {
        "status": "ok",
        "format": "png",
        "gps": "false",
        "sort": "largest",
    },
    "filtered: a rare camera, newest": {"status": "ok", "make": "Make9", "model": "Model 39"},
    "filtered: failed": {"status": "failed"},
    "deep page: after the middle row, newest": {"status": "ok", "after": "MIDDLE"},
    "matching nothing in the sort's order: failed, largest first": {
        "status": "failed",
        "sort": "largest",
    },
    "URL text, 5% of the rows match": {"status": "ok", "url": "/2017/"},
    "URL text, none match (a whole window)": {"status": "ok", "url": "no-such-text"},
}


def database_url(dialect: str, rows: int) -> str:
    if dialect == "sqlite":
        DATA.mkdir(exist_ok=True)
        return f"sqlite:///{DATA / f'page-{rows}.db'}"
    name = f"crawler_bench_page_{rows}"
    return sa.make_url(ADMIN_URL).set(database=name).render_as_string(False)


def generated_rows(start: int, count: int, seed: int, metadata_text: str) -> list[tuple]:
    """``count`` rows as COLUMNS, numbered from ``start``."""
    rng = np.random.default_rng(seed)
    now = datetime(2026, 12, 1, tzinfo=UTC)
    status = rng.choice(["ok", "failed", "skipped"], count, p=[0.90, 0.08, 0.02])
    formats = rng.choice(list(FORMATS), count, p=list(FORMATS.values()))
    reasons = rng.choice(list(REASONS), count, p=list(REASONS.values()))
    # Camera n's share falls as 1/(n+1): Model 0 ~ 23%, Model 39 ~ 0.6% of the camera photos.
    weights = 1 / np.arange(1, len(CAMERAS) + 1)
    cameras = rng.choice(len(CAMERAS), count, p=weights / weights.sum())
    has_camera = (rng.random(count) < 0.6) & (formats == "jpg")
    has_gps = has_camera & (rng.random(count) < 0.33)
    taken_days = rng.integers(0, 20 * 365, count)
    sizes = np.exp(rng.normal(np.log(400_000), 1.2, count)).astype(np.int64) + 100
    widths = rng.integers(200, 6000, count)
    hashes = rng.integers(-(2**63), 2**63 - 1, count, dtype=np.int64, endpoint=True)
    rows = []
    for i in range(count):
        number = start + i
        taken = datetime(2005, 1, 1) + timedelta(days=int(taken_days[i]), seconds=number % 86400)
        url = f"https://img{number % 500}.example.org/photos/{taken.year}/{number:07d}.jpg"
        ok = status[i] == "ok"
        camera = CAMERAS[cameras[i]] if ok and has_camera[i] else (None, None)
        gps = (48.85 + i % 100 / 1000, 2.29) if ok and has_gps[i] else (None, None)
        phash = int(hashes[i]) if ok else None
        rows.append(
            (
                url,
                url_key(url),
                f"img{number % 500}.example.org",
                status[i],
                None if ok else ("robots" if status[i] == "skipped" else reasons[i]),
                now,
                now if status[i] != "skipped" else None,
                formats[i] if ok else None,
                int(widths[i]) if ok else None,
                int(widths[i]) * 2 // 3 if ok else None,
                int(sizes[i]) if ok else None,
                *camera,
                taken if ok and has_camera[i] else None,
                *gps,
                phash,
                "imagekit" if ok else None,
                *(phash_chunks(phash) if phash is not None else (None,) * 4),
                metadata_text if ok else None,
                metadata_text if ok else None,
            )
        )
    return rows


def load(catalogue: Catalogue, rows: int) -> tuple[float, float]:
    """Bulk-load ``rows`` rows; returns the seconds of the load and of the index builds."""
    metadata_text = json.dumps(extract(SAMPLE.read_bytes()).metadata)
    batches = (
        generated_rows(start, min(LOAD_BATCH, rows - start), start, metadata_text)
        for start in range(0, rows, LOAD_BATCH)
    )
    return bulk_load(catalogue, COLUMNS, batches)


async def time_pages(base: str, rows: int, runs: int) -> dict[str, list[float]]:
    """Milliseconds of each page in each round (after a warm-up round)."""
    middle = str(rows // 2)
    await wait_until_up(base)
    times: dict[str, list[float]] = {name: [] for name in PAGES}
    async with aiohttp.ClientSession() as session:
        for round_number in range(runs + 1):
            for name, query in PAGES.items():
                started = time.perf_counter()
                params = {
                    key: middle if value == "MIDDLE" else value for key, value in query.items()
                }
                async with session.get(f"{base}/v1/images", params=params) as response:
                    body = await response.json()
                elapsed = (time.perf_counter() - started) * 1000
                if response.status != 200:
                    raise SystemExit(f"{name}: {response.status} {str(body)[:200]}")
                if round_number:
                    times[name].append(elapsed)
        started = time.perf_counter()
        async with session.get(f"{base}/v1/summary") as response:
            await response.read()
        times["summary (/v1/summary, once)"] = [(time.perf_counter() - started) * 1000]
    return times


def run(dialect: str, rows: int, runs: int, keep: bool) -> None:
    url = database_url(dialect, rows)
    try:
        if not (keep and stored_rows(url) == rows):
            recreate(dialect, url)
            with open_catalogue(url) as catalogue:
                rows_seconds, index_seconds = load(catalogue, rows)
            print(
                f"{dialect} {rows:,} rows: loaded in {rows_seconds:.1f} s, indexes built and "
                f"analysed in {index_seconds:.1f} s",
                flush=True,
            )
        port = free_port()
        with tempfile.TemporaryDirectory() as scratch:
            server = start_server(url, port, Path(scratch) / "crawler.toml")
            try:
                times = asyncio.run(time_pages(f"http://127.0.0.1:{port}", rows, runs))
            finally:
                server.terminate()
                server.wait(30)
        for name, measured in times.items():
            print(
                f"  {name:55} median {statistics.median(measured):7.1f} ms  "
                f"max {max(measured):7.1f} ms  ({len(measured)} runs)",
                flush=True,
            )
    finally:
        if not keep:
            drop(dialect, url)


def stored_rows(url: str) -> int | None:
    """The rows of a catalogue kept by an earlier run, if there is one."""
    try:
        with open_catalogue(url, create=False) as catalogue, catalogue.engine.connect() as c:
            return c.execute(sa.select(sa.func.count()).select_from(images)).scalar_one()
    except CrawlerError:
        return None


def drop(dialect: str, url: str) -> None:
    if dialect == "sqlite":
        for suffix in ("", "-wal", "-shm"):
            Path(f"{sa.make_url(url).database}{suffix}").unlink(missing_ok=True)
        return
    admin = sa.create_engine(ADMIN_URL.replace("postgresql://", "postgresql+psycopg://"))
    with admin.execution_options(isolation_level="AUTOCOMMIT").connect() as connection:
        name = sa.make_url(url).database
        connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--databases", default="sqlite,postgresql")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument(
        "--keep", action="store_true", help="keep the databases afterwards, and use kept ones"
    )
    arguments = parser.parse_args()
    for dialect in arguments.databases.split(","):
        run(dialect, arguments.rows, arguments.runs, arguments.keep)


if __name__ == "__main__":
    main()
