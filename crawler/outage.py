"""Riding out database outages: a lost connection, a PostgreSQL restart or failover, SQLite
busy past its timeout are transient; the work is tried again until the database is back.

``DatabaseGuard.run(work)`` runs one piece of database work (a transaction) in the calling
thread and, while its errors are transient, tries it again after a backoff (0.2 s doubling
to 5 s), for up to ``database.outage_timeout`` seconds from the start of the outage (one
outage for every thread: the database is away for all of them at once). Every piece of
work the crawl hands it is a whole transaction that can run again: idempotent upserts,
claims that are re-read. Errors that trying again cannot fix (the disk full, a schema it
cannot use, a refused login, no such database) go through at once.
"""

import asyncio
import functools
import logging
import threading
import time
from collections.abc import Callable
from typing import Final, TypeVar

import sqlalchemy as sa

from crawler.catalogue import database_problem
from crawler.errors import CatalogueError

log = logging.getLogger(__name__)

T = TypeVar("T")

FIRST_WAIT: Final = 0.2
LONGEST_WAIT: Final = 5.0
# PostgreSQL error classes that say the connection, not the work, failed: 08 connection
# exceptions, 57P01-57P03 the server shutting down or starting, 53300 too many connections,
# 40001/40P01 a serialisation failure or deadlock (the transaction may simply run again).
TRANSIENT_SQLSTATES: Final = frozenset({"57P01", "57P02", "57P03", "53300", "40001", "40P01"})
SQLITE_BUSY: Final = ("database is locked", "database table is locked", "database is busy")

OutageChanged = Callable[[float | None], None]  # when it began (monotonic), None when over


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` is a database error that the same work can get past later."""
    if not isinstance(exc, sa.exc.DBAPIError):
        return False
    if exc.connection_invalidated:
        return True
    driver_error = exc.orig
    sqlstate = getattr(driver_error, "sqlstate", None)
    if type(driver_error).__module__.startswith("psycopg"):
        if sqlstate is None:  # no answer from a server at all: refused, reset, timed out
            return isinstance(exc, sa.exc.OperationalError)
        return sqlstate.startswith("08") or sqlstate in TRANSIENT_SQLSTATES
    message = str(driver_error).lower()
    return isinstance(exc, sa.exc.OperationalError) and message.startswith(SQLITE_BUSY)


class DatabaseGuard:
    """Runs database work through transient failures, for up to ``timeout`` seconds of
    outage; ``changed(since)`` hears when an outage begins and ends."""

    def __init__(self, timeout: float, changed: OutageChanged = lambda _since: None) -> None:
        self._timeout = timeout
        self._changed = changed
        self._lock = threading.Lock()
        self.down_since: float | None = None

    def run(self, work: Callable[[], T]) -> T:
        wait = FIRST_WAIT
        while True:
            try:
                result = work()
            except sa.exc.DBAPIError as exc:
                if not is_transient(exc):
                    raise
                began = self._outage(exc)
                if time.monotonic() - began > self._timeout:
                    raise CatalogueError(
                        f"the catalogue was unreachable for over {self._timeout:g} s "
                        f"(database.outage_timeout): {database_problem(exc)}"
                    ) from exc
                time.sleep(wait)
                wait = min(wait * 2, LONGEST_WAIT)
                continue
            self._over()
            return result

    def _outage(self, exc: sa.exc.DBAPIError) -> float:
        with self._lock:
            if self.down_since is None:
                self.down_since = time.monotonic()
                log.warning("the catalogue is unreachable, retrying: %s", database_problem(exc))
                self._changed(self.down_since)
            return self.down_since

    def _over(self) -> None:
        if self.down_since is None:
            return
        with self._lock:
            if self.down_since is None:
                return
            log.warning("the catalogue is back after %.1f s", time.monotonic() - self.down_since)
            self.down_since = None
            self._changed(None)

    async def call(self, work: Callable[..., T], *args: object, **kwargs: object) -> T:
        """``work(*args, **kwargs)`` in a thread, through ``run``."""
        return await asyncio.to_thread(self.run, functools.partial(work, *args, **kwargs))
