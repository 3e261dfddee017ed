"""The downloader: workers that take tickets from the scheduler and make one request each.

A ticket is one request to one host: robots.txt when the origin's rules are not known yet,
else the job's URL. What came back decides what happens to the job and to its host:

- an image (or a 304): the job is done and goes to the caller's ``deliver``;
- a redirect: the job is queued again under its target's host, so every hop is scheduled
  and polite like any request (a loop, ``crawl.max_redirects`` hops, a target that is no
  usable URL end it);
- a connection error or timeout: the host's circuit breaker counts it; the host pauses,
  exponentially longer with every failure in a row, and then takes one request at a time
  until one succeeds. The job is retried while it has tries left; when
  ``crawl.retries.host_failures`` requests in a row have failed, the host is down and every
  job of it fails at once, instead of each burning its tries;
- 429 or 503: a statement about the host: the whole host pauses for its Retry-After (at
  most ``crawl.retries.retry_after_max``), or an exponential backoff, and the job is tried
  again after it;
- 408, 500, 502, 504: the job alone is retried after an exponential backoff with jitter;
- robots.txt answering 5xx or 429, or not at all: nothing of the origin is fetched (RFC
  9309), the host pauses and tries again; after ``crawl.retries.attempts`` such tries its
  jobs fail ``robots_unavailable``. A 4xx robots.txt means no rules.

Every job has a deadline, ``crawl.timeouts.url`` after its first request started, across
tries and redirects; a request is cut short at it, and a retry that would start after it
is not made.

``Downloads`` is the same machinery for images fetched one by one (``crawler extract``, the
HTTP API): each ``fetch()`` is a job whose outcome comes back to its caller.
"""

import asyncio
import dataclasses
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, Self, TypeVar

from aiohttp.abc import AbstractResolver
from yarl import URL

from crawler.config import CrawlSettings, longest_delay
from crawler.errors import CrawlerError
from crawler.fetch import Fetched, Fetcher, FetchError, Redirect, UrlCheck, Validators
from crawler.robots import RobotsCache, RobotsRules
from crawler.scheduler import Host, Job, Politeness, Scheduler, Ticket
from crawler.seeds import SeedError, check_url_length

log = logging.getLogger(__name__)

T = TypeVar("T")

CONNECTION_REASONS = frozenset({"timeout", "connection_error"})
THROTTLE_STATUSES = frozenset({429, 503})
RETRY_STATUSES = frozenset({408, 500, 502, 504})

Outcome = Fetched | CrawlerError
Deliver = Callable[[Job[T], Outcome], Awaitable[None]]


class HostEvents(Protocol):
    """What the engine hears of hosts: a long pause to record for their next holder, and
    a host given up (down, or its robots.txt unavailable), whose queued jobs have failed."""

    def host_paused(self, host: Host[Any]) -> None: ...

    def host_failed(self, host: Host[Any], error: FetchError) -> None: ...


def politeness_of(settings: CrawlSettings) -> Politeness:
    return Politeness(
        slots=settings.per_host_concurrency,
        delay=settings.per_host_delay,
        delay_max=min(settings.per_host_delay_max, longest_delay(settings)),
    )


def backoff_delay(attempt: int, base: float, cap: float) -> float:
    """Full jitter: uniform in [0, min(cap, base * 2**attempt)]."""
    return random.uniform(0, min(cap, base * 2**attempt))


def pause_delay(failures: int, base: float, cap: float) -> float:
    """A host's pause after ``failures`` in a row: exponential, with half of it jittered,
    so that the pause always grows."""
    longest = min(cap, base * 2**failures)
    return longest / 2 + random.uniform(0, longest / 2)


@dataclass(frozen=True)
class _RobotsRead:
    rules: RobotsRules


@dataclass(frozen=True)
class _RobotsFailed:
    error: FetchError


_Answer = Fetched | Redirect | CrawlerError | _RobotsRead | _RobotsFailed


class Downloader(Generic[T]):
    """Takes tickets from ``scheduler``, requests with ``fetcher``, and hands each job's
    final outcome to ``deliver`` (after its request's slot is free again)."""

    def __init__(
        self,
        fetcher: Fetcher,
        scheduler: Scheduler[T],
        settings: CrawlSettings,
        deliver: Deliver[T],
        events: HostEvents | None = None,
    ) -> None:
        self._fetcher = fetcher
        self._scheduler = scheduler
        self._settings = settings
        self._retries = settings.retries
        self._deliver = deliver
        self._events = events
        self._robots = RobotsCache()

    async def work(self) -> None:
        """One worker: serve tickets until the scheduler closes."""
        while (ticket := await self._scheduler.next()) is not None:
            try:
                await self._serve(ticket)
            except Exception as exc:  # a bug must fail one URL, not the crawl
                log.exception("crawling %s failed unexpectedly", ticket.job.url)
                error = FetchError(
                    f"{ticket.job.url}: {type(exc).__name__}: {exc}", "internal_error"
                )
                await self._deliver(ticket.job, error)

    async def submit(self, job: Job[T], *, after: float = 0.0) -> None:
        """Queue ``job`` under the host of its target (first in line when it has been tried
        already), unless its host refuses it at once (see ``_refusal``)."""
        host = self._scheduler.host(job.host_key)
        if host is not None and (refusal := self._refusal(job, host)) is not None:
            await self._deliver(job, refusal)
            return
        self._scheduler.add(job, front=job.deadline is not None, after=after)

    async def _serve(self, ticket: Ticket[T]) -> None:
        """One request, in three steps: what the answer says of the host is applied while
        the request still holds its slot, so that no other request to the host starts
        before a pause or a new delay; then the slot is freed; then the job moves on."""
        job = ticket.job
        if job.deadline is None:
            job.deadline = ticket.started + self._settings.timeouts.url
        if ticket.started >= job.deadline:  # it waited for its host past its deadline
            self._scheduler.release(ticket)
            await self._deliver(job, self._out_of_time(job))
            return
        try:
            answer = await self._ask(ticket)
            verdict = self._learn(ticket, answer)
        finally:
            self._scheduler.finish(ticket)
        await self._route(ticket, answer, verdict)
        self._scheduler.forget_if_done(ticket.host)

    # -- one request ----------------------------------------------------------------------

    async def _ask(self, ticket: Ticket[T]) -> _Answer:
        job = ticket.job
        try:
            if job.target.scheme == "file":
                return await self._fetcher.read_local(job.url)
            if job.admitted != job.target:
                await self._fetcher.admit(job.target)
                job.admitted = job.target
            if self._settings.robots:
                rules = self._robots.get(str(job.target.origin()))
                if rules is None:
                    return await self._read_robots(job.target.origin())
                if not rules.allows(str(job.target), self._settings.user_agent):
                    return FetchError(
                        f"{job.target}: disallowed by robots.txt",
                        "robots",
                        skipped=True,
                        status=403,
                    )
            assert job.deadline is not None
            remaining = job.deadline - ticket.started
            return await self._fetcher.request(job.target, job.validators, total=remaining)
        except CrawlerError as exc:  # FetchError, or refused by check_url
            return exc

    async def _read_robots(self, origin: URL) -> _RobotsRead | _RobotsFailed:
        try:
            status, text = await self._fetcher.robots_text(origin / "robots.txt")
        except FetchError as exc:
            if exc.http_status is None or exc.http_status >= 500 or exc.http_status == 429:
                return _RobotsFailed(exc)
            return _RobotsRead(RobotsRules())  # 4xx: no rules
        return _RobotsRead(RobotsRules.from_answer(status, text))

    # -- what the answer says of the host ---------------------------------------------------

    def _learn(self, ticket: Ticket[T], answer: _Answer) -> FetchError | None:
        """Apply what ``answer`` says of its host: a closed or counting circuit breaker, a
        pause, a robots.txt delay. Returns the error the host is given up with, if it is."""
        host = ticket.host
        match answer:
            case Fetched() | Redirect():
                self._answered(host)
            case _RobotsRead():
                self._robots.put(str(ticket.job.target.origin()), answer.rules)
                host.robots_failures = 0
                host.robots_delay = answer.rules.delay(self._settings.user_agent)
                host.next_start = max(host.next_start, ticket.started + host.delay)
                self._answered(host)
            case _RobotsFailed(error):
                host.robots_failures += 1
                if host.robots_failures >= self._retries.attempts:
                    return self._give_up(host, _robots_unavailable(ticket.job, host, error))
                self._pause_for_robots(host, error.retry_after)
                return host.given_up
            case FetchError() if answer.reason in CONNECTION_REASONS:
                return self._failed_to_connect(host, answer)
            case FetchError() if answer.http_status in THROTTLE_STATUSES:
                host.throttles += 1
                self._pause(host, host.throttles, answer.retry_after)
                return host.given_up
        return None

    def _answered(self, host: Host[T]) -> None:
        """The host answered: its circuit breaker closes, it may take all its slots."""
        host.failures = host.throttles = 0
        host.probing = False
        self._scheduler.changed(host)

    def _failed_to_connect(self, host: Host[T], error: FetchError) -> FetchError | None:
        host.failures += 1
        if host.failures < self._retries.host_failures:
            self._pause(host, host.failures)
            return host.given_up
        down = FetchError(
            f"{host.key} is down: {host.failures} requests in a row failed "
            f"(crawl.retries.host_failures); the last: {error}",
            error.reason,
            status=error.status,
        )
        return self._give_up(host, down)

    def _pause(self, host: Host[T], failures: int, retry_after: float | None = None) -> None:
        """Pause ``host`` for its Retry-After (capped), or exponentially by ``failures``."""
        if retry_after is not None:
            pause = min(retry_after, self._retries.retry_after_max)
        else:
            pause = pause_delay(failures - 1, self._retries.backoff_base, self._retries.backoff_max)
        host.pause(self._scheduler.now() + pause)
        self._scheduler.changed(host)
        if self._events is not None:
            self._events.host_paused(host)

    def _pause_for_robots(self, host: Host[T], retry_after: float | None) -> None:
        """robots.txt is tried again later than a request: from an eighth of
        ``crawl.retries.backoff_max``, doubling, so that its tries span an outage of
        seconds, not the first few (about 13-26 s before the fourth at the defaults)."""
        if retry_after is not None:
            self._pause(host, host.robots_failures, retry_after)
            return
        retries = self._retries
        pause = pause_delay(host.robots_failures - 1, retries.backoff_max / 8, retries.backoff_max)
        host.pause(self._scheduler.now() + pause)
        self._scheduler.changed(host)
        if self._events is not None:
            self._events.host_paused(host)

    def _give_up(self, host: Host[T], error: FetchError) -> FetchError:
        """The host is down, or its robots.txt unavailable: nothing more is tried there
        for a pause (its queued jobs fail in ``_route``)."""
        if host.given_up is None:  # not already, by a request in flight beside this one
            log.warning("giving up %s: %s", host.key, error)
            host.given_up = error
            host.abandoned = self._scheduler.take_jobs(host)
            self._pause(host, max(host.failures, host.robots_failures))
            if self._events is not None:
                self._events.host_failed(host, error)
        return host.given_up

    # -- where the job goes -----------------------------------------------------------------

    async def _route(self, ticket: Ticket[T], answer: _Answer, given_up: FetchError | None) -> None:
        job, host = ticket.job, ticket.host
        if given_up is not None:
            await self._fail_given_up(job, host, given_up)
            return
        match answer:
            case Fetched():
                await self._deliver(job, dataclasses.replace(answer, url=job.url))
            case Redirect():
                await self._follow(job, host, answer)
            case _RobotsRead():
                await self._again(job, host)
            case _RobotsFailed(error):
                await self._again(job, host, error)  # not a try of the job
            case FetchError() if answer.reason in CONNECTION_REASONS:
                await self._try_again(job, host, answer)
            case FetchError() if answer.http_status in THROTTLE_STATUSES:
                await self._try_again(job, host, answer)
            case FetchError() if answer.http_status in RETRY_STATUSES:
                delay = backoff_delay(
                    job.tries, self._retries.backoff_base, self._retries.backoff_max
                )
                await self._try_again(job, host, answer, after=delay)
            case _:
                await self._deliver(job, answer)

    async def _fail_given_up(self, job: Job[T], host: Host[T], error: FetchError) -> None:
        """Fail ``job`` with the host's verdict, and the jobs it had queued."""
        await self._deliver(job, error)
        abandoned, host.abandoned = host.abandoned, []
        for other in abandoned:
            await self._deliver(other, _not_fetched(other, error))

    async def _follow(self, job: Job[T], host: Host[T], redirect: Redirect) -> None:
        location = redirect.location
        final_url = str(location)
        if location in job.visited:
            error = FetchError(
                f"{job.url}: redirect loop at {location}", "redirect_loop", final_url=final_url
            )
        elif job.hops == self._settings.max_redirects:
            error = FetchError(
                f"{job.url}: more than {self._settings.max_redirects} redirects "
                "(crawl.max_redirects)",
                "too_many_redirects",
                final_url=final_url,
            )
        else:
            try:
                check_url_length(final_url, self._settings.max_url_length)
            except SeedError as exc:
                error = FetchError(str(exc), "bad_redirect", http_status=redirect.http_status)
            else:
                job.hops += 1
                job.visited.add(location)
                job.target = location
                await self._queue(job, host)
                return
        await self._deliver(job, error)

    async def _try_again(
        self, job: Job[T], host: Host[T], error: FetchError, *, after: float = 0.0
    ) -> None:
        """Count a try of ``job``; queue it again unless it has none left."""
        job.tries += 1
        if job.tries >= self._retries.attempts:
            await self._deliver(job, error)
            return
        await self._again(job, host, error, after=after)

    async def _again(
        self, job: Job[T], host: Host[T], error: FetchError | None = None, *, after: float = 0.0
    ) -> None:
        """Queue ``job`` at the front of its host again, unless that would start it past
        its deadline, or the host was given up meanwhile."""
        if error is not None:
            job.last_error = error
        if host.given_up is not None:  # by a request that was in flight beside this one
            await self._deliver(job, _not_fetched(job, host.given_up))
            return
        assert job.deadline is not None
        if max(self._scheduler.now() + after, host.paused_until) >= job.deadline:
            await self._deliver(job, self._out_of_time(job))
            return
        await self._queue(job, host, after=after)

    async def _queue(self, job: Job[T], host: Host[T], *, after: float = 0.0) -> None:
        """Queue ``job`` again; not when its host was held under a lease that has lapsed
        (its row is another crawler's now)."""
        if host.removed and host.leased and job.host_key == host.key:
            log.info("%s: dropped, its host's lease lapsed", job.url)
            return
        await self.submit(job, after=after)

    def _refusal(self, job: Job[T], host: Host[T]) -> FetchError | None:
        """Why ``job`` fails without a try: its host was given up a moment ago, or (a job
        not tried yet) it is paused after failing ``crawl.retries.attempts`` times in a
        row: the caller hears at once, as from any circuit breaker that is open."""
        paused = self._scheduler.now() < host.paused_until
        if host.given_up is not None:
            if paused:
                return _not_fetched(job, host.given_up)
            host.given_up = None  # the pause is over: one request decides
            host.failures = max(host.failures, self._retries.host_failures - 1)
        elif paused and job.deadline is None and host.failures >= self._retries.attempts:
            return FetchError(
                f"{job.url}: not fetched: {host.key} failed {host.failures} times in a row; "
                f"it is tried again in {host.paused_until - self._scheduler.now():.1f} s",
                "connection_error",
            )
        return None

    def _out_of_time(self, job: Job[T]) -> FetchError:
        last = job.last_error
        message = (
            f"{job.url}: no time left (crawl.timeouts.url = {self._settings.timeouts.url:g} s) "
            f"after {job.tries} tries"
        )
        if last is None:
            return FetchError(message, "timeout", status=504)
        return FetchError(
            f"{message}; the last: {last}",
            last.reason,
            http_status=last.http_status,
            status=last.status,
        )


def _robots_unavailable(job: Job[Any], host: Host[Any], error: FetchError) -> FetchError:
    return FetchError(
        f"{job.target.origin()}/robots.txt: unavailable {host.robots_failures} times "
        f"(the last: {error}); RFC 9309 says to fetch nothing",
        "robots_unavailable",
    )


def _not_fetched(job: Job[Any], error: FetchError) -> FetchError:
    return FetchError(f"{job.url}: not fetched: {error}", error.reason, status=error.status)


class Downloads:
    """Images fetched one by one through the same downloader, for ``crawler extract`` and
    the HTTP API: each ``fetch()`` is a job, polite to its host, retried and redirected like
    a crawl's, whose outcome comes back to the caller. ``workers`` requests at most at once.
    Use as an async context manager."""

    def __init__(
        self,
        settings: CrawlSettings,
        *,
        workers: int,
        check_url: UrlCheck | None = None,
        resolver: AbstractResolver | None = None,
    ) -> None:
        self._fetcher = Fetcher(settings, check_url=check_url, resolver=resolver)
        self._scheduler: Scheduler[asyncio.Future[Outcome]] = Scheduler(
            politeness_of(settings), probe_new_hosts=settings.robots
        )
        self._downloader = Downloader(self._fetcher, self._scheduler, settings, self._deliver)
        self._workers = workers
        self._tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> Self:
        await self._fetcher.__aenter__()
        self._tasks = [asyncio.create_task(self._downloader.work()) for _ in range(self._workers)]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._scheduler.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._fetcher.close()

    async def fetch(self, url: str, validators: Validators | None = None) -> Fetched:
        """The bytes at ``url`` (a normalised ``http(s)://`` or ``file://`` URL). Raises
        ``FetchError`` (or what ``check_url`` raised) with the final failure's reason."""
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        await self._downloader.submit(Job(url, future, validators))
        outcome = await future
        if isinstance(outcome, CrawlerError):
            raise outcome
        return outcome

    @staticmethod
    async def _deliver(job: Job[asyncio.Future[Outcome]], outcome: Outcome) -> None:
        if not job.payload.done():
            job.payload.set_result(outcome)
