"""Images given one by one: read local files or fetch URLs, and extract their metadata objects.

This is what ``crawler extract`` does, with a crawl's limits (size, timeouts, retries,
redirects, ``crawl.extract_timeout``). robots.txt is not consulted: it is for crawlers, and
this fetches the URLs a person asked for. Results are reported in the order given.

A few images (up to ``IN_PROCESS_MAX``, none a directory) are extracted here, each in a
thread of this process: starting extraction processes would cost more than the images
themselves. An image past the time limit is reported as such and left to finish on its own
(its thread does not keep the process alive). More images, or a directory (every image file
under it, as in a seed list), go through the crawl's fetcher and extraction processes: several
are read and extracted at once (at most ``crawl.concurrency`` in flight), and a decoder that
crashes or hangs on one image costs only that image.
"""

import dataclasses
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Final

from crawler.config import CrawlSettings, ExtractSettings, Settings
from crawler.errors import CrawlerError, SourceError
from crawler.files import read_image_file
from crawler.metadata import Extraction
from crawler.seeds import WEB_SCHEMES, image_files, is_directory, local_path, normalise_url

if TYPE_CHECKING:
    import asyncio

log = logging.getLogger(__name__)

IN_PROCESS_MAX: Final = 4

Report = Callable[[str, Extraction | CrawlerError], None]
InFlight = deque[tuple[str, "asyncio.Task[Extraction | CrawlerError]"]]


def extract_sources(
    sources: Sequence[str], settings: Settings, report: Report, *, thumbnails: bool = False
) -> None:
    """Call ``report(source, extraction or error)`` for each of ``sources`` (http(s) URLs,
    file:// URLs or paths), in their order; for a directory, for each image file under it.
    Each extraction has a thumbnail (``extract.thumbnail_size``) only if ``thumbnails``."""
    crawl = dataclasses.replace(settings.crawl, robots=False)
    if not thumbnails:
        extract = dataclasses.replace(settings.extract, thumbnail_size=0)
        settings = dataclasses.replace(settings, extract=extract)
    if runs_in_process(sources):
        _extract_here(sources, crawl, settings.extract, report)
        return
    import asyncio  # here, not above: a local image or two needs no event loop

    asyncio.run(_extract_in_pool(sources, settings, crawl, report))


def names_a_directory(source: str) -> bool:
    """Whether ``source`` is the path of a local directory."""
    return "://" not in source and is_directory(Path(source))


def is_one_image(sources: Sequence[str]) -> bool:
    """Whether ``sources`` stand for a single image: one source, and not a directory."""
    return len(sources) == 1 and not names_a_directory(sources[0])


def runs_in_process(sources: Sequence[str]) -> bool:
    """Whether ``sources`` are few enough to extract in this process: no directory among them."""
    return len(sources) <= IN_PROCESS_MAX and not any(map(names_a_directory, sources))


# In this process


def _extract_here(
    sources: Sequence[str], crawl: CrawlSettings, settings: ExtractSettings, report: Report
) -> None:
    from crawler.extract import extract

    bodies = _read_all(sources, crawl)
    extractions = [
        body
        if isinstance(body, CrawlerError)
        else _ExtractionThread(extract, body, source, settings)
        for source, body in zip(sources, bodies, strict=True)
    ]
    for source, extraction in zip(sources, extractions, strict=True):
        if isinstance(extraction, _ExtractionThread):
            report(source, extraction.result(crawl.extract_timeout))
        else:
            report(source, extraction)


def _read_all(sources: Sequence[str], crawl: CrawlSettings) -> list[bytes | CrawlerError]:
    """The bytes of each source: files read here, URLs fetched together (only they need the
    HTTP stack)."""
    bodies: list[bytes | CrawlerError] = []
    web: dict[int, str] = {}
    for position, source in enumerate(sources):
        try:
            url = normalise_url(source)
            path = local_path(url)
            if path is None:
                web[position] = url
                bodies.append(b"")
            else:
                bodies.append(read_image_file(url, path, crawl.max_size))
        except CrawlerError as exc:
            bodies.append(exc)
    if web:
        import asyncio

        for position, body in zip(web, asyncio.run(_fetch_all(web.values(), crawl)), strict=True):
            bodies[position] = body
    return bodies


async def _fetch_all(urls: Iterable[str], crawl: CrawlSettings) -> list[bytes | CrawlerError]:
    import asyncio

    from crawler.downloader import Downloads

    async with Downloads(crawl, workers=crawl.concurrency) as downloads:

        async def body_of(url: str) -> bytes | CrawlerError:
            try:
                return (await downloads.fetch(url)).data
            except CrawlerError as exc:
                return exc

        return list(await asyncio.gather(*map(body_of, urls)))


class _ExtractionThread:
    """``extract(data)`` on a daemon thread of its own, started at once."""

    def __init__(
        self,
        extract: Callable[[bytes, str, ExtractSettings], Extraction],
        data: bytes,
        source: str,
        settings: ExtractSettings,
    ) -> None:
        self._extract = extract
        self._source = source
        self._result: Extraction | CrawlerError | None = None
        self._started = time.monotonic()
        self._thread = threading.Thread(
            target=self._run, args=(data, settings), name=f"extract {source}", daemon=True
        )
        self._thread.start()

    def _run(self, data: bytes, settings: ExtractSettings) -> None:
        try:
            self._result = self._extract(data, self._source, settings)
        except CrawlerError as exc:
            self._result = exc
        except Exception as exc:  # a decoder bug fails its image, as in a crawl
            log.exception("extraction of %s crashed", self._source)
            self._result = CrawlerError(f"{self._source}: {type(exc).__name__}: {exc}")
            self._result.reason = "extract_error"

    def result(self, time_limit: float) -> Extraction | CrawlerError:
        """The extraction, or an error if it took more than ``time_limit`` seconds since it
        started."""
        self._thread.join(max(0.0, self._started + time_limit - time.monotonic()))
        if self._result is None:
            from crawler.extraction_pool import ExtractionFailedError, ExtractionTimedOut

            timed_out = ExtractionTimedOut(time_limit)
            return ExtractionFailedError(f"{self._source}: {timed_out}", 422, timed_out.reason)
        return self._result


# In the extraction processes


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


async def _extract_in_pool(
    sources: Sequence[str], settings: Settings, crawl: CrawlSettings, report: Report
) -> None:
    import asyncio
    from contextlib import AsyncExitStack

    from crawler.extraction_pool import ExtractionPool, pool_size

    # Made first: its processes load the extraction code while this one goes on.
    pool = ExtractionPool(pool_size(crawl.extract_workers), settings.extract, crawl.extract_timeout)
    async with AsyncExitStack() as stack:
        await stack.enter_async_context(pool)
        downloads = None
        if any(map(_is_web_url, sources)):  # only URLs need the HTTP stack
            from crawler.downloader import Downloads

            downloads = await stack.enter_async_context(Downloads(crawl, workers=crawl.concurrency))

        async def body_of(url: str) -> Sequence[bytes]:
            path = local_path(url)
            if path is not None:
                return (await asyncio.to_thread(read_image_file, url, path, crawl.max_size),)
            assert downloads is not None
            return (await downloads.fetch(url)).chunks

        async def extraction_of(
            source: str, error: CrawlerError | None
        ) -> Extraction | CrawlerError:
            if error is not None:
                return error
            try:
                body = await body_of(normalise_url(source))
                return (await pool.extraction(body, source))[0]
            except CrawlerError as exc:
                return exc

        in_flight: InFlight = deque()
        for source, error in _images(sources):
            if len(in_flight) == crawl.concurrency:
                await _report_first(in_flight, report)
            in_flight.append((source, asyncio.create_task(extraction_of(source, error))))
        while in_flight:
            await _report_first(in_flight, report)


def _is_web_url(source: str) -> bool:
    return source.split("://", 1)[0].lower() in WEB_SCHEMES


async def _report_first(in_flight: "InFlight", report: Report) -> None:
    source, extraction = in_flight.popleft()
    report(source, await extraction)
