"""The thumbnails a catalogue lacks, made from the local files its rows were crawled from.

A crawl stores each image's thumbnail with its row (``extract.thumbnail_size``). Rows
stored before thumbnails existed, or while they were off, have none: for a local file
(a ``file:`` URL) this reads the file again, extracts it as a crawl would (in the
extraction processes) and stores the thumbnail, provided the file still gives the row's
size and pHash. Web images get theirs from ``crawler run --refresh``.
"""

import dataclasses
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from crawler.catalogue import Catalogue
from crawler.config import Settings
from crawler.errors import ConfigError, CrawlerError
from crawler.hashes import hex_to_signed
from crawler.metadata import Extraction, Thumbnail
from crawler.models import images, thumbnails

STORE_EVERY: Final = 100  # thumbnails written per transaction


@dataclass
class ThumbnailCounts:
    """What became of the local images that had no thumbnail."""

    made: int = 0
    changed: int = 0  # the file no longer gives the row's size and pHash
    unreadable: int = 0  # gone, unreadable, or no thumbnail could be made of it


@dataclass(frozen=True)
class _Row:
    id: int
    size: int
    phash: int


def make_missing_thumbnails(catalogue: Catalogue, settings: Settings) -> ThumbnailCounts:
    """Make and store the thumbnail of every ``ok`` row of a local file that has none.

    Raises ConfigError when thumbnails are off (``extract.thumbnail_size`` is 0).
    """
    if not settings.extract.thumbnail_size:
        raise ConfigError("extract.thumbnail_size: is 0 (thumbnails off); nothing to make")
    counts = ThumbnailCounts()
    for algorithm, rows in _rows_without_thumbnails(catalogue).items():
        extract = dataclasses.replace(settings.extract, hash_algorithm=algorithm)
        _make(catalogue, dataclasses.replace(settings, extract=extract), rows, counts)
    return counts


def _rows_without_thumbnails(catalogue: Catalogue) -> dict[str, dict[str, _Row]]:
    """The rows to make thumbnails for, by the algorithm of their pHash, then by URL."""
    query = sa.select(
        images.c.id, images.c.url, images.c.size, images.c.phash, images.c.phash_algorithm
    ).where(
        images.c.status == "ok",
        images.c.url.startswith("file:"),
        images.c.phash.is_not(None),
        ~sa.exists().where(thumbnails.c.image_id == images.c.id),
    )
    by_algorithm: dict[str, dict[str, _Row]] = defaultdict(dict)
    with catalogue.engine.connect() as connection:
        for row in connection.execute(query.order_by(images.c.id)):
            by_algorithm[row.phash_algorithm][row.url] = _Row(row.id, row.size, row.phash)
    return by_algorithm


def _make(
    catalogue: Catalogue,
    settings: Settings,
    rows: dict[str, _Row],
    counts: ThumbnailCounts,
) -> None:
    from crawler.oneshot import extract_sources

    made: list[tuple[int, Thumbnail]] = []

    def report(url: str, result: Extraction | CrawlerError) -> None:
        row = rows[url]
        if isinstance(result, CrawlerError) or result.thumbnail is None:
            counts.unreadable += 1
        elif not _same_image(row, result):
            counts.changed += 1
        else:
            made.append((row.id, result.thumbnail))
            if len(made) == STORE_EVERY:
                _flush()

    def _flush() -> None:
        counts.made += store_thumbnails(catalogue, made)
        made.clear()

    extract_sources(list(rows), settings, report, thumbnails=True)
    _flush()


def _same_image(row: _Row, extraction: Extraction) -> bool:
    metadata = extraction.metadata
    return metadata["size"] == row.size and hex_to_signed(metadata["pHash"]) == row.phash


def store_thumbnails(catalogue: Catalogue, made: Sequence[tuple[int, Thumbnail]]) -> int:
    """Store each (image id, thumbnail) where that image still has none; returns how many
    were stored (a crawl may have stored one meanwhile, or removed the row)."""
    if not made:
        return 0
    insert = postgresql.insert if catalogue.dialect == "postgresql" else sqlite.insert
    lacking = sa.select(images.c.id).where(
        images.c.id.in_([image_id for image_id, _ in made]),
        ~sa.exists().where(thumbnails.c.image_id == images.c.id),
    )
    with catalogue.engine.begin() as connection:
        wanted = set(connection.execute(lacking).scalars())
        values = [
            {"image_id": image_id, "width": item.width, "height": item.height, "webp": item.webp}
            for image_id, item in made
            if image_id in wanted
        ]
        if values:
            # on a conflict, a crawl stored one since the select: keep the crawl's
            statement = insert(thumbnails).on_conflict_do_nothing(index_elements=["image_id"])
            connection.execute(statement, values)
    return len(values)


def thumbnail_of(catalogue: Catalogue, image_id: int) -> Thumbnail | None:
    """The stored thumbnail of the image with id ``image_id``; None if it has none (or
    there is no such image)."""
    return thumbnails_of(catalogue, [image_id]).get(image_id)


def thumbnails_of(catalogue: Catalogue, image_ids: Sequence[int]) -> dict[int, Thumbnail]:
    """The stored thumbnails of those of ``image_ids`` that have one, by image id."""
    query = sa.select(
        thumbnails.c.image_id, thumbnails.c.width, thumbnails.c.height, thumbnails.c.webp
    ).where(thumbnails.c.image_id.in_(image_ids))
    with catalogue.engine.connect() as connection:
        rows = connection.execute(query).all()
    return {row.image_id: Thumbnail(row.width, row.height, bytes(row.webp)) for row in rows}
