"""The figures of ``bench/web.py``, from the simulated web's request log alone: makespan
against the ideal lower bound, per host the requests in flight and the gaps between request
starts, requests inside a 429's Retry-After, requests per URL, each crawler's share, and the
catalogue's final rows; each acceptance target (issue 13) as ``value op limit``, PASS or FAIL.
"""

import itertools
import json
import math
import re
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from bench.simulated_web import Host

# A request that reached the server this soon after a 429 was sent may have left before the
# answer arrived (or before another crawler could read it from the catalogue).
RETRY_AFTER_GRACE = 0.25
TIMING_SLACK = 0.02  # seconds: event-loop jitter in the server's timestamps
DEADLINE_SLACK = 2.0  # seconds past crawl.timeouts.url a slow-drip URL may take
# Hosts left out of the ideal bound, and why.
EXCLUDED = {
    "dead": "nothing listens there: its URLs fail at connect and take no server time",
    "drip": "its bodies never finish: its URLs fail by the timeouts, at no rate the host sets",
}
# How each host's rows must end (status, accepted reasons); every other host's: ok. A dead
# host's robots.txt is unreachable too, which RFC 9309 makes "fetch nothing".
EXPECTED = {
    "dead": ("failed", ("connection_error", "robots_unavailable")),
    "drip": ("failed", ("timeout",)),
}


@dataclass(frozen=True)
class Limits:
    """The settings every crawler runs with, and what the targets compare against."""

    concurrency: int
    per_host: int
    lease: float
    total_timeout: float
    url_deadline: float
    delay_max: float


@dataclass(frozen=True)
class Request:
    """One logged request, times in seconds after the crawlers were launched."""

    host: str
    path: str
    start: float
    end: float
    status: int
    agent: str
    complete: bool
    retry_after: float | None

    @property
    def image(self) -> bool:
        return self.path.startswith("/img/")

    @property
    def served(self) -> bool:
        return self.image and self.status == 200 and self.complete

    @property
    def crawler(self) -> int | None:
        match = re.search(r"\(crawler (\d+)\)", self.agent)
        return int(match[1]) if match else None


def request_from_log(entry: dict[str, Any], launched: float) -> Request:
    return Request(
        entry["host"],
        entry["path"],
        entry["start"] - launched,
        entry["end"] - launched,
        entry["status"],
        entry.get("ua", ""),
        entry["complete"],
        entry.get("retry_after"),
    )


def effective_delay(host: Host, delay: float, limits: Limits) -> float:
    """max(config delay, robots.txt Crawl-delay capped by crawl.per_host_delay_max)."""
    return max(delay, min(host.crawl_delay, limits.delay_max))


def host_bound(host: Host, limits: Limits, delay: float) -> float:
    """The earliest this host's URLs can all be done: per-host concurrency over its response
    time, or one per delay; plus any time it refuses to serve (429 window, robots outage)."""
    wait = effective_delay(host, delay, limits)
    batches = math.ceil(host.urls / limits.per_host) * host.latency
    spaced = (host.urls - 1) * wait + host.latency
    return max(batches, spaced) + host.retry_after + host.robots_outage


def ideal(hosts: Iterable[Host], limits: Limits, delay: float, crawlers: int) -> tuple[float, str]:
    """The ideal lower bound of the makespan, and what sets it."""
    bounded = [host for host in hosts if host.kind not in EXCLUDED and host.urls]
    if not bounded:
        return 0.0, "no host"
    slowest = max(bounded, key=lambda host: host_bound(host, limits, delay))
    by_host = host_bound(slowest, limits, delay)
    concurrency = limits.concurrency * crawlers
    by_work = sum(host.urls * host.latency for host in bounded) / concurrency
    if by_work > by_host:
        return by_work, f"total work over concurrency {concurrency}"
    return by_host, f"{slowest.kind} host {slowest.address} ({slowest.urls} URLs)"


def max_in_flight(requests: Iterable[Request]) -> int:
    events = sorted(
        itertools.chain.from_iterable(((r.start, 1), (r.end, -1)) for r in requests)
    )  # at equal times an end (-1) sorts first
    return max(itertools.accumulate(change for _, change in events), default=0)


def mean_in_flight(requests: Sequence[Request]) -> float:
    if not requests:
        return 0.0
    begin = min(r.start for r in requests)
    span = max(r.end for r in requests) - begin
    return sum(r.end - r.start for r in requests) / span if span > 0 else 0.0


def min_gap(requests: Iterable[Request]) -> float | None:
    starts = sorted(r.start for r in requests)
    return min((b - a for a, b in itertools.pairwise(starts)), default=None)


def retry_after_violations(requests: Sequence[Request]) -> int:
    """Requests that started inside the Retry-After of a 429 answered before them."""
    windows = [
        (r.end + RETRY_AFTER_GRACE, r.end + r.retry_after - TIMING_SLACK)
        for r in requests
        if r.status == 429 and r.retry_after is not None
    ]
    return sum(any(begin < r.start < end for begin, end in windows) for r in requests)


def per_url(requests: Iterable[Request]) -> dict[tuple[str, str], list[Request]]:
    urls: dict[tuple[str, str], list[Request]] = defaultdict(list)
    for request in sorted(requests, key=lambda r: r.start):
        urls[request.host, request.path].append(request)
    return urls


def host_figures(
    host: Host, requests: list[Request], limits: Limits, delay: float
) -> dict[str, Any]:
    images = [r for r in requests if r.image]
    urls = per_url(images)
    wait = effective_delay(host, delay, limits)
    figures: dict[str, Any] = {
        "host": host.address,
        "kind": host.kind,
        "urls": host.urls,
        "requests": len(images),
        "robots_requests": len(requests) - len(images),
        "served": sum(1 for tries in urls.values() if any(r.served for r in tries)),
        "requests_per_url": dict(sorted(Counter(len(tries) for tries in urls.values()).items())),
        "statuses": dict(Counter(r.status for r in images)),
        "max_in_flight": max_in_flight(images),
        "delay": wait,
        "min_gap": _round(min_gap(images), 3) if wait else None,
        "bound_seconds": round(host_bound(host, limits, delay), 2),
        "done_at": _round(max((r.end for r in images if r.served), default=None)),
    }
    if host.kind == "limited":
        figures["retry_after_violations"] = retry_after_violations(images)
    if host.kind == "drip":
        held = [tries[-1].end - tries[0].start for tries in urls.values()]
        busy = [sum(r.end - r.start for r in tries) for tries in urls.values()]
        figures["url_held_max"] = _round(max(held, default=None))  # first try to last
        figures["url_busy_max"] = _round(max(busy, default=None))  # in requests
    return figures


def first_try_duplicates(requests: Iterable[Request]) -> dict[str, int]:
    """URLs served on their first request, and how many of them were requested again."""
    first_try = [tries for tries in per_url(r for r in requests if r.image).values()]
    first_try = [tries for tries in first_try if tries[0].served]
    again = [tries for tries in first_try if len(tries) > 1]
    return {
        "first_try_served": len(first_try),
        "first_try_fetched_again": len(again),
        # by the crawler that had fetched it: its own claim lapsed under it
        "fetched_again_by_same_crawler": sum(
            any(r.crawler == tries[0].crawler for r in tries[1:]) for tries in again
        ),
        "extra_requests": sum(len(tries) - 1 for tries in again),
    }


def crawler_shares(
    crawlers: list[dict[str, Any]], requests: list[Request], lease: float
) -> list[dict[str, Any]]:
    """Per crawler: URLs it fetched, and URLs first requested over a lease after it exited
    (work it left to others: with leases, at most one lease's worth may be outstanding)."""
    images = [r for r in requests if r.image]
    first_starts = [tries[0].start for tries in per_url(images).values()]
    for figures in crawlers:
        mine = [r for r in images if r.crawler == figures["crawler"]]
        figures["requests"] = len(mine)
        figures["urls_fetched"] = len({(r.host, r.path) for r in mine if r.served})
        exited = figures["exited_at"]
        figures["urls_started_after_exit"] = (
            sum(start > exited + lease for start in first_starts) if exited is not None else None
        )
    return crawlers


def row_figures(
    rows: list[tuple[str, str, str | None]], seeds: list[str], hosts: Sequence[Host]
) -> dict[str, Any]:
    kinds = {host.address: host.kind for host in hosts}
    counts = Counter(url for url, _, _ in rows)
    seed_set = set(seeds)
    unexpected: dict[str, Counter[str]] = defaultdict(Counter)
    for url, status, reason in rows:
        kind = kinds.get(url.split("//", 1)[-1].split(":", 1)[0], "?")
        expected_status, reasons = EXPECTED.get(kind, ("ok", (None,)))
        if status != expected_status or reason not in reasons:
            unexpected[kind][f"{status}/{reason}"] += 1
    return {
        "seeds": len(seed_set),
        "rows": len(rows),
        "missing": len(seed_set - set(counts)),
        "extra": len(set(counts) - seed_set),
        "duplicated": sum(1 for count in counts.values() if count > 1),
        "pending": sum(1 for _, status, _ in rows if status == "pending"),
        "by_status": dict(Counter(status for _, status, _ in rows)),
        "by_reason": dict(Counter(reason for _, _, reason in rows if reason)),
        "unexpected": {kind: dict(found) for kind, found in unexpected.items()},
    }


def target(
    value: float | None, op: str, limit: float, detail: str = "", *, timed: bool = False
) -> dict[str, Any]:
    """One acceptance target: ``value op limit``; no value (never measured) fails."""
    passed = value is not None and (value <= limit if op == "<=" else value >= limit)
    return {
        "value": _round(value, 3),
        "op": op,
        "limit": round(limit, 3),
        "pass": passed,
        "timed": timed,
        "detail": detail,
    }


@dataclass(frozen=True)
class Crawl:
    """What one run crawled, with which settings, by how many crawlers."""

    hosts: tuple[Host, ...]
    limits: Limits
    delay: float  # crawl.per_host_delay
    crawlers: int


def analyse(
    crawl: Crawl,
    requests: list[Request],
    crawlers: list[dict[str, Any]],
    rows: list[tuple[str, str, str | None]],
    seeds: list[str],
) -> dict[str, Any]:
    """Every figure of one run, and its targets."""
    hosts, limits, delay = crawl.hosts, crawl.limits, crawl.delay
    by_host: dict[str, list[Request]] = defaultdict(list)
    for request in requests:
        by_host[request.host].append(request)
    figures = [host_figures(h, by_host[h.address], limits, delay) for h in hosts if h.served]
    bound, bound_by = ideal(hosts, limits, delay, crawl.crawlers)
    begin = min((r.start for r in requests), default=None)
    bounded = {h.address for h in hosts if h.kind not in EXCLUDED}
    end = max((r.end for r in requests if r.host in bounded), default=None)
    makespan = end - begin if begin is not None and end is not None else None
    result: dict[str, Any] = {
        "first_request_at": _round(begin),
        "makespan": _round(makespan),
        "ideal": round(bound, 2),
        "ideal_set_by": bound_by,
        "excluded_from_ideal": {h.kind: EXCLUDED[h.kind] for h in hosts if h.kind in EXCLUDED},
        "wall": _round(max((c["exited_at"] or 0.0 for c in crawlers), default=None)),
        "mean_in_flight": round(mean_in_flight([r for r in requests if r.image]), 1),
        **first_try_duplicates(requests),
        "hosts": figures,
        "crawlers": crawler_shares(crawlers, requests, limits.lease),
        "catalogue": row_figures(rows, seeds, hosts),
    }
    result["targets"] = targets(crawl, result, requests)
    return result


def targets(
    crawl: Crawl, result: dict[str, Any], requests: list[Request]
) -> dict[str, dict[str, Any]]:
    figures, limits = result["hosts"], crawl.limits
    ratio = result["makespan"] / result["ideal"] if result["makespan"] and result["ideal"] else None
    found = {
        "makespan": target(
            ratio, "<=", 1.15, f"{result['makespan']} s / ideal {result['ideal']} s", timed=True
        ),
        **_fast_target(crawl, result, requests),
        "in_flight": _in_flight_target(figures, limits.per_host),
        **_gap_target(figures),
        **_retry_after_target(figures),
        "double_fetch": target(
            result["first_try_fetched_again"],
            "<=",
            0,
            f"of {result['first_try_served']} URLs served on the first try "
            f"({result['fetched_again_by_same_crawler']} by the same crawler again); "
            f"{result['extra_requests']} extra requests",
        ),
        **_deadline_target(figures, limits),
        **_crawler_targets(result["crawlers"]),
        **_row_targets(result["catalogue"]),
    }
    return found


def _fast_target(
    crawl: Crawl, result: dict[str, Any], requests: list[Request]
) -> dict[str, dict[str, Any]]:
    fast = [host for host in crawl.hosts if host.kind == "fast"]
    if not fast:
        return {}
    own, _ = ideal(fast, crawl.limits, crawl.delay, crawl.crawlers)
    addresses = {host.address for host in fast}
    urls = per_url(r for r in requests if r.host in addresses and r.image)
    served = [next((r.end for r in tries if r.served), None) for tries in urls.values()]
    all_done = len(urls) == sum(host.urls for host in fast) and None not in served
    begin = result["first_request_at"]
    done = max(s for s in served if s is not None) - begin if all_done and served else None
    detail = f"fast hosts' own ideal {own:.2f} s" + ("" if all_done else "; some never served")
    return {"fast_hosts": target(done, "<=", 2 * own + 2, detail, timed=True)}


def _in_flight_target(figures: list[dict[str, Any]], per_host: int) -> dict[str, Any]:
    worst = max(figures, key=lambda f: f["max_in_flight"])
    over = sum(1 for f in figures if f["max_in_flight"] > per_host)
    detail = f"{worst['kind']} host {worst['host']}; {over} of {len(figures)} hosts over"
    return target(worst["max_in_flight"], "<=", per_host, detail)


def _gap_target(figures: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    delayed = [f for f in figures if f["delay"] and f["min_gap"] is not None]
    if not delayed:
        return {}
    short = [f for f in delayed if f["min_gap"] < f["delay"] - TIMING_SLACK]
    worst = min(delayed, key=lambda f: f["min_gap"] / f["delay"])
    detail = (
        f"hosts with a gap below their delay; worst {worst['kind']} {worst['host']}: "
        f"{worst['min_gap']} s against {worst['delay']} s"
    )
    return {"delay_gaps": target(len(short), "<=", 0, detail)}


def _retry_after_target(figures: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    limited = [f for f in figures if f["kind"] == "limited"]
    if not limited:
        return {}
    violations = sum(f["retry_after_violations"] for f in limited)
    detail = f"{sum(f['requests'] for f in limited)} requests for {limited[0]['urls']} URLs"
    return {"retry_after": target(violations, "<=", 0, detail)}


def _deadline_target(figures: list[dict[str, Any]], limits: Limits) -> dict[str, dict[str, Any]]:
    drip = [f for f in figures if f["kind"] == "drip"]
    if not drip:
        return {}
    held, busy = drip[0]["url_held_max"], drip[0]["url_busy_max"]
    detail = (
        f"longest a slow-drip URL took, first try to last ({busy} s of it in requests; "
        f"crawl.timeouts.url {limits.url_deadline:g})"
    )
    return {"url_deadline": target(held, "<=", limits.url_deadline + DEADLINE_SLACK, detail)}


def _crawler_targets(crawlers: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    failed = [c for c in crawlers if c["exit_code"] != 0 or c["killed"]]
    killed = sum(1 for c in crawlers if c["killed"])
    found = {
        "finished": target(killed, "<=", 0, "crawlers stopped at the run's deadline"),
        "exit_codes": target(
            len(failed), "<=", 0, ", ".join(f"#{c['crawler']}: {c['exit_code']}" for c in failed)
        ),
    }
    if len(crawlers) > 1:
        idle = [c for c in crawlers if not c["urls_fetched"] or c["urls_started_after_exit"]]
        detail = "; ".join(
            f"#{c['crawler']} fetched {c['urls_fetched']}, exit {c['exit_code']} at "
            f"{c['exited_at']} s, {c['urls_started_after_exit']} URLs begun over a lease later"
            for c in crawlers
        )
        found["take_part"] = target(len(idle), "<=", 0, detail)
    return found


def _row_targets(rows: dict[str, Any]) -> dict[str, dict[str, Any]]:
    wrong = rows["missing"] + rows["extra"] + rows["duplicated"] + rows["pending"]
    unexpected = sum(sum(found.values()) for found in rows["unexpected"].values())
    return {
        "one_row_each": target(
            wrong,
            "<=",
            0,
            f"{rows['rows']} rows for {rows['seeds']} seeds, {rows['pending']} pending",
        ),
        "outcomes": target(unexpected, "<=", 0, json.dumps(rows["unexpected"]) * bool(unexpected)),
    }


def _round(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)


def summarise(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per scenario, order and setup over the repeats: timed targets by their median, the
    others by their worst run."""
    grouped: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for result in results:
        grouped[result["scenario"], result["order"], result["setup"]].append(result)
    summary = []
    for (scenario, order, setup), runs in grouped.items():
        names = dict.fromkeys(name for run in runs for name in run["targets"])
        summary.append(
            {
                "scenario": scenario,
                "order": order,
                "setup": setup,
                "runs": len(runs),
                "makespan_median": _median([run["makespan"] for run in runs]),
                "ideal": runs[0]["ideal"],
                "targets": {
                    name: _combine([run["targets"].get(name) for run in runs]) for name in names
                },
            }
        )
    return summary


def _median(values: list[float | None]) -> float | None:
    known = [value for value in values if value is not None]
    return _round(statistics.median(known)) if len(known) == len(values) and known else None


def _combine(found: list[dict[str, Any] | None]) -> dict[str, Any]:
    present = [item for item in found if item is not None]
    first = present[0]
    values = [item["value"] for item in present]
    if None in values:
        value = None
    elif first["timed"]:
        value = statistics.median(values)
    else:
        value = max(values) if first["op"] == "<=" else min(values)
    combined = target(value, first["op"], first["limit"], timed=first["timed"])
    combined["passed_runs"] = sum(item["pass"] for item in present)
    return combined
