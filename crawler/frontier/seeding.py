"""Seeding: seed lines become 'pending' rows under their host, in batches.

Batches are inserted with ON CONFLICT DO NOTHING on the URL key, so duplicates, and URLs
already in the catalogue from an earlier run, cost no memory here. The hosts of the rows a
batch adds (or requeues) are told they have work (``hosts.work_version``), in the same
transaction, so that no crawler can find a host empty between the two.

Re-runs: done rows stay done. ``--retry-failed`` puts this seed list's failed rows back to
'pending'; ``--refresh`` does the same with its 'ok' rows, which keep their data and are
revalidated with If-None-Match / If-Modified-Since. Only rows last updated before this run
started are requeued, so a row is not redone twice in a run.
"""

import functools
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from crawler.catalogue import Catalogue
from crawler.models import hosts, images, url_key
from crawler.seeds import Seed

SEED_BATCH_SIZE = 1000
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)  # a new host's next fetch: any time


@dataclass(frozen=True)
class SeedingReport:
    seeds: int  # seeds read, duplicates included
    added: int  # new rows
    requeued: int
    # new rows stored as failed at once (lines that are not usable seeds), by reason
    invalid: Counter[str] = field(default_factory=Counter)


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
    guard: Callable[[Callable[[], "_Stored"]], "_Stored"] = lambda work: work(),
) -> SeedingReport:
    """Insert ``seeds`` as pending rows (bad ones as failed, with their reason), in batches
    of ``SEED_BATCH_SIZE``; a ``None`` among them ends a batch early (the input paused).

    Rows of these seeds whose status is in ``requeue`` and that were last updated before
    ``run_started`` go back to pending. Stops early when ``should_stop()`` turns true.
    ``batch_stored()`` is called after each batch is committed; ``guard(work)`` runs each
    batch's transaction (the crawl's tries it again through a database outage).
    """
    total = requeued = added = 0
    invalid: Counter[str] = Counter()
    batches = _batches(seeds)
    while not should_stop() and (batch := next(batches, None)):
        total += len(batch)
        new_rows, again = guard(
            functools.partial(_store_batch, catalogue, batch, requeue, run_started or utc_now())
        )
        added += len(new_rows)
        invalid.update(row.reason for row in new_rows if row.status == "failed")
        requeued += again
        batch_stored()
    return SeedingReport(seeds=total, added=added, requeued=requeued, invalid=invalid)


_Stored = tuple[list[sa.Row[Any]], int]  # a batch's new rows, and how many it requeued


def _store_batch(
    catalogue: Catalogue, batch: list[Seed], requeue: Sequence[str], run_started: datetime
) -> _Stored:
    """One batch in one transaction: its new rows, and how many it requeued."""
    with catalogue.engine.begin() as connection:
        new_rows = _insert_seeds(connection, catalogue.dialect, batch)
        hosts_with_work = {row.host for row in new_rows if row.status == "pending"}
        again: set[str] = set()
        requeued = 0
        if requeue:
            requeued, again = _requeue(connection, batch, requeue, run_started)
        note_work(connection, hosts_with_work | again)
    return new_rows, requeued


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


_SEED_COLUMNS = {
    "url": sa.Text,
    "url_hash": sa.LargeBinary,
    "host": sa.Text,
    "status": sa.Text,
    "reason": sa.Text,
    "error": sa.Text,
}


def _insert_seeds(connection: sa.Connection, dialect: str, batch: list[Seed]) -> list[sa.Row[Any]]:
    """Insert the new seeds of ``batch``; returns the status, reason and host of each row
    added."""
    now = utc_now()
    unique = {seed.url: seed for seed in batch}.values()  # a statement names a URL once
    rows = [
        {
            "url": seed.url,
            "url_hash": url_key(seed.url),
            "host": None if seed.problem else seed.host,
            "status": "failed" if seed.problem else "pending",
            "reason": seed.reason if seed.problem else None,
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
    return list(result.all())


def _postgresql_seed_insert() -> sa.Insert:
    """The batch as one array per column, unnested: a short statement. psycopg parses a
    long one's placeholders in Python on every execution, so a 1,000-row VALUES list cost
    ~40 µs of CPU per seed (~7 with arrays)."""
    arrays = (
        sa.func.unnest(
            *(
                sa.bindparam(f"{name}s", type_=postgresql.ARRAY(kind))
                for name, kind in _SEED_COLUMNS.items()
            )
        )
        .table_valued(*_SEED_COLUMNS)
        .render_derived()
    )
    now = sa.bindparam("now", type_=images.c.updated_at.type)
    return (
        postgresql.insert(images)
        .from_select([*_SEED_COLUMNS, "updated_at"], sa.select(*arrays.c, now))
        .on_conflict_do_nothing(index_elements=["url_hash"])
        .returning(images.c.status, images.c.reason, images.c.host)
    )


# On SQLite, one cached statement and many parameter sets: compiling a 1000-row VALUES
# list per batch would cost more than the insert itself.
_SQLITE_SEED_INSERT = (
    sqlite.insert(images)
    .on_conflict_do_nothing(index_elements=["url_hash"])
    .returning(images.c.status, images.c.reason, images.c.host)
)
_POSTGRESQL_SEED_INSERT = _postgresql_seed_insert()


def _requeue(
    connection: sa.Connection, batch: list[Seed], statuses: Sequence[str], before: datetime
) -> tuple[int, set[str]]:
    """Put the rows of ``batch`` in ``statuses`` back to pending; returns how many, and
    their hosts."""
    statement = (
        sa.update(images)
        .where(
            images.c.url_hash.in_([url_key(seed.url) for seed in batch if seed.problem is None]),
            images.c.status.in_(statuses),
            sa.or_(images.c.updated_at.is_(None), images.c.updated_at < before),
        )
        .values(status="pending", claimed_by=None, claimed_at=None)
        .returning(images.c.host)
    )
    hosts_requeued = list(connection.execute(statement).scalars())
    return len(hosts_requeued), {host for host in hosts_requeued if host is not None}


def note_work(connection: sa.Connection, host_names: Iterable[str | None]) -> None:
    """Tell ``host_names`` they have pending rows: their ``work_version`` grows (a new host
    gets its row). In sorted order, so that two crawlers seeding at once lock the same rows
    in the same order and cannot deadlock."""
    names = sorted({name for name in host_names if name is not None})
    if not names:
        return
    insert = postgresql.insert if connection.dialect.name == "postgresql" else sqlite.insert
    statement = insert(hosts).on_conflict_do_update(
        index_elements=["host"], set_={"work_version": hosts.c.work_version + 1}
    )
    connection.execute(
        statement,
        [{"host": name, "next_fetch_at": EPOCH, "work_version": 1} for name in names],
    )
