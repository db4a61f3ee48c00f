"""The shared rate governor: its admission rules on a fake clock, and its waiting drivers."""

from __future__ import annotations

import asyncio
import math
import threading

import pytest

from llamavision.errors import (
    APIConnectionError,
    BadRequestError,
    ProviderOutageError,
    RateLimitError,
    ServerError,
    ServiceUnavailableError,
)
from llamavision.ratelimit import CircuitBreaker, RateGovernor, Ticket


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def limited(retry_after: float | None = 1.0) -> RateLimitError:
    return RateLimitError("slow down", status_code=429, retry_after=retry_after)


def admit(governor: RateGovernor, clock: Clock) -> Ticket:
    step = governor.try_acquire()
    assert isinstance(step, Ticket), f"not admitted: wait {step}"
    return step


def waits(governor: RateGovernor) -> float:
    """Seconds the next request would wait (0: admitted, and its slot taken)."""
    step = governor.try_acquire()
    return 0.0 if isinstance(step, Ticket) else step


def test_max_concurrency_holds_and_a_release_makes_room() -> None:
    clock = Clock()
    governor = RateGovernor(max_concurrency=2, clock=clock)
    first, _ = admit(governor, clock), admit(governor, clock)
    assert waits(governor) == math.inf
    first.release()
    admit(governor, clock)
    first.release()  # a second release of the same ticket changes nothing
    assert governor.in_flight == 2


def test_retry_after_pauses_every_new_request_until_then() -> None:
    clock = Clock()
    governor = RateGovernor(clock=clock)
    admit(governor, clock).release(limited(retry_after=2.0))
    clock.now = 0.5
    assert waits(governor) == pytest.approx(1.5)
    clock.now = 2.0
    admit(governor, clock)
    assert governor.stats.rate_limited == 1


def test_a_pause_is_capped_and_a_503_with_retry_after_pauses_too() -> None:
    clock = Clock()
    governor = RateGovernor(clock=clock, max_pause=5.0)
    busy = ServiceUnavailableError("busy", status_code=503, retry_after=3600.0)
    admit(governor, clock).release(busy)
    assert waits(governor) == pytest.approx(5.0)
    assert governor.stats.rate_limited == 0  # it was not a 429


def test_other_failures_neither_pause_nor_slow_down() -> None:
    clock = Clock()
    governor = RateGovernor(max_concurrency=4, clock=clock)
    admit(governor, clock).release(ServerError("oops", status_code=500, retry_after=9.0))
    assert waits(governor) == 0.0 and governor.limit == 4


def test_concurrency_halves_once_per_congestion_event_and_grows_back_by_one() -> None:
    clock = Clock()
    governor = RateGovernor(max_concurrency=8, clock=clock)
    tickets = [admit(governor, clock) for _ in range(8)]
    clock.now = 1.0
    tickets[0].release(limited(retry_after=None))
    assert governor.limit == 4
    tickets[1].release(limited(retry_after=None))  # sent before that answer: same event
    assert governor.limit == 4
    later = admit(governor, clock) if governor.in_flight < governor.limit else None
    assert later is None  # 6 still in flight, limit 4
    for ticket in tickets[2:5]:
        ticket.release()
    assert governor.limit == 7  # three successes
    for ticket in tickets[5:]:
        ticket.release()
    assert governor.limit == 8  # never above the configured maximum
    clock.now = 2.0
    fresh = admit(governor, clock)
    fresh.release(limited(retry_after=None))  # sent after the last event: a new one
    assert governor.limit == 1  # half of what was in flight (1), at least 1


def test_rate_limit_paces_requests_from_the_start() -> None:
    clock = Clock()
    governor = RateGovernor(rate_limit=120, clock=clock)  # two a second
    admit(governor, clock).release()
    assert waits(governor) == pytest.approx(0.5)
    clock.now = 0.5
    admit(governor, clock)
    clock.now = 10.0  # idle time does not build up a burst
    admit(governor, clock)
    assert waits(governor) == pytest.approx(0.5)


def test_after_a_rate_limit_answer_it_paces_just_under_what_the_provider_allowed() -> None:
    clock = Clock()
    governor = RateGovernor(clock=clock)
    for i in range(20):  # 20 successes in two seconds, then the provider says stop
        clock.now = i * 0.1
        admit(governor, clock).release()
    clock.now = 2.0
    admit(governor, clock).release(limited(retry_after=1.0))
    assert governor.pace(2.0) == pytest.approx(0.9 * 20 / 2.0)
    assert governor.pace(12.0) == pytest.approx(9.0 * 1.2)  # probing upward, 2 % a second
    clock.now = 3.0  # the pause is over; the bucket starts empty
    assert waits(governor) == pytest.approx(0.0, abs=1e-9)


def test_a_learned_pace_never_exceeds_the_configured_rate() -> None:
    clock = Clock()
    governor = RateGovernor(rate_limit=60, clock=clock)
    for i in range(5):
        clock.now = float(i)
        admit(governor, clock).release()
    clock.now = 5.0
    admit(governor, clock).release(limited(retry_after=0.0))
    assert governor.pace(1000.0) == pytest.approx(1.0)


def test_invalid_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="max_concurrency"):
        RateGovernor(max_concurrency=0)
    with pytest.raises(ValueError, match="rate_limit"):
        RateGovernor(rate_limit=0)


# --------------------------------------------------------------------------- drivers


async def test_waiting_tasks_are_admitted_in_order_as_slots_free() -> None:
    governor = RateGovernor(max_concurrency=1)
    holder = await governor.aacquire()
    order: list[int] = []

    async def wait(n: int) -> Ticket:
        ticket = await governor.aacquire()
        order.append(n)
        return ticket

    tasks = [asyncio.create_task(wait(n)) for n in range(3)]
    for _ in range(3):
        await asyncio.sleep(0)  # let each task join the line
    assert order == [] and governor.in_flight == 1
    holder.release()
    for task in tasks:
        (await task).release()
    assert order == [0, 1, 2]


async def test_a_cancelled_waiter_leaves_the_line_and_lets_the_next_in() -> None:
    governor = RateGovernor(max_concurrency=1)
    holder = await governor.aacquire()
    first = asyncio.create_task(governor.aacquire())
    second = asyncio.create_task(governor.aacquire())
    await asyncio.sleep(0)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    holder.release()
    (await second).release()
    assert governor.in_flight == 0


def test_threads_and_tasks_share_one_governor() -> None:
    governor = RateGovernor(max_concurrency=1)
    holder = governor.acquire()
    admitted: list[str] = []
    started = threading.Event()

    def thread() -> None:
        started.set()
        ticket = governor.acquire()
        admitted.append("thread")
        ticket.release()

    async def task() -> None:
        ticket = await governor.aacquire()
        admitted.append("task")
        ticket.release()

    worker = threading.Thread(target=thread)
    worker.start()
    started.wait()
    holder.release()
    asyncio.run(task())
    worker.join()
    assert sorted(admitted) == ["task", "thread"] and governor.in_flight == 0


def down() -> APIConnectionError:
    return APIConnectionError("Connection refused")


def test_the_breaker_opens_after_failures_in_a_row_and_lets_one_probe_through() -> None:
    clock = Clock()
    governor = RateGovernor(clock=clock, breaker=CircuitBreaker(3, give_up_after=60.0))
    admit(governor, clock).release(down())
    admit(governor, clock).release(ServerError("oops", status_code=500))
    admit(governor, clock).release(BadRequestError("no", status_code=400))  # an answer: up
    for _ in range(3):
        admit(governor, clock).release(ServiceUnavailableError("down", status_code=502))
    assert waits(governor) == 6.0  # open: the first probe after a tenth of the limit
    clock.now = 6.0
    probe = admit(governor, clock)
    assert waits(governor) == math.inf  # nothing else while the probe is out
    probe.release(down())
    assert waits(governor) == 6.0  # still down: the next probe later
    clock.now = 12.0
    admit(governor, clock).release(None)  # back
    assert waits(governor) == 0.0  # closed: every request goes again


def test_the_breaker_gives_up_after_its_limit_and_every_waiter_hears_it() -> None:
    clock = Clock()
    governor = RateGovernor(clock=clock, breaker=CircuitBreaker(1, give_up_after=30.0))
    admit(governor, clock).release(down())
    clock.now = 30.0
    with pytest.raises(ProviderOutageError, match="it seems down"):
        governor.try_acquire()
    assert not ProviderOutageError("").retryable and ProviderOutageError("").account_level


def test_throttling_is_not_an_outage() -> None:
    clock = Clock()
    governor = RateGovernor(clock=clock, breaker=CircuitBreaker(2, give_up_after=60.0))
    for _ in range(4):
        admit(governor, clock).release(limited(retry_after=None))
    assert waits(governor) == 0.0


def test_waits_are_counted_by_their_reason() -> None:
    governor = RateGovernor(rate_limit=600)  # one every 0.1 s: planned waits
    for _ in range(4):
        governor.acquire().release(None)
    assert governor.stats.paced > 0.15 and governor.stats.paused == 0.0
    assert governor.stats.requests == 4 and governor.stats.waited == governor.stats.paced
