"""Claims on rows: the pending URLs of one host that a crawler takes to fetch.

A row is claimed by writing the crawler's id into ``claimed_by``; the claim holds while
that crawler's lease does (``crawler.frontier.crawlers``), so a live crawler's rows are
never taken by another, nor claimed twice by itself, however long they wait in its queues,
and a dead crawler's rows are free as soon as its lease lapses. Rows are claimed a host at
a time, through the partial index on the pending rows' (host, id): only the crawler that
holds a web host claims its rows (``crawler.frontier.hosts``); local files are claimed by
any crawler. ``FOR UPDATE SKIP LOCKED`` on PostgreSQL keeps crawlers that claim at the same
moment from waiting on each other; SQLite runs each statement under its single writer lock.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from crawler.catalogue import Catalogue
from crawler.fetch import Validators
from crawler.frontier.crawlers import first_unheld, held_by_live_crawler
from crawler.frontier.seeding import note_work
from crawler.models import hosts, images, thumbnails, url_key


@dataclass(frozen=True)
class Claim:
    """A URL this crawler now owns, with the validators of its stored copy if it has one."""

    url: str
    host: str
    validators: Validators | None = None


@dataclass(frozen=True)
class HostClaims:
    """The rows claimed of one host, and its work version just before: if fewer rows came
    than were asked for, the host had no more up to that version."""

    claims: list[Claim]
    work_version: int


def claim_rows(
    catalogue: Catalogue,
    crawler_id: str,
    host_limits: dict[str, int],
    now: datetime,
    live_since: datetime,
    *,
    thumbnails_wanted: bool = False,
) -> dict[str, HostClaims]:
    """Claim up to ``host_limits[host]`` pending rows of each host (oldest first) that no
    live crawler holds, in one transaction; returns them by host.

    ``thumbnails_wanted``: a stored copy without a thumbnail gets no conditional request
    (its validators are empty), so that it is downloaded and extracted again for one.
    """
    claimed: dict[str, HostClaims] = {}
    with catalogue.engine.begin() as connection:
        for host, limit in host_limits.items():
            version = work_version(connection, host)
            rows = _claim_host_rows(
                connection, crawler_id, host, limit, now, live_since, thumbnails_wanted
            )
            claimed[host] = HostClaims(rows, version)
    return claimed


def work_version(connection: sa.Connection, host: str) -> int:
    """The host's work version now: read before claiming its rows, so that a claim that
    finds none can mark the host done up to there and no later seed is missed."""
    version = connection.execute(
        sa.select(hosts.c.work_version).where(hosts.c.host == host)
    ).scalar_one_or_none()
    return int(version or 0)


def _claim_host_rows(
    connection: sa.Connection,
    crawler_id: str,
    host: str,
    limit: int,
    now: datetime,
    live_since: datetime,
    thumbnails_wanted: bool,
) -> list[Claim]:
    claimable = first_unheld(
        images.c.id,
        images.c.claimed_by,
        images.c.host == host,
        images.c.status == "pending",
        live_since=live_since,
        order_by=images.c.id,
        limit=limit,
    )
    statement = (
        sa.update(images)
        .where(images.c.id.in_(claimable))
        .values(claimed_by=crawler_id, claimed_at=now, attempts=images.c.attempts + 1)
        .returning(
            images.c.id,
            images.c.url,
            images.c.etag,
            images.c.last_modified,
            # A stored copy is a good one, with metadata (so a format): a failed row's
            # sha256, of bytes that would not decode, is no copy to revalidate, and a 304
            # must not make it ok. (Not "metadata_json IS NOT NULL": SQLite 3.40 gets such
            # an expression wrong in RETURNING on this table.)
            images.c.format,
        )
    )
    rows = sorted(connection.execute(statement).all(), key=lambda row: row.id)
    copies = [row.id for row in rows if row.format]
    lacking = _without_thumbnails(connection, copies) if thumbnails_wanted else set()
    return [Claim(row.url, host, _validators(row, lacking)) for row in rows]


def _validators(row: sa.Row[Any], lacking_thumbnails: set[int]) -> Validators | None:
    """For a conditional request of the row's stored copy; empty (an unconditional request)
    for a copy that lacks its thumbnail; None where the row has no stored copy."""
    if not row.format:
        return None
    if row.id in lacking_thumbnails:
        return Validators()
    return Validators(row.etag, row.last_modified)


def _without_thumbnails(connection: sa.Connection, image_ids: list[int]) -> set[int]:
    if not image_ids:
        return set()
    having = sa.select(thumbnails.c.image_id).where(thumbnails.c.image_id.in_(image_ids))
    return set(image_ids) - set(connection.execute(having).scalars())


def release(catalogue: Catalogue, crawler_id: str, urls: Sequence[str] | None = None) -> int:
    """Give back ``crawler_id``'s claims on pending rows (all of them, or just ``urls``),
    telling their hosts that they have work again."""
    statement = (
        sa.update(images)
        .where(images.c.claimed_by == crawler_id, images.c.status == "pending")
        .values(claimed_by=None, claimed_at=None)
        .returning(images.c.host)
    )
    if urls is not None:
        statement = statement.where(images.c.url_hash.in_([url_key(url) for url in urls]))
    with catalogue.engine.begin() as connection:
        released = connection.execute(statement).scalars().all()
        note_work(connection, released)
    return len(released)


def fail_unheld_rows(
    connection: sa.Connection,
    host: str,
    reason: str,
    error: str,
    now: datetime,
    live_since: datetime,
) -> int:
    """Fail every pending row of ``host`` that no live crawler holds (the host is down, or
    its robots.txt stayed unavailable); returns how many. Rows a crawler holds fail with
    its own results. A row being refreshed keeps its stored copy and goes back to ok, with
    the failed check in its check columns, as ``crawler.store`` records a failed one."""
    unheld = sa.update(images).where(
        images.c.host == host,
        images.c.status == "pending",
        sa.not_(held_by_live_crawler(images.c.claimed_by, live_since)),
    )
    released = {"claimed_by": None, "claimed_at": None, "updated_at": now}
    checked = unheld.where(images.c.metadata_json.is_not(None)).values(
        status="ok",
        checked_at=now,
        check_status="failed",
        check_reason=reason,
        check_error=error,
        check_http_status=None,
        **released,
    )
    failed = unheld.where(images.c.metadata_json.is_(None)).values(
        status="failed", reason=reason, error=error, fetched_at=now, **released
    )
    return connection.execute(checked).rowcount + connection.execute(failed).rowcount


def count_pending(catalogue: Catalogue, crawler_id: str | None = None) -> int:
    """Pending rows (that ``crawler_id`` does not hold): for progress, and to know whether
    anything is left to do anywhere."""
    statement = sa.select(sa.func.count()).where(
        images.c.status == "pending", images.c.host.is_not(None)
    )
    if crawler_id is not None:
        statement = statement.where(
            sa.or_(images.c.claimed_by.is_(None), images.c.claimed_by != crawler_id)
        )
    with catalogue.engine.connect() as connection:
        return int(connection.execute(statement).scalar_one())


def mark_not_modified(catalogue: Catalogue, urls: Sequence[str], checked_at: datetime) -> None:
    """A 304 answer: the stored copy stays as it is, marked ok and fresh as of ``checked_at``."""
    statement = (
        sa.update(images)
        .where(images.c.url_hash.in_([url_key(url) for url in urls]))
        .values(
            status="ok",
            reason=None,
            error=None,
            http_status=304,
            fetched_at=checked_at,
            updated_at=checked_at,
            claimed_by=None,
            claimed_at=None,
            checked_at=checked_at,
            check_status="ok",
            check_reason=None,
            check_error=None,
            check_http_status=304,
        )
    )
    with catalogue.engine.begin() as connection:
        connection.execute(statement)
