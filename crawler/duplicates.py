"""Duplicate groups: images with the same bytes, then clusters of images whose pHashes are
linked by chains of small distances.

Every hash of the catalogue is read into memory (16 bytes a row) and the close pairs are found
there, either by comparing every pair (numpy, a block of the distance matrix at a time) or by
multi-index hashing as ``crawler.query.similar`` does in SQL, whichever a cost estimate
expects to be faster; both give the same groups. Kept apart from the other reads, which need
neither numpy nor the whole catalogue.
"""

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import chain
from typing import Final, Literal

import numpy as np
import sqlalchemy as sa

from crawler.catalogue import Catalogue
from crawler.config import DEFAULT_HASH_ALGORITHM as DEFAULT_ALGORITHM
from crawler.hashes import DEFAULT_MAX_DISTANCE, HASH_BITS, to_hex
from crawler.models import CHUNK_BITS, chunk_shift, images
from crawler.query import EXPORT_BATCH, Strategy, check_range, check_strategy, chunk_radii, flips

# The size of one block of the pairwise distance matrix (it fits in the cache), and the costs
# in seconds, measured on the 2-core VM, that decide between comparing every pair and
# multi-index hashing.
SCAN_BLOCK: Final = 1 << 18
SCAN_PAIR_COST: Final = 3e-9
PROBE_COST: Final = 5e-6
PROBE_ROW_COST: Final = 5e-8
CANDIDATE_COST: Final = 2e-8
HASH_BATCH: Final = 100_000
_CHUNK_MASK: Final = (1 << CHUNK_BITS) - 1


@dataclass(frozen=True)
class DuplicateMember:
    """One image of a group; ``pHash`` is named as in the metadata object and the APIs."""

    id: int
    url: str
    sha256: str | None
    pHash: str | None
    distance: int | None  # pHash distance to the group's first member


@dataclass(frozen=True)
class DuplicateGroup:
    kind: Literal["exact", "similar"]  # same SHA-256, or pHashes within the distance
    members: list[DuplicateMember]


def duplicates(
    catalogue: Catalogue,
    max_distance: int = DEFAULT_MAX_DISTANCE,
    *,
    algorithm: str = DEFAULT_ALGORITHM,
    strategy: Strategy = "auto",
) -> list[DuplicateGroup]:
    """Groups of near-identical images: first the images with the same SHA-256, then clusters
    of images (one per SHA-256) whose pHashes, made by ``algorithm``, are linked by distances
    within ``max_distance``. ``strategy`` forces how the close pairs are found (see
    ``close_pairs``); all give the same groups."""
    check_range("max distance", max_distance, 0, HASH_BITS)
    check_strategy(strategy)
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
    probes = sum(len(flips(radius)) for radius in chunk_radii(max_distance))
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
    for index, radius in enumerate(chunk_radii(max_distance)):
        keys = ((hashes >> np.uint64(chunk_shift(index))) & np.uint64(_CHUNK_MASK)).astype(np.int64)
        order = np.argsort(keys, kind="stable")
        # The hashes with chunk value v are order[starts[v] : starts[v] + sizes[v]].
        sizes = np.bincount(keys, minlength=_CHUNK_MASK + 1)
        starts = np.cumsum(sizes) - sizes
        for flip in flips(radius):
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
