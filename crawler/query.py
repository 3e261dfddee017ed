"""Reads: near-duplicate search, one image's metadata, counts and export. Duplicate groups,
which need the whole catalogue's hashes in memory, are in ``crawler.duplicates``.

Near-duplicate search uses multi-index hashing. ``phash_c0`` .. ``phash_c3`` hold the hash's
four 16-bit chunks. Write the radius as ``r = 4a + b`` (0 <= b < 4): if the first ``b + 1``
chunks all differed from the query's in more than ``a`` bits and the others in more than
``a - 1``, the hashes would differ in at least ``r + 1`` bits. So every hash within ``r`` has
one of the first ``b + 1`` chunks within ``a`` bits of the query's, or one of the others
within ``a - 1``. The search enumerates those chunk values, looks them up in the chunk
indexes and keeps the candidates whose exact distance is within ``r``: the same rows as a full
scan. For large radii the enumeration outgrows a scan, and the scan is used instead.
"""

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from itertools import combinations
from typing import Any, Final, Literal

import sqlalchemy as sa

from crawler.catalogue import Catalogue
from crawler.config import DEFAULT_HASH_ALGORITHM as DEFAULT_ALGORITHM
from crawler.errors import CrawlerError
from crawler.hashes import DEFAULT_MAX_DISTANCE, HASH_BITS, hex_to_signed, to_hex
from crawler.models import CHUNK_BITS, CHUNK_COLUMNS, CHUNK_COUNT, images, phash_chunks, url_key

# Past this many chunk values to look up (about 6% of the 65,536 values of a chunk, so about
# 6% of the table as candidates), a plain scan is as fast as the index lookups.
MAX_INDEX_PROBES: Final = 4096
EXPORT_BATCH: Final = 1000
_ASCII_DIGITS: Final = re.compile("[0-9]+")
_MAX_ID: Final = (1 << 63) - 1

Strategy = Literal["auto", "index", "scan"]
STRATEGIES: Final = ("auto", "index", "scan")


class QueryError(CrawlerError, ValueError):
    """A query the catalogue cannot answer as asked: a bad radius, limit or format."""

    status = 400
    reason = "bad_query"


class ImageNotFoundError(CrawlerError, LookupError):
    status = 404
    reason = "not_found"


@dataclass(frozen=True)
class SimilarRow:
    """One image near the query. ``pHash`` is named as in the metadata object, the CLI's
    output and the HTTP API."""

    id: int
    url: str
    pHash: str  # 16 hex digits
    distance: int
    similarity: float


def similar(
    catalogue: Catalogue,
    phash: str | int,
    max_distance: int = DEFAULT_MAX_DISTANCE,
    limit: int | None = None,
    *,
    algorithm: str = DEFAULT_ALGORITHM,
    strategy: Strategy = "auto",
) -> list[SimilarRow]:
    """Images whose pHash is within ``max_distance`` bits of ``phash`` (16 hex digits or a
    64-bit integer), nearest first, ties by id. Only hashes made by ``algorithm`` are
    compared: hashes of different algorithms say nothing about each other. ``strategy``
    forces the index search or the full scan (for benchmarks); both return the same rows."""
    query = hex_to_signed(phash) if isinstance(phash, str) else _signed(phash)
    check_range("max distance", max_distance, 0, HASH_BITS)
    if limit is not None:
        check_range("limit", limit, 1, None)
    check_strategy(strategy)
    probes = chunk_probes(query, max_distance)
    use_index = strategy == "index" or (
        strategy == "auto" and sum(len(values) for values in probes) <= MAX_INDEX_PROBES
    )
    distance = _distance_to(catalogue.dialect, query)
    if use_index:
        statement = _index_search(catalogue.dialect, probes, distance, max_distance)
    else:
        statement = (
            sa.select(images.c.id, images.c.url, images.c.phash, distance.label("distance"))
            .where(images.c.phash.is_not(None), distance <= max_distance)
            .order_by(distance, images.c.id)
        )
    # Checked on the rows that pass the distance test, so the chunk lookups stay index-only.
    statement = statement.where(images.c.phash_algorithm == algorithm).limit(limit)
    with catalogue.engine.connect() as connection:
        return [
            SimilarRow(
                row.id, row.url, to_hex(row.phash), row.distance, 1 - row.distance / HASH_BITS
            )
            for row in connection.execute(statement)
        ]


def chunk_probes(query: int, max_distance: int) -> list[list[int]]:
    """For each chunk, the chunk values that a hash within ``max_distance`` may have there
    (see the module docstring); a hash that matches none of them is farther away."""
    return [
        [value ^ flip for flip in flips(radius)]
        for value, radius in zip(phash_chunks(query), chunk_radii(max_distance), strict=True)
    ]


def chunk_radii(max_distance: int) -> list[int]:
    """How many bits each chunk may differ by and still be in reach (-1: chunk not needed)."""
    within, remainder = divmod(max_distance, CHUNK_COUNT)
    return [within if index <= remainder else within - 1 for index in range(CHUNK_COUNT)]


@cache
def flips(radius: int) -> tuple[int, ...]:
    """Every chunk-wide bit mask with at most ``radius`` bits set."""
    return tuple(
        sum(1 << bit for bit in bits)
        for count in range(min(radius, CHUNK_BITS) + 1)
        for bits in combinations(range(CHUNK_BITS), count)
    )


def _index_search(
    dialect: str, probes: list[list[int]], distance: sa.ColumnElement[int], max_distance: int
) -> sa.Select[Any]:
    # One index-only lookup per chunk (the chunk indexes hold the hash and the id), so the
    # exact distance is computed without reading the table; only the hits are joined for URLs.
    lookups = [
        sa.select(images.c.id, images.c.phash, distance.label("distance")).where(
            _one_of(dialect, images.c[column], values), distance <= max_distance
        )
        for column, values in zip(CHUNK_COLUMNS, probes, strict=True)
        if values
    ]
    hits = sa.union(*lookups).subquery("hits")
    return (
        sa.select(hits.c.id, images.c.url, hits.c.phash, hits.c.distance)
        .join(images, images.c.id == hits.c.id)
        .order_by(hits.c.distance, hits.c.id)
    )


def _one_of(dialect: str, column: sa.Column[int], values: list[int]) -> sa.ColumnElement[bool]:
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import ARRAY

        # One array parameter instead of hundreds: binding them costs more than the lookups.
        array = sa.cast(sa.literal(values, ARRAY(sa.Integer)), ARRAY(sa.Integer))
        return column == sa.any_(array)
    return column.in_(values)


def _distance_to(dialect: str, query: int) -> sa.ColumnElement[int]:
    """SQL for the Hamming distance between ``images.phash`` and ``query``."""
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import BIT

        # There is no bit_count for BIGINT; ::bit(64) is faster than int8send().
        xor = images.c.phash.op("#", return_type=sa.BigInteger)(
            sa.cast(sa.literal(query, sa.BigInteger), sa.BigInteger)
        )
        return sa.func.bit_count(sa.cast(xor, BIT(64)), type_=sa.Integer)
    return sa.func.hamming(images.c.phash, sa.literal(query, sa.BigInteger), type_=sa.Integer)


def _signed(value: int) -> int:
    if not -(1 << 63) <= value < (1 << 64):
        raise QueryError(f"pHash {value} does not fit in 64 bits")
    return value - (1 << 64) if value >= (1 << 63) else value


def check_range(name: str, value: int, low: int, high: int | None) -> None:
    if value < low or (high is not None and value > high):
        bounds = f"{low}..{high}" if high is not None else f"{low} or more"
        raise QueryError(f"{name} must be {bounds}, got {value}")


def check_strategy(strategy: str) -> None:
    if strategy not in STRATEGIES:
        raise QueryError(f"strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")


def show(catalogue: Catalogue, key: str | int) -> dict[str, Any]:
    """The stored metadata object of one image, by catalogue id, URL or local path (as a seed
    list or ``crawler extract`` takes it), exactly as it was extracted (key order and NUL
    characters kept, on both databases). ASCII digits are an id: ``./42`` is a file."""
    text = str(key).strip()
    if not text:
        raise QueryError("give an image id, URL or path, got an empty string")
    with catalogue.engine.connect() as connection:
        row = connection.execute(
            sa.select(images.c.url, images.c.status, images.c.reason, images.c.metadata_json)
            .where(_image_condition(text))
            .order_by(sa.case((images.c.url_hash == url_key(text), 0), else_=1))
            .limit(1)
        ).first()
    if row is None:
        raise ImageNotFoundError(f"no image {text!r} in the catalogue at {catalogue.url}")
    if row.metadata_json is None:
        because = f" ({row.reason})" if row.reason else ""
        raise ImageNotFoundError(f"{row.url} has no metadata: its status is {row.status}{because}")
    return json.loads(row.metadata_json)


def _image_condition(key: str) -> sa.ColumnElement[bool]:
    """The row whose id is ``key`` when it is ASCII digits (``str.isdigit`` also accepts digits
    like "¹" that ``int`` refuses), else the row whose URL is ``key`` as given or normalised
    as a seed line is (a path becomes its ``file://`` URL)."""
    if not _ASCII_DIGITS.fullmatch(key):
        from crawler.seeds import SeedError, normalise_url

        try:
            return images.c.url_hash.in_({url_key(key), url_key(normalise_url(key))})
        except SeedError:
            return images.c.url_hash == url_key(key)
    image_id = int(key)
    # An id beyond BIGINT names no row; binding it would be a database error instead.
    return images.c.id == image_id if image_id <= _MAX_ID else sa.false()


STATS_COLUMNS: Final = ("facet", "value", "count")


def stats(catalogue: Catalogue) -> list[dict[str, Any]]:
    """Counts of images in all, by status, by format and by camera, as facet/value/count rows."""
    count = sa.func.count().label("count")
    facets = {
        "status": (images.c.status,),
        "format": (images.c.format,),
        "camera": (images.c.make, images.c.model),
    }
    with catalogue.engine.connect() as connection:
        total = connection.execute(sa.select(count).select_from(images)).scalar_one()
        rows = [{"facet": "total", "value": "images", "count": total}]
        for facet, columns in facets.items():
            for row in counted(connection, *columns, where=columns[0].is_not(None)):
                value = " ".join(str(part) for part in row[:-1] if part is not None)
                rows.append({"facet": facet, "value": value, "count": row.n})
    return rows


def counted(
    connection: sa.Connection, *columns: sa.ColumnElement[Any], where: Any = None
) -> list[sa.Row[*tuple[Any, ...]]]:
    """Rows of ``columns`` and their count ``n``, most common first."""
    count = sa.func.count().label("n")
    statement = sa.select(*columns, count).group_by(*columns)
    if where is not None:
        statement = statement.where(where)
    return list(connection.execute(statement.order_by(count.desc(), *columns)))


EXPORT_FORMATS: Final = ("json", "jsonl", "csv")
# Each catalogue column that holds a field of the metadata object goes by that field's name.
_OBJECT_FIELDS: Final = {
    "has_color_profile": "hasColorProfile",
    "has_transparency": "hasTransparency",
    "phash": "pHash",
}
_OBJECT_COLUMNS: Final = ("id", "url", "status", "reason", "metadata")
_TYPED_COLUMNS: Final = (
    "id",
    "url",
    "final_url",
    "status",
    "reason",
    "http_status",
    "fetched_at",
    "sha256",
    "width",
    "height",
    "size",
    "format",
    "has_color_profile",
    "quality",
    "density",
    "has_transparency",
    "phash",
    "phash_algorithm",
    "make",
    "model",
    "lens",
    "taken_at",
    "orientation",
    "iso",
    "exposure_time",
    "f_number",
    "focal_length",
    "gps_latitude",
    "gps_longitude",
)
# JSON keeps the metadata object whole; CSV has a column per typed field instead.
EXPORT_COLUMNS: Final = {
    "json": _OBJECT_COLUMNS,
    "jsonl": _OBJECT_COLUMNS,
    "csv": tuple(_OBJECT_FIELDS.get(name, name) for name in _TYPED_COLUMNS),
}


def export(catalogue: Catalogue, fmt: str = "jsonl") -> Iterator[dict[str, Any]]:
    """Every catalogued image as a row of ``EXPORT_COLUMNS[fmt]``, in id order, streamed from
    the database (a server-side cursor on PostgreSQL), so memory stays constant. JSON rows
    carry the stored metadata object; CSV rows the typed columns, ``pHash`` as hex."""
    if fmt not in EXPORT_FORMATS:
        raise QueryError(f"export format must be one of {', '.join(EXPORT_FORMATS)}, got {fmt!r}")
    # The exact JSON text, not the JSONB column, which reorders keys and loses NUL characters.
    names = _OBJECT_COLUMNS if fmt != "csv" else _TYPED_COLUMNS
    columns = [
        images.c.metadata_json.label(name)
        if name == "metadata"
        else images.c[name].label(_OBJECT_FIELDS.get(name, name))
        for name in names
    ]
    statement = sa.select(*columns).order_by(images.c.id)
    with catalogue.engine.connect() as connection:
        result = connection.execution_options(yield_per=EXPORT_BATCH).execute(statement)
        for row in result:
            record = row._asdict()
            if record.get("pHash") is not None:
                record["pHash"] = to_hex(record["pHash"])
            if record.get("metadata") is not None:
                record["metadata"] = json.loads(record["metadata"])
            yield record
