"""Duplicate groups: images with the same bytes, then clusters of images whose pHashes are
linked by chains of small distances; in each group the copy to keep, and the images that are
not the one to keep (``redundant_images``).

The copy to keep is the one with the most pixels (width x height), then the largest file, then
the first seen (lowest id); an unknown width, height or size counts as 0.

Every hash of the catalogue is read into memory (16 bytes a row) and the close pairs are found
there, either by comparing every pair (numpy, a block of the distance matrix at a time) or by
multi-index hashing in memory, whichever a cost estimate expects to be faster; both give the
same pairs. Kept apart from the other reads, which need neither numpy nor the whole catalogue.
"""

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from itertools import chain, groupby
from typing import Any, Final, Literal, NamedTuple

import numpy as np
import sqlalchemy as sa

from crawler.catalogue import Catalogue
from crawler.config import DEFAULT_HASH_ALGORITHM as DEFAULT_ALGORITHM
from crawler.hashes import DEFAULT_MAX_DISTANCE, HASH_BITS, distance, to_hex
from crawler.models import CHUNK_BITS, chunk_shift, images
from crawler.query import EXPORT_BATCH, Strategy, check_range, check_strategy, chunk_radii, flips

# The size of one block of the pairwise distance matrix (it fits in the cache), and of one
# batch of multi-index candidates; and the costs in seconds, measured on the 2-core VM, that
# decide between comparing every pair and multi-index hashing.
SCAN_BLOCK: Final = 1 << 18
CANDIDATE_BLOCK: Final = 1 << 20
SCAN_PAIR_COST: Final = 1.5e-9
PROBE_COST: Final = 2e-5
PROBE_ROW_COST: Final = 5e-9
CANDIDATE_COST: Final = 2e-8
HASH_BATCH: Final = 100_000
_CHUNK_MASK: Final = (1 << CHUNK_BITS) - 1


class _Row(NamedTuple):
    """What a group member is made from (SQLAlchemy's rows are slower to read by name)."""

    id: int
    url: str
    sha256: str | None
    phash: int | None
    width: int | None
    height: int | None
    size: int | None
    format: str | None
    taken_at: datetime | None


_MEMBER_COLUMNS: Final = tuple(images.c[name] for name in _Row._fields)


@dataclass(frozen=True)
class DuplicateMember:
    """One image of a group; ``pHash`` is named as in the metadata object and the APIs."""

    id: int
    url: str
    sha256: str | None
    pHash: str | None
    distance: int | None  # pHash distance to the group's copy to keep (its first member)
    width: int | None
    height: int | None
    size: int | None  # bytes
    format: str | None
    taken_at: datetime | None  # as the camera wrote it (EXIF DateTimeOriginal, no zone)
    keep: bool  # the group's copy to keep


@dataclass(frozen=True)
class DuplicateGroup:
    kind: Literal["exact", "similar"]  # same SHA-256, or pHashes within the distance
    keep: int  # the id of the copy to keep
    members: list[DuplicateMember]  # the copy to keep first, then the others by id


@dataclass(frozen=True)
class RedundantImage:
    """An image that is not the one to keep: the copy to keep of its group is ``keep_id``.
    ``kind`` is ``exact`` for the same bytes as that copy, else ``similar``."""

    id: int
    url: str
    keep_id: int
    keep_url: str
    kind: Literal["exact", "similar"]
    distance: int | None  # pHash distance to the copy to keep
    width: int | None
    height: int | None
    size: int | None
    format: str | None
    sha256: str | None


def duplicates(
    catalogue: Catalogue,
    max_distance: int = DEFAULT_MAX_DISTANCE,
    *,
    algorithm: str = DEFAULT_ALGORITHM,
    strategy: Strategy = "auto",
) -> list[DuplicateGroup]:
    """Groups of near-identical images: first the images with the same SHA-256, then clusters
    of images (one per SHA-256) whose pHashes, made by ``algorithm``, are linked by distances
    within ``max_distance``; each group names its copy to keep (see the module docstring).
    ``strategy`` forces how the close pairs are found (see ``close_pairs``); all give the same
    groups."""
    check_range("max distance", max_distance, 0, HASH_BITS)
    check_strategy(strategy)
    with catalogue.engine.connect() as connection:
        exact = _exact_groups(connection)
        similar_groups = _similar_groups(
            connection, max_distance, algorithm, strategy, _later_copies(exact)
        )
    return exact + similar_groups


def _later_copies(exact: list[DuplicateGroup]) -> list[int]:
    """The ids of exact copies but the first seen of each: the first stands for them in the
    clusters, so that copies are reported as such, not again as clusters."""
    return [image_id for group in exact for image_id in sorted(m.id for m in group.members)[1:]]


def redundant_images(
    catalogue: Catalogue,
    max_distance: int = DEFAULT_MAX_DISTANCE,
    *,
    algorithm: str = DEFAULT_ALGORITHM,
) -> list[RedundantImage]:
    """Every image that is not the one to keep, by id. Groups that share an image count as
    one (the copies of an image and the cluster that image is in), with one copy to keep by
    the same rule, so a kept image is never also listed."""
    listed: dict[int, RedundantImage] = {}
    for members in _linked_groups(duplicates(catalogue, max_distance, algorithm=algorithm)):
        kept = max(members, key=_keep_order)
        for member in members:
            if member.id != kept.id:
                listed[member.id] = _redundant_image(member, kept)
    return [listed[image_id] for image_id in sorted(listed)]


def _linked_groups(groups: list[DuplicateGroup]) -> list[list[DuplicateMember]]:
    """The members of groups joined where they share an image: an exact group's first copy
    is what stands for it in the clusters."""
    joined: dict[int, list[DuplicateMember]] = {}  # by member id, one list per joined group
    for group in groups:
        known = [joined[m.id] for m in group.members if m.id in joined]
        members = list({m.id: m for m in chain(*known, group.members)}.values())
        for member in members:
            joined[member.id] = members
    return list({id(members): members for members in joined.values()}.values())


def _redundant_image(member: DuplicateMember, kept: DuplicateMember) -> RedundantImage:
    same_bytes = member.sha256 is not None and member.sha256 == kept.sha256
    return RedundantImage(
        member.id,
        member.url,
        kept.id,
        kept.url,
        "exact" if same_bytes else "similar",
        0 if same_bytes else _distance(member.pHash, kept.pHash),
        member.width,
        member.height,
        member.size,
        member.format,
        member.sha256,
    )


def _distance(a: int | str | None, b: int | str | None) -> int | None:
    return None if a is None or b is None else distance(a, b)


def _keep_order(member: Any) -> tuple[int, int, int]:
    """Larger is kept: more pixels, then a larger file, then seen first."""
    pixels = (member.width or 0) * (member.height or 0)
    return pixels, member.size or 0, -member.id


def _group(
    kind: Literal["exact", "similar"],
    rows: Sequence[_Row],
    distance_to: Callable[[_Row, _Row], int | None],
) -> DuplicateGroup:
    """The group of ``rows`` (id order) with its copy to keep first; ``distance_to(row,
    kept)`` is each member's distance."""
    kept = max(rows, key=_keep_order)
    ordered = [kept, *(row for row in rows if row is not kept)]
    members = [
        DuplicateMember(
            row.id,
            row.url,
            row.sha256,
            None if row.phash is None else to_hex(row.phash),
            distance_to(row, kept),
            row.width,
            row.height,
            row.size,
            row.format,
            row.taken_at,
            row is kept,
        )
        for row in ordered
    ]
    return DuplicateGroup(kind, kept.id, members)


def _exact_groups(connection: sa.Connection) -> list[DuplicateGroup]:
    shared = (
        sa.select(images.c.sha256)
        .where(images.c.sha256.is_not(None))
        .group_by(images.c.sha256)
        .having(sa.func.count() > 1)
    )
    rows = connection.execute(
        sa.select(*_MEMBER_COLUMNS)
        .where(images.c.sha256.in_(shared))
        .order_by(images.c.sha256, images.c.id)
    )
    by_digest = [
        [_Row(*row) for row in copies] for _, copies in groupby(rows, key=lambda row: row.sha256)
    ]
    by_digest.sort(key=lambda copies: copies[0].id)

    def same_bytes(row: _Row, kept: _Row) -> int | None:
        return None if row.phash is None else 0

    return [_group("exact", copies, same_bytes) for copies in by_digest]


def _similar_groups(
    connection: sa.Connection,
    max_distance: int,
    algorithm: str,
    strategy: Strategy,
    copies: list[int],
) -> list[DuplicateGroup]:
    ids, hashes = _hashes(connection, algorithm)
    counted = ~np.isin(ids, copies)
    ids, hashes = ids[counted], hashes[counted]
    clusters = sorted(_clusters(hashes, max_distance, strategy), key=lambda rows: int(ids[rows[0]]))
    rows = _member_rows(connection, [int(ids[i]) for positions in clusters for i in positions])

    def hash_distance(row: _Row, kept: _Row) -> int | None:
        return _distance(row.phash, kept.phash)

    return [
        _group("similar", [rows[int(ids[i])] for i in positions], hash_distance)
        for positions in clusters
    ]


def _hashes(connection: sa.Connection, algorithm: str) -> tuple[np.ndarray, np.ndarray]:
    """Ids (int64) and pHashes (uint64), in id order, of every image hashed by
    ``algorithm``."""
    result = connection.execution_options(yield_per=HASH_BATCH).execute(
        sa.select(images.c.id, images.c.phash)
        .where(images.c.phash.is_not(None), images.c.phash_algorithm == algorithm)
        .order_by(images.c.id)
    )
    # Straight into arrays, a batch at a time: 16 bytes a row instead of a Python row object.
    batches = [
        np.fromiter(chain.from_iterable(batch), dtype=np.int64).reshape(-1, 2)
        for batch in result.partitions()
    ]
    table = np.concatenate(batches) if batches else np.empty((0, 2), dtype=np.int64)
    return table[:, 0], table[:, 1].view(np.uint64)


def _member_rows(connection: sa.Connection, ids: list[int]) -> dict[int, _Row]:
    found: dict[int, _Row] = {}
    for start in range(0, len(ids), EXPORT_BATCH):
        batch = ids[start : start + EXPORT_BATCH]
        rows = connection.execute(sa.select(*_MEMBER_COLUMNS).where(images.c.id.in_(batch)))
        found.update({row.id: _Row(*row) for row in rows})
    return found


def _clusters(hashes: np.ndarray, max_distance: int, strategy: Strategy) -> list[list[int]]:
    """Positions in ``hashes`` linked by chains of distances within ``max_distance``, for each
    group of two or more, in position order; equal hashes are compared once."""
    distinct, owner = np.unique(hashes, return_inverse=True)
    groups = _components(len(distinct), close_pairs(distinct, max_distance, strategy))[owner]
    grouped = np.flatnonzero(np.bincount(groups, minlength=len(distinct))[groups] > 1)
    by_group = grouped[np.argsort(groups[grouped], kind="stable")]
    starts = np.flatnonzero(np.diff(groups[by_group])) + 1
    return [positions.tolist() for positions in np.split(by_group, starts) if len(positions)]


def close_pairs(
    hashes: np.ndarray, max_distance: int, strategy: Strategy = "auto"
) -> Iterator[np.ndarray]:
    """Index pairs ``(i, j)``, ``i < j``, of the uint64 ``hashes`` that are within
    ``max_distance`` bits, each once, as arrays of shape (k, 2). Either every pair is compared
    (``scan``) or multi-index hashing finds the candidates (``index``); ``auto`` takes
    whichever ``_scan_is_cheaper`` expects to be faster."""
    scan = strategy == "scan" or (strategy == "auto" and _scan_is_cheaper(hashes, max_distance))
    return (_pairs_by_scan if scan else _pairs_by_chunks)(hashes, max_distance)


def _scan_is_cheaper(hashes: np.ndarray, max_distance: int) -> bool:
    """Whether comparing all ``count**2 / 2`` pairs is expected to take less time than
    multi-index hashing, which looks up half the hashes once per probed chunk value (the
    hashes of one chunk value are a bucket) and checks every hash of the buckets found. A
    chunk's buckets of sizes ``s`` give about ``sum(s**2 - s) / 2`` candidates per probed
    value: ``count**2 / 131,072`` for uniformly spread hashes, more where hashes crowd."""
    count = len(hashes)
    index_cost = 0.0
    for index, radius in enumerate(chunk_radii(max_distance)):
        probes = len(flips(radius))
        sizes = np.bincount(_chunk_values(hashes, index), minlength=_CHUNK_MASK + 1)
        candidates = probes * (float(np.dot(sizes, sizes)) - count) / 2
        index_cost += probes * (PROBE_COST + count / 2 * PROBE_ROW_COST)
        index_cost += candidates * CANDIDATE_COST
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


class _Buckets(NamedTuple):
    """The hashes sorted by the value of one chunk: those with chunk value ``v`` (bucket
    ``v``) are at sorted positions ``starts[v]`` to ``starts[v] + sizes[v] - 1``; ``order``
    maps a sorted position to the position in the input."""

    order: np.ndarray
    values: np.ndarray  # each sorted hash's chunk value
    hashes: np.ndarray
    starts: np.ndarray
    sizes: np.ndarray


def _pairs_by_chunks(hashes: np.ndarray, max_distance: int) -> Iterator[np.ndarray]:
    """Multi-index hashing in memory: two hashes within ``max_distance`` have a chunk whose
    values differ in at most ``chunk_radii`` bits (as for ``crawler.query.similar``), so
    for every flip mask of that many bits the hashes of bucket ``v`` are compared with those
    of bucket ``v ^ mask``. A pair is reported by the first chunk that reaches it."""
    radii = chunk_radii(max_distance)
    for index, radius in enumerate(radii):
        if radius < 0:
            continue
        buckets = _buckets(hashes, index)
        for found in _pairs_near_in_chunk(buckets, radius, max_distance):
            pairs = buckets.order[found]
            differences = hashes[pairs[:, 0]] ^ hashes[pairs[:, 1]]
            yield np.sort(pairs[_first_reached_here(differences, index, radii)], axis=1)


def _chunk_values(hashes: np.ndarray, index: int) -> np.ndarray:
    shifted = hashes >> np.uint64(chunk_shift(index))
    return (shifted & np.uint64(_CHUNK_MASK)).astype(np.uint16)


def _buckets(hashes: np.ndarray, index: int) -> _Buckets:
    values = _chunk_values(hashes, index)
    order = np.argsort(values, kind="stable")  # a radix sort, for 16-bit values
    sorted_values = values[order].astype(np.intp)
    sizes = np.bincount(sorted_values, minlength=_CHUNK_MASK + 1)
    return _Buckets(order, sorted_values, hashes[order], np.cumsum(sizes) - sizes, sizes)


def _pairs_near_in_chunk(buckets: _Buckets, radius: int, max_distance: int) -> Iterator[np.ndarray]:
    """Sorted positions of the pairs within ``max_distance`` whose values of this chunk differ
    in at most ``radius`` bits, each once: within a bucket from the earlier position, and
    between buckets ``v`` and ``v ^ mask`` from the one whose ``v`` has the mask's highest bit
    clear."""
    values, starts, sizes = buckets.values, buckets.starts, buckets.sizes
    positions = np.arange(len(values))
    bucket_ends = starts[values] + sizes[values]
    yield from _close_in_runs(
        buckets.hashes, positions, positions + 1, bucket_ends - positions - 1, max_distance
    )
    masks = sorted(flips(radius)[1:], key=int.bit_length)
    for top, same_top in groupby(masks, key=int.bit_length):
        left = np.flatnonzero((values >> (top - 1)) & 1 == 0)
        left_values = values[left]
        for mask in same_top:
            probed = left_values ^ mask
            yield from _close_in_runs(
                buckets.hashes, left, starts[probed], sizes[probed], max_distance
            )


def _close_in_runs(
    hashes: np.ndarray,
    left: np.ndarray,
    run_starts: np.ndarray,
    run_sizes: np.ndarray,
    max_distance: int,
) -> Iterator[np.ndarray]:
    """The pairs of positions ``(left[k], run_starts[k] + offset)``, ``offset <
    run_sizes[k]``, whose hashes are within ``max_distance``."""
    ends = np.cumsum(run_sizes)
    total = int(ends[-1]) if len(ends) else 0
    if total > CANDIDATE_BLOCK and len(left) > 1:
        # In halves, so that crowded buckets cannot exhaust memory.
        middle = int(np.clip(np.searchsorted(ends, total // 2) + 1, 1, len(left) - 1))
        for part in (slice(None, middle), slice(middle, None)):
            yield from _close_in_runs(
                hashes, left[part], run_starts[part], run_sizes[part], max_distance
            )
        return
    # Each candidate's right position: its run's start plus its offset in the run.
    right = np.repeat(run_starts - (ends - run_sizes), run_sizes)
    right += np.arange(total)
    left_hashes = np.repeat(hashes[left], run_sizes)
    close = np.flatnonzero(np.bitwise_count(left_hashes ^ hashes[right]) <= max_distance)
    if len(close):
        owners = np.searchsorted(ends, close, side="right")
        yield np.stack([left[owners], right[close]], axis=1)


def _first_reached_here(differences: np.ndarray, index: int, radii: list[int]) -> np.ndarray:
    """Which pairs, given by the XOR of their hashes, no chunk before ``index`` reaches."""
    first = np.ones(len(differences), dtype=bool)
    for earlier in range(index):
        chunk = (differences >> np.uint64(chunk_shift(earlier))) & np.uint64(_CHUNK_MASK)
        first &= np.bitwise_count(chunk) > radii[earlier]
    return first


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
