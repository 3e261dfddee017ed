"""Benchmark: how long a command takes from start to exit, as a person at a terminal sees it.

Each command is a new process, timed from spawn to exit (wall time), 15 times; the commands
take turns round by round (in a new random order each round), so a change in the machine's
load falls on all of them alike. ``python -c pass`` is the floor every Python command pays.
The catalogue has 1,000 rows (random hashes, the metadata of the sample photos); the photo
is a real 12-megapixel camera JPEG of the shared corpus. The naive Pillow + imagehash +
exifread script of bench/extract_many.py on the same photo, ``sqlite-utils --version`` and
``exiftool -ver`` (when installed) run too, for comparison.

Run by hand:  .venv/bin/python -m bench.startup [--runs 15]
"""

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from crawler.catalogue import open_catalogue
from crawler.extract import extract
from crawler.hashes import to_hex
from crawler.store import CrawlResult, store_results

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "bench" / ".data"
CATALOGUE = DATA / "startup-1000.db"
PHOTO = ROOT.parent / "shared" / "corpus" / "exif-samples" / "jpg" / "tests" / "42_IndexError.jpg"
ROWS = 1000
HASH = "63433b3ccf8e1ebe"
BIN = Path(sys.executable).parent
CRAWLER = str(BIN / "crawler")
# Targets of issue 16, in seconds of wall time (median).
TARGETS = {
    "crawler --version": 0.3,
    "crawler distance": 0.3,
    "crawler query-similar": 0.5,
    "crawler stats": 0.5,
    "crawler extract (one 12 MP photo)": 0.6,
}


def make_catalogue() -> None:
    """1,000 catalogued images: the sample photos' objects under random hashes and URLs."""
    if CATALOGUE.exists():
        return
    DATA.mkdir(parents=True, exist_ok=True)
    samples = sorted((ROOT / "samples" / "images").glob("*.jpg"))
    objects = [extract(path.read_bytes()).metadata for path in samples]
    chooser = random.Random(16)
    results = []
    for number in range(ROWS):
        metadata = {**objects[number % len(objects)], "pHash": to_hex(chooser.getrandbits(64))}
        results.append(
            CrawlResult(
                f"https://images.example/{number}.jpg",
                "ok",
                sha256=f"{number:064x}",
                fetched_at=datetime.now(UTC),
                metadata=metadata,
                hash_algorithm="imagekit",
            )
        )
    with open_catalogue(str(CATALOGUE)) as catalogue:
        store_results(catalogue, results)


def crawler_commands(crawler: str, label: str = "crawler") -> dict[str, list[str]]:
    catalogue = ["--db", f"sqlite:///{CATALOGUE}"]  # a URL: --other may predate paths
    return {
        f"{label} --version": [crawler, "--version"],
        f"{label} distance": [crawler, "distance", HASH, "f5d2226cd9d32b16"],
        f"{label} query-similar": [crawler, *catalogue, "query-similar", HASH],
        f"{label} stats": [crawler, *catalogue, "stats"],
        f"{label} extract (one 12 MP photo)": [crawler, "extract", str(PHOTO)],
    }


def commands(other: str | None) -> dict[str, list[str]]:
    from bench.extract_many import NAIVE  # the script a user would write, for one photo here

    found = {
        "python -c pass": [sys.executable, "-c", "pass"],
        **crawler_commands(CRAWLER),
        "naive script (one 12 MP photo)": [sys.executable, "-c", NAIVE, str(PHOTO)],
    }
    if other is not None:
        found |= crawler_commands(other, "other")
    others = {
        "sqlite-utils --version": ["sqlite-utils", "--version"],
        "exiftool -ver": ["exiftool", "-ver"],
    }
    for name, command in others.items():
        if shutil.which(command[0]):
            found[name] = command
    return found


def timed(command: list[str], env: dict[str, str] | None = None) -> float:
    """Seconds from spawning ``command`` to its exit; its output is dropped."""
    started = time.perf_counter()
    done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{command[0]} failed: {done.stderr.decode()[-500:].strip()}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument(
        "--other", metavar="CRAWLER", help="another install's crawler command to time alongside"
    )
    options = parser.parse_args()
    runs = options.runs
    if not PHOTO.is_file():
        raise SystemExit(f"{PHOTO} is missing: the bench needs ../shared beside the checkout")
    make_catalogue()
    todo = commands(options.other)
    times: dict[str, list[float]] = {name: [] for name in todo}
    for command in todo.values():  # warm the page cache and the .pyc files
        timed(command)
    load_before = os.getloadavg()
    order = list(todo)
    for _ in range(runs):
        random.shuffle(order)
        for name in order:
            times[name].append(timed(todo[name]))
    load_after = os.getloadavg()
    floor = statistics.median(times["python -c pass"])
    print(
        f"median wall time of {runs} runs each, interleaved; load average (1, 5, 15 min) "
        f"{' '.join(f'{x:.2f}' for x in load_before)} before, "
        f"{' '.join(f'{x:.2f}' for x in load_after)} after"
    )
    print(f"{'command':36s} {'median':>8s} {'min':>7s} {'max':>7s} {'- pass':>8s}  target")
    missed = []
    for name, values in times.items():
        median = statistics.median(values)
        target = TARGETS.get(name)
        verdict = (
            "" if target is None else f"<= {target:.1f} s {'ok' if median <= target else 'MISSED'}"
        )
        if target is not None and median > target:
            missed.append(name)
        print(
            f"{name:36s} {median:7.3f}s {min(values):6.3f}s {max(values):6.3f}s "
            f"{median - floor:7.3f}s  {verdict}"
        )
    sys.exit(1 if missed else 0)


if __name__ == "__main__":
    main()
