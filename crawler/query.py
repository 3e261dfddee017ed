"""Reads: near-duplicate search, duplicate groups, one image's metadata, counts and export.

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
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cache
from itertools import chain, combinations
from typing import Any, Final, Literal

import numpy as np
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY, BIT

from crawler.catalogue import Catalogue
from crawler.config import DEFAULT_HASH_ALGORITHM as DEFAULT_ALGORITHM
from crawler.errors import CrawlerError
from crawler.extract.phash import HASH_BITS, hex_to_signed, to_hex
from crawler.models import (
    CHUNK_BITS,
    CHUNK_COLUMNS,
    CHUNK_COUNT,
    chunk_shift,
    images,
    phash_chunks,
    url_key,
)

DEFAULT_MAX_DISTANCE: Final = 10
DEFAULT_DUPLICATE_DISTANCE: Final = 6
# Past this many chunk values to look up (about 6% of the 65,536 values of a chunk, so about
# 6% of the table as candidates), a plain scan is as fast as the index lookups.
MAX_INDEX_PROBES: Final = 4096
# Finding duplicates in memory: the size of one block of the pairwise distance matrix (it fits
# in the cache), and the costs in seconds, measured on the 2-core VM, that decide between
# comparing every pair and multi-index hashing.
SCAN_BLOCK: Final = 1 << 18
SCAN_PAIR_COST: Final = 3e-9
PROBE_COST: Final = 5e-6
PROBE_ROW_COST: Final = 5e-8
CANDIDATE_COST: Final = 2e-8
EXPORT_BATCH: Final = 1000
HASH_BATCH: Final = 100_000
_CHUNK_MASK: Final = (1 << CHUNK_BITS) - 1
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
    id: int
    url: str
    phash: str  # 16 hex digits
    distance: int
    similarity: float


@dataclass(frozen=True)
class DuplicateMember:
    id: int
    url: str
    sha256: str | None
    phash: str | None
    distance: int | None  # pHash distance to the group's first member


@dataclass(frozen=True)
class DuplicateGroup:
    kind: Literal["exact", "similar"]  # same SHA-256, or pHashes within the distance
    members: list[DuplicateMember]


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
    _check_range("max distance", max_distance, 0, HASH_BITS)
    if limit is not None:
        _check_range("limit", limit, 1, None)
    _check_strategy(strategy)
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
        [value ^ flip for flip in _flips(radius)]
        for value, radius in zip(phash_chunks(query), _chunk_radii(max_distance), strict=True)
    ]


def _chunk_radii(max_distance: int) -> list[int]:
    """How many bits each chunk may differ by and still be in reach (-1: chunk not needed)."""
    within, remainder = divmod(max_distance, CHUNK_COUNT)
    return [within if index <= remainder else within - 1 for index in range(CHUNK_COUNT)]


@cache
def _flips(radius: int) -> tuple[int, ...]:
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
        # One array parameter instead of hundreds: binding them costs more than the lookups.
        array = sa.cast(sa.literal(values, ARRAY(sa.Integer)), ARRAY(sa.Integer))
        return column == sa.any_(array)
    return column.in_(values)


def _distance_to(dialect: str, query: int) -> sa.ColumnElement[int]:
    """SQL for the Hamming distance between ``images.phash`` and ``query``."""
    if dialect == "postgresql":
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


def _check_range(name: str, value: int, low: int, high: int | None) -> None:
    if value < low or (high is not None and value > high):
        bounds = f"{low}..{high}" if high is not None else f"{low} or more"
        raise QueryError(f"{name} must be {bounds}, got {value}")


def _check_strategy(strategy: str) -> None:
    if strategy not in STRATEGIES:
        raise QueryError(f"strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")


def duplicates(
    catalogue: Catalogue,
    max_distance: int = DEFAULT_DUPLICATE_DISTANCE,
    *,
    algorithm: str = DEFAULT_ALGORITHM,
    strategy: Strategy = "auto",
) -> list[DuplicateGroup]:
    """Groups of near-identical images: first the images with the same SHA-256, then clusters
    of images (one per SHA-256) whose pHashes, made by ``algorithm``, are linked by distances
    within ``max_distance``. ``strategy`` forces how the close pairs are found (see
    ``close_pairs``); all give the same groups."""
    _check_range("max distance", max_distance, 0, HASH_BITS)
    _check_strategy(strategy)
    with catalogue.engine.connect() as connection:
        exact = _exact_groups(connection)
        similar_groups = _similar_groups(connection, max_distance, algorithm, strategy)
    return exact + similar_groups


def _exact_groups(connection: sa.Connection) -> list[DuplicateGroup]:
    shared = (
        sa.select(images.c.sha256)
        .where(images.c.sha256.is_not(None))
        .group_by(images.c.sha256)
        .having(sa.func.count() > 1)
    )
    rows = connection.execute(
        sa.select(images.c.id, images.c.url, images.c.sha256, images.c.phash)
        .where(images.c.sha256.in_(shared))
        .order_by(images.c.sha256, images.c.id)
    )
    groups: dict[str, list[DuplicateMember]] = {}
    for row in rows:
        phash = None if row.phash is None else to_hex(row.phash)
        distance = None if row.phash is None else 0
        groups.setdefault(row.sha256, []).append(
            DuplicateMember(row.id, row.url, row.sha256, phash, distance)
        )
    ordered = sorted(groups.values(), key=lambda members: members[0].id)
    return [DuplicateGroup("exact", members) for members in ordered]


def _similar_groups(
    connection: sa.Connection, max_distance: int, algorithm: str, strategy: Strategy
) -> list[DuplicateGroup]:
    ids, hashes = _hashes_of_first_copies(connection, algorithm)
    clusters = sorted(_clusters(hashes, max_distance, strategy), key=lambda rows: int(ids[rows[0]]))
    urls = _urls_and_digests(connection, [int(ids[i]) for rows in clusters for i in rows])
    groups = []
    for rows in clusters:
        anchor = int(hashes[rows[0]])
        members = []
        for i in rows:
            image_id, value = int(ids[i]), int(hashes[i])
            url, sha256 = urls[image_id]
            distance = (anchor ^ value).bit_count()
            members.append(DuplicateMember(image_id, url, sha256, to_hex(value), distance))
        groups.append(DuplicateGroup("similar", members))
    return groups


def _hashes_of_first_copies(
    connection: sa.Connection, algorithm: str
) -> tuple[np.ndarray, np.ndarray]:
    """Ids (int64) and pHashes (uint64), in id order, of every image hashed by ``algorithm``,
    counting images with the same SHA-256 once: exact copies are reported as such, not again
    as clusters."""
    first = images.alias("first_copy")
    is_first_copy = ~sa.exists().where(first.c.sha256 == images.c.sha256, first.c.id < images.c.id)
    result = connection.execution_options(yield_per=HASH_BATCH).execute(
        sa.select(images.c.id, images.c.phash)
        .where(
            images.c.phash.is_not(None),
            images.c.phash_algorithm == algorithm,
            sa.or_(images.c.sha256.is_(None), is_first_copy),
        )
        .order_by(images.c.id)
    )
    # Straight into arrays, a batch at a time: 16 bytes a row instead of a Python row object.
    batches = [
        np.fromiter(chain.from_iterable(batch), dtype=np.int64).reshape(-1, 2)
        for batch in result.partitions()
    ]
    table = np.concatenate(batches) if batches else np.empty((0, 2), dtype=np.int64)
    return table[:, 0], table[:, 1].view(np.uint64)


def _clusters(hashes: np.ndarray, max_distance: int, strategy: Strategy) -> list[list[int]]:
    """Positions in ``hashes`` linked by chains of distances within ``max_distance``, for each
    group of two or more; equal hashes are compared once."""
    distinct, owner = np.unique(hashes, return_inverse=True)
    groups = _components(len(distinct), close_pairs(distinct, max_distance, strategy))
    clusters: dict[int, list[int]] = {}
    for position, group in enumerate(groups[owner].tolist()):
        clusters.setdefault(group, []).append(position)
    return [positions for positions in clusters.values() if len(positions) > 1]


def close_pairs(
    hashes: np.ndarray, max_distance: int, strategy: Strategy = "auto"
) -> Iterator[np.ndarray]:
    """Index pairs ``(i, j)``, ``i < j``, of the uint64 ``hashes`` that are within
    ``max_distance`` bits, as arrays of shape (k, 2); a pair may come more than once. Either
    every pair is compared (``scan``) or multi-index hashing finds the candidates (``index``);
    ``auto`` takes whichever ``_scan_is_cheaper`` expects to be faster."""
    scan = strategy == "scan" or (
        strategy == "auto" and _scan_is_cheaper(len(hashes), max_distance)
    )
    return (_pairs_by_scan if scan else _pairs_by_chunks)(hashes, max_distance)


def _scan_is_cheaper(count: int, max_distance: int) -> bool:
    """Whether comparing all ``count**2 / 2`` pairs is expected to take less time than
    multi-index hashing, which looks up every hash once per probed chunk value, each lookup
    finding about ``count / 65,536`` candidates (for uniformly spread hashes)."""
    probes = sum(len(_flips(radius)) for radius in _chunk_radii(max_distance))
    candidates = count * count * probes / (_CHUNK_MASK + 1)
    index_cost = probes * (PROBE_COST + count * PROBE_ROW_COST) + candidates * CANDIDATE_COST
    return count * count / 2 * SCAN_PAIR_COST <= index_cost


def _pairs_by_scan(hashes: np.ndarray, max_distance: int) -> Iterator[np.ndarray]:
    """Every pair compared, a block of rows against all later hashes at a time."""
    rows_per_block = max(1, SCAN_BLOCK // max(len(hashes), 1))
    for start in range(0, len(hashes), rows_per_block):
        block, later = hashes[start : start + rows_per_block], hashes[start:]
        distances = np.bitwise_count(block[:, None] ^ later[None, :])
        # flatnonzero: 2-D nonzero takes several times longer than the distances themselves.
        left, right = np.divmod(np.flatnonzero(distances <= max_distance), len(later))
        ordered = left < right
        yield np.stack([left[ordered], right[ordered]], axis=1) + start


def _pairs_by_chunks(hashes: np.ndarray, max_distance: int) -> Iterator[np.ndarray]:
    """Multi-index hashing in memory, as ``similar`` does in SQL: per chunk, the hashes whose
    chunk value is one of the probed values of another hash's chunk are its candidates."""
    positions = np.arange(len(hashes))
    for index, radius in enumerate(_chunk_radii(max_distance)):
        keys = ((hashes >> np.uint64(chunk_shift(index))) & np.uint64(_CHUNK_MASK)).astype(np.int64)
        order = np.argsort(keys, kind="stable")
        # The hashes with chunk value v are order[starts[v] : starts[v] + sizes[v]].
        sizes = np.bincount(keys, minlength=_CHUNK_MASK + 1)
        starts = np.cumsum(sizes) - sizes
        for flip in _flips(radius):
            probe = keys ^ flip
            counts = sizes[probe]
            total = int(counts.sum())
            if not total:
                continue
            left = np.repeat(positions, counts)
            offsets = np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)
            right = order[np.repeat(starts[probe], counts) + offsets]
            ordered = left < right
            left, right = left[ordered], right[ordered]
            close = np.bitwise_count(hashes[left] ^ hashes[right]) <= max_distance
            yield np.stack([left[close], right[close]], axis=1)


def _components(count: int, pair_blocks: Iterable[np.ndarray]) -> np.ndarray:
    """For each of ``count`` items, the smallest index of its group of items linked by the
    pairs. Blocks are merged one at a time, so the pairs never all have to be in memory."""
    # A union-find forest kept flat: every item points straight at its group's root.
    parent = np.arange(count)
    for pairs in pair_blocks:
        left, right = parent[pairs[:, 0]], parent[pairs[:, 1]]
        apart = left != right
        if apart.any():
            parent = _linked(parent, left[apart], right[apart])
    return parent


def _linked(parent: np.ndarray, left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """The flat forest ``parent`` with the groups of ``left[k]`` and ``right[k]`` joined. Each
    round hangs the larger root of every pair under the smaller (so a root stays its group's
    smallest index) and flattens the forest again, until every pair has one root."""
    while True:
        left_root, right_root = parent[left], parent[right]
        apart = left_root != right_root
        if not apart.any():
            return parent
        left, right = left[apart], right[apart]
        low = np.minimum(left_root[apart], right_root[apart])
        high = np.maximum(left_root[apart], right_root[apart])
        np.minimum.at(parent, high, low)
        while not np.array_equal(grandparent := parent[parent], parent):
            parent = grandparent


def _urls_and_digests(
    connection: sa.Connection, ids: list[int]
) -> dict[int, tuple[str, str | None]]:
    found: dict[int, tuple[str, str | None]] = {}
    for start in range(0, len(ids), EXPORT_BATCH):
        rows = connection.execute(
            sa.select(images.c.id, images.c.url, images.c.sha256).where(
                images.c.id.in_(ids[start : start + EXPORT_BATCH])
            )
        )
        found.update({row.id: (row.url, row.sha256) for row in rows})
    return found


def show(catalogue: Catalogue, url_or_id: str | int) -> dict[str, Any]:
    """The stored metadata object of one image, by catalogue id or by URL, exactly as it was
    extracted (key order and NUL characters kept, on both databases)."""
    key = str(url_or_id).strip()
    if not key:
        raise QueryError("give an image id or URL, got an empty string")
    with catalogue.engine.connect() as connection:
        row = connection.execute(
            sa.select(images.c.url, images.c.status, images.c.reason, images.c.metadata_json).where(
                _image_condition(key)
            )
        ).first()
    if row is None:
        raise ImageNotFoundError(f"no image {key!r} in the catalogue at {catalogue.url}")
    if row.metadata_json is None:
        because = f" ({row.reason})" if row.reason else ""
        raise ImageNotFoundError(f"{row.url} has no metadata: its status is {row.status}{because}")
    return json.loads(row.metadata_json)


def _image_condition(key: str) -> sa.ColumnElement[bool]:
    """The row whose id is ``key`` when it is ASCII digits (``str.isdigit`` also accepts digits
    like "¹" that ``int`` refuses), else the row whose URL is ``key``."""
    if not _ASCII_DIGITS.fullmatch(key):
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
            statement = (
                sa.select(*columns, count)
                .where(*(column.is_not(None) for column in columns[:1]))
                .group_by(*columns)
                .order_by(count.desc(), *columns)
            )
            for row in connection.execute(statement):
                value = " ".join(str(part) for part in row[:-1] if part is not None)
                rows.append({"facet": facet, "value": value, "count": row.count})
    return rows


EXPORT_FORMATS: Final = ("jsonl", "csv")
EXPORT_COLUMNS: Final = {
    "jsonl": ("url", "status", "metadata"),
    "csv": (
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
    ),
}


def export(catalogue: Catalogue, fmt: str = "jsonl") -> Iterator[dict[str, Any]]:
    """Every catalogued image as a row of ``EXPORT_COLUMNS[fmt]``, in id order, streamed from
    the database (a server-side cursor on PostgreSQL), so memory stays constant."""
    if fmt not in EXPORT_FORMATS:
        raise QueryError(f"export format must be one of {', '.join(EXPORT_FORMATS)}, got {fmt!r}")
    # The exact JSON text, not the JSONB column, which reorders keys and loses NUL characters.
    columns = [
        images.c.metadata_json.label(name) if name == "metadata" else images.c[name]
        for name in EXPORT_COLUMNS[fmt]
    ]
    statement = sa.select(*columns).order_by(images.c.id)
    with catalogue.engine.connect() as connection:
        result = connection.execution_options(yield_per=EXPORT_BATCH).execute(statement)
        for row in result:
            record = row._asdict()
            if record.get("phash") is not None:
                record["phash"] = to_hex(record["phash"])
            if record.get("metadata") is not None:
                record["metadata"] = json.loads(record["metadata"])
            yield record
