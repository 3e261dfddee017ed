"""The catalogue as crawl state: seeds become 'pending' rows, workers claim them in batches.

Every function here is synchronous database work (the engine runs it in a thread).

- Seeding inserts batches with ON CONFLICT DO NOTHING on the URL key, so duplicates, and
  URLs already in the catalogue from an earlier run, cost no memory here.
- Claiming marks a batch of pending rows with the worker's id and time, in one statement:
  ``FOR UPDATE SKIP LOCKED`` on PostgreSQL lets any number of crawlers, on any machines,
  take disjoint batches; SQLite runs the statement under its single-writer lock.
- A claim older than ``crawl.claim_timeout`` is taken over by anyone: its worker died. A
  crawler also frees, when it starts, the claims of dead crawlers on its own host (a worker
  id is ``host:pid``) and its own earlier claims, so a re-run after ``kill -9`` need not wait.
- Re-runs: done rows stay done. ``--retry-failed`` puts this seed list's failed rows back to
  'pending'; ``--refresh`` does the same with its 'ok' rows, which keep their data and are
  revalidated with If-None-Match / If-Modified-Since (see ``mark_not_modified``). Only rows
  last updated before this run started are requeued, so a row is not redone twice in a run.
"""

import os
import socket
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from crawler.catalogue import Catalogue
from crawler.fetch import Validators
from crawler.models import images
from crawler.seeds import Seed

SEED_BATCH_SIZE = 1000


@dataclass(frozen=True)
class Claim:
    """A URL this worker now owns, with the validators of its stored copy if it has one."""

    url: str
    validators: Validators | None = None


@dataclass(frozen=True)
class SeedingReport:
    seeds: int  # seeds read, duplicates included
    added: int  # new rows
    invalid: int  # new rows stored as failed at once: lines that are not usable seeds
    requeued: int


def default_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def utc_now() -> datetime:
    return datetime.now(UTC)


def add_seeds(
    catalogue: Catalogue,
    seeds: Iterable[Seed | None],
    *,
    requeue: Sequence[str] = (),
    run_started: datetime | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    batch_stored: Callable[[], object] = lambda: None,
) -> SeedingReport:
    """Insert ``seeds`` as pending rows (bad ones as failed, reason ``bad_url``), in batches
    of ``SEED_BATCH_SIZE``; a ``None`` among them ends a batch early (the input paused).

    Rows of these seeds whose status is in ``requeue`` and that were last updated before
    ``run_started`` go back to pending. Stops early when ``should_stop()`` turns true.
    ``batch_stored()`` is called after each batch is committed.
    """
    total = requeued = 0
    added: list[str] = []
    batches = _batches(seeds)
    while not should_stop() and (batch := next(batches, None)):
        total += len(batch)
        with catalogue.engine.begin() as connection:
            added += _insert_seeds(connection, catalogue.dialect, batch)
            if requeue:
                requeued += _requeue(connection, batch, requeue, run_started or utc_now())
        batch_stored()
    return SeedingReport(
        seeds=total, added=len(added), invalid=added.count("failed"), requeued=requeued
    )


def _batches(seeds: Iterable[Seed | None]) -> Iterator[list[Seed]]:
    batch: list[Seed] = []
    for seed in seeds:
        if seed is not None:
            batch.append(seed)
        if batch and (seed is None or len(batch) == SEED_BATCH_SIZE):
            yield batch
            batch = []
    if batch:
        yield batch


_SEED_COLUMNS = ("url", "status", "reason", "error")


def _insert_seeds(connection: sa.Connection, dialect: str, batch: list[Seed]) -> list[str]:
    """Insert the new seeds of ``batch``; returns the status of each row added."""
    now = utc_now()
    unique = {seed.url: seed for seed in batch}.values()  # a statement names a URL once
    rows = [
        {
            "url": seed.url,
            "status": "failed" if seed.problem else "pending",
            "reason": "bad_url" if seed.problem else None,
            "error": seed.problem,
        }
        for seed in unique
    ]
    if dialect == "postgresql":
        arrays = {f"{name}s": [row[name] for row in rows] for name in _SEED_COLUMNS}
        result = connection.execute(_POSTGRESQL_SEED_INSERT, arrays | {"now": now})
    else:
        result = connection.execute(
            _SQLITE_SEED_INSERT, [row | {"updated_at": now} for row in rows]
        )
    return list(result.scalars())


def _postgresql_seed_insert() -> sa.Insert:
    """The batch as one array per column, unnested: a short statement. psycopg parses a
    long one's placeholders in Python on every execution, so a 1,000-row VALUES list cost
    ~40 µs of CPU per seed (~7 with arrays)."""
    arrays = (
        sa.func.unnest(
            *(sa.bindparam(f"{name}s", type_=postgresql.ARRAY(sa.Text)) for name in _SEED_COLUMNS)
        )
        .table_valued(*_SEED_COLUMNS)
        .render_derived()
    )
    now = sa.bindparam("now", type_=images.c.updated_at.type)
    return (
        postgresql.insert(images)
        .from_select([*_SEED_COLUMNS, "updated_at"], sa.select(*arrays.c, now))
        .on_conflict_do_nothing(index_elements=["url"])
        .returning(images.c.status)
    )


# On SQLite, one cached statement and many parameter sets: compiling a 1000-row VALUES
# list per batch would cost more than the insert itself.
_SQLITE_SEED_INSERT = (
    sqlite.insert(images).on_conflict_do_nothing(index_elements=["url"]).returning(images.c.status)
)
_POSTGRESQL_SEED_INSERT = _postgresql_seed_insert()


def _requeue(
    connection: sa.Connection, batch: list[Seed], statuses: Sequence[str], before: datetime
) -> int:
    statement = (
        sa.update(images)
        .where(
            images.c.url.in_([seed.url for seed in batch if seed.problem is None]),
            images.c.status.in_(statuses),
            sa.or_(images.c.updated_at.is_(None), images.c.updated_at < before),
        )
        .values(status="pending", claimed_by=None, claimed_at=None)
    )
    return connection.execute(statement).rowcount


def claim(catalogue: Catalogue, worker_id: str, limit: int, claim_timeout: float) -> list[Claim]:
    """Take up to ``limit`` pending rows no live worker holds; mark them as ``worker_id``'s."""
    now = utc_now()
    claimable = (
        sa.select(images.c.id)
        .where(
            images.c.status == "pending",
            sa.or_(
                images.c.claimed_at.is_(None),
                images.c.claimed_at < now - timedelta(seconds=claim_timeout),
            ),
        )
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    statement = (
        sa.update(images)
        .where(images.c.id.in_(claimable))
        .values(claimed_by=worker_id, claimed_at=now, attempts=images.c.attempts + 1)
        .returning(images.c.url, images.c.etag, images.c.last_modified, images.c.sha256)
    )
    with catalogue.engine.begin() as connection:
        rows = connection.execute(statement).all()
    return [
        Claim(row.url, Validators(row.etag, row.last_modified) if row.sha256 else None)
        for row in rows
    ]


def count_claimable(catalogue: Catalogue, worker_id: str, claim_timeout: float) -> int:
    """Pending rows this worker could still do (its own claims included): for progress."""
    cutoff = utc_now() - timedelta(seconds=claim_timeout)
    statement = sa.select(sa.func.count()).where(
        images.c.status == "pending",
        sa.or_(
            images.c.claimed_by.is_(None),
            images.c.claimed_by == worker_id,
            images.c.claimed_at < cutoff,
        ),
    )
    with catalogue.engine.connect() as connection:
        return int(connection.execute(statement).scalar_one())


def release(catalogue: Catalogue, worker_id: str, urls: Sequence[str] | None = None) -> int:
    """Give back ``worker_id``'s claims on pending rows (all of them, or just ``urls``)."""
    statement = (
        sa.update(images)
        .where(images.c.claimed_by == worker_id, images.c.status == "pending")
        .values(claimed_by=None, claimed_at=None)
    )
    if urls is not None:
        statement = statement.where(images.c.url.in_(urls))
    with catalogue.engine.begin() as connection:
        return connection.execute(statement).rowcount


def release_dead_claims(
    catalogue: Catalogue, worker_id: str, is_alive: Callable[[int], bool] | None = None
) -> int:
    """Free claims by ``worker_id`` itself and by dead ``host:pid`` workers of this host."""
    host = socket.gethostname()
    alive = is_alive or _process_exists
    statement = (
        sa.select(images.c.claimed_by)
        .distinct()
        .where(images.c.status == "pending", images.c.claimed_by.like(f"{host}:%"))
    )
    with catalogue.engine.connect() as connection:
        holders = connection.execute(statement).scalars().all()
    dead = [holder for holder in holders if _dead_local_worker(holder, host, alive)]
    return sum(release(catalogue, holder) for holder in {worker_id, *dead})


def _dead_local_worker(holder: str, host: str, alive: Callable[[int], bool]) -> bool:
    pid = holder.removeprefix(f"{host}:")
    return pid.isdigit() and not alive(int(pid))


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def mark_not_modified(catalogue: Catalogue, urls: Sequence[str], checked_at: datetime) -> None:
    """A 304 answer: the stored copy stays as it is, marked ok and fresh as of ``checked_at``."""
    statement = (
        sa.update(images)
        .where(images.c.url.in_(urls))
        .values(
            status="ok",
            reason=None,
            error=None,
            http_status=304,
            fetched_at=checked_at,
            updated_at=checked_at,
            claimed_by=None,
            claimed_at=None,
        )
    )
    with catalogue.engine.begin() as connection:
        connection.execute(statement)
