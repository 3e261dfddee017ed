"""Benchmark: ``crawler duplicates`` on 100,000 rows with planted clusters.

Stores N rows through ``store_results`` (random hashes, plus clusters of 2-5 images whose
hashes are 1-6 bits from the cluster's first one, plus byte-identical copies), then times
``crawler.duplicates.duplicates(max_distance=6)`` and checks that every planted pair within
6 bits ended up in one group and every copy in an exact group.

    .venv/bin/python -m bench.duplicates --rows 100000

Target (issue 3): every planted pair found, within 60 s, on SQLite and PostgreSQL.
"""

import argparse
import random
import time
from collections.abc import Iterator
from itertools import combinations

import sqlalchemy as sa

from bench.query import database_url, recreate
from crawler.catalogue import open_catalogue
from crawler.duplicates import duplicates
from crawler.hashes import distance, to_hex
from crawler.store import CrawlResult, store_results

MAX_DISTANCE = 6
STORE_BATCH = 5000


def planted_catalogue(rows: int, seed: int) -> tuple[list[CrawlResult], list[list[str]]]:
    """The results to store and the planted clusters (lists of URLs)."""
    chooser = random.Random(seed)
    results: list[CrawlResult] = []
    clusters: list[list[str]] = []

    def add(value: int, sha256: str | None = None) -> str:
        url = f"bench://{len(results)}"
        digest = sha256 or f"{chooser.getrandbits(256):064x}"
        metadata = {"pHash": to_hex(value)}
        results.append(
            CrawlResult(url, "ok", sha256=digest, metadata=metadata, hash_algorithm="imagekit")
        )
        return url

    while len(results) < rows:
        kind = chooser.random()
        seed_hash = chooser.getrandbits(64)
        if kind < 0.05:  # a cluster of near-identical images
            cluster = [add(seed_hash)]
            for _ in range(chooser.randint(1, 4)):
                near = seed_hash
                for bit in chooser.sample(range(64), chooser.randint(1, MAX_DISTANCE)):
                    near ^= 1 << bit
                cluster.append(add(near))
            clusters.append(cluster)
        elif kind < 0.06:  # the same bytes under two URLs
            digest = f"{chooser.getrandbits(256):064x}"
            clusters.append([add(seed_hash, digest), add(seed_hash, digest)])
        else:
            add(seed_hash)
    return results, clusters


def planted_pairs(results: list[CrawlResult], clusters: list[list[str]]) -> Iterator[tuple]:
    hashes = {result.url: result.metadata["pHash"] for result in results if result.metadata}
    for cluster in clusters:
        for a, b in combinations(cluster, 2):
            if distance(hashes[a], hashes[b]) <= MAX_DISTANCE:
                yield a, b


def run(dialect: str, rows: int) -> None:
    url = (
        database_url(dialect, rows)
        .replace("query-", "duplicates-")
        .replace("crawler_bench_", "crawler_bench_duplicates_")
    )
    recreate(dialect, url)
    results, clusters = planted_catalogue(rows, seed=rows)
    with open_catalogue(url) as catalogue:
        started = time.perf_counter()
        for start in range(0, len(results), STORE_BATCH):
            store_results(catalogue, results[start : start + STORE_BATCH])
        stored = time.perf_counter() - started
        if catalogue.dialect == "postgresql":
            with catalogue.engine.connect().execution_options(
                isolation_level="AUTOCOMMIT"
            ) as connection:
                connection.execute(sa.text("VACUUM ANALYZE images"))
        started = time.perf_counter()
        groups = duplicates(catalogue, MAX_DISTANCE)
        elapsed = time.perf_counter() - started
    group_of: dict[str, set[int]] = {}
    for number, group in enumerate(groups):
        for member in group.members:
            group_of.setdefault(member.url, set()).add(number)
    pairs = list(planted_pairs(results, clusters))
    missed = [(a, b) for a, b in pairs if not group_of.get(a, set()) & group_of.get(b, set())]
    print(
        f"{dialect}: stored {len(results):,} rows with store_results in {stored:.1f} s "
        f"({len(results) / stored:,.0f} rows/s); duplicates found {len(groups):,} groups "
        f"in {elapsed:.2f} s; planted pairs within {MAX_DISTANCE} bits: {len(pairs):,}, "
        f"missed: {len(missed)}"
    )
    if missed:
        raise SystemExit(f"MISSED planted pairs, e.g. {missed[:3]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--databases", default="sqlite,postgresql")
    arguments = parser.parse_args()
    for dialect in arguments.databases.split(","):
        run(dialect, arguments.rows)


if __name__ == "__main__":
    main()
