"""Which URL to fetch next: the crawl's in-process frontier, Mercator-style.

Every host has its own queue of jobs, its concurrency (``crawl.per_host_concurrency``) and
its delay between request starts (the larger of ``crawl.per_host_delay`` and its
robots.txt Crawl-delay, the latter capped by ``crawl.per_host_delay_max``). Hosts whose next
request may start are kept in a heap by that time. A worker asks for a ticket and gets one
only for a host that may be fetched now: no worker ever waits on a host, so one slow host
never holds up the others while they have work. A paused host (a Retry-After, a circuit
breaker's backoff) simply is not in front of the heap; a job waiting to be retried waits in
its host's queue, not in a worker.

Hosts held under the crawler's lease (``leased``) start a request only while the lease
will still hold when the host's delay has passed, so the next holder can never start one
too soon, even if this crawler dies at that moment; a crawler that cannot renew its lease
(its database is away) stops starting requests to them until it can.

The scheduler is pure bookkeeping on the event loop: no I/O. The downloader
(``crawler.downloader``) makes the requests; the engine keeps it stocked with jobs.
"""

import asyncio
import heapq
import itertools
import math
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from yarl import URL

from crawler.fetch import FetchError, Validators
from crawler.seeds import LOCAL_HOST

T = TypeVar("T")

SPEED_SMOOTHING = 0.3  # weight of the newest fetch in a host's seconds per fetch


@dataclass(frozen=True)
class Politeness:
    """How a host is treated until it says otherwise."""

    slots: int  # requests in flight at once
    delay: float  # seconds between request starts
    delay_max: float  # the most a robots.txt Crawl-delay can ask for


@dataclass(eq=False)
class Job(Generic[T]):
    """One URL on its way through the downloader: the row's URL, the URL to request next
    (a redirect's target after a redirect), and what the caller keeps with it."""

    url: str
    payload: T
    validators: Validators | None = None
    target: URL = field(init=False)
    tries: int = 0  # requests that failed in a way worth trying again
    hops: int = 0  # redirects followed
    visited: set[URL] = field(default_factory=set)
    admitted: URL | None = None  # the target that passed the fetcher's checks
    deadline: float | None = None  # monotonic; set when its first request starts
    not_before: float = 0.0
    last_error: FetchError | None = None

    def __post_init__(self) -> None:
        self.target = URL(self.url, encoded=True)
        self.visited.add(self.target)

    @property
    def host_key(self) -> str:
        return host_key(self.target)


def host_key(url: URL) -> str:
    """The host a URL is scheduled under (as ``crawler.seeds.host_of`` keys rows)."""
    if url.scheme == "file":
        return LOCAL_HOST
    return (url.raw_host or "").lower()


@dataclass(eq=False)
class Host(Generic[T]):
    """One host's queue and politeness, as this process keeps them."""

    key: str
    politeness: Politeness
    leased: bool = False
    robots_delay: float | None = None
    queue: deque[Job[T]] = field(default_factory=deque)
    waiting: list[tuple[float, int, Job[T]]] = field(default_factory=list)  # by not_before
    in_flight: int = 0
    next_start: float = 0.0  # monotonic: the delay since the last request start
    paused_until: float = 0.0  # monotonic: Retry-After, or the circuit breaker's backoff
    probing: bool = False  # one request at a time until one succeeds (a new host)
    failures: int = 0  # consecutive connection errors and timeouts
    throttles: int = 0  # consecutive 429 and 503 answers
    robots_failures: int = 0  # consecutive robots.txt answers of 5xx
    seconds_per_fetch: float | None = None
    removed: bool = False  # no longer in the scheduler
    given_up: FetchError | None = None  # why the host is down, when it is
    abandoned: list[Job[T]] = field(default_factory=list)  # its queued jobs, to fail
    version: int = 0  # heap entries of older versions are stale

    @property
    def delay(self) -> float:
        asked = min(self.robots_delay or 0.0, self.politeness.delay_max)
        return max(self.politeness.delay, asked)

    @property
    def capacity(self) -> int:
        """Requests that may be in flight: one at a time while the host is new (its
        robots.txt comes first) or failing."""
        return 1 if self.failures or self.probing else self.politeness.slots

    @property
    def jobs(self) -> int:
        return len(self.queue) + len(self.waiting)

    @property
    def idle(self) -> bool:
        return not self.jobs and not self.in_flight

    def pause(self, until: float) -> None:
        self.paused_until = max(self.paused_until, until)

    def note_fetch_time(self, seconds: float) -> None:
        previous = self.seconds_per_fetch
        self.seconds_per_fetch = (
            seconds if previous is None else previous + SPEED_SMOOTHING * (seconds - previous)
        )


@dataclass(frozen=True, eq=False)
class Ticket(Generic[T]):
    """A worker's right to make one request for ``job`` to ``host`` now."""

    job: Job[T]
    host: Host[T]
    started: float


class Scheduler(Generic[T]):
    """Hosts' queues and the heap of hosts by the time their next request may start."""

    def __init__(
        self,
        politeness: Politeness,
        *,
        probe_new_hosts: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.politeness = politeness
        self._probe_new_hosts = probe_new_hosts  # e.g. while its robots.txt is read
        self._clock = clock
        self._hosts: dict[str, Host[T]] = {}
        self._heap: list[tuple[float, int, int, Host[T]]] = []
        self._order = itertools.count()
        self._waiters: deque[asyncio.Future[Ticket[T] | None]] = deque()
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False
        self.lease_valid_until = math.inf  # monotonic; the engine renews it
        self.wanted = asyncio.Event()  # set when workers wait, or a host runs low

    def now(self) -> float:
        return self._clock()

    # -- the engine's side: hosts and jobs in -------------------------------------------

    def hosts(self) -> Iterator[Host[T]]:
        return iter(list(self._hosts.values()))

    def host(self, key: str) -> Host[T] | None:
        return self._hosts.get(key)

    def open_host(self, key: str, *, leased: bool = False) -> Host[T]:
        """The host ``key``, made if new (``leased``: held under the crawler's lease)."""
        host = self._hosts.get(key)
        if host is None:
            politeness = self.politeness
            if key == LOCAL_HOST:  # files: no politeness to keep
                politeness = Politeness(slots=1_000_000, delay=0.0, delay_max=0.0)
            probing = self._probe_new_hosts and key != LOCAL_HOST
            host = self._hosts[key] = Host(key, politeness, leased=leased, probing=probing)
        host.leased = host.leased or leased
        return host

    def add(self, job: Job[T], *, front: bool = False, after: float = 0.0) -> None:
        """Queue ``job`` under the host of its target, ``after`` seconds from now at the
        earliest; ``front``: before the jobs already queued (a retry, a redirect)."""
        host = self.open_host(job.host_key)
        job.not_before = self._clock() + after if after > 0 else 0.0
        if job.not_before:
            heapq.heappush(host.waiting, (job.not_before, next(self._order), job))
        elif front:
            host.queue.appendleft(job)
        else:
            host.queue.append(job)
        self._reschedule(host)

    def add_jobs(self, key: str, jobs: list[Job[T]]) -> None:
        host = self.open_host(key)
        host.queue.extend(jobs)
        self._reschedule(host)

    def changed(self, host: Host[T]) -> None:
        """``host``'s politeness changed (a pause, a new delay): place it again."""
        self._reschedule(host)

    def remove_host(self, key: str) -> list[Job[T]]:
        """Forget ``key``; returns its jobs not yet started (those in flight go on)."""
        host = self._hosts.pop(key, None)
        if host is None:
            return []
        host.removed = True
        return self.take_jobs(host)

    def take_jobs(self, host: Host[T]) -> list[Job[T]]:
        """Empty ``host``'s queue; returns the jobs that were in it, in order."""
        jobs = [*(entry[2] for entry in sorted(host.waiting)), *host.queue]
        host.queue.clear()
        host.waiting.clear()
        self._reschedule(host)
        return jobs

    def renew_lease(self, valid_until: float) -> None:
        self.lease_valid_until = valid_until
        for host in self._hosts.values():
            if host.leased:
                self._place(host)
        self._dispatch()

    @property
    def idle_workers(self) -> int:
        return sum(1 for waiter in self._waiters if not waiter.done())

    @property
    def queued(self) -> int:
        return sum(host.jobs for host in self._hosts.values())

    @property
    def in_flight(self) -> int:
        return sum(host.in_flight for host in self._hosts.values())

    def close(self) -> None:
        """No more tickets: every waiting worker, and every later ``next()``, gets None."""
        self._closed = True
        self._cancel_timer()
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)

    # -- the workers' side: tickets out --------------------------------------------------

    async def next(self) -> Ticket[T] | None:
        """A ticket for a request that may start now; None once the scheduler is closed."""
        if self._closed:
            return None
        waiter: asyncio.Future[Ticket[T] | None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self.wanted.set()
        self._dispatch()
        try:
            return await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled() and (ticket := waiter.result()):
                self.give_back(ticket)
            raise

    def finish(self, ticket: Ticket[T]) -> None:
        """The request of ``ticket`` is over: its slot is free."""
        host = ticket.host
        host.in_flight -= 1
        host.note_fetch_time(self._clock() - ticket.started)
        self._reschedule(host)

    def release(self, ticket: Ticket[T]) -> None:
        """``ticket`` was not used, and its job is done: its slot is free."""
        ticket.host.in_flight -= 1
        self._reschedule(ticket.host)

    def give_back(self, ticket: Ticket[T]) -> None:
        """``ticket`` was not used: its job goes back to the front of its host's queue."""
        ticket.host.in_flight -= 1
        if not ticket.host.removed:
            ticket.host.queue.appendleft(ticket.job)
        self._reschedule(ticket.host)

    # -- inside ---------------------------------------------------------------------------

    def _ready_at(self, host: Host[T], now: float) -> float | None:
        """When ``host`` may start its next request, or None if it cannot now."""
        if host.removed or host.in_flight >= host.capacity:
            return None
        if host.queue:
            ready = now
        elif host.waiting:
            ready = host.waiting[0][0]
        else:
            return None
        ready = max(ready, host.next_start, host.paused_until)
        if host.leased and ready + host.delay >= self.lease_valid_until:
            return None  # placed again when the lease is renewed
        return ready

    def _reschedule(self, host: Host[T]) -> None:
        self._place(host)
        self._dispatch()

    def _place(self, host: Host[T]) -> None:
        """Put ``host`` in the heap at the time it may start its next request."""
        host.version += 1
        ready = self._ready_at(host, self._clock())
        if ready is not None:
            heapq.heappush(self._heap, (ready, next(self._order), host.version, host))
        if host.jobs < self._low_water(host):
            self.wanted.set()

    def _low_water(self, host: Host[T]) -> int:
        return host.politeness.slots if host.leased else 0

    def _dispatch(self) -> None:
        self._cancel_timer()
        while self._waiters and self._heap:
            if self._waiters[0].done():
                self._waiters.popleft()
                continue
            ready, _, version, host = self._heap[0]
            if version != host.version:
                heapq.heappop(self._heap)
                continue
            now = self._clock()
            if ready > now:
                loop = asyncio.get_running_loop()
                self._timer = loop.call_at(loop.time() + ready - now, self._dispatch)
                return
            heapq.heappop(self._heap)
            self._waiters.popleft().set_result(self._take(host, now))

    def _take(self, host: Host[T], now: float) -> Ticket[T]:
        due: list[Job[T]] = []
        while host.waiting and host.waiting[0][0] <= now:
            due.append(heapq.heappop(host.waiting)[2])
        host.queue.extendleft(reversed(due))  # retries first, in the order they fell due
        job = host.queue.popleft()
        host.in_flight += 1
        host.next_start = now + host.delay
        self._place(host)
        return Ticket(job, host, now)

    def forget_if_done(self, host: Host[T]) -> None:
        """Forget ``host`` if this process holds no lease on it, it is idle, and its delay
        and pause are over: a crawl over millions of hosts stays small."""
        now = self._clock()
        if not host.leased and host.idle and max(host.next_start, host.paused_until) <= now:
            self._hosts.pop(host.key, None)
            host.removed = True

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
