"""Benchmark the crawl's scheduling from the outside, on a simulated web of loopback hosts.

    .venv/bin/python -m bench.web [--scenario all|head-of-line|wide|politeness|faults|multi]
                                  [--repeat N] [--quick] [--setups sqlite-1,pg-1,pg-2,pg-4]
                                  [--orders slow-first,interleaved,grouped] ...

Each run starts the simulated web (``bench/simulated_web.py``: one server process, one
loopback address per host, every request logged) and then 1, 2 or 4 ``crawler run`` processes
together, on the same seed list and one fresh catalogue (a scratch PostgreSQL database,
dropped afterwards, or SQLite), each with its own ``--user-agent`` so that the log tells them
apart. Everything is measured on the server's side, summed over all crawlers, which is what
a remote site sees (``bench/web_figures.py``); the crawler's code is never looked into, so
the same bench measures any version of it. The settings go in by ``crawler run`` flags and
a TOML file, new settings (``crawl.lease_seconds``, ``crawl.per_host_delay_max``,
``crawl.timeouts.url``) only where the installed crawler has them.

Every subprocess has a deadline: crawlers that overrun are stopped, then killed, and the run
is reported as FAIL. The artefacts of the last invocation (seeds, settings, server logs,
crawler logs) stay under bench/.data/web/last/; the figures go to bench/.data/web/results.json.
"""

import argparse
import contextlib
import dataclasses
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from bench.crawl import drop_database, fresh_database
from bench.simulated_web import (
    POLL_SECONDS,
    STOP_GRACE_SECONDS,
    Host,
    WebServer,
    make_images,
    with_addresses,
)
from bench.web_figures import Crawl, Limits, analyse, ideal, request_from_log, summarise, target

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "bench" / ".data" / "web"
LAST = DATA / "last"
PRODUCT = "crawler-bench/1.0"  # one product token for every crawler; robots.txt says "*"
SLOW_KINDS = ("slow", "outlast")


# -- scenarios -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Setup:
    database: str  # "sqlite" or "postgresql"
    crawlers: int

    @property
    def label(self) -> str:
        return f"{'pg' if self.database == 'postgresql' else 'sqlite'}-{self.crawlers}"


def parse_setup(text: str) -> Setup:
    match = re.fullmatch(r"(sqlite|pg)-([1-9][0-9]*)", text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r}: expected sqlite-1, pg-1, pg-2, pg-4, ...")
    database = "postgresql" if match[1] == "pg" else "sqlite"
    if database == "sqlite" and match[2] != "1":
        raise argparse.ArgumentTypeError(f"{text!r}: SQLite is for one crawler")
    return Setup(database, int(match[2]))


@dataclass(frozen=True)
class Scenario:
    name: str
    hosts: tuple[Host, ...]
    orders: tuple[str, ...]
    setups: tuple[Setup, ...]
    delay: float = 0.0  # crawl.per_host_delay (`crawler run --delay`)


ORDERS = ("slow-first", "interleaved", "grouped")


def _fast(args: argparse.Namespace, count: int) -> list[Host]:
    return [Host("fast", args.fast_urls, args.fast_latency) for _ in range(count)]


def _limited(args: argparse.Namespace) -> Host:
    return Host("limited", args.limited_urls, args.fast_latency, retry_after=args.retry_after)


def head_of_line(args: argparse.Namespace) -> list[Host]:
    """Fast hosts with one slow host in the middle of them (the middle of the grouped order)."""
    fast = _fast(args, args.fast_hosts)
    half = len(fast) // 2
    return [*fast[:half], Host("slow", args.slow_urls, args.slow_latency), *fast[half:]]


def wide(args: argparse.Namespace) -> list[Host]:
    return [Host("wide", args.wide_urls, args.wide_latency) for _ in range(args.wide_hosts)]


def politeness(args: argparse.Namespace) -> list[Host]:
    crawl_delay = Host(
        "crawl-delay", args.crawl_delay_urls, args.fast_latency, crawl_delay=args.crawl_delay
    )
    return [*_fast(args, args.politeness_hosts), crawl_delay, _limited(args)]


def faults(args: argparse.Namespace) -> list[Host]:
    return [
        *_fast(args, args.faults_hosts),
        Host("drip", args.drip_urls, 0.0, drip_seconds=3 * args.url_deadline),
        Host("robots-503", args.fast_urls, args.fast_latency, robots_outage=args.robots_outage),
        _limited(args),
        Host("dead", args.dead_urls),
    ]


def multi(args: argparse.Namespace) -> list[Host]:
    """200 URLs by default: fast hosts, a slow host whose queue outlasts a lease, and a host
    whose every answer outlasts one."""
    return [
        *_fast(args, args.multi_hosts),
        Host("slow", args.multi_slow_urls, args.slow_latency),
        Host("outlast", args.outlast_urls, 1.5 * args.lease),
    ]


# name: (hosts, default orders, default setups, uses --delay)
SCENARIOS: dict[str, tuple[Callable[[argparse.Namespace], list[Host]], str, str, bool]] = {
    "head-of-line": (head_of_line, "slow-first,interleaved,grouped", "sqlite-1,pg-2", False),
    "wide": (wide, "grouped,interleaved", "sqlite-1", False),
    "politeness": (politeness, "interleaved", "sqlite-1,pg-2,pg-4", True),
    "faults": (faults, "interleaved", "sqlite-1,pg-2", False),
    "multi": (multi, "slow-first", "pg-1,pg-2,pg-4,sqlite-1", False),
}


def build_scenarios(args: argparse.Namespace) -> list[Scenario]:
    names = list(SCENARIOS) if args.scenario == "all" else [args.scenario]
    scenarios = []
    for name in names:
        make_hosts, orders, setups, delayed = SCENARIOS[name]
        scenarios.append(
            Scenario(
                name,
                with_addresses(make_hosts(args)),
                tuple(args.orders or orders.split(",")),
                tuple(args.setups or [parse_setup(text) for text in setups.split(",")]),
                args.delay if delayed else 0.0,
            )
        )
    return scenarios


def seed_order(hosts: Sequence[Host], order: str) -> list[tuple[Host, int]]:
    """(host, image number) in the order of the seed list."""
    per_host = [[(host, number) for number in range(host.urls)] for host in hosts]
    if order == "grouped":
        return [url for urls in per_host for url in urls]
    if order == "slow-first":
        slow = [urls for urls in per_host if urls and urls[0][0].kind in SLOW_KINDS]
        rest = [urls for urls in per_host if urls not in slow]
        return [url for urls in slow for url in urls] + _round_robin(rest)
    return _round_robin(per_host)


def _round_robin(per_host: list[list[tuple[Host, int]]]) -> list[tuple[Host, int]]:
    rounds = itertools.zip_longest(*per_host)
    return [url for one_round in rounds for url in one_round if url is not None]


def image_path(number: int) -> str:
    return f"/img/{number}.jpg"


# -- the crawlers ----------------------------------------------------------------------------


@dataclass(frozen=True)
class CrawlerSettings:
    """Which settings the installed crawler has: it may be today's or the rewrite's."""

    lease_key: str | None
    crawl_fields: tuple[str, ...]
    timeout_fields: tuple[str, ...]


def detect_settings() -> CrawlerSettings:
    from crawler.config import load_settings

    with tempfile.NamedTemporaryFile("w", suffix=".toml") as empty:
        crawl = load_settings(empty.name).crawl
    crawl_fields = tuple(item.name for item in dataclasses.fields(crawl))
    timeout_fields = tuple(item.name for item in dataclasses.fields(crawl.timeouts))
    lease_key = next((k for k in ("lease_seconds", "claim_timeout") if k in crawl_fields), None)
    return CrawlerSettings(lease_key, crawl_fields, timeout_fields)


def crawler_toml(limits: Limits, found: CrawlerSettings) -> str:
    """The settings file every crawler gets; new settings only where the crawler has them."""
    crawl: dict[str, float] = {"extract_workers": 1}  # small images: one process is plenty
    if found.lease_key:
        crawl[found.lease_key] = limits.lease
    if "per_host_delay_max" in found.crawl_fields:
        crawl["per_host_delay_max"] = limits.delay_max
    timeouts = {"connect": 3.0, "read": limits.total_timeout, "total": limits.total_timeout}
    if "url" in found.timeout_fields:
        timeouts["url"] = limits.url_deadline
    sections: dict[str, dict[str, float]] = {
        "crawl": crawl,
        "crawl.timeouts": timeouts,
        "crawl.retries": {"retry_after_max": 60},
    }
    return "".join(
        f"[{name}]\n" + "".join(f"{key} = {value}\n" for key, value in values.items()) + "\n"
        for name, values in sections.items()
    )


@dataclass
class CrawlerRun:
    number: int
    process: subprocess.Popen[bytes]
    output: Path
    errors: Path
    exited_at: float | None = None  # seconds after the launch
    killed: bool = False

    def figures(self) -> dict[str, Any]:
        try:
            summary = json.loads(self.output.read_text())
        except ValueError:
            summary = None
        tail = self.errors.read_text(errors="replace").strip().splitlines()[-5:]
        return {
            "crawler": self.number,
            "exit_code": self.process.returncode,
            "exited_at": None if self.exited_at is None else round(self.exited_at, 2),
            "killed": self.killed,
            "summary": summary,
            "stderr_tail": tail if self.process.returncode else [],
        }


def crawler_command() -> str:
    return str(Path(sys.executable).parent / "crawler")


def prepare_catalogue(database_url: str) -> None:
    """Create the schema before the crawlers start, so that they all start at once."""
    subprocess.run(
        [crawler_command(), "--db", database_url, "db", "upgrade"],
        check=True,
        timeout=120,
        stdout=subprocess.DEVNULL,
    )


def start_crawlers(
    count: int, seeds: Path, database_url: str, flags: list[str], directory: Path
) -> list[CrawlerRun]:
    runs = []
    for number in range(1, count + 1):
        output, errors = directory / f"crawler-{number}.json", directory / f"crawler-{number}.log"
        command = [
            crawler_command(),
            "--db",
            database_url,
            "--config",
            str(directory / "crawler.toml"),
            "run",
            str(seeds),
            "--json",
            "--user-agent",
            f"{PRODUCT} (crawler {number})",
            *flags,
        ]
        with output.open("wb") as stdout, errors.open("wb") as stderr:
            process = subprocess.Popen(
                command, stdout=stdout, stderr=stderr, cwd=directory, start_new_session=True
            )
        runs.append(CrawlerRun(number, process, output, errors))
    return runs


def wait_for_crawlers(runs: list[CrawlerRun], launched: float, timeout: float) -> None:
    """Wait until every crawler has exited; past ``timeout``, stop them, then kill them."""
    deadline = launched + timeout
    while _note_exits(runs, launched) and time.monotonic() < deadline:
        time.sleep(POLL_SECONDS)
    overran = [run for run in runs if run.exited_at is None]
    for run in overran:
        run.killed = True
        run.process.terminate()  # the crawler's own signal handling: stop and store
    grace = time.monotonic() + STOP_GRACE_SECONDS
    while _note_exits(runs, launched) and time.monotonic() < grace:
        time.sleep(POLL_SECONDS)
    for run in overran:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(run.process.pid, signal.SIGKILL)  # it, its extraction processes
        run.process.wait()
        _note_exits([run], launched)


def _note_exits(runs: list[CrawlerRun], launched: float) -> bool:
    """Record exit times; True while any crawler still runs."""
    now = time.monotonic() - launched
    for run in runs:
        if run.exited_at is None and run.process.poll() is not None:
            run.exited_at = now
    return any(run.exited_at is None for run in runs)


def read_rows(database_url: str) -> list[tuple[str, str, str | None]]:
    import sqlalchemy as sa

    from crawler.catalogue import create_catalogue_engine

    engine = create_catalogue_engine(database_url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(sa.text("SELECT url, status, reason FROM images"))
            return [(url, status, reason) for url, status, reason in rows]
    finally:
        engine.dispose()


# -- one run ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    scenario: Scenario
    order: str
    setup: Setup
    repeat: int

    @property
    def key(self) -> str:
        return f"{self.scenario.name} / {self.order} / {self.setup.label}"


def execute(
    run: Run,
    limits: Limits,
    toml: str,
    images: list[Path],
    directory: Path,
    timeout: float | None = None,
) -> dict[str, Any]:
    directory.mkdir(parents=True)
    (directory / "crawler.toml").write_text(toml)
    hosts = run.scenario.hosts
    flags = ["--concurrency", str(limits.concurrency), "--per-host", str(limits.per_host)]
    flags += ["--delay", str(run.scenario.delay)]
    timeout = timeout or run_timeout(run, limits)
    server = WebServer(hosts, images, directory)
    try:
        seeds = [
            f"http://{host.address}:{server.port}{image_path(number)}"
            for host, number in seed_order(hosts, run.order)
        ]
        (directory / "seeds.txt").write_text("".join(url + "\n" for url in seeds))
        database = fresh_database(run.setup.database, directory, "web")
        try:
            prepare_catalogue(database)
            launched = time.monotonic()
            crawlers = start_crawlers(
                run.setup.crawlers, directory / "seeds.txt", database, flags, directory
            )
            wait_for_crawlers(crawlers, launched, timeout)
            rows = read_rows(database)
        finally:
            drop_database(database)
    finally:
        log = server.stop()
    requests = [request_from_log(entry, launched) for entry in log]
    crawl = Crawl(hosts, limits, run.scenario.delay, run.setup.crawlers)
    result = {
        "scenario": run.scenario.name,
        "order": run.order,
        "setup": run.setup.label,
        "repeat": run.repeat,
        "load_average": round(os.getloadavg()[0], 2),
        **analyse(crawl, requests, [c.figures() for c in crawlers], rows, seeds),
    }
    result["server_cpu_seconds"] = round(server.cpu_seconds, 2)
    result["run_timeout_seconds"] = round(timeout)
    return result


def failed_run(run: Run, error: str) -> dict[str, Any]:
    """A run that could not be measured: reported, and FAIL."""
    return {
        "scenario": run.scenario.name,
        "order": run.order,
        "setup": run.setup.label,
        "repeat": run.repeat,
        "error": error,
        "makespan": None,
        "ideal": None,
        "ideal_set_by": "-",
        "wall": None,
        "mean_in_flight": None,
        "load_average": round(os.getloadavg()[0], 2),
        "targets": {"finished": target(None, "<=", 0, error)},
    }


def run_timeout(run: Run, limits: Limits) -> float:
    """Generous: three times the ideal, plus time for start-up and a slow-drip URL's tries."""
    bound, _ = ideal(run.scenario.hosts, limits, run.scenario.delay, run.setup.crawlers)
    return 3 * bound + 90 + 4 * limits.total_timeout * (run.scenario.name == "faults")


# -- the report ------------------------------------------------------------------------------


TARGET_COLUMNS = {
    "makespan": "makespan/ideal",
    "fast_hosts": "fast done s",
    "in_flight": "in flight",
    "delay_gaps": "gap<delay",
    "retry_after": "in 429 wait",
    "double_fetch": "double",
    "url_deadline": "drip held s",
    "take_part": "idle",
    "one_row_each": "rows",
    "outcomes": "outcomes",
    "finished": "killed",
    "exit_codes": "exit!=0",
}


def table(summary: list[dict[str, Any]]) -> str:
    header = [
        "scenario",
        "order",
        "setup",
        "runs",
        "makespan s",
        "ideal s",
        *TARGET_COLUMNS.values(),
    ]
    lines = [header]
    for row in summary:
        cells = [row["scenario"], row["order"], row["setup"], str(row["runs"])]
        cells += [_text(row["makespan_median"]), _text(row["ideal"])]
        cells += [_cell(row["targets"].get(name)) for name in TARGET_COLUMNS]
        lines.append(cells)
    widths = [max(len(line[column]) for line in lines) for column in range(len(header))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) for line in lines
    )


def _cell(found: dict[str, Any] | None) -> str:
    if found is None:
        return "-"
    return f"{_text(found['value'])} {'PASS' if found['pass'] else 'FAIL'}"


def _text(value: float | None) -> str:
    return "none" if value is None else f"{value:g}"


def print_run(number: int, total: int, result: dict[str, Any]) -> None:
    print(
        f"[{number}/{total}] {result['scenario']} / {result['order']} / {result['setup']}"
        f" (repeat {result['repeat'] + 1}): first request at {result.get('first_request_at')} s,"
        f" makespan {result['makespan']} s, ideal "
        f"{result['ideal']} s ({result['ideal_set_by']}), wall {result['wall']} s, mean "
        f"{result['mean_in_flight']} in flight, load {result['load_average']}",
        flush=True,
    )
    for kind, why in result.get("excluded_from_ideal", {}).items():
        print(f"    not in the ideal: the {kind} host, as {why}")
    for crawler in result.get("crawlers", []):
        summary = crawler["summary"] or {}
        print(
            f"    crawler {crawler['crawler']}: exit {crawler['exit_code']} at "
            f"{crawler['exited_at']} s, stored {summary.get('stored')} "
            f"{summary.get('by_status', {})}, {crawler['urls_fetched']} URLs fetched"
        )
    if rows := result.get("catalogue"):
        print(f"    rows: {rows['by_status']}, reasons {rows['by_reason']}", flush=True)
    for name, found in result["targets"].items():
        verdict = "PASS" if found["pass"] else "FAIL"
        print(
            f"    {verdict} {name}: {_text(found['value'])} {found['op']} "
            f"{found['limit']:g}  {found['detail']}",
            flush=True,
        )


def write_results(path: Path, document: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.with_suffix(".part").write_text(json.dumps(document, indent=1))
    path.with_suffix(".part").rename(path)


# -- command line ----------------------------------------------------------------------------


QUICK = {
    "fast_hosts": 6,
    "fast_urls": 4,
    "slow_urls": 48,  # more than the concurrency, or no head-of-line blocking can show
    "slow_latency": 0.5,
    "wide_hosts": 40,
    "wide_urls": 5,
    "wide_latency": 0.2,
    "politeness_hosts": 3,
    "crawl_delay": 0.5,
    "crawl_delay_urls": 8,
    "limited_urls": 8,
    "retry_after": 4.0,
    "faults_hosts": 2,
    "drip_urls": 2,
    "robots_outage": 2.0,
    "dead_urls": 2,
    "multi_hosts": 6,
    "multi_slow_urls": 64,
    "outlast_urls": 2,
    "lease": 4.0,
    "total_timeout": 8.0,
    "url_deadline": 12.0,
}


def build_parser() -> argparse.ArgumentParser:
    # The one-line description is the docstring's opening sentence, before the usage block.
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", choices=["all", *SCENARIOS], default="all")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each (medians)")
    parser.add_argument("--quick", action="store_true", help="small sizes, to try the bench")
    parser.add_argument("--orders", type=lambda text: text.split(","), help=",".join(ORDERS))
    parser.add_argument(
        "--setups",
        type=lambda text: [parse_setup(t) for t in text.split(",")],
        help="crawlers per run, e.g. sqlite-1,pg-1,pg-2,pg-4 (default: per scenario)",
    )
    parser.add_argument("--output", type=Path, default=DATA / "results.json")
    parser.add_argument(
        "--run-timeout",
        type=float,
        help="seconds before a run's crawlers are stopped (default: 3x its ideal + 90)",
    )
    crawl = parser.add_argument_group("crawler settings")
    crawl.add_argument("--concurrency", type=int, default=32)
    crawl.add_argument("--per-host", type=int, default=4)
    crawl.add_argument("--delay", type=float, default=0.2, help="politeness scenario's --delay")
    crawl.add_argument("--lease", type=float, default=10.0, help="lease / claim timeout, seconds")
    crawl.add_argument("--total-timeout", type=float, default=20.0, help="per attempt")
    crawl.add_argument("--url-deadline", type=float, default=30.0, help="crawl.timeouts.url")
    crawl.add_argument("--delay-max", type=float, default=30.0, help="crawl.per_host_delay_max")
    sizes = parser.add_argument_group("hosts")
    for name, default, help_text in (
        ("fast-hosts", 20, "head-of-line: fast hosts"),
        ("fast-urls", 10, "URLs per fast host"),
        ("fast-latency", 0.05, "seconds per fast answer"),
        ("slow-urls", 120, "head-of-line: URLs of the slow host"),
        ("slow-latency", 2.0, "seconds per slow answer"),
        ("wide-hosts", 200, "wide: hosts"),
        ("wide-urls", 10, "wide: URLs per host"),
        ("wide-latency", 0.3, "wide: seconds per answer"),
        ("politeness-hosts", 8, "politeness: fast hosts"),
        ("crawl-delay", 1.0, "robots.txt Crawl-delay of its host"),
        ("crawl-delay-urls", 15, "URLs of the Crawl-delay host"),
        ("limited-urls", 20, "URLs of the 429 host"),
        ("retry-after", 10.0, "seconds the 429 host refuses after its first request"),
        ("faults-hosts", 4, "faults: fast hosts"),
        ("drip-urls", 4, "URLs of the slow-drip host (bodies over 3x --url-deadline)"),
        ("robots-outage", 5.0, "seconds robots.txt answers 503"),
        ("dead-urls", 5, "URLs of the dead host"),
        ("multi-hosts", 13, "multi: fast hosts"),
        ("multi-slow-urls", 66, "multi: URLs of the slow host (its queue outlasts a lease)"),
        ("outlast-urls", 4, "multi: URLs answered in 1.5x --lease"),
    ):
        sizes.add_argument(f"--{name}", type=type(default), default=default, help=help_text)
    return parser


def parse_args() -> argparse.Namespace:
    arguments = build_parser()
    if arguments.parse_known_args()[0].quick:
        arguments.set_defaults(**QUICK)
    args = arguments.parse_args()
    if unknown := set(args.orders or ()) - set(ORDERS):
        arguments.error(
            f"unknown seed order {sorted(unknown)[0]!r}; choose from {', '.join(ORDERS)}"
        )
    if args.scenario in ("all", "multi") and args.total_timeout <= 1.5 * args.lease + 1:
        arguments.error("--total-timeout must exceed 1.5 x --lease + 1 s (multi's outlasting host)")
    return args


def main() -> None:
    args = parse_args()
    limits = Limits(
        args.concurrency,
        args.per_host,
        args.lease,
        args.total_timeout,
        args.url_deadline,
        args.delay_max,
    )
    found = detect_settings()
    toml = crawler_toml(limits, found)
    images = make_images()
    runs = [
        Run(scenario, order, setup, repeat)
        for repeat in range(args.repeat)
        for scenario in build_scenarios(args)
        for order in scenario.orders
        for setup in scenario.setups
    ]
    shutil.rmtree(LAST, ignore_errors=True)
    document: dict[str, Any] = {
        "command": " ".join(sys.argv),
        "cores": os.cpu_count(),
        "crawler_settings": dataclasses.asdict(found),
        "crawler_toml": toml,
        "limits": dataclasses.asdict(limits),
        "runs": [],
    }
    for number, run in enumerate(runs, 1):
        directory = LAST / f"{number:02d}-{run.key.replace(' / ', '-')}"
        try:
            result = execute(run, limits, toml, images, directory, args.run_timeout)
        except (OSError, subprocess.SubprocessError, sa.exc.SQLAlchemyError) as exc:
            result = failed_run(run, f"{type(exc).__name__}: {exc}")
        print_run(number, len(runs), result)
        document["runs"].append(result)
        write_results(args.output, document)
    document["summary"] = summarise(document["runs"])
    write_results(args.output, document)
    print(table(document["summary"]))
    print(f"figures: {args.output}")


if __name__ == "__main__":
    main()
