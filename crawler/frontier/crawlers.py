"""Running crawlers and their leases: a crawler holds its claims (on rows and on hosts) for
as long as its heartbeat is younger than the lease time.

Each crawler registers a row in ``crawlers`` under a fresh id (its name and a random token)
and renews ``heartbeat_at`` every third of the lease. Claims are never renewed one by one:
a claim is valid while its holder's heartbeat is, so a crawler that dies (kill -9, a lost
machine) loses every claim at once when its lease lapses, on any machine. One that finds its
own lease lapsed (its database was away for longer than the lease) registers again under a
new id: what it held may already be someone else's.

Times in the catalogue are the database's: a crawler measures its clock's offset from the
database server's at every heartbeat, so that leases and politeness hold across machines
whose clocks disagree.
"""

import os
import secrets
import socket
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from crawler.catalogue import Catalogue
from crawler.models import crawlers


def default_crawler_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class DatabaseClock:
    """The database server's time, from this machine's clock and a measured offset."""

    def __init__(self) -> None:
        self._offset = timedelta(0)

    def now(self) -> datetime:
        return datetime.now(UTC) + self._offset

    def at(self, monotonic_time: float) -> datetime:
        """The database time of a moment on this process's monotonic clock."""
        return self.now() + timedelta(seconds=monotonic_time - time.monotonic())

    def monotonic(self, when: datetime) -> float:
        """The monotonic time of a database time."""
        return time.monotonic() + (when - self.now()).total_seconds()

    def synchronise(self, connection: sa.Connection) -> None:
        """Measure the offset from the database server's clock (SQLite: the same machine)."""
        if connection.dialect.name != "postgresql":
            return
        before = datetime.now(UTC)
        server = connection.execute(sa.select(sa.func.statement_timestamp())).scalar_one()
        after = datetime.now(UTC)
        self._offset = server - (before + (after - before) / 2)


class CrawlerLease:
    """This crawler's registration: its id in every claim, and its heartbeat."""

    def __init__(
        self, catalogue: Catalogue, name: str, lease_seconds: float, clock: DatabaseClock
    ) -> None:
        self._catalogue = catalogue
        self._name = name
        self.lease_seconds = lease_seconds
        self.clock = clock
        self.id = ""
        self.valid_until = 0.0  # monotonic: the lease holds until then, as far as we know

    def register(self) -> str:
        """Start beating under a new id; returns it."""
        crawler_id = f"{self._name}/{secrets.token_hex(4)}"
        sent = time.monotonic()
        with self._catalogue.engine.begin() as connection:
            self.clock.synchronise(connection)
            now = self.clock.now()
            connection.execute(
                sa.insert(crawlers).values(
                    id=crawler_id,
                    machine=socket.gethostname(),
                    pid=os.getpid(),
                    started_at=now,
                    heartbeat_at=now,
                )
            )
        self.id, self.valid_until = crawler_id, sent + self.lease_seconds
        return self.id

    def renew(self) -> bool:
        """Beat; False when the lease had lapsed already (then nothing held is ours)."""
        sent = time.monotonic()
        with self._catalogue.engine.begin() as connection:
            self.clock.synchronise(connection)
            now = self.clock.now()
            renewed = connection.execute(
                sa.update(crawlers)
                .where(crawlers.c.id == self.id, crawlers.c.heartbeat_at >= self.live_since(now))
                .values(heartbeat_at=now)
            ).rowcount
        if renewed:
            self.valid_until = sent + self.lease_seconds
        return bool(renewed)

    def live_since(self, now: datetime | None = None) -> datetime:
        """Heartbeats at or after this time are of live crawlers."""
        return (now or self.clock.now()) - timedelta(seconds=self.lease_seconds)

    def end(self) -> None:
        """Stop beating: whatever this crawler still holds is free at once."""
        with self._catalogue.engine.begin() as connection:
            connection.execute(sa.delete(crawlers).where(crawlers.c.id == self.id))


def forget_dead_local_crawlers(
    catalogue: Catalogue, is_alive: Callable[[int], bool] | None = None
) -> int:
    """End the leases of crawlers of this machine whose process is gone (a kill -9, a
    crash), so that a crawl started again here need not wait for them to lapse."""
    alive = is_alive or _process_exists
    machine = socket.gethostname()
    with catalogue.engine.begin() as connection:
        registered = connection.execute(
            sa.select(crawlers.c.id, crawlers.c.pid).where(crawlers.c.machine == machine)
        ).all()
        dead = [row.id for row in registered if not alive(row.pid)]
        if dead:
            connection.execute(sa.delete(crawlers).where(crawlers.c.id.in_(dead)))
    return len(dead)


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def live_crawler_ids(live_since: datetime) -> sa.Select[tuple[str]]:
    """The ids of crawlers whose lease holds, as a subquery."""
    return sa.select(crawlers.c.id).where(crawlers.c.heartbeat_at >= live_since)


def live_crawlers(catalogue: Catalogue, live_since: datetime) -> list[str]:
    with catalogue.engine.connect() as connection:
        return [row.id for row in connection.execute(live_crawler_ids(live_since))]


def first_unheld(
    key: sa.ColumnElement[Any],
    holder: sa.ColumnElement[str | None],
    *conditions: sa.ColumnElement[bool],
    live_since: datetime,
    order_by: Any,
    limit: int,
) -> sa.Select[Any]:
    """The first ``limit`` keys of rows meeting ``conditions`` whose ``holder`` is no live
    crawler, locked for this transaction; on PostgreSQL, rows another transaction is
    taking at this moment are skipped, not waited for."""
    return (
        sa.select(key)
        .where(*conditions, sa.not_(held_by_live_crawler(holder, live_since)))
        .order_by(order_by)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )


def held_by_live_crawler(
    holder: sa.ColumnElement[str | None], live_since: datetime
) -> sa.ColumnElement[bool]:
    """Whether ``holder`` (a ``claimed_by`` or ``owner`` column) names a live crawler."""
    return sa.and_(holder.is_not(None), holder.in_(live_crawler_ids(live_since)))
