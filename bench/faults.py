"""Benchmark a crawl through PostgreSQL restarts: images per second and rows lost.

    .venv/bin/python -m bench.faults [--count 2000] [--restarts 3] [--repeat 3]
        [--database postgresql://postgres@127.0.0.1:5433/crawler_faults]
        [--restart "pg_ctlcluster --skip-systemctl-redirect 15 faults restart"]

Restarting a PostgreSQL server drops every connection of everyone on it, so point this at
a server of its own. A scratch cluster on the same machine does (Debian):

    pg_createcluster 15 faults -p 5433 && pg_ctlcluster 15 faults start
    (and trust for 127.0.0.1 in /etc/postgresql/15/faults/pg_hba.conf)

Each round crawls ``--count`` small images (a separate server process on 127.0.0.1,
answering each after a short delay, as a remote host would) into a fresh database twice,
in alternating order: once undisturbed, once with ``--restarts`` restarts of the server
spread over the crawl. It reports both rates, their ratio, and for the disturbed crawl
the rows lost (URLs without exactly one row, or not ok: the target is 0), the URLs
fetched more than once, and the crawler's exit code. Medians over ``--repeat`` rounds.
"""

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import sqlalchemy as sa

REPO = Path(__file__).resolve().parents[1]
IMAGE = REPO / "samples" / "images" / "first-640px.jpg"
CRAWLER = Path(sys.executable).parent / "crawler"
ANSWER_SECONDS = 0.02
SETTINGS = """
[crawl]
concurrency = 32
per_host_concurrency = 16
batch_size = 50
"""


def serve(port_file: str, log_file: str) -> None:
    """The image server: every image path answers the same JPEG after a short delay, and
    each request's path is appended to ``log_file``."""
    import asyncio

    from aiohttp import web

    body = IMAGE.read_bytes()
    log = Path(log_file).open("a", buffering=1)  # noqa: SIM115 - open for the server's life

    async def image(request: web.Request) -> web.Response:
        await asyncio.sleep(ANSWER_SECONDS)
        log.write(request.path_qs + "\n")
        return web.Response(body=body, content_type="image/jpeg")

    async def main() -> None:
        app = web.Application()
        app.router.add_get("/{path:.*}", image)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        Path(port_file).write_text(str(runner.addresses[0][1]))
        await asyncio.Event().wait()

    asyncio.run(main())


def crawl(
    base: str, database: str, count: int, scratch: Path, restart: list[str], restarts: int
) -> dict[str, Any]:
    seeds = scratch / "seeds.txt"
    urls = [f"{base}/img/{n}.jpg" for n in range(count)]
    seeds.write_text("".join(f"{url}\n" for url in urls))
    config = scratch / "crawler.toml"
    config.write_text(SETTINGS)
    command = [str(CRAWLER), "--config", str(config), "--db", database, "run", str(seeds)]
    started = time.monotonic()
    process = subprocess.Popen([*command, "--json", "--quiet"], stdout=subprocess.PIPE, text=True)
    restarted = _restart_during(process, database, count, restart, restarts)
    output, _ = process.communicate(timeout=1800)
    seconds = time.monotonic() - started
    summary = json.loads(output) if process.returncode == 0 else {}
    return {
        "exit_code": process.returncode,
        "restarts": restarted,
        "seconds": round(seconds, 1),
        "images_per_second": round(count / seconds, 1),
        "by_status": summary.get("by_status"),
        "rows_lost": _rows_lost(database, urls),
    }


def _restart_during(
    process: subprocess.Popen[str], database: str, count: int, restart: list[str], restarts: int
) -> int:
    """Restart the server each time another 1/(restarts + 1) of the URLs is stored."""
    done = 0
    for number in range(1, restarts + 1):
        while _stored(database) < count * number / (restarts + 1):
            if process.poll() is not None:
                return done
            time.sleep(0.05)
        subprocess.run(restart, check=True, capture_output=True)
        done += 1
    return done


def _stored(database: str) -> int:
    try:
        with _connected(database) as connection:
            return int(
                connection.execute(
                    sa.text("SELECT count(*) FROM images WHERE status <> 'pending'")
                ).scalar_one()
            )
    except sa.exc.DBAPIError:  # not made yet, or restarting
        return 0


def _rows_lost(database: str, urls: list[str]) -> int:
    with _connected(database) as connection:
        rows = Counter(
            url
            for url, status in connection.execute(sa.text("SELECT url, status FROM images"))
            if status == "ok"
        )
    return sum(rows[url] != 1 for url in urls)


def _connected(database: str) -> sa.Connection:
    engine = sa.create_engine(database.replace("postgresql://", "postgresql+psycopg://"))
    return engine.connect()


def fresh_database(database: str) -> None:
    admin_url = sa.make_url(database).set(database="postgres")
    name = sa.make_url(database).database
    admin = sa.create_engine(
        admin_url.set(drivername="postgresql+psycopg"), isolation_level="AUTOCOMMIT"
    )
    with admin.connect() as connection:
        connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    admin.dispose()


def hits_per_url(log: Path) -> Counter[str]:
    return Counter(log.read_text().split())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--restarts", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--database", default="postgresql://postgres@127.0.0.1:5433/crawler_faults")
    parser.add_argument(
        "--restart", default="pg_ctlcluster --skip-systemctl-redirect 15 faults restart"
    )
    parser.add_argument("--serve", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(*args.serve)
        return
    rounds = []
    with tempfile.TemporaryDirectory(prefix="faults-bench-") as scratch_name:
        scratch = Path(scratch_name)
        log = scratch / "requests.log"
        port_file = scratch / "port"
        server = subprocess.Popen([sys.executable, __file__, "--serve", str(port_file), str(log)])
        try:
            while not port_file.exists() or not port_file.read_text():
                time.sleep(0.05)
            base = f"http://127.0.0.1:{port_file.read_text()}"
            for number in range(args.repeat):
                result: dict[str, Any] = {}
                order = ("calm", "restarts") if number % 2 == 0 else ("restarts", "calm")
                for kind in order:
                    fresh_database(args.database)
                    log.write_text("")
                    restarts = args.restarts if kind == "restarts" else 0
                    restart = shlex.split(args.restart)
                    result[kind] = crawl(
                        base, args.database, args.count, scratch, restart, restarts
                    )
                    hits = hits_per_url(log)
                    result[kind]["urls_fetched_twice"] = sum(n > 1 for n in hits.values())
                result["ratio"] = round(
                    result["restarts"]["images_per_second"] / result["calm"]["images_per_second"],
                    3,
                )
                print(json.dumps(result), flush=True)
                rounds.append(result)
        finally:
            server.terminate()
            server.wait()
    print(
        json.dumps(
            {
                "rounds": len(rounds),
                "median_ratio": statistics.median(r["ratio"] for r in rounds),
                "rows_lost": sum(r["restarts"]["rows_lost"] for r in rounds),
                "urls_fetched_twice": sum(r["restarts"]["urls_fetched_twice"] for r in rounds),
                "exit_codes": sorted({r["restarts"]["exit_code"] for r in rounds}),
            }
        )
    )


if __name__ == "__main__":
    main()
