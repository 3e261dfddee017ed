"""Benchmark: requests per second of ``crawler serve`` for ``/v1/files/{id}/metadata``,
``/v1/files/{id}/thumbnail`` and ``/v1/similar``, with a loopback load generator at 64
concurrent connections.

Seeds a catalogue with ``--rows`` images (one real metadata object and its thumbnail, each
row with its own pHash and SHA-256), starts ``crawler serve`` in its own process (rate
limit lifted), and drives it from this process with one aiohttp session of
``--connections`` connections for ``--seconds`` per endpoint (``--endpoint`` picks some).
Prints requests/s, latency percentiles and any non-200 answers.

``--thumbnails-only`` seeds an empty catalogue in SQL instead (rows with a URL and a
thumbnail, nothing else), for the thumbnail endpoint on a million rows: the crawl's upserts
take 5-6 minutes for those.

    .venv/bin/python -m bench.serve
    .venv/bin/python -m bench.serve --endpoint thumbnail --rows 100000
    .venv/bin/python -m bench.serve --thumbnails-only --rows 1000000
    .venv/bin/python -m bench.serve --db postgresql://postgres@127.0.0.1:5432/crawler_bench_serve

Only 127.0.0.1 is ever contacted.
"""

import argparse
import asyncio
import hashlib
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import sqlalchemy as sa

from crawler.catalogue import open_catalogue
from crawler.extract import extract
from crawler.hashes import to_hex
from crawler.store import CrawlResult, store_results

DATA = Path(__file__).resolve().parent / ".data"
SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "imagekit-docs" / "first.jpg"


@dataclass
class Outcome:
    name: str
    requests: int
    seconds: float
    latencies: list[float]
    statuses: Counter[int]

    def line(self) -> str:
        ordered = sorted(self.latencies)
        p50 = statistics.median(ordered) * 1000
        p99 = ordered[int(len(ordered) * 0.99) - 1] * 1000
        others = {status: n for status, n in self.statuses.items() if status != 200}
        return (
            f"{self.name:28} {self.requests / self.seconds:8.0f} req/s  "
            f"p50 {p50:6.1f} ms  p99 {p99:6.1f} ms  ({self.requests} requests"
            + (f", non-200: {others})" if others else ")")
        )


def seed_catalogue(url: str, rows: int) -> list[str]:
    """Fill the catalogue; returns the stored pHashes."""
    extraction = extract(SAMPLE.read_bytes())
    metadata = extraction.metadata
    generator = random.Random(5)
    hashes = [to_hex(generator.getrandbits(64)) for _ in range(rows)]
    results = [
        CrawlResult(
            url=f"https://images.example/{index}.jpg",
            status="ok",
            sha256=hashlib.sha256(str(index).encode()).hexdigest(),
            fetched_at=datetime.now(UTC),
            metadata={**metadata, "pHash": phash},
            hash_algorithm="imagekit",
            thumbnail=extraction.thumbnail,
        )
        for index, phash in enumerate(hashes)
    ]
    with open_catalogue(url) as catalogue:
        for start in range(0, rows, 5000):
            store_results(catalogue, results[start : start + 5000])
        # Fresh statistics, as autovacuum would have gathered them on a live catalogue.
        with catalogue.engine.begin() as connection:
            connection.execute(sa.text("ANALYZE images"))
    return hashes


# Rows 1..N of a fresh catalogue, made by the database itself.
_NUMBERS = {
    "sqlite": "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < :rows) "
    "SELECT i, randomblob(16) AS key FROM n",
    "postgresql": "SELECT i, decode(md5(i::text), 'hex') AS key FROM generate_series(1, :rows) i",
}


def seed_thumbnails_only(url: str, rows: int) -> None:
    """Fill an empty catalogue with ``rows`` images that have a URL and a thumbnail only."""
    thumbnail = extract(SAMPLE.read_bytes()).thumbnail
    assert thumbnail is not None
    with open_catalogue(url) as catalogue, catalogue.engine.begin() as connection:
        if connection.execute(sa.text("SELECT COUNT(*) FROM images")).scalar_one():
            sys.exit(f"--thumbnails-only needs an empty catalogue; {url} has images")
        numbers = _NUMBERS[catalogue.dialect]
        connection.execute(
            sa.text(
                "INSERT INTO images (url, url_hash, status) SELECT "
                f"'https://images.example/' || i || '.jpg', key, 'ok' FROM ({numbers}) AS n"
            ),
            {"rows": rows},
        )
        connection.execute(
            sa.text(
                "INSERT INTO thumbnails (image_id, width, height, webp) "
                "SELECT id, :width, :height, :webp FROM images"
            ).bindparams(sa.bindparam("webp", type_=sa.LargeBinary)),
            {"width": thumbnail.width, "height": thumbnail.height, "webp": thumbnail.webp},
        )


def thumbnail_bytes(url: str) -> tuple[float, float]:
    """Per stored thumbnail: its WebP's bytes, and the bytes its table takes on disk
    (PostgreSQL: with its index and TOAST; SQLite: its pages, where a 3 KB thumbnail
    fills one of 4 KB alone)."""
    on_disk = (
        "SELECT pg_total_relation_size('thumbnails')"
        if url.startswith("postgresql")
        else "SELECT SUM(pgsize) FROM dbstat WHERE name = 'thumbnails'"
    )
    with open_catalogue(url) as catalogue, catalogue.engine.connect() as connection:
        count, webp = connection.execute(
            sa.text("SELECT COUNT(*), SUM(LENGTH(webp)) FROM thumbnails")
        ).one()
        disk = connection.execute(sa.text(on_disk)).scalar_one()
    return webp / count, disk / count


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(database_url: str, port: int, config: Path) -> subprocess.Popen[bytes]:
    config.write_text(f"[serve]\nport = {port}\nrate_limit_per_minute = 1000000\n")
    crawler = Path(sys.executable).parent / "crawler"
    env = {**os.environ, "CRAWLER_CONFIG": str(config)}
    return subprocess.Popen(
        [str(crawler), "--db", database_url, "serve"], env=env, stdout=subprocess.DEVNULL
    )


async def wait_until_up(base: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while True:
            try:
                async with session.get(f"{base}/openapi.json") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"crawler serve did not answer at {base}")
            await asyncio.sleep(0.2)


async def drive(
    name: str,
    base: str,
    make_path: Callable[[random.Random], str],
    connections: int,
    seconds: float,
) -> Outcome:
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    stop_at = time.monotonic() + seconds
    connector = aiohttp.TCPConnector(limit=connections)

    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker(seed: int) -> None:
            generator = random.Random(seed)
            while time.monotonic() < stop_at:
                started = time.perf_counter()
                async with session.get(base + make_path(generator)) as response:
                    await response.read()
                latencies.append(time.perf_counter() - started)
                statuses[response.status] += 1

        started = time.monotonic()
        await asyncio.gather(*(worker(seed) for seed in range(connections)))
        elapsed = time.monotonic() - started
    return Outcome(name, len(latencies), elapsed, latencies, statuses)


Endpoint = tuple[str, Callable[[random.Random], str]]  # its name, a maker of its paths


def endpoints(rows: int, hashes: list[str]) -> dict[str, Endpoint]:
    """Each endpoint by its short name."""

    def file_path(generator: random.Random) -> str:
        return f"/v1/files/{generator.randint(1, rows)}/metadata"

    def thumbnail_path(generator: random.Random) -> str:
        return f"/v1/files/{generator.randint(1, rows)}/thumbnail"

    def similar_path(generator: random.Random) -> str:
        near = int(generator.choice(hashes), 16) ^ (1 << generator.randrange(64))
        return f"/v1/similar?phash={to_hex(near)}&max_distance=10&limit=10"

    return {
        "metadata": ("/v1/files/{id}/metadata", file_path),
        "thumbnail": ("/v1/files/{id}/thumbnail", thumbnail_path),
        "similar": ("/v1/similar (radius 10)", similar_path),
    }


async def run(
    base: str,
    chosen: list[Endpoint],
    connections: int,
    seconds: float,
) -> None:
    await wait_until_up(base)
    for name, make_path in chosen:
        await drive(name, base, make_path, connections, 1.0)  # warm up
        print((await drive(name, base, make_path, connections, seconds)).line(), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", help="catalogue URL (default: a fresh SQLite file)")
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument(
        "--endpoint",
        action="append",
        choices=("metadata", "thumbnail", "similar"),
        help="measure only this endpoint (again for more; default: all)",
    )
    parser.add_argument(
        "--thumbnails-only",
        action="store_true",
        help="seed an empty catalogue with thumbnails alone, in SQL, and measure only them",
    )
    arguments = parser.parse_args()
    DATA.mkdir(exist_ok=True)
    database_url = arguments.db
    if database_url is None:
        path = DATA / f"serve-{arguments.rows}.db"
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        database_url = f"sqlite:///{path}"
    started = time.monotonic()
    if arguments.thumbnails_only:
        seed_thumbnails_only(database_url, arguments.rows)
        hashes, wanted = [], ["thumbnail"]
    else:
        hashes = seed_catalogue(database_url, arguments.rows)
        wanted = arguments.endpoint or ["metadata", "thumbnail", "similar"]
    webp, disk = thumbnail_bytes(database_url)
    print(f"thumbnails: {webp:.0f} bytes of WebP each, {disk:.0f} bytes of the catalogue each")
    known = endpoints(arguments.rows, hashes)
    chosen = [known[name] for name in wanted]
    print(
        f"catalogue: {arguments.rows} rows in {time.monotonic() - started:.1f} s "
        f"({database_url.split(':')[0]}), {arguments.connections} connections, "
        f"{arguments.seconds:.0f} s per endpoint, {os.cpu_count()} cores",
        flush=True,
    )
    port = free_port()
    with tempfile.TemporaryDirectory() as scratch:
        server = start_server(database_url, port, Path(scratch) / "crawler.toml")
        try:
            asyncio.run(
                run(f"http://127.0.0.1:{port}", chosen, arguments.connections, arguments.seconds)
            )
        finally:
            server.terminate()
            server.wait(30)


if __name__ == "__main__":
    main()
