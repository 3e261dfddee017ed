"""The crawl: seeds -> frontier (the catalogue) -> scheduler -> downloader -> extraction -> store.

One asyncio loop runs a seeder (a thread streaming the seed list into the catalogue), the
feeder that keeps the scheduler stocked with hosts and rows claimed from the catalogue
(``crawler.feeder``), ``crawl.concurrency`` download workers that take from the scheduler
only requests their host allows now (``crawler.downloader``), and a writer that stores
results in batches. Decoding and hashing run in a process pool sized to the cores so they
never block the loop; database work runs in threads. Every queue is bounded, so memory
does not grow with the seed list.

Every claimed URL ends as a stored row (ok, failed or skipped with a reason) or, when the
crawl is stopped, is released unfetched for the next run. SIGINT/SIGTERM stop claiming,
let in-flight URLs finish and be stored, and return the summary; a second signal abandons
in-flight work and releases its claims.
"""

import asyncio
import contextlib
import hashlib
import logging
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import uvloop

from crawler.catalogue import Catalogue, database_problem, open_catalogue
from crawler.config import Settings
from crawler.downloader import Downloader, Outcome, politeness_of
from crawler.errors import CatalogueError, CrawlerError, SourceError
from crawler.extraction_pool import (
    ExtractionPool,
    ExtractionProcessDied,
    ExtractionTimedOut,
    pool_size,
)
from crawler.feeder import Feeder
from crawler.fetch import Fetched, Fetcher, UrlCheck
from crawler.frontier import (
    Claim,
    SeedingReport,
    add_seeds,
    count_pending,
    default_crawler_name,
    mark_not_modified,
    utc_now,
)
from crawler.outage import DatabaseGuard
from crawler.scheduler import Job, Scheduler
from crawler.seeds import STDIN, iter_seeds
from crawler.store import CrawlResult, store_results

log = logging.getLogger(__name__)

FLUSH_SECONDS = 1.0  # longest a finished result waits in memory before it is stored


@dataclass(frozen=True)
class CrawlOptions:
    """How this run treats rows of earlier runs, and who it is."""

    retry_failed: bool = False
    refresh: bool = False
    worker_id: str | None = None  # the crawler's name in claims; default host:pid
    check_url: UrlCheck | None = None


@dataclass
class CrawlProgress:
    """Counts so far; ``total`` is known once every seed is in the catalogue."""

    stored: int = 0
    ok: int = 0
    failed: int = 0
    skipped: int = 0
    bytes: int = 0
    total: int | None = None
    started: float = field(default_factory=time.monotonic)
    catalogue_down_since: float | None = None  # monotonic, while the database is away

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started


@dataclass(frozen=True)
class CrawlSummary:
    """The outcome of a run: counts by status and by reason, bytes, time and rate."""

    seeds: int
    added: int
    requeued: int
    by_status: dict[str, int]
    by_reason: dict[str, int]
    bytes: int
    seconds: float
    interrupted: bool

    @property
    def stored(self) -> int:
        return sum(self.by_status.values())

    @property
    def rate(self) -> float:
        """URLs stored per second."""
        return self.stored / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "seeds": self.seeds,
            "added": self.added,
            "requeued": self.requeued,
            "stored": self.stored,
            "by_status": self.by_status,
            "by_reason": self.by_reason,
            "bytes": self.bytes,
            "seconds": round(self.seconds, 3),
            "per_second": round(self.rate, 2),
            "interrupted": self.interrupted,
        }


@dataclass(frozen=True)
class _NotModified:
    url: str


ProgressCallback = Callable[[CrawlProgress], None]


def run_crawl(
    seeds: str | Path | Iterable[str],
    settings: Settings,
    *,
    options: CrawlOptions | None = None,
    progress: ProgressCallback | None = None,
) -> CrawlSummary:
    """``crawl(seeds, ...)`` on an event loop of its own, which SIGINT/SIGTERM stop."""
    try:
        # uvloop: the crawler process's share of each image (HTTP, hand-off, storing) is
        # mostly event-loop work, and it takes CPU from the extraction processes.
        return uvloop.run(
            crawl(seeds, settings, options=options, progress=progress, handle_signals=True)
        )
    except asyncio.CancelledError:  # a second Ctrl-C: in-flight work was abandoned
        raise KeyboardInterrupt from None


async def crawl(
    seeds: str | Path | Iterable[str],
    settings: Settings,
    *,
    options: CrawlOptions | None = None,
    progress: ProgressCallback | None = None,
    handle_signals: bool = False,
) -> CrawlSummary:
    """Crawl into the catalogue at ``settings.database.url`` in the running event loop: the
    seed list at the path ``seeds`` (``-``: standard input), or the seed lines ``seeds``.
    ``handle_signals``: SIGINT/SIGTERM stop it (only for a loop of its own)."""
    if isinstance(seeds, str | Path) and str(seeds) != STDIN:
        _check_seed_file(Path(seeds))
        seeds = Path(seeds)
    work = _Crawl(seeds, settings, options or CrawlOptions(), progress, handle_signals)
    try:
        return await work.run()
    except sa.exc.SQLAlchemyError as exc:  # the database went away, or is locked, say
        problem = database_problem(exc)
        raise CatalogueError(f"the catalogue failed during the crawl: {problem}") from exc


class _Crawl:
    def __init__(
        self,
        seeds: Path | str | Iterable[str],
        settings: Settings,
        options: CrawlOptions,
        progress: ProgressCallback | None,
        handle_signals: bool,
    ) -> None:
        self._seeds = seeds
        self._handle_signals = handle_signals
        self._settings = settings
        self._crawl = settings.crawl
        self._options = options
        self._report_progress = progress or (lambda _progress: None)
        self._progress = CrawlProgress()
        self._by_status: Counter[str] = Counter()
        self._by_reason: Counter[str] = Counter()
        self._stopping = False
        self._results: asyncio.Queue[CrawlResult | _NotModified | None] = asyncio.Queue(
            self._crawl.batch_size * 2
        )
        self._scheduler: Scheduler[Claim] = Scheduler(
            politeness_of(self._crawl), probe_new_hosts=self._crawl.robots
        )
        self._guard = DatabaseGuard(settings.database.outage_timeout, self._outage_changed)
        self._loop: asyncio.AbstractEventLoop | None = None

    async def run(self) -> CrawlSummary:
        self._loop = asyncio.get_running_loop()
        # Made first: its processes load the extraction code while the catalogue opens.
        pool = ExtractionPool(
            pool_size(self._crawl.extract_workers),
            self._settings.extract,
            self._crawl.extract_timeout,
        )
        catalogue = await asyncio.to_thread(open_catalogue, self._settings.database.url)
        name = self._options.worker_id or default_crawler_name()
        feeder = Feeder(
            catalogue,
            self._scheduler,
            self._crawl,
            name,
            self._count_many,
            self._guard,
            thumbnails_wanted=self._settings.extract.thumbnail_size > 0,
        )
        try:
            await feeder.start()
            with self._signals_handled():
                async with (
                    pool,
                    Fetcher(self._crawl, check_url=self._options.check_url) as fetcher,
                ):
                    downloader = Downloader(
                        fetcher, self._scheduler, self._crawl, self._deliverer(pool), feeder
                    )
                    report = await self._pipeline(catalogue, feeder, downloader)
        finally:
            self._scheduler.close()
            try:
                if feeder.crawler_id:
                    await feeder.finish()
            finally:
                catalogue.close()
        for reason, rows in report.invalid.items():
            self._count_many(reason, rows)
        return CrawlSummary(
            seeds=report.seeds,
            added=report.added,
            requeued=report.requeued,
            by_status=dict(self._by_status),
            by_reason=dict(self._by_reason),
            bytes=self._progress.bytes,
            seconds=self._progress.elapsed,
            interrupted=self._stopping,
        )

    async def _pipeline(
        self, catalogue: Catalogue, feeder: Feeder, downloader: Downloader[Claim]
    ) -> SeedingReport:
        seeder = asyncio.create_task(self._seed(catalogue, feeder))
        writer = asyncio.create_task(self._write(catalogue))
        workers = [asyncio.create_task(downloader.work()) for _ in range(self._crawl.concurrency)]
        crawling = asyncio.create_task(self._crawl_all(feeder, workers))
        try:
            # The writer ends when the crawl is done, unless storing fails: then nobody
            # empties the results queue, and the crawl must stop with that error instead.
            await asyncio.wait((crawling, writer), return_when=asyncio.FIRST_EXCEPTION)
            if writer.done():
                writer.result()
            await crawling
            await writer
            return await seeder
        finally:
            for task in (seeder, writer, crawling, *workers):
                task.cancel()

    async def _crawl_all(self, feeder: Feeder, workers: list[asyncio.Task[None]]) -> None:
        await feeder.run(lambda: self._stopping)
        self._scheduler.close()
        await asyncio.gather(*workers)
        await self._results.put(None)

    async def _seed(self, catalogue: Catalogue, feeder: Feeder) -> SeedingReport:
        requeue = (("failed",) if self._options.retry_failed else ()) + (
            ("ok",) if self._options.refresh else ()
        )
        loop = asyncio.get_running_loop()
        try:
            report = await asyncio.to_thread(
                add_seeds,
                catalogue,
                iter_seeds(
                    self._seeds,
                    should_stop=lambda: self._stopping,
                    max_url_length=self._crawl.max_url_length,
                    max_line_length=self._crawl.max_seed_line_length,
                ),
                requeue=requeue,
                run_started=utc_now(),
                should_stop=lambda: self._stopping,
                batch_stored=lambda: loop.call_soon_threadsafe(feeder.seeds_stored.set),
                guard=self._guard.run,
            )
        except BaseException:
            self._stop()  # drain what is in flight, then report the error
            raise
        finally:
            feeder.seeding_done.set()
            feeder.seeds_stored.set()
        pending = await self._guard.call(count_pending, catalogue)
        self._progress.total = self._progress.stored + pending
        self._report_progress(self._progress)
        return report

    def _deliverer(self, pool: ExtractionPool) -> Callable[[Job[Claim], Outcome], Any]:
        async def deliver(job: Job[Claim], outcome: Outcome) -> None:
            await self._results.put(await self._result(pool, job, outcome))

        return deliver

    async def _result(
        self, pool: ExtractionPool, job: Job[Claim], outcome: Outcome
    ) -> CrawlResult | _NotModified:
        fetched_at = utc_now()
        if isinstance(outcome, CrawlerError):  # a FetchError, or refused by check_url
            return CrawlResult(
                url=job.url,
                status="skipped" if getattr(outcome, "skipped", False) else "failed",
                reason=outcome.reason,
                error=str(outcome),
                final_url=getattr(outcome, "final_url", None),
                http_status=getattr(outcome, "http_status", None),
                fetched_at=fetched_at,
                revalidation=job.validators is not None,
            )
        if outcome.not_modified:
            return _NotModified(job.url)
        self._progress.bytes += outcome.size
        extracted = await self._extract(pool, outcome)
        return CrawlResult(
            url=job.url,
            status="failed" if "reason" in extracted else "ok",
            reason=extracted.get("reason"),
            error=extracted.get("error"),
            final_url=outcome.final_url,
            http_status=outcome.http_status,
            etag=outcome.etag,
            last_modified=outcome.last_modified,
            content_type=outcome.content_type,
            sha256=extracted["sha256"],
            fetched_at=fetched_at,
            metadata=extracted.get("metadata"),
            hash_algorithm=extracted.get("hash_algorithm"),
            warnings=extracted.get("warnings", ()),
            thumbnail=extracted.get("thumbnail"),
            revalidation=job.validators is not None,
        )

    async def _extract(self, pool: ExtractionPool, fetched: Fetched) -> dict[str, Any]:
        try:
            return await pool.extract(fetched.chunks, fetched.url)
        except (ExtractionTimedOut, ExtractionProcessDied) as exc:
            if isinstance(exc, ExtractionProcessDied):
                log.error("%s: its extraction process died on it", fetched.url)
            return {
                "sha256": hashlib.sha256(fetched.data).hexdigest(),
                "reason": exc.reason,
                "error": f"{fetched.url}: {exc}",
            }

    async def _write(self, catalogue: Catalogue) -> None:
        """Store results in batches of ``crawl.batch_size``, or after ``FLUSH_SECONDS``."""
        pending: list[CrawlResult | _NotModified] = []
        while True:
            try:
                timeout = FLUSH_SECONDS if pending else None
                item = await asyncio.wait_for(self._results.get(), timeout)
            except TimeoutError:
                pending = await self._flush(catalogue, pending)
                continue
            if item is None:
                await self._flush(catalogue, pending)
                return
            pending.append(item)
            if len(pending) >= self._crawl.batch_size:
                pending = await self._flush(catalogue, pending)

    async def _flush(
        self, catalogue: Catalogue, pending: list[CrawlResult | _NotModified]
    ) -> list[CrawlResult | _NotModified]:
        results = [item for item in pending if isinstance(item, CrawlResult)]
        unchanged = [item.url for item in pending if isinstance(item, _NotModified)]
        if results:
            try:
                await self._guard.call(store_results, catalogue, results)
            except (sa.exc.SQLAlchemyError, ValueError) as exc:
                problem = database_problem(exc)
                raise CatalogueError(f"cannot store crawl results: {problem}") from exc
        if unchanged:
            await self._guard.call(mark_not_modified, catalogue, unchanged, utc_now())
        for result in results:
            self._count(result.status, result.reason)
        for _ in unchanged:
            self._count("ok", "not_modified")
        if pending:
            self._report_progress(self._progress)
        return []

    def _count_many(self, reason: str, rows: int) -> None:
        """``rows`` failed with ``reason`` without a result of their own (bad seeds, the
        rows of a host that is down)."""
        for _ in range(rows):
            self._count("failed", reason)

    def _outage_changed(self, since: float | None) -> None:
        """From the thread that met the outage (or its end): shown on the loop's side."""
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._show_outage, since)

    def _show_outage(self, since: float | None) -> None:
        self._progress.catalogue_down_since = since
        self._report_progress(self._progress)

    def _stop(self) -> None:
        self._stopping = True
        self._scheduler.wanted.set()  # the feeder sees it at once

    def _count(self, status: str, reason: str | None) -> None:
        self._by_status[status] += 1
        if reason:
            self._by_reason[reason] += 1
        self._progress.stored += 1
        setattr(self._progress, status, getattr(self._progress, status) + 1)

    @contextlib.contextmanager
    def _signals_handled(self) -> Iterator[None]:
        loop = asyncio.get_running_loop()
        main = asyncio.current_task()
        stop_signals = (signal.SIGINT, signal.SIGTERM)

        def stop() -> None:
            if self._stopping and main is not None:
                log.warning("abandoning the URLs in flight")
                main.cancel()
                return
            log.warning("stopping: finishing the URLs in flight (signal again to abandon them)")
            self._stop()

        # Signal handlers can only be set from the main thread, and only in a loop of our own;
        # elsewhere the caller stops us.
        in_main_thread = threading.current_thread() is threading.main_thread()
        handled = stop_signals if self._handle_signals and in_main_thread else ()
        for number in handled:
            loop.add_signal_handler(number, stop)
        try:
            yield
        finally:
            for number in handled:
                loop.remove_signal_handler(number)


def _check_seed_file(path: Path) -> None:
    if not path.exists():
        raise SourceError(f"{path}: no such seed list")
    # A named pipe or a terminal could block the seeding thread, which stopping waits for;
    # standard input ("-") is read in a way that cannot.
    if not path.is_file():
        raise SourceError(f"{path}: a seed list must be a regular file (or - for standard input)")
