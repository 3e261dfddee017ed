"""Keeping the scheduler stocked from the catalogue: the crawler's lease, hosts and claims.

The feeder is the link between the frontier every crawler shares (``crawler.frontier``,
in the catalogue) and this crawler's scheduler (``crawler.scheduler``):

- it registers the crawler and beats its heartbeat every quarter of ``crawl.lease_seconds``,
  telling the scheduler how long its lease holds; a lease found lapsed drops everything
  held under it and registers again;
- while workers wait for work, it takes hosts that have work (about one per
  ``crawl.per_host_concurrency`` waiting workers at a time, so that crawlers started
  together share the hosts) and claims their rows: never more per host than the host can
  be fetched within a lease, at its measured speed and its delay;
- it claims more rows of a host it holds when its queue runs low, and lets a host go,
  with its politeness for the next holder, when it has none left;
- it records long pauses (a Retry-After) as they happen, and gives up hosts that are down;
- it ends the crawl when no pending row is left anywhere that it could take, waiting
  meanwhile for rows that other live crawlers hold.

All database work runs in threads; the feeder itself is one task on the event loop.
"""

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from crawler.catalogue import Catalogue
from crawler.config import CrawlSettings
from crawler.fetch import FetchError
from crawler.frontier import (
    Claim,
    CrawlerLease,
    DatabaseClock,
    HostRecord,
    HostState,
    acquire_hosts,
    claim_rows,
    count_pending,
    forget_dead_local_crawlers,
    give_up_host,
    hosts_share,
    live_crawlers,
    release,
    release_host,
    release_hosts,
    repair_hosts,
    save_host,
)
from crawler.outage import DatabaseGuard
from crawler.scheduler import Host, Job, Scheduler
from crawler.seeds import LOCAL_HOST

log = logging.getLogger(__name__)

POLL_SECONDS = 1.0  # longest wait between two looks at the catalogue while idle
MIN_ROUND_SECONDS = 0.02  # shortest time between two rounds (bounds the feeder's CPU)
SHARE_SECONDS = 1.0  # how often the fair share of hosts is worked out again
STUCK_ROUNDS = 3  # idle rounds with pending rows nobody holds before the hosts are repaired
RowsFailed = Callable[[str, int], None]


@dataclass
class _Held:
    """A host this crawler holds, as the feeder sees it."""

    host: Host[Claim]
    done_at: int | None = None  # the work version up to which it had no more rows for us
    given_up: bool = False
    handing_over: bool = False  # more than our share: not refilled, let go once idle


class Feeder:
    """Stocks ``scheduler`` from ``catalogue`` for the crawler named ``name``, its database
    work through ``guard`` (an outage pauses it). ``rows_failed(reason, count)`` hears of
    rows failed in the catalogue without ever being claimed (those of a host that is down).
    ``thumbnails_wanted``: a stored copy without a thumbnail is fetched whole again."""

    def __init__(
        self,
        catalogue: Catalogue,
        scheduler: Scheduler[Claim],
        settings: CrawlSettings,
        name: str,
        rows_failed: RowsFailed,
        guard: DatabaseGuard,
        *,
        thumbnails_wanted: bool = False,
    ) -> None:
        self._catalogue = catalogue
        self._thumbnails_wanted = thumbnails_wanted
        self._guard = guard
        self._scheduler = scheduler
        self._settings = settings
        self._clock = DatabaseClock()
        self._lease = CrawlerLease(catalogue, name, settings.lease_seconds, self._clock)
        self._rows_failed = rows_failed
        self._held: dict[str, _Held] = {}
        self._local_exhausted = False
        self._last_empty_acquire = -math.inf
        self._stuck_rounds = 0
        self._fair_share = self._max_hosts  # alone, until the first look
        self._share_checked = -math.inf
        self._heartbeat: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[object]] = set()
        self.seeding_done = asyncio.Event()
        self.seeds_stored = asyncio.Event()

    @property
    def crawler_id(self) -> str:
        return self._lease.id

    async def start(self) -> None:
        await self._guard.call(forget_dead_local_crawlers, self._catalogue)
        await self._guard.call(self._lease.register)
        self._scheduler.renew_lease(self._lease.valid_until)
        self._heartbeat = asyncio.create_task(self._beat())

    async def run(self, should_stop: Callable[[], bool]) -> None:
        """Stock the scheduler until nothing is left to claim anywhere, or ``should_stop()``."""
        while not should_stop():
            self._scheduler.wanted.clear()
            if self.seeds_stored.is_set():
                self.seeds_stored.clear()
                self._new_seeds()
            await self._stock()
            if await self._finished():
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._woken(), POLL_SECONDS)
            await asyncio.sleep(MIN_ROUND_SECONDS)

    async def finish(self) -> None:
        """Give everything back: the rows not fetched, the hosts with their politeness, the
        lease."""
        if self._heartbeat is not None:
            self._heartbeat.cancel()
        for task in list(self._background):
            with contextlib.suppress(Exception):
                await task
        for held in list(self._held.values()):
            await self._guard.call(
                release_host,
                self._catalogue,
                self.crawler_id,
                held.host.key,
                self._state(held.host),
            )
        self._held.clear()
        await self._guard.call(release, self._catalogue, self.crawler_id)
        await self._guard.call(release_hosts, self._catalogue, self.crawler_id)
        await self._guard.call(self._lease.end)

    # -- HostEvents, from the downloader ------------------------------------------------

    def host_paused(self, host: Host[Any]) -> None:
        """A pause longer than a heartbeat is recorded at once: if this crawler dies, the
        next holder must still wait for it."""
        held = self._held.get(host.key)
        if held is None or host.paused_until - time.monotonic() < self._heartbeat_seconds:
            return
        self._in_background(
            self._guard.call(
                save_host, self._catalogue, self.crawler_id, host.key, self._state(held.host)
            )
        )

    def host_failed(self, host: Host[Any], error: FetchError) -> None:
        held = self._held.get(host.key)
        if held is None or held.given_up:
            return
        held.given_up = True
        self._in_background(self._give_up(held, error))

    # -- inside -----------------------------------------------------------------------

    @property
    def _heartbeat_seconds(self) -> float:
        return self._settings.lease_seconds / 4

    async def _woken(self) -> None:
        wanted = asyncio.create_task(self._scheduler.wanted.wait())
        stored = asyncio.create_task(self.seeds_stored.wait())
        try:
            await asyncio.wait((wanted, stored), return_when=asyncio.FIRST_COMPLETED)
        finally:
            wanted.cancel()
            stored.cancel()

    def _new_seeds(self) -> None:
        """Seeds were stored: hosts found empty may have rows again."""
        self._local_exhausted = False
        self._last_empty_acquire = -math.inf
        self._share_checked = -math.inf
        for held in self._held.values():
            held.done_at = None

    async def _stock(self) -> None:
        if time.monotonic() - self._share_checked > SHARE_SECONDS:
            await self._check_share()
        await self._let_go_of_drained_hosts()
        limits = self._refill_limits()
        if limits:
            await self._claim(limits)
        idle = self._scheduler.idle_workers
        if idle and time.monotonic() - self._last_empty_acquire > POLL_SECONDS:
            await self._acquire(math.ceil(idle / self._settings.per_host_concurrency))

    async def _check_share(self) -> None:
        """Hold no more than a fair share of the hosts with work while other crawlers are
        live: the hosts over it are not refilled, and go once their queues are empty."""
        self._share_checked = time.monotonic()
        live, with_work = await self._guard.call(
            hosts_share, self._catalogue, self._lease.live_since()
        )
        # Alone, a crawler takes what its workers can keep busy (seeding may still be adding
        # the hosts this count has not seen yet).
        alone = live <= 1
        self._fair_share = self._max_hosts if alone else max(1, math.ceil(with_work / live))
        holding = sorted(
            (held for held in self._held.values() if not held.given_up),
            key=lambda held: held.host.jobs,
        )
        surplus = len(holding) - self._fair_share
        for number, held in enumerate(holding):
            held.handing_over = number < surplus

    async def _let_go_of_drained_hosts(self) -> None:
        for key, held in list(self._held.items()):
            drained = held.done_at is not None or held.handing_over
            if held.given_up or not drained or not held.host.idle:
                continue
            del self._held[key]
            self._scheduler.remove_host(key)
            await self._guard.call(
                release_host,
                self._catalogue,
                self.crawler_id,
                key,
                self._state(held.host),
                held.done_at,
            )

    def _refill_limits(self) -> dict[str, int]:
        limits = {
            key: quota - held.host.jobs
            for key, held in self._held.items()
            if held.done_at is None
            and not held.given_up
            and not held.handing_over
            and held.host.jobs < (quota := self._quota(held.host)) / 2
        }
        local = self._scheduler.host(LOCAL_HOST)
        local_jobs = local.jobs if local is not None else 0
        if not self._local_exhausted and local_jobs < self._settings.concurrency:
            limits[LOCAL_HOST] = self._settings.batch_size
        return limits

    def _quota(self, host: Host[Claim]) -> int:
        """Rows to hold of ``host``: what it can be fetched in a lease at its speed."""
        slots = host.politeness.slots
        rates = [1 / host.delay] if host.delay > 0 else []
        if host.seconds_per_fetch:
            rates.append(slots / host.seconds_per_fetch)
        if not rates:
            return min(self._settings.batch_size, 4 * slots)
        wanted = math.ceil(self._settings.lease_seconds * min(rates))
        return max(1, min(self._settings.batch_size, wanted))

    async def _claim(self, limits: dict[str, int]) -> None:
        now = self._clock.now()
        claimed = await self._guard.call(
            claim_rows,
            self._catalogue,
            self.crawler_id,
            limits,
            now,
            self._lease.live_since(now),
            thumbnails_wanted=self._thumbnails_wanted,
        )
        for key, host_claims in claimed.items():
            if len(host_claims.claims) < limits[key]:
                if key == LOCAL_HOST:
                    self._local_exhausted = True
                elif (held := self._held.get(key)) is not None:
                    held.done_at = host_claims.work_version
            jobs = [Job(claim.url, claim, claim.validators) for claim in host_claims.claims]
            if jobs:
                self._scheduler.add_jobs(key, jobs)

    async def _acquire(self, count: int) -> None:
        room = min(self._max_hosts, self._fair_share) - len(self._held)
        if room <= 0:
            return
        records = await self._guard.call(
            acquire_hosts,
            self._catalogue,
            self.crawler_id,
            min(count, room),
            self._lease.live_since(),
        )
        if not records:
            self._last_empty_acquire = time.monotonic()
            return
        for record in records:
            self._held[record.host] = _Held(self._open(record))
        await self._claim(
            {record.host: self._quota(self._held[record.host].host) for record in records}
        )

    @property
    def _max_hosts(self) -> int:
        return 8 * self._settings.concurrency

    def _open(self, record: HostRecord) -> Host[Claim]:
        """The scheduler's host for ``record``, with its previous holder's politeness."""
        host = self._scheduler.open_host(record.host, leased=True)
        host.next_start = self._clock.monotonic(record.next_fetch_at)
        if record.backoff_until is not None:
            host.pause(self._clock.monotonic(record.backoff_until))
        host.failures = record.failures
        host.robots_delay = record.crawl_delay
        host.seconds_per_fetch = record.seconds_per_fetch
        self._scheduler.changed(host)
        return host

    def _state(self, host: Host[Claim]) -> HostState:
        now = time.monotonic()
        return HostState(
            next_fetch_at=self._clock.at(max(host.next_start, host.paused_until, now)),
            backoff_until=self._clock.at(host.paused_until) if host.paused_until > now else None,
            failures=host.failures,
            crawl_delay=host.robots_delay,
            seconds_per_fetch=host.seconds_per_fetch,
        )

    async def _give_up(self, held: _Held, error: FetchError) -> None:
        """Fail the host's rows nobody holds, and let it go once its requests are over."""
        while held.host.in_flight:
            await asyncio.sleep(0.1)
        self._held.pop(held.host.key, None)
        now = self._clock.now()
        failed = await self._guard.call(
            give_up_host,
            self._catalogue,
            self.crawler_id,
            held.host.key,
            self._state(held.host),
            reason=error.reason,
            error=f"not fetched: {error}",
            now=now,
            live_since=self._lease.live_since(now),
        )
        if failed:
            self._rows_failed(error.reason, failed)

    async def _finished(self) -> bool:
        """Whether the crawl is over for this crawler: seeding done, nothing held or
        queued, and no pending row left in the catalogue but its own."""
        scheduler = self._scheduler
        busy = self._held or scheduler.queued or scheduler.in_flight or self._background
        if busy or not self.seeding_done.is_set() or not self._local_exhausted:
            self._stuck_rounds = 0
            return False
        if time.monotonic() - self._last_empty_acquire > POLL_SECONDS:
            return False  # take another look for hosts first
        pending = await self._guard.call(count_pending, self._catalogue, self.crawler_id)
        if not pending:
            return True
        self._stuck_rounds += 1
        if self._stuck_rounds >= STUCK_ROUNDS and await self._guard.call(self._alone):
            repaired = await self._guard.call(repair_hosts, self._catalogue)
            log.info("%d pending rows; told %d hosts they have work", pending, repaired)
            self._stuck_rounds = 0
            self._last_empty_acquire = -math.inf
        return False

    def _alone(self) -> bool:
        return set(live_crawlers(self._catalogue, self._lease.live_since())) <= {self.crawler_id}

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self._heartbeat_seconds)
            try:
                renewed = await asyncio.to_thread(self._lease.renew)
            except sa.exc.SQLAlchemyError as exc:
                log.warning("cannot renew the crawler's lease: %s", exc)
                continue
            if renewed:
                self._scheduler.renew_lease(self._lease.valid_until)
            else:
                await self._lease_lost()

    async def _lease_lost(self) -> None:
        """The lease lapsed (the database was away too long): what was held may be another
        crawler's now. Drop it and start again under a new id."""
        log.warning(
            "the crawler's lease lapsed; dropping %d hosts and registering again", len(self._held)
        )
        for key in [*self._held, LOCAL_HOST]:
            self._scheduler.remove_host(key)
        self._held.clear()
        await self._guard.call(self._lease.register)
        self._scheduler.renew_lease(self._lease.valid_until)

    def _in_background(self, work: Coroutine[Any, Any, object]) -> None:
        task = asyncio.create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
