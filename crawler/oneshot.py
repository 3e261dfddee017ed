"""Images given one by one: read local files or fetch URLs, and extract their metadata objects.

This is what ``crawler extract`` does, through the crawler's fetcher and its extraction
processes, so the limits are a crawl's (size, timeouts, retries, redirects, magic numbers,
``crawl.extract_timeout``) and a decoder that crashes or hangs on one image costs only that
image. A directory stands for every image file under it, as in a seed list. Several
images are read and extracted at once (at most ``crawl.concurrency`` in flight) and
reported in the order given. robots.txt is not consulted: it is for crawlers, and this
fetches the URLs a person asked for.
"""

import asyncio
import dataclasses
import itertools
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

from crawler.config import Settings
from crawler.downloader import Downloads
from crawler.errors import CrawlerError, SourceError
from crawler.extract import Extraction
from crawler.extraction_pool import ExtractionPool, pool_size
from crawler.seeds import image_files, is_directory, normalise_url

Report = Callable[[str, Extraction | CrawlerError], None]


def extract_sources(sources: Sequence[str], settings: Settings, report: Report) -> None:
    """Call ``report(source, extraction or error)`` for each of ``sources`` (http(s) URLs,
    file:// URLs or paths), in their order; for a directory, for each image file under it."""
    asyncio.run(_extract_all(sources, settings, report))


def names_a_directory(source: str) -> bool:
    """Whether ``source`` is the path of a local directory."""
    return "://" not in source and is_directory(Path(source))


def is_one_image(sources: Sequence[str]) -> bool:
    """Whether ``sources`` stand for a single image: one source, and not a directory."""
    return len(sources) == 1 and not names_a_directory(sources[0])


def _images(sources: Iterable[str]) -> Iterator[tuple[str, CrawlerError | None]]:
    """Each source, or each image file under a source that is a directory; a directory
    with none comes with its error."""
    for source in sources:
        if not names_a_directory(source):
            yield source, None
            continue
        files = image_files(Path(source))
        if (first := next(files, None)) is None:
            yield source, SourceError(f"{source}: no image files in this directory")
        else:
            yield from ((str(file), None) for file in itertools.chain([first], files))


async def _extract_all(sources: Sequence[str], settings: Settings, report: Report) -> None:
    crawl = dataclasses.replace(settings.crawl, robots=False)
    processes = pool_size(crawl.extract_workers)
    if is_one_image(sources):
        processes = 1
    pool = ExtractionPool(processes, settings.extract, crawl.extract_timeout)
    async with Downloads(crawl, workers=crawl.concurrency) as downloads, pool:

        async def extraction_of(
            source: str, error: CrawlerError | None
        ) -> Extraction | CrawlerError:
            if error is not None:
                return error
            try:
                fetched = await downloads.fetch(normalise_url(source))
                return (await pool.extraction(fetched.chunks, source))[0]
            except CrawlerError as exc:
                return exc

        in_flight: deque[tuple[str, asyncio.Task[Extraction | CrawlerError]]] = deque()
        for source, error in _images(sources):
            if len(in_flight) == crawl.concurrency:
                await _report_first(in_flight, report)
            in_flight.append((source, asyncio.create_task(extraction_of(source, error))))
        while in_flight:
            await _report_first(in_flight, report)


async def _report_first(
    in_flight: deque[tuple[str, asyncio.Task[Extraction | CrawlerError]]], report: Report
) -> None:
    source, extraction = in_flight.popleft()
    report(source, await extraction)
