"""One image at a time: read a local file or fetch a URL, and extract its metadata object.

This is what ``crawler extract`` does for each source, with the same limits as a crawl
(size, timeouts, retries, redirects). robots.txt is not consulted: it is for crawlers, and
this fetches the one URL a person asked for.
"""

import asyncio
import dataclasses
from pathlib import Path

from crawler.config import Settings
from crawler.errors import SourceError
from crawler.extract import Extraction, extract
from crawler.fetch import Fetcher
from crawler.seeds import local_path, normalise_url

WEB_SCHEMES = ("http://", "https://")


def read_local(path: str | Path, max_size: int) -> bytes:
    """The bytes of a local file, refusing one larger than ``max_size`` before reading it."""
    file_path = Path(path)
    try:
        if file_path.is_dir():
            raise SourceError(f"{path}: is a directory, not an image file")
        size = file_path.stat().st_size
        if size > max_size:
            raise SourceError(
                f"{path}: {size} bytes is over the limit of {max_size} (crawl.max_size)"
            )
        with file_path.open("rb") as handle:
            return handle.read(max_size + 1)
    except FileNotFoundError:
        raise SourceError(f"{path}: no such file") from None
    except PermissionError:
        raise SourceError(f"{path}: permission denied") from None
    except OSError as exc:
        raise SourceError(f"{path}: cannot read: {exc.strerror or exc}") from None


def extract_source(source: str, settings: Settings) -> Extraction:
    """The metadata object of the image at ``source``: an http(s) URL, a file:// URL or a path."""
    if source.lower().startswith(WEB_SCHEMES):
        data = asyncio.run(_download(normalise_url(source), settings))
    else:
        path = local_path(normalise_url(source)) if source.startswith("file:") else Path(source)
        data = read_local(path or source, settings.crawl.max_size)
    return extract(data, source, settings.extract)


async def _download(url: str, settings: Settings) -> bytes:
    crawl = dataclasses.replace(settings.crawl, robots=False)
    async with Fetcher(crawl) as fetcher:
        return (await fetcher.fetch(url)).data
