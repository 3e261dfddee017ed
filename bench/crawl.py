"""Benchmark `crawler run`: images per second and peak memory on a loopback server.

    .venv/bin/python bench/crawl.py [--count 2000] [--lines 1000000] [--database sqlite]

1. Makes ``--count`` photo-sized JPEGs (random 8-12 megapixel crops of the corpus' camera
   photos, EXIF kept) under bench/.data/photos/ (cached; gitignored).
2. Measures the single-core extraction rate: ``crawler.extract.extract`` in one process
   over the same photos, bytes already in memory, before, between and after the crawls.
3. Serves the photos from a separate process on 127.0.0.1 and runs `crawler run` on a
   fresh catalogue ``--repeat`` times, sampling the RSS and CPU time of the crawler and all
   its child processes. Each crawl is compared with the mean of the baselines right before
   and right after it (the VM's speed drifts by 10-20% within minutes); the median of these
   ratios is the result.
   The server is a minimal HTTP/1.1 one (keep-alive, blocking sendfile), not aiohttp's
   static files: it shares the cores with the crawler, unlike a real remote server, and
   aiohttp's took ~1.9 ms of CPU per photo from the crawl (this one ~0.6 ms, measured in
   every run as server_cpu_ms_per_image; ~0.1 ms of it is Python, the rest the kernel's
   TCP over loopback, which on a real network would be the receiving machine's work).
4. Runs it once more with a ``--lines``-line seed list: the same photos, each URL repeated with
   different #fragments (equal after normalisation), so seeding streams a big file while
   the crawl itself stays the same size.

Targets (issue 4): with 2 cores >= 1.6x the single-core rate; peak RSS < 400 MB, also with
the 1,000,000-line seed list. Timed targets live here, never in the test suite.
"""

import argparse
import functools
import json
import os
import random
import socketserver
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "bench" / ".data" / "photos"
CORPUS = REPO.parent / "shared" / "corpus" / "exif-samples" / "jpg"
SOURCES = (
    "hdr/iphone_hdr_NO.jpg",
    "hdr/iphone_hdr_YES.jpg",
    "mobile/jolla.jpg",
    "mobile/HMD_Nokia_8.3_5G.jpg",
    "tests/42_IndexError.jpg",
    "tests/30-type_error.jpg",
    "corrupted.jpg",  # decodes fine with Pillow; only its EXIF is odd
)
BASELINE_BATCH = 100  # photos held in memory at a time while measuring the baseline
SAMPLE_SECONDS = 0.25


@functools.cache
def _source(index: int) -> tuple[Any, bytes]:
    """A decoded corpus photo and its EXIF, once per process."""
    from PIL import Image

    with Image.open(CORPUS / SOURCES[index]) as source:
        return source.convert("RGB"), source.info.get("exif", b"")


def make_photo(number: int) -> Path:
    """A random 8-12 megapixel crop (or the whole photo, if smaller) of a corpus photo."""
    target = DATA / f"{number:05d}.jpg"
    if target.exists():
        return target
    rng = random.Random(number)
    photo, exif = _source(number % len(SOURCES))
    scale = min(1.0, (rng.uniform(8, 12) * 1e6 / (photo.width * photo.height)) ** 0.5)
    width, height = int(photo.width * scale), int(photo.height * scale)
    left = rng.randint(0, photo.width - width)
    top = rng.randint(0, photo.height - height)
    partial = target.with_suffix(".part")
    crop = photo.crop((left, top, left + width, top + height))
    crop.save(partial, "JPEG", quality=rng.randint(80, 92), exif=exif)
    partial.rename(target)
    return target


def make_photos(count: int) -> list[Path]:
    DATA.mkdir(parents=True, exist_ok=True)
    missing = [number for number in range(count) if not (DATA / f"{number:05d}.jpg").exists()]
    if missing:
        print(f"making {len(missing)} photos under {DATA} (once) ...", flush=True)
        with ProcessPoolExecutor() as pool:
            list(pool.map(make_photo, missing, chunksize=8))
    return [DATA / f"{number:05d}.jpg" for number in range(count)]


def single_core_rate(photos: list[Path]) -> tuple[float, float]:
    """Images per second of ``extract`` in this one process over all of ``photos`` (the
    crawl's own), per wall second and per CPU second (the second is what the machine's
    other load cannot steal). Only ``extract`` is timed: the photos are read into memory
    ``BASELINE_BATCH`` at a time, between the timed stretches."""
    import pyvips

    from crawler.extract import extract

    pyvips.concurrency_set(1)  # one core, as in bench/extract.py and in each pool process
    extract(photos[0].read_bytes())  # imports and first-use costs out of the timing
    wall = cpu = 0.0
    for start in range(0, len(photos), BASELINE_BATCH):
        batch = [path.read_bytes() for path in photos[start : start + BASELINE_BATCH]]
        started, cpu_started = time.perf_counter(), time.process_time()
        for data in batch:
            extract(data)
        wall += time.perf_counter() - started
        cpu += time.process_time() - cpu_started
    return len(photos) / wall, len(photos) / cpu


def serve(directory: str, port_file: str) -> None:
    """Run in the server process: the files of ``directory`` at /photos/NAME on 127.0.0.1,
    port written to port_file.

    A minimal HTTP/1.1 server (GET only, keep-alive, a thread per connection, bodies by
    sendfile) rather than aiohttp's static files: it shares the two cores with the crawler,
    unlike a real remote server, so it must cost as little CPU as possible. Blocking
    sendfile costs a third less than asyncio's, which wakes up each time the socket drains.
    """

    class Server(socketserver.ThreadingTCPServer):
        daemon_threads = True

    handler = functools.partial(_PhotoHandler, Path(directory))
    with Server(("127.0.0.1", 0), handler) as server:
        Path(port_file).write_text(str(server.server_address[1]))
        server.serve_forever()


class _PhotoHandler(socketserver.StreamRequestHandler):
    def __init__(self, directory: Path, *args: Any) -> None:
        self.directory = directory
        super().__init__(*args)

    def handle(self) -> None:
        while request := self.rfile.readline():
            while self.rfile.readline() not in (b"\r\n", b""):  # headers: not needed
                pass
            method, target = request.split(b" ", 2)[:2]
            name = target.decode().removeprefix("/photos/")
            path = self.directory / name
            if method != b"GET" or "/" in name or not path.is_file():
                self.wfile.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
                continue
            with path.open("rb") as body:
                size = os.fstat(body.fileno()).st_size
                self.wfile.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\n"
                    b"Content-Length: %d\r\n\r\n" % size
                )
                self.connection.sendfile(body)


class TreeMemory:
    """Peak RSS (MB) of a process and all its descendants, and the CPU seconds they used,
    sampled in a thread.

    Not PSS: reading /proc/PID/smaps_rollup walks a process's page tables under its memory
    lock, which its own page faults and mmap calls then wait for; sampling it four times a
    second made the crawl measured here ~10% slower.
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak_rss = 0.0
        self.peak_processes = 0
        self._cpu: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> "TreeMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        while not self._stop.wait(SAMPLE_SECONDS):
            pids = [self.pid, *descendants(self.pid)]
            rss = sum(_kilobytes(f"/proc/{pid}/status", "VmRSS:") for pid in pids) / 1024
            self.peak_rss = max(self.peak_rss, rss)
            self.peak_processes = max(self.peak_processes, len(pids))
            for pid in pids:
                self._cpu[pid] = max(self._cpu.get(pid, 0.0), cpu_seconds(pid))

    @property
    def cpu_seconds(self) -> float:
        return sum(self._cpu.values())

    @property
    def main_cpu_seconds(self) -> float:
        return self._cpu.get(self.pid, 0.0)


def cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def descendants(pid: int) -> list[int]:
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
        children = [int(c) for task in tasks for c in (task / "children").read_text().split()]
    except (FileNotFoundError, ProcessLookupError):
        return []
    return children + [grandchild for child in children for grandchild in descendants(child)]


def _kilobytes(path: str, key: str) -> int:
    try:
        with open(path) as handle:
            for line in handle:
                if line.startswith(key):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def crawl(seeds: Path, database_url: str, extra: list[str], server_pid: int) -> dict[str, Any]:
    command = [
        str(Path(sys.executable).parent / "crawler"),
        "--db",
        database_url,
        "run",
        str(seeds),
        "--json",
        *extra,
    ]
    started, server_started = time.perf_counter(), cpu_seconds(server_pid)
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    with TreeMemory(process.pid) as memory:
        output, _ = process.communicate()
    wall, server_cpu = time.perf_counter() - started, cpu_seconds(server_pid) - server_started
    if process.returncode != 0:
        raise SystemExit(f"crawler run failed with exit code {process.returncode}")
    summary = json.loads(output)
    return {
        "wall_seconds": round(wall, 1),
        "crawl_seconds": summary["seconds"],
        "images_per_second": summary["per_second"],
        "ok": summary["by_status"].get("ok", 0),
        "stored": summary["stored"],
        "seeds_read": summary["seeds"],
        "images_per_cpu_second": round(ok_count(summary) / memory.cpu_seconds, 2),
        "main_process_cpu_ms_per_image": round(
            1000 * memory.main_cpu_seconds / max(ok_count(summary), 1), 1
        ),
        # The server shares the two cores; a remote one would not (its kernel time is mostly
        # TCP over loopback, receiving included).
        "server_cpu_ms_per_image": round(1000 * server_cpu / max(ok_count(summary), 1), 2),
        "load_average": round(os.getloadavg()[0], 1),
        "peak_rss_mb": round(memory.peak_rss),
        "processes": memory.peak_processes,
    }


def ok_count(summary: dict[str, Any]) -> int:
    return int(summary["by_status"].get("ok", 0))


def fresh_database(kind: str, scratch: Path, name: str) -> str:
    if kind == "sqlite":
        return f"sqlite:///{scratch / (name + '.db')}"
    database = f"crawler_bench_{name}_{os.getpid()}"
    _postgres_admin(f'DROP DATABASE IF EXISTS "{database}"', f'CREATE DATABASE "{database}"')
    return f"postgresql://postgres@127.0.0.1:5432/{database}"


def drop_database(database_url: str) -> None:
    if database_url.startswith("postgresql:"):
        database = database_url.rsplit("/", 1)[1]
        _postgres_admin(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


def _postgres_admin(*statements: str) -> None:
    import sqlalchemy as sa

    admin = sa.create_engine(
        "postgresql+psycopg://postgres@127.0.0.1:5432/test", isolation_level="AUTOCOMMIT"
    )
    with admin.connect() as connection:
        for statement in statements:
            connection.execute(sa.text(statement))
    admin.dispose()


def write_seeds(path: Path, urls: list[str], lines: int) -> Path:
    with path.open("w") as handle:
        for line in range(lines):
            url = urls[line % len(urls)]
            handle.write(f"{url}#{line}\n" if line >= len(urls) else f"{url}\n")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=2000, help="photos to crawl")
    parser.add_argument("--repeat", type=int, default=3, help="crawls of the photos' list")
    parser.add_argument("--lines", type=int, default=1_000_000, help="lines of the big list")
    parser.add_argument("--database", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--serve", nargs=2, metavar=("DIR", "PORT_FILE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(*args.serve)
        return

    photos = make_photos(args.count)
    megabytes = sum(path.stat().st_size for path in photos) / 1e6
    print(f"{len(photos)} photos, {megabytes:.0f} MB", flush=True)
    with tempfile.TemporaryDirectory(prefix="crawl-bench-") as scratch_name:
        scratch = Path(scratch_name)
        port_file = scratch / "port"
        server = subprocess.Popen([sys.executable, __file__, "--serve", str(DATA), str(port_file)])
        try:
            while not port_file.exists() or not port_file.read_text():
                time.sleep(0.05)
            base = f"http://127.0.0.1:{port_file.read_text()}/photos/"
            urls = [base + path.name for path in photos]
            runs = [("seed list", len(urls))] * args.repeat + [("big seed list", args.lines)]
            results = measure(runs, urls, photos, scratch, args.database, server.pid)
        finally:
            server.terminate()
            server.wait()
    print(json.dumps(results, indent=2))


def measure(
    runs: list[tuple[str, int]],
    urls: list[str],
    photos: list[Path],
    scratch: Path,
    kind: str,
    server_pid: int,
) -> dict[str, Any]:
    """Crawl each of ``runs`` (label, lines of its seed list) with the single-core baseline
    measured before, between and after them."""
    results: dict[str, Any] = {"cores": os.cpu_count(), "runs": []}
    before = single_core_rate(photos)
    for number, (label, lines) in enumerate(runs):
        seeds = write_seeds(scratch / f"{number}.txt", urls, lines)
        database = fresh_database(kind, scratch, f"run{number}")
        try:
            result = {
                "run": f"{label} ({lines} lines)",
                **crawl(seeds, database, ["--per-host", "8"], server_pid),
            }
        finally:
            drop_database(database)
        after = single_core_rate(photos)
        single, single_cpu = ((b + a) / 2 for b, a in zip(before, after, strict=True))
        result["single_core_per_second"] = round(single, 2)
        result["single_core_per_cpu_second"] = round(single_cpu, 2)
        result["speedup_vs_single_core"] = round(result["images_per_second"] / single, 2)
        results["runs"].append(result)
        print(json.dumps(result), flush=True)
        before = after
    speedups = [
        run["speedup_vs_single_core"]
        for run in results["runs"]
        if run["run"].startswith("seed list")
    ]
    if speedups:
        results["speedup_of_seed_list_runs"] = {
            "min": min(speedups),
            "median": statistics.median(speedups),
            "max": max(speedups),
        }
    return results


if __name__ == "__main__":
    main()
