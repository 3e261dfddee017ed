"""The in-process frontier on its own: tickets only for hosts that may be fetched now, in
the order they become ready; delays, pauses, slots and the lease respected. A fake clock
drives it, so the tests are exact and take no time."""

import asyncio

import pytest

from crawler.scheduler import Job, Politeness, Scheduler, Ticket

POLITE = Politeness(slots=2, delay=0.0, delay_max=10.0)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def jobs(host: str, count: int) -> list[Job[None]]:
    return [Job(f"http://{host}/{n}.jpg", None) for n in range(count)]


def scheduler(politeness: Politeness = POLITE) -> tuple[Scheduler[None], Clock]:
    clock = Clock()
    return Scheduler(politeness, clock=clock), clock


async def ready_now(s: Scheduler[None]) -> Ticket[None] | None:
    """A ticket if one may start at the clock's time, else None (without waiting)."""
    waiter = asyncio.ensure_future(s.next())
    await asyncio.sleep(0)
    if waiter.done():
        return waiter.result()
    waiter.cancel()
    await asyncio.gather(waiter, return_exceptions=True)
    return None


async def test_a_slow_host_first_does_not_stop_tickets_for_the_others() -> None:
    s, _ = scheduler()
    s.add_jobs("slow.test", jobs("slow.test", 10))
    s.add_jobs("fast.test", jobs("fast.test", 2))
    taken = [await ready_now(s) for _ in range(4)]
    assert [t.host.key for t in taken if t] == ["slow.test", "fast.test", "slow.test", "fast.test"]
    assert await ready_now(s) is None  # both hosts at their two slots


async def test_a_freed_slot_lets_its_host_go_on() -> None:
    s, _ = scheduler()
    s.add_jobs("a.test", jobs("a.test", 3))
    first, second = await ready_now(s), await ready_now(s)
    assert first and second and await ready_now(s) is None
    s.finish(first)
    third = await ready_now(s)
    assert third is not None and third.job.url == "http://a.test/2.jpg"


async def test_the_delay_spaces_request_starts() -> None:
    s, clock = scheduler(Politeness(slots=4, delay=2.0, delay_max=10.0))
    s.add_jobs("a.test", jobs("a.test", 2))
    first = await ready_now(s)
    assert first is not None and await ready_now(s) is None
    clock.now += 1.9
    assert await ready_now(s) is None
    clock.now += 0.1
    assert await ready_now(s) is not None


async def test_a_robots_delay_counts_up_to_the_cap() -> None:
    s, _ = scheduler(Politeness(slots=1, delay=1.0, delay_max=5.0))
    host = s.open_host("a.test")
    host.robots_delay = 60.0
    assert host.delay == 5.0
    host.robots_delay = 0.5
    assert host.delay == 1.0  # the configured delay is the least


async def test_a_paused_host_waits_and_others_go_first() -> None:
    s, clock = scheduler()
    s.add_jobs("busy.test", jobs("busy.test", 2))
    s.add_jobs("calm.test", jobs("calm.test", 1))
    busy = s.host("busy.test")
    assert busy is not None
    busy.pause(clock.now + 10)
    s.changed(busy)
    ticket = await ready_now(s)
    assert ticket is not None and ticket.host.key == "calm.test"
    assert await ready_now(s) is None
    clock.now += 10
    ticket = await ready_now(s)
    assert ticket is not None and ticket.host.key == "busy.test"


async def test_a_waiting_worker_is_woken_when_the_delay_is_over() -> None:
    s = Scheduler(Politeness(slots=1, delay=0.05, delay_max=1.0))  # the real clock
    s.add_jobs("a.test", jobs("a.test", 2))
    first = await s.next()
    assert first is not None
    s.finish(first)
    second = await asyncio.wait_for(s.next(), 1)
    assert second is not None and second.started - first.started >= 0.05


async def test_a_job_to_retry_later_waits_in_its_host_not_in_a_worker() -> None:
    s, clock = scheduler()
    [job] = jobs("a.test", 1)
    s.add(job, front=True, after=5.0)
    assert await ready_now(s) is None
    clock.now += 5
    ticket = await ready_now(s)
    assert ticket is not None and ticket.job is job


async def test_a_failing_or_new_host_takes_one_request_at_a_time() -> None:
    s, _ = scheduler()
    host = s.open_host("a.test")
    host.failures = 1
    s.add_jobs("a.test", jobs("a.test", 3))
    assert await ready_now(s) is not None
    assert await ready_now(s) is None
    probing = Scheduler(POLITE, probe_new_hosts=True, clock=Clock())
    probing.add_jobs("b.test", jobs("b.test", 3))
    assert await ready_now(probing) is not None
    assert await ready_now(probing) is None


async def test_a_leased_host_starts_nothing_its_lease_may_not_cover() -> None:
    s, clock = scheduler(Politeness(slots=2, delay=3.0, delay_max=10.0))
    s.open_host("a.test", leased=True)
    s.add_jobs("a.test", jobs("a.test", 2))
    s.renew_lease(clock.now + 2.0)  # ends before the delay after a request would
    assert await ready_now(s) is None
    s.renew_lease(clock.now + 30.0)
    assert await ready_now(s) is not None


async def test_closing_ends_every_wait() -> None:
    s, _ = scheduler()
    waiting = asyncio.ensure_future(s.next())
    await asyncio.sleep(0)
    s.close()
    assert await waiting is None
    assert await s.next() is None


async def test_a_removed_hosts_jobs_come_back_in_order() -> None:
    s, _ = scheduler()
    queued = jobs("a.test", 3)
    s.add_jobs("a.test", queued[1:])
    s.add(queued[0], front=True)
    assert s.remove_host("a.test") == queued
    assert await ready_now(s) is None


@pytest.mark.parametrize("count", [1, 5])
async def test_idle_workers_and_queued_jobs_are_counted(count: int) -> None:
    s, _ = scheduler()
    s.add_jobs("a.test", jobs("a.test", count))
    assert s.queued == count
    waiters = [asyncio.ensure_future(s.next()) for _ in range(4)]
    await asyncio.sleep(0)
    assert s.in_flight == min(count, 2)
    assert s.idle_workers == 4 - min(count, 2)
    s.close()
    await asyncio.gather(*waiters)
