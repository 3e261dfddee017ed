"""Hosts: politeness that holds across every crawler sharing one catalogue.

A web host is fetched by one crawler at a time: the one whose id is in ``hosts.owner``
while its lease holds. That crawler alone claims the host's rows and keeps its per-host
concurrency and delay, so the limits hold summed over all crawlers without a database
round trip per request. The ``hosts`` row carries what the next holder must honour: the
earliest time the next request may start (the delay since the last one, a Retry-After
pause, a circuit breaker's backoff), the consecutive failures, the robots.txt Crawl-delay
and the time a fetch took there. Crawlers take the hosts that have work and are ready
soonest, as many as their workers can keep busy, skipping rows other crawlers are taking
at that moment (``FOR UPDATE SKIP LOCKED``), so hosts spread over crawlers.
"""

from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa

from crawler.catalogue import Catalogue
from crawler.frontier.claims import fail_unheld_rows, work_version
from crawler.frontier.crawlers import first_unheld, live_crawler_ids
from crawler.frontier.seeding import note_work
from crawler.models import hosts, images
from crawler.seeds import LOCAL_HOST


@dataclass(frozen=True)
class HostRecord:
    """A host as its previous holders left it."""

    host: str
    next_fetch_at: datetime
    backoff_until: datetime | None
    failures: int
    crawl_delay: float | None
    seconds_per_fetch: float | None
    work_version: int


@dataclass(frozen=True)
class HostState:
    """What a crawler hands on when it lets a host go (or pauses it for long)."""

    next_fetch_at: datetime
    backoff_until: datetime | None
    failures: int
    crawl_delay: float | None
    seconds_per_fetch: float | None


def acquire_hosts(
    catalogue: Catalogue, crawler_id: str, count: int, live_since: datetime
) -> list[HostRecord]:
    """Take up to ``count`` web hosts that have work and that no live crawler holds, those
    whose next request may start soonest first."""
    free = first_unheld(
        hosts.c.host,
        hosts.c.owner,
        hosts.c.work_version > hosts.c.done_version,
        hosts.c.host != LOCAL_HOST,
        live_since=live_since,
        order_by=hosts.c.next_fetch_at,
        limit=count,
    )
    statement = (
        sa.update(hosts)
        .where(hosts.c.host.in_(free))
        .values(owner=crawler_id)
        .returning(
            hosts.c.host,
            hosts.c.next_fetch_at,
            hosts.c.backoff_until,
            hosts.c.failures,
            hosts.c.crawl_delay,
            hosts.c.seconds_per_fetch,
            hosts.c.work_version,
        )
    )
    with catalogue.engine.begin() as connection:
        rows = connection.execute(statement).all()
    return sorted((HostRecord(**row._mapping) for row in rows), key=lambda r: r.next_fetch_at)


def save_host(catalogue: Catalogue, crawler_id: str, host: str, state: HostState) -> None:
    """Record ``state`` for the next holder while keeping the host (a long pause)."""
    _update_held(catalogue, crawler_id, host, _state_values(state))


def release_host(
    catalogue: Catalogue,
    crawler_id: str,
    host: str,
    state: HostState,
    done_version: int | None = None,
) -> None:
    """Let ``host`` go with ``state`` for its next holder; ``done_version``: the work
    version up to which it was found without pending rows."""
    values = _state_values(state) | {"owner": None}
    if done_version is not None:
        values["done_version"] = sa.case(
            (hosts.c.done_version < done_version, done_version), else_=hosts.c.done_version
        )
    _update_held(catalogue, crawler_id, host, values)


def _state_values(state: HostState) -> dict[str, object]:
    return {
        "next_fetch_at": state.next_fetch_at,
        "backoff_until": state.backoff_until,
        "failures": state.failures,
        "crawl_delay": state.crawl_delay,
        "seconds_per_fetch": state.seconds_per_fetch,
    }


def _update_held(
    catalogue: Catalogue, crawler_id: str, host: str, values: dict[str, object]
) -> None:
    statement = (
        sa.update(hosts).where(hosts.c.host == host, hosts.c.owner == crawler_id).values(values)
    )
    with catalogue.engine.begin() as connection:
        connection.execute(statement)


def give_up_host(
    catalogue: Catalogue,
    crawler_id: str,
    host: str,
    state: HostState,
    *,
    reason: str,
    error: str,
    now: datetime,
    live_since: datetime,
) -> int:
    """The host is down (or its robots.txt unavailable): fail its pending rows that nobody
    holds and let it go, done up to now. Returns how many rows failed."""
    with catalogue.engine.begin() as connection:
        version = work_version(connection, host)
        failed = fail_unheld_rows(connection, host, reason, error, now, live_since)
        values = _state_values(state) | {"owner": None, "done_version": version}
        connection.execute(
            sa.update(hosts).where(hosts.c.host == host, hosts.c.owner == crawler_id).values(values)
        )
    return failed


def hosts_share(catalogue: Catalogue, live_since: datetime) -> tuple[int, int]:
    """How many crawlers are live, and how many web hosts have work: a crawler's fair share
    of the hosts is the second over the first."""
    with catalogue.engine.connect() as connection:
        live = connection.execute(
            sa.select(sa.func.count()).select_from(live_crawler_ids(live_since).subquery())
        ).scalar_one()
        with_work = connection.execute(
            sa.select(sa.func.count()).where(
                hosts.c.work_version > hosts.c.done_version, hosts.c.host != LOCAL_HOST
            )
        ).scalar_one()
    return int(live), int(with_work)


def release_hosts(catalogue: Catalogue, crawler_id: str) -> int:
    """Let go of every host ``crawler_id`` still holds, as they are."""
    statement = sa.update(hosts).where(hosts.c.owner == crawler_id).values(owner=None)
    with catalogue.engine.begin() as connection:
        return connection.execute(statement).rowcount


def repair_hosts(catalogue: Catalogue) -> int:
    """Tell every host with pending rows that it has work: a safety net for rows that
    became pending without seeding (stored as pending by hand, a crawler that died between
    claiming and storing after its host was found done). Scans the pending rows."""
    with catalogue.engine.begin() as connection:
        pending_hosts = connection.execute(
            sa.select(images.c.host)
            .distinct()
            .where(images.c.status == "pending", images.c.host.is_not(None))
        ).scalars()
        names = [name for name in pending_hosts if name != LOCAL_HOST]
        note_work(connection, names)
    return len(names)
