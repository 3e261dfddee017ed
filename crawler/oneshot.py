"""One image at a time: read a local file or fetch a URL, and extract its metadata object.

This is what ``crawler extract`` does for each source, through the crawler's fetcher, so the
limits are a crawl's (size, timeouts, retries, redirects, magic numbers). robots.txt is not
consulted: it is for crawlers, and this fetches the one URL a person asked for.
"""

import asyncio
import dataclasses

from crawler.config import Settings
from crawler.extract import Extraction, extract
from crawler.fetch import Fetcher
from crawler.seeds import normalise_url


def extract_source(source: str, settings: Settings) -> Extraction:
    """The metadata object of the image at ``source``: an http(s) URL, a file:// URL or a path."""
    data = asyncio.run(_read(normalise_url(source), settings))
    return extract(data, source, settings.extract)


async def _read(url: str, settings: Settings) -> bytes:
    crawl = dataclasses.replace(settings.crawl, robots=False)
    async with Fetcher(crawl) as fetcher:
        return (await fetcher.fetch(url)).data
