"""Benchmark: ``crawler duplicates`` on 100,000 rows, planted clusters or random hashes.

Planted (the default): stores N rows through ``store_results`` (random hashes, plus clusters
of 2-5 images whose hashes are 1-6 bits from the cluster's first one, plus byte-identical
copies), then times ``crawler.duplicates.duplicates(max_distance=6)`` and checks that every
planted pair within 6 bits ended up in one group and every copy in an exact group.

    .venv/bin/python -m bench.duplicates --rows 100000

Target (issue 3): every planted pair found, within 60 s, on SQLite and PostgreSQL.

Random (``--random``): bulk-loads N random hashes and times the library call
``duplicates(catalogue, --radius)`` in a fresh process per run, ``--runs`` times; with
``--baseline REV`` each run also times the code of that git revision on the same catalogue
(interleaved, so both see the same noise) and checks that both find the same groups.

    .venv/bin/python -m bench.duplicates --random --baseline bd74b32

Target (issue 17): radius 10 on 100,000 random hashes within 2 s.
"""

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from itertools import combinations
from pathlib import Path

import sqlalchemy as sa

from bench.query import database_url, load, random_hashes, recreate
from crawler.catalogue import open_catalogue
from crawler.duplicates import duplicates
from crawler.hashes import distance, to_hex
from crawler.store import CrawlResult, store_results

MAX_DISTANCE = 6
STORE_BATCH = 5000
REPOSITORY = Path(__file__).resolve().parents[1]


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


def bench_url(dialect: str, rows: int, kind: str) -> str:
    return (
        database_url(dialect, rows)
        .replace("query-", f"duplicates-{kind}-")
        .replace("crawler_bench_", f"crawler_bench_duplicates_{kind}_")
    )


def run_planted(dialect: str, rows: int) -> None:
    url = bench_url(dialect, rows, "planted")
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


def export_revision(revision: str, into: Path) -> Path:
    """The ``crawler`` package as it was at ``revision``, with its migrations inside it as
    the installed package has them, under ``into``; put ``into`` first on the path."""
    for tree, target in (("crawler", into), ("migrations", into / "crawler")):
        archive = subprocess.run(
            ["git", "-C", str(REPOSITORY), "archive", revision, tree],
            check=True,
            capture_output=True,
        ).stdout
        target.mkdir(parents=True, exist_ok=True)
        subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    return into


def timed_in_process(url: str, radius: int, code_path: Path | None) -> tuple[float, list]:
    """Seconds of one ``duplicates`` call in a fresh process (with ``crawler`` from
    ``code_path`` if given), and the groups as sorted lists of ids."""
    paths = [str(code_path)] if code_path else []
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([*paths, str(REPOSITORY)])}
    command = [sys.executable, "-m", "bench.duplicates", "--time-one", url, str(radius)]
    # The working directory comes first on the path of ``python -m``.
    done = subprocess.run(
        command,
        cwd=code_path or REPOSITORY,
        env=environment,
        check=True,
        capture_output=True,
        text=True,
    )
    answer = json.loads(done.stdout)
    return answer["seconds"], answer["groups"]


def time_one(url: str, radius: int) -> None:
    with open_catalogue(url) as catalogue:
        started = time.perf_counter()
        groups = duplicates(catalogue, radius)
        elapsed = time.perf_counter() - started
    found = sorted(sorted(member.id for member in group.members) for group in groups)
    print(json.dumps({"seconds": elapsed, "groups": found}))


def run_random(dialect: str, rows: int, radius: int, runs: int, baseline: Path | None) -> None:
    url = bench_url(dialect, rows, "random")
    recreate(dialect, url)
    with open_catalogue(url) as catalogue:
        load(catalogue, random_hashes(rows, seed=rows))
    new_seconds, old_seconds = [], []
    for _ in range(runs):
        seconds, groups = timed_in_process(url, radius, None)
        new_seconds.append(seconds)
        if baseline is not None:
            seconds, old_groups = timed_in_process(url, radius, baseline)
            old_seconds.append(seconds)
            if old_groups != groups:
                raise SystemExit(f"MISMATCH: the baseline found other groups on {dialect}")
    new = statistics.median(new_seconds)
    line = (
        f"{dialect}: {rows:,} random hashes, radius {radius}, {len(groups)} groups: "
        f"median of {runs} runs {new:.2f} s ({', '.join(f'{s:.2f}' for s in new_seconds)})"
    )
    if old_seconds:
        old = statistics.median(old_seconds)
        line += (
            f"; baseline {old:.2f} s ({', '.join(f'{s:.2f}' for s in old_seconds)}), "
            f"{old / new:.1f}x faster, same groups"
        )
    print(line, flush=True)


def main() -> None:
    if sys.argv[1:2] == ["--time-one"]:  # one timed call, in the process of a run
        time_one(sys.argv[2], int(sys.argv[3]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--databases", default="sqlite,postgresql")
    parser.add_argument("--random", action="store_true", help="random hashes, timed runs")
    parser.add_argument("--radius", type=int, default=10, help="with --random")
    parser.add_argument("--runs", type=int, default=3, help="with --random")
    parser.add_argument("--baseline", metavar="REV", help="with --random: also time REV")
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        baseline = (
            export_revision(arguments.baseline, Path(scratch)) if arguments.baseline else None
        )
        for dialect in arguments.databases.split(","):
            if arguments.random:
                run_random(dialect, arguments.rows, arguments.radius, arguments.runs, baseline)
            else:
                run_planted(dialect, arguments.rows)


if __name__ == "__main__":
    main()
