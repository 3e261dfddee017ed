"""Bulk loads for the benchmarks' large catalogues: COPY on PostgreSQL, executemany on SQLite,
with the secondary indexes dropped while loading and built afterwards (through the indexes,
loading 10M rows into PostgreSQL slowed to about 800 rows/s once they outgrew its cache)."""

import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime

import sqlalchemy as sa

from crawler.catalogue import Catalogue
from crawler.models import images


def bulk_load(
    catalogue: Catalogue, columns: Sequence[str], batches: Iterable[list[tuple]]
) -> tuple[float, float]:
    """Insert each batch of rows (values in the order of ``columns``) into ``images``, then
    build the indexes and ANALYZE (VACUUM too on PostgreSQL, whose index-only scans need its
    visibility map); returns the seconds of both steps."""
    started = time.perf_counter()
    with catalogue.engine.begin() as connection:
        for index in images.indexes:
            index.drop(connection)
    names = ", ".join(columns)
    raw = catalogue.engine.raw_connection()
    try:
        cursor = raw.cursor()
        for batch in batches:
            if catalogue.dialect == "postgresql":
                with cursor.copy(f"COPY images ({names}) FROM STDIN") as copy:
                    for row in batch:
                        copy.write_row(row)
            else:
                cursor.executemany(
                    f"INSERT INTO images ({names}) VALUES ({', '.join('?' * len(columns))})",
                    [tuple(_sqlite_value(value) for value in row) for row in batch],
                )
        raw.commit()
    finally:
        raw.close()
    loaded = time.perf_counter()
    with catalogue.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        if catalogue.dialect == "postgresql":
            connection.execute(sa.text("SET maintenance_work_mem = '512MB'"))
        for index in images.indexes:
            index.create(connection)
        maintenance = "VACUUM ANALYZE" if catalogue.dialect == "postgresql" else "ANALYZE"
        connection.execute(sa.text(maintenance))
    return loaded - started, time.perf_counter() - loaded


def _sqlite_value(value: object) -> object:
    """As SQLAlchemy stores it on SQLite: times as text, the zoned ones in UTC."""
    if not isinstance(value, datetime):
        return value
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return value.isoformat(" ", "microseconds")
