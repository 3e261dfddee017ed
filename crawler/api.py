"""The Python API, for scripts and notebooks: open a catalogue and query it, extract one
image's metadata object, crawl a list of seeds. ``import crawler`` gives all of it
(``crawler.open``, ``crawler.extract_metadata``, ``crawler.crawl``, ...), imported on first use.

Settings are the command line's (``crawler.toml``, ``$CRAWLER_CONFIG``,
``$CRAWLER_DATABASE_URL``) unless a ``Settings`` is given; a catalogue is a database URL or
the path of a SQLite file. Everything that does I/O works inside a running event loop too
(Jupyter runs one): ``await crawler.crawl(...)`` runs there, and the blocking calls move
their own event loop to a thread of their own when they find one running.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from crawler import catalogue as _catalogue
from crawler.config import DEFAULT_HASH_ALGORITHM, Settings, load_settings
from crawler.errors import CrawlerError
from crawler.hashes import DEFAULT_MAX_DISTANCE

if TYPE_CHECKING:  # each call imports what it needs: opening a catalogue loads no crawl code
    from crawler.duplicates import DuplicateGroup, RedundantImage
    from crawler.engine import CrawlSummary, ProgressCallback
    from crawler.metadata import Thumbnail
    from crawler.query import SimilarRow
    from crawler.thumbnails import ThumbnailCounts

T = TypeVar("T")

Source = bytes | str | os.PathLike[str]
Seeds = str | os.PathLike[str] | Iterable[str]


class Catalogue(_catalogue.Catalogue):
    """An open catalogue and its queries. ``engine`` is its SQLAlchemy engine, for SQL of
    your own (``pandas.read_sql("SELECT ...", catalogue.engine)``). Close it, or use it in
    a ``with`` block."""

    def similar(
        self,
        phash: str | int,
        max_distance: int = DEFAULT_MAX_DISTANCE,
        limit: int | None = None,
        *,
        algorithm: str = DEFAULT_HASH_ALGORITHM,
    ) -> list[SimilarRow]:
        """Images whose pHash is within ``max_distance`` bits of ``phash`` (16 hex digits or
        a 64-bit integer), nearest first: rows with ``id``, ``url``, ``pHash``,
        ``distance`` and ``similarity``."""
        from crawler.query import similar

        return similar(self, phash, max_distance, limit, algorithm=algorithm)

    def duplicates(
        self, max_distance: int = DEFAULT_MAX_DISTANCE, *, algorithm: str = DEFAULT_HASH_ALGORITHM
    ) -> list[DuplicateGroup]:
        """Groups of near-identical images: exact copies (same SHA-256) first, then pHash
        clusters; each group has a ``kind``, the id of its copy to ``keep`` (most pixels,
        then largest file, then first seen) and ``members`` (``id``, ``url``, ``sha256``,
        ``pHash``, ``distance`` to the copy to keep, ``width``, ``height``, ``size``,
        ``format``, ``taken_at``, ``keep``), the copy to keep first."""
        from crawler.duplicates import duplicates

        return duplicates(self, max_distance, algorithm=algorithm)

    def redundant_images(
        self, max_distance: int = DEFAULT_MAX_DISTANCE, *, algorithm: str = DEFAULT_HASH_ALGORITHM
    ) -> list[RedundantImage]:
        """Every image that is not the one to keep in its duplicate group, by id: rows with
        ``id``, ``url``, ``keep_id`` and ``keep_url`` (the copy to keep), ``kind``,
        ``distance``, ``width``, ``height``, ``size``, ``format`` and ``sha256``."""
        from crawler.duplicates import redundant_images

        return redundant_images(self, max_distance, algorithm=algorithm)

    def show(self, key: str | int | os.PathLike[str]) -> dict[str, Any]:
        """The stored metadata object of one image, by id, URL or local path."""
        from crawler.query import show

        return show(self, os.fspath(key) if isinstance(key, os.PathLike) else key)

    def stats(self) -> list[dict[str, Any]]:
        """Counts of images in all, by status, by format and by camera."""
        from crawler.query import stats

        return stats(self)

    def export(self, fmt: str = "jsonl") -> Iterator[dict[str, Any]]:
        """Every image as a dict, in id order, streamed: ``jsonl`` or ``json`` rows carry the
        metadata object, ``csv`` rows the typed columns."""
        from crawler.query import export

        return export(self, fmt)

    def thumbnail(self, image_id: int) -> Thumbnail | None:
        """The stored thumbnail of the image with id ``image_id`` (``width``, ``height`` and
        the ``webp`` bytes), or None when it has none."""
        from crawler.thumbnails import thumbnail_of

        return thumbnail_of(self, image_id)

    def make_missing_thumbnails(self, *, settings: Settings | None = None) -> ThumbnailCounts:
        """Make the thumbnails that catalogued local files lack, as ``crawler thumbnails``
        does; returns how many were ``made``, ``changed`` and ``unreadable``."""
        from crawler.thumbnails import make_missing_thumbnails

        return _outside_running_loop(make_missing_thumbnails, self, _settings(settings))

    def __repr__(self) -> str:
        return f"<crawler.Catalogue {self.url}>"


def open(  # crawler.open, as dbm.open and shelve.open
    url: str | os.PathLike[str] | None = None,
    *,
    create: bool = False,
    settings: Settings | None = None,
) -> Catalogue:
    """The catalogue at ``url`` (a database URL or a SQLite file's path; default: the
    settings' ``database.url``). One that does not exist is an error unless ``create``."""
    chosen = _settings(settings, url)
    opened = _catalogue.open_catalogue(chosen.database.url, create=create)
    return Catalogue(opened.engine)


def extract_metadata(
    source: Source, *, hash_algorithm: str | None = None, settings: Settings | None = None
) -> dict[str, Any]:
    """ImageKit's metadata object of one image: its bytes, a local path, or an http(s) or
    file URL (read with a crawl's limits). Raises ``CrawlerError`` when it cannot be read
    or is not an image."""
    chosen = _settings(settings)
    if hash_algorithm is not None:
        extract_settings = dataclasses.replace(chosen.extract, hash_algorithm=hash_algorithm)
        chosen = dataclasses.replace(chosen, extract=extract_settings)
    if isinstance(source, bytes):
        from crawler.extract import extract_metadata as metadata_of

        return metadata_of(source, None, chosen.extract)
    return _outside_running_loop(_extract_one, os.fspath(source), chosen)


def _extract_one(source: str, settings: Settings) -> dict[str, Any]:
    from crawler.metadata import Extraction
    from crawler.oneshot import extract_sources

    results: list[Extraction | CrawlerError] = []
    extract_sources([source], settings, lambda _source, result: results.append(result))
    (result,) = results
    if isinstance(result, CrawlerError):
        raise result
    return result.metadata


async def crawl(
    seeds: Seeds,
    db: str | os.PathLike[str] | None = None,
    *,
    settings: Settings | None = None,
    retry_failed: bool = False,
    refresh: bool = False,
    progress: ProgressCallback | None = None,
) -> CrawlSummary:
    """Crawl ``seeds`` into the catalogue ``db`` (default: the settings' ``database.url``),
    in the running event loop. ``seeds`` is a seed list's path, or the seed lines
    themselves (URLs, paths, directories). Returns the summary: counts by status and
    reason, bytes, seconds. Cancelling the task releases the URLs in flight for later."""
    from crawler.engine import CrawlOptions
    from crawler.engine import crawl as crawl_in_loop

    options = CrawlOptions(retry_failed=retry_failed, refresh=refresh)
    return await crawl_in_loop(
        _seed_lines(seeds), _settings(settings, db), options=options, progress=progress
    )


def crawl_sync(
    seeds: Seeds,
    db: str | os.PathLike[str] | None = None,
    *,
    settings: Settings | None = None,
    retry_failed: bool = False,
    refresh: bool = False,
    progress: ProgressCallback | None = None,
) -> CrawlSummary:
    """``crawl`` for code without an event loop: blocks until the crawl is done. In the main
    thread of a script Ctrl-C stops it gracefully, as it stops ``crawler run``."""
    from crawler.engine import CrawlOptions, run_crawl

    options = CrawlOptions(retry_failed=retry_failed, refresh=refresh)
    chosen = _settings(settings, db)
    return _outside_running_loop(
        run_crawl, _seed_lines(seeds), chosen, options=options, progress=progress
    )


def _seed_lines(seeds: Seeds) -> str | Path | Iterable[str]:
    return Path(seeds) if isinstance(seeds, os.PathLike) else seeds


def _settings(
    settings: Settings | None, database: str | os.PathLike[str] | None = None
) -> Settings:
    chosen = settings or load_settings()
    if database is None:
        return chosen
    return dataclasses.replace(
        chosen, database=dataclasses.replace(chosen.database, url=os.fspath(database))
    )


def _outside_running_loop(function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``function(...)``, which runs an event loop of its own: here, or, when this thread
    already runs one (a notebook), in a thread of its own while this one waits."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return function(*args, **kwargs)
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="crawler") as executor:
        return executor.submit(function, *args, **kwargs).result()
