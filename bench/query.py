"""Benchmark: near-duplicate search, multi-index hashing against the full scan.

Loads N random 64-bit hashes into a fresh catalogue on each database, then times
``query.similar`` at radius 10 with ``strategy="index"`` and ``strategy="scan"`` on the same
query hashes (half random, half a stored hash with a few bits flipped, so that some queries
have hits) and checks that both give the same rows. Prints the load time and median times.

    .venv/bin/python -m bench.query --rows 1000000
    .venv/bin/python -m bench.query --rows 10000000 --databases postgresql --reuse

Targets (issue 3): PostgreSQL 1M <= 20 ms, 10M <= 60 ms; SQLite 1M <= 50 ms; index >= 10x scan.
"""

import argparse
import functools
import hashlib
import random
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import sqlalchemy as sa

from bench.bulk import bulk_load
from crawler.catalogue import Catalogue, open_catalogue
from crawler.config import DEFAULT_HASH_ALGORITHM
from crawler.models import CHUNK_COLUMNS, images, phash_chunks, url_key
from crawler.query import similar

DATA = Path(__file__).resolve().parent / ".data"
ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"
LOAD_BATCH = 100_000
COLUMNS = (
    "url",
    "url_hash",
    "sha256",
    "status",
    "first_seen_at",
    "phash_algorithm",
    "phash",
    *CHUNK_COLUMNS,
)


def random_hashes(count: int, seed: int) -> np.ndarray:
    generator = np.random.default_rng(seed)
    return generator.integers(-(2**63), 2**63 - 1, size=count, dtype=np.int64, endpoint=True)


def database_url(dialect: str, rows: int) -> str:
    if dialect == "sqlite":
        DATA.mkdir(exist_ok=True)
        return f"sqlite:///{DATA / f'query-{rows}.db'}"
    return sa.make_url(ADMIN_URL).set(database=f"crawler_bench_{rows}").render_as_string(False)


def recreate(dialect: str, url: str) -> None:
    if dialect == "sqlite":
        for suffix in ("", "-wal", "-shm"):
            Path(f"{sa.make_url(url).database}{suffix}").unlink(missing_ok=True)
        return
    name = sa.make_url(url).database
    admin = sa.create_engine(ADMIN_URL.replace("postgresql://", "postgresql+psycopg://"))
    with admin.execution_options(isolation_level="AUTOCOMMIT").connect() as connection:
        connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    admin.dispose()


def rows_of(hashes: np.ndarray, start: int, now: datetime) -> list[tuple]:
    """One row a hash; each image its own SHA-256, as crawled images have."""
    rows = []
    for i, value in enumerate(hashes.tolist(), start=start):
        url = f"bench://{i}"
        sha256 = hashlib.sha256(url.encode()).hexdigest()
        algorithm = DEFAULT_HASH_ALGORITHM
        rows.append((url, url_key(url), sha256, "ok", now, algorithm, value, *phash_chunks(value)))
    return rows


def load(catalogue: Catalogue, hashes: np.ndarray) -> tuple[float, float]:
    """Bulk-load the hashes; returns the seconds of the load and of the index builds."""
    now = datetime.now(UTC)
    batches = (
        rows_of(hashes[start : start + LOAD_BATCH], start, now)
        for start in range(0, len(hashes), LOAD_BATCH)
    )
    return bulk_load(catalogue, COLUMNS, batches)


def query_hashes(stored: np.ndarray, count: int, seed: int) -> list[int]:
    chooser = random.Random(seed)
    queries = []
    for i in range(count):
        if i % 2:
            queries.append(chooser.getrandbits(64))
            continue
        value = int(stored[chooser.randrange(len(stored))]) & (2**64 - 1)
        for bit in chooser.sample(range(64), chooser.randint(0, 10)):
            value ^= 1 << bit
        queries.append(value)
    return queries


def timed(call: Callable[..., list], **options: str) -> tuple[float, list]:
    started = time.perf_counter()
    result = call(**options)
    return (time.perf_counter() - started) * 1000, result


def run(dialect: str, rows: int, queries: int, radius: int, reuse: bool) -> None:
    url = database_url(dialect, rows)
    hashes = random_hashes(rows, seed=rows)
    if not reuse:
        recreate(dialect, url)
    with open_catalogue(url) as catalogue:
        with catalogue.engine.connect() as connection:
            stored = connection.execute(sa.select(sa.func.count()).select_from(images)).scalar()
        if stored != rows:
            rows_seconds, index_seconds = load(catalogue, hashes)
            print(
                f"{dialect} {rows:,} rows: loaded in {rows_seconds:.1f} s "
                f"({rows / rows_seconds:,.0f} rows/s), indexes built and analysed in "
                f"{index_seconds:.1f} s",
                flush=True,
            )
        index_ms, scan_ms, hits = [], [], 0
        for value in query_hashes(hashes, queries, seed=1):
            search = functools.partial(similar, catalogue, value, radius)
            search(strategy="index")  # warm the cache pages
            elapsed, by_index = timed(search, strategy="index")
            index_ms.append(elapsed)
            elapsed, by_scan = timed(search, strategy="scan")
            scan_ms.append(elapsed)
            if by_index != by_scan:
                raise SystemExit(f"MISMATCH for {value:016x}: index and scan differ")
            hits += len(by_index)
        index_median, scan_median = statistics.median(index_ms), statistics.median(scan_ms)
        print(
            f"{dialect} {rows:,} rows, radius {radius}, {queries} queries "
            f"({hits} hits, index = scan): "
            f"index median {index_median:.1f} ms (max {max(index_ms):.1f}), "
            f"scan median {scan_median:.1f} ms, speed-up {scan_median / index_median:.0f}x"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000])
    parser.add_argument("--databases", default="sqlite,postgresql")
    parser.add_argument("--queries", type=int, default=20)
    parser.add_argument("--radius", type=int, default=10)
    parser.add_argument("--reuse", action="store_true", help="keep an already loaded database")
    arguments = parser.parse_args()
    for rows in arguments.rows:
        for dialect in arguments.databases.split(","):
            run(dialect, rows, arguments.queries, arguments.radius, arguments.reuse)


if __name__ == "__main__":
    main()
