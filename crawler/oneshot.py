"""Images given one by one: read local files or fetch URLs, and extract their metadata objects.

This is what ``crawler extract`` does, through the crawler's fetcher and its extraction
processes, so the limits are a crawl's (size, timeouts, retries, redirects, magic numbers,
``crawl.extract_timeout``) and a decoder that crashes or hangs on one image costs only that
image. Several sources are read and extracted at once (at most ``crawl.concurrency`` in
flight) and reported in the order given. robots.txt is not consulted: it is for crawlers,
and this fetches the URLs a person asked for.
"""

import asyncio
import dataclasses
from collections import deque
from collections.abc import Callable, Sequence

from crawler.config import Settings
from crawler.errors import CrawlerError
from crawler.extract import Extraction
from crawler.extraction_pool import ExtractionPool, pool_size
from crawler.fetch import Fetcher
from crawler.seeds import normalise_url

Report = Callable[[str, Extraction | CrawlerError], None]


def extract_sources(sources: Sequence[str], settings: Settings, report: Report) -> None:
    """Call ``report(source, extraction or error)`` for each of ``sources`` (http(s) URLs,
    file:// URLs or paths), in their order."""
    asyncio.run(_extract_all(sources, settings, report))


async def _extract_all(sources: Sequence[str], settings: Settings, report: Report) -> None:
    crawl = dataclasses.replace(settings.crawl, robots=False)
    processes = min(len(sources), pool_size(crawl.extract_workers))
    pool = ExtractionPool(processes, settings.extract, crawl.extract_timeout)
    async with Fetcher(crawl) as fetcher, pool:

        async def extraction_of(source: str) -> Extraction | CrawlerError:
            try:
                fetched = await fetcher.fetch(normalise_url(source))
                return (await pool.extraction(fetched.chunks, source))[0]
            except CrawlerError as exc:
                return exc

        in_flight: deque[tuple[str, asyncio.Task[Extraction | CrawlerError]]] = deque()
        for source in sources:
            if len(in_flight) == crawl.concurrency:
                await _report_first(in_flight, report)
            in_flight.append((source, asyncio.create_task(extraction_of(source))))
        while in_flight:
            await _report_first(in_flight, report)


async def _report_first(
    in_flight: deque[tuple[str, "asyncio.Task[Extraction | CrawlerError]"]], report: Report
) -> None:
    source, extraction = in_flight.popleft()
    report(source, await extraction)
