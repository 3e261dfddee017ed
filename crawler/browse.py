"""Browsing the catalogue, for the page at ``/``: a grid of images, filtered and sorted, one
page at a time; one image's record; counts for the charts and the filters' choices.

Pages are keyset pages: each ends with a cursor (the last row's sort key and id), and the
next page starts after it, so a page deep in the catalogue costs what the first one does.
Every filter is an equality or a range on an indexed column (``crawler.models``: each of
those indexes ends in ``id``), so a page is one walk down an index. Where the planner
guesses wrong (filters that match nothing in the sort's order: failed URLs by size) that
walk can cover the whole catalogue: a page's query that takes longer than
``EXACT_QUERY_SECONDS`` is given up, and the page covers only the next ``SCAN_ROWS`` rows in
the sort order instead. The URL text filter, a substring match that no btree helps with,
always works that way. Such a page may hold fewer images than asked, or none, and still
carry a cursor that goes on from where it stopped.
"""

import json
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from time import monotonic
from typing import Any, Final

import sqlalchemy as sa

from crawler.catalogue import Catalogue
from crawler.hashes import to_hex
from crawler.models import FAILED_OR_SKIPPED, STATUSES, images
from crawler.query import ImageNotFoundError, QueryError, counted

SORTS: Final = ("newest", "largest", "taken")
DEFAULT_PAGE_SIZE: Final = 60
MAX_PAGE_SIZE: Final = 500
# A page's query may take this long; past it the page covers the next SCAN_ROWS rows in the
# sort order only (as a page with URL text always does), and may be short, with a cursor
# that goes on from there. Reading 50,000 rows took 0.1-0.2 s on 1,000,000 rows.
EXACT_QUERY_SECONDS: Final = 0.1
SCAN_ROWS: Final = 25_000
SQLITE_PROGRESS_STEPS: Final = 1000  # virtual machine steps between looks at the clock
QUERY_CANCELED: Final = "57014"  # PostgreSQL's SQLSTATE for a statement_timeout
CAMERA_LIMIT: Final = 200  # the most common cameras in the summary; the rest are summed
# File-size buckets of the summary: 10 KB, 30 KB, 100 KB, ... 30 MB.
SIZE_BOUNDS: Final = tuple(factor * 10**power for power in range(4, 8) for factor in (1, 3))
_MAX_ID: Final = (1 << 63) - 1

# The sort key of each order, most significant first; every order is descending.
_ORDER: Final[dict[str, tuple[sa.Column[Any], ...]]] = {
    "newest": (images.c.id,),
    "largest": (images.c.size, images.c.id),
    "taken": (images.c.taken_at, images.c.id),
}
_GRID_COLUMNS: Final = (
    images.c.id,
    images.c.url,
    images.c.status,
    images.c.reason,
    images.c.format,
    images.c.width,
    images.c.height,
    images.c.size,
    images.c.taken_at,
    images.c.fetched_at,
    images.c.sha256,
)


@dataclass(frozen=True)
class Filters:
    """What a grid page shows: every filter that is set must hold (``None``: any)."""

    status: str | None = None
    format: str | None = None
    make: str | None = None
    model: str | None = None
    taken_from: date | None = None  # the first day, camera local time
    taken_to: date | None = None  # the last day, included
    has_gps: bool | None = None
    url_text: str | None = None  # a substring of the URL, ASCII letters in either case


@dataclass(frozen=True)
class GridPage:
    images: list[dict[str, Any]]
    next: str | None  # the cursor of the next page; None after the last


def grid(
    catalogue: Catalogue,
    filters: Filters = Filters(),
    sort: str = "newest",
    limit: int = DEFAULT_PAGE_SIZE,
    after: str | None = None,
) -> GridPage:
    """One page of images, newest first (highest id), largest file first, or latest taken
    first (``largest`` leaves out images without a size, ``taken`` those without a date
    taken), starting after the cursor ``after``."""
    if sort not in SORTS:
        raise QueryError(f"sort: expected one of {', '.join(SORTS)}, got {sort!r}")
    if filters.status is not None and filters.status not in STATUSES:
        raise QueryError(f"status: expected one of {', '.join(STATUSES)}, got {filters.status!r}")
    order = _ORDER[sort]
    # The sort key must be known (id always is): ``largest`` and ``taken`` leave out the rest.
    keyset: list[sa.ColumnElement[bool]] = [key.is_not(None) for key in order[:-1]]
    if after is not None:
        keyset.append(_after(order, parse_cursor(sort, after)))
    conditions = [*keyset, *_filter_conditions(filters)]
    if filters.url_text:
        conditions.append(images.c.url.ilike(f"%{_escaped(filters.url_text)}%", escape="\\"))

    def page_of(where: list[sa.ColumnElement[bool]]) -> sa.Select[Any]:
        descending = [column.desc() for column in order]
        return sa.select(*_GRID_COLUMNS).where(*where).order_by(*descending).limit(limit + 1)

    with catalogue.engine.connect() as connection:
        bound = None
        rows = None
        if not filters.url_text:
            rows = _within(connection, page_of(conditions), EXACT_QUERY_SECONDS)
        if rows is None:
            bound = _scan_bound(connection, order, keyset)
            if bound is not None:
                conditions.append(sa.not_(_after(order, bound)))
            rows = list(connection.execute(page_of(conditions)))
    if len(rows) > limit:
        last: tuple[Any, ...] | None = tuple(getattr(rows[limit - 1], c.name) for c in order)
    else:
        last = bound
    return GridPage([_grid_image(row) for row in rows[:limit]], _cursor(last))


def _within(
    connection: sa.Connection, statement: sa.Select[Any], seconds: float
) -> list[Any] | None:
    """The rows of ``statement``, or None when it takes longer than ``seconds``."""
    if connection.dialect.name == "postgresql":
        try:
            with connection.begin():
                timeout = max(1, round(seconds * 1000))
                connection.exec_driver_sql(f"SET LOCAL statement_timeout = {timeout}")
                return list(connection.execute(statement))
        except sa.exc.OperationalError as exc:
            if getattr(exc.orig, "sqlstate", None) != QUERY_CANCELED:
                raise
            return None
    sqlite = connection.connection.driver_connection
    assert sqlite is not None, "a connection in use has its driver's"
    deadline = monotonic() + seconds
    sqlite.set_progress_handler(lambda: monotonic() > deadline, SQLITE_PROGRESS_STEPS)
    try:
        return list(connection.execute(statement))
    except sa.exc.OperationalError as exc:
        if "interrupted" not in str(exc.orig):
            raise
        return None
    finally:
        sqlite.set_progress_handler(None, 0)


def _scan_bound(
    connection: sa.Connection,
    order: tuple[sa.Column[Any], ...],
    keyset: list[sa.ColumnElement[bool]],
) -> tuple[Any, ...] | None:
    """The sort key ``SCAN_ROWS`` rows on from the cursor (found in the sort key's index
    alone), or None when fewer rows are left."""
    row = connection.execute(
        sa.select(*order)
        .where(*keyset)
        .order_by(*(column.desc() for column in order))
        .offset(SCAN_ROWS - 1)
        .limit(1)
    ).first()
    return None if row is None else tuple(row)


def _filter_conditions(filters: Filters) -> list[sa.ColumnElement[bool]]:
    conditions: list[sa.ColumnElement[bool]] = [
        column == value
        for column, value in (
            (images.c.status, filters.status),
            (images.c.format, filters.format),
            (images.c.make, filters.make),
            (images.c.model, filters.model),
        )
        if value is not None
    ]
    if filters.taken_from is not None:
        conditions.append(images.c.taken_at >= datetime.combine(filters.taken_from, time()))
    if filters.taken_to is not None and filters.taken_to < date.max:
        day_after = datetime.combine(filters.taken_to + timedelta(days=1), time())
        conditions.append(images.c.taken_at < day_after)
    if filters.has_gps is not None:
        latitude = images.c.gps_latitude
        conditions.append(latitude.is_not(None) if filters.has_gps else latitude.is_(None))
    return conditions


def _after(order: tuple[sa.Column[Any], ...], key: tuple[Any, ...]) -> sa.ColumnElement[bool]:
    """Rows after ``key`` in the (descending) order."""
    if len(order) == 1:
        return order[0] < key[0]
    values = (sa.literal(value, column.type) for column, value in zip(order, key, strict=True))
    return sa.tuple_(*order) < sa.tuple_(*values)


def _escaped(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _cursor(key: tuple[Any, ...] | None) -> str | None:
    if key is None:
        return None
    return ",".join(v.isoformat() if isinstance(v, datetime) else str(v) for v in key)


def parse_cursor(sort: str, text: str) -> tuple[Any, ...]:
    """The sort key in a cursor that ``grid`` made for ``sort``."""
    parts = text.split(",")
    try:
        *key, last_id = parts
        image_id = int(last_id)
        if sort == "newest" and not key:
            values: tuple[Any, ...] = (image_id,)
        elif sort == "largest" and len(key) == 1:
            values = (int(key[0]), image_id)
        elif sort == "taken" and len(key) == 1:
            values = (datetime.fromisoformat(key[0]), image_id)
        else:
            raise ValueError(text)
        if isinstance(values[0], datetime) and values[0].tzinfo is not None:
            raise ValueError(text)  # dates taken are camera local time, without a zone
        if not all(0 <= value <= _MAX_ID for value in values if isinstance(value, int)):
            raise ValueError(text)
    except ValueError:
        raise QueryError(
            f"after: {text!r} is not a page cursor of sort {sort}; pass the previous page's next"
        ) from None
    return values


def _grid_image(row: Any) -> dict[str, Any]:
    return {
        "id": row.id,
        "url": row.url,
        "status": row.status,
        "reason": row.reason,
        "format": row.format,
        "width": row.width,
        "height": row.height,
        "size": row.size,
        "takenAt": _iso(row.taken_at),
        "fetchedAt": _iso(row.fetched_at),
        "sha256": row.sha256,
    }


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


# One image

_RECORD_COLUMNS: Final = (
    *_GRID_COLUMNS,
    images.c.final_url,
    images.c.error,
    images.c.http_status,
    images.c.first_seen_at,
    images.c.phash,
    images.c.make,
    images.c.model,
    images.c.gps_latitude,
    images.c.gps_longitude,
    images.c.warnings,
    images.c.metadata_json,
)


def image_record(catalogue: Catalogue, image_id: int) -> dict[str, Any]:
    """What the catalogue holds of one image: its crawl record, camera and position, and its
    metadata object exactly as extracted (``None`` when it has none)."""
    if not 0 <= image_id <= _MAX_ID:
        raise ImageNotFoundError(f"no image with id {image_id}")
    with catalogue.engine.connect() as connection:
        row = connection.execute(sa.select(*_RECORD_COLUMNS).where(images.c.id == image_id)).first()
    if row is None:
        raise ImageNotFoundError(f"no image with id {image_id}")
    gps = None
    if row.gps_latitude is not None and row.gps_longitude is not None:
        gps = {"latitude": row.gps_latitude, "longitude": row.gps_longitude}
    return {
        **_grid_image(row),
        "finalUrl": row.final_url,
        "error": row.error,
        "httpStatus": row.http_status,
        "firstSeenAt": _iso(row.first_seen_at),
        "pHash": None if row.phash is None else to_hex(row.phash),
        "make": row.make,
        "model": row.model,
        "gps": gps,
        "warnings": row.warnings.splitlines() if row.warnings else [],
        "metadata": None if row.metadata_json is None else json.loads(row.metadata_json),
    }


# Counts


def summary(catalogue: Catalogue) -> dict[str, Any]:
    """The catalogue in counts: in all, by status, format, camera (the ``CAMERA_LIMIT`` most
    common), year taken and file size; failed and skipped URLs by reason."""
    with catalogue.engine.connect() as connection:
        total = connection.execute(sa.select(sa.func.count()).select_from(images)).scalar_one()
        statuses = counted(connection, images.c.status)
        formats = counted(connection, images.c.format, where=images.c.format.is_not(None))
        cameras = counted(
            connection, images.c.make, images.c.model, where=images.c.make.is_not(None)
        )
        year = sa.extract("year", images.c.taken_at).label("year")
        years = counted(connection, year, where=images.c.taken_at.is_not(None))
        reasons = counted(connection, images.c.status, images.c.reason, where=FAILED_OR_SKIPPED)
        sizes = {row.bucket: row.n for row in counted(connection, _size_bucket())}
    return {
        "total": total,
        "byStatus": [{"status": row.status, "count": row.n} for row in statuses],
        "byFormat": [{"format": row.format, "count": row.n} for row in formats],
        "byCamera": _cameras(cameras),
        "byYearTaken": sorted(
            ({"year": int(row.year), "count": row.n} for row in years),
            key=lambda entry: entry["year"],
        ),
        "failuresByReason": [
            {"status": row.status, "reason": row.reason, "count": row.n} for row in reasons
        ],
        "bySize": _size_histogram(sizes),
    }


def _cameras(rows: list[sa.Row[Any]]) -> dict[str, Any]:
    shown = rows[:CAMERA_LIMIT]
    return {
        "cameras": [{"make": r.make, "model": r.model, "count": r.n} for r in shown],
        "others": sum(row.n for row in rows[CAMERA_LIMIT:]),
    }


def _size_bucket() -> sa.ColumnElement[int]:
    """The bucket number of an image's size: 0 below the first bound, ..., len(bounds) above
    the last; NULL without a size."""
    size = images.c.size
    whens = [(size < bound, number) for number, bound in enumerate(SIZE_BOUNDS)]
    return sa.case(*whens, else_=sa.case((size.is_not(None), len(SIZE_BOUNDS)))).label("bucket")


def _size_histogram(counts: dict[int | None, int]) -> list[dict[str, Any]]:
    lows = (0, *SIZE_BOUNDS)
    highs: tuple[int | None, ...] = (*SIZE_BOUNDS, None)
    return [
        {"from": low, "to": high, "count": counts.get(number, 0)}
        for number, (low, high) in enumerate(zip(lows, highs, strict=True))
    ]
