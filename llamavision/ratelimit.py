"""One shared answer to rate limits for every caller of a client.

A :class:`RateGovernor` admits each request to one provider. Every caller of a client goes
through the same governor, whether it calls from threads (LangChain's ``batch``), from tasks
(``abatch``, the caption job) or from several event loops, so that:

- a 429 (or a 503) with ``Retry-After`` pauses new requests of *every* caller until then;
- the number in flight adapts: halved on a rate-limit answer (once per congestion event, not
  once per request that was already in flight), grown back by one per success, never above
  ``max_concurrency``;
- after a rate-limit answer, requests are paced at the rate the provider was seen to allow
  (the successes between two rate-limit answers, when its bucket was empty at both), and the
  pace is probed upward by 2 % a second, so that a run settles just under the provider's
  limit instead of meeting it again and again;
- an optional ``rate_limit`` (requests per minute, a token bucket) keeps under a published
  limit from the start.

The admission logic is sans-I/O (``_admit`` and ``_settle`` take the time and hold the lock);
:meth:`RateGovernor.acquire` and :meth:`RateGovernor.aacquire` only wait. Waiters form one
first-in, first-out line: only its head waits on a timer, the others wait to become the head.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from llamavision.errors import LlamaVisionError

PACE_BACKOFF = 0.9
"""After a rate-limit answer, pace at this fraction of the rate the provider allowed."""
PACE_GROWTH = 0.02
"""Then probe upward by this fraction of that pace per second."""


@dataclass(slots=True)
class RateStats:
    """What rate limiting cost so far.

    Attributes:
        rate_limited: requests answered HTTP 429.
        waited: seconds during which new requests were held back by a ``Retry-After`` pause
            or by pacing (wall-clock time, not summed over callers).

    """

    rate_limited: int = 0
    waited: float = 0.0


def is_throttle(error: LlamaVisionError) -> bool:
    """Return whether an error asks the caller to slow down.

    That is a retryable 429, or a 503 with ``Retry-After``.
    """
    status = error.status_code
    if not error.retryable or status not in (429, 503):
        return False
    return status == 429 or getattr(error, "retry_after", None) is not None


@dataclass(frozen=True, slots=True)
class Outcome:
    """What happened to an admitted request, as much as a governor needs (and picklable).

    Attributes:
        ok: the request succeeded.
        throttled: the provider asked to slow down (see :func:`is_throttle`).
        status: the HTTP status of a throttling answer.
        retry_after: the ``Retry-After`` of a throttling answer, in seconds.

    """

    ok: bool
    throttled: bool = False
    status: int | None = None
    retry_after: float | None = None

    @classmethod
    def of(cls, error: BaseException | None) -> Outcome:
        """Describe the outcome of a request that raised ``error`` (``None``: success)."""
        if error is None:
            return SUCCESS
        if isinstance(error, LlamaVisionError) and is_throttle(error):
            return cls(False, True, error.status_code, getattr(error, "retry_after", None))
        return FAILURE


SUCCESS = Outcome(ok=True)
FAILURE = Outcome(ok=False)


class Releasable(Protocol):
    """An admitted request's slot, given back once with what happened."""

    def release(self, error: BaseException | None = None) -> None:
        """Give the slot back: ``error`` is what went wrong, ``None`` means success."""


class Governor(Protocol):
    """What a client needs from a governor: :class:`RateGovernor`, or a shared one.

    ``llamavision.ray`` has one whose state lives in a Ray actor, for all actors of a job.
    """

    @property
    def stats(self) -> RateStats:
        """What rate limiting has cost so far."""

    def acquire(self) -> Releasable:
        """Wait (blocking) until a request may be sent."""

    async def aacquire(self) -> Releasable:
        """Wait (without blocking the event loop) until a request may be sent."""


class Ticket:
    """One admitted request; :meth:`release` it exactly once with its outcome."""

    __slots__ = ("_governor", "_released", "sent_at")

    def __init__(self, governor: RateGovernor, sent_at: float) -> None:
        self._governor = governor
        self.sent_at = sent_at
        self._released = False

    def release(self, error: BaseException | None = None) -> None:
        """Give the slot back: ``error`` is what went wrong, ``None`` means success.

        Calling it again does nothing, so that every exit path may release.
        """
        self.settle(Outcome.of(error))

    def settle(self, outcome: Outcome) -> None:
        """Give the slot back with an already described outcome (once)."""
        if not self._released:
            self._released = True
            self._governor._settle(self, outcome)


class _ThreadWaker:
    __slots__ = ("event",)

    def __init__(self) -> None:
        self.event = threading.Event()

    def arm(self) -> None:
        self.event.clear()

    def wake(self) -> None:
        self.event.set()


class _TaskWaker:
    __slots__ = ("future", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.future: asyncio.Future[None] | None = None

    def arm(self) -> None:
        self.future = self.loop.create_future()

    def wake(self) -> None:
        future = self.future
        if future is not None:
            with contextlib.suppress(RuntimeError):  # a closed loop: its task is gone too
                self.loop.call_soon_threadsafe(_resolve, future)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


_Waker = _ThreadWaker | _TaskWaker


class RateGovernor:
    """Admits requests to one provider for all callers of a client (see the module doc).

    Args:
        max_concurrency: most requests in flight at once; ``None`` for no fixed maximum (the
            adaptive limit still halves on rate-limit answers).
        rate_limit: requests per minute to stay under from the start; ``None`` to learn the
            provider's limit from its rate-limit answers.
        max_pause: longest ``Retry-After`` pause imposed on every caller, in seconds.
        clock: the time source (monotonic seconds).

    """

    def __init__(
        self,
        *,
        max_concurrency: int | None = None,
        rate_limit: float | None = None,
        max_pause: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_concurrency is not None and max_concurrency < 1:
            raise ValueError("max_concurrency must be at least 1.")
        if rate_limit is not None and rate_limit <= 0:
            raise ValueError("rate_limit must be a positive number of requests per minute.")
        self.max_concurrency = max_concurrency
        self.rate_limit = rate_limit
        self.max_pause = max_pause
        self.stats = RateStats()
        self._clock = clock
        self._lock = threading.Lock()
        self._line: deque[_Waker] = deque()
        self._limit = float(max_concurrency) if max_concurrency else math.inf
        self._in_flight = 0
        self._paused_until = 0.0
        self._tokens = 1.0
        self._stamp = clock()
        self._learned: tuple[float, float] | None = None  # (pace, since)
        self._mark: float | None = None  # start of the current measuring window
        self._ok = 0  # successes in it
        self._last_event = -math.inf

    # ------------------------------------------------------------------ state (sans-I/O)

    @property
    def limit(self) -> float:
        """The current adaptive limit of requests in flight."""
        return self._limit

    @property
    def in_flight(self) -> int:
        """Requests admitted and not yet released."""
        return self._in_flight

    def pace(self, now: float | None = None) -> float | None:
        """Return the requests per second now allowed, or ``None`` when not pacing."""
        now = self._clock() if now is None else now
        user = None if self.rate_limit is None else self.rate_limit / 60.0
        if self._learned is None:
            return user
        base, since = self._learned
        grown = base * (1.0 + PACE_GROWTH * max(0.0, now - since))
        return grown if user is None else min(grown, user)

    def try_acquire(self, now: float | None = None) -> Ticket | float:
        """Admit one request now if the rules allow: its ticket, else the seconds to wait.

        The sans-I/O step under :meth:`acquire`: ``math.inf`` means "until a slot is
        released" (also while others wait in line, who go first). ``now`` defaults to the
        governor's clock.
        """
        with self._lock:
            now = self._clock() if now is None else now
            if self._line:
                return math.inf
            wait = self._admit(now)
            return Ticket(self, now) if wait == 0.0 else wait

    def _admit(self, now: float) -> float:
        """Admit one request (return 0) or return how long to wait (``inf``: for a slot)."""
        if self._in_flight >= self._limit:
            return math.inf
        if now < self._paused_until:
            return self._paused_until - now
        pace = self.pace(now)
        if pace is not None:
            self._tokens = min(1.0, self._tokens + (now - self._stamp) * pace)
            self._stamp = now
            if self._tokens < 1.0:
                return (1.0 - self._tokens) / pace
            self._tokens -= 1.0
        self._stamp = now
        self._in_flight += 1
        if self._mark is None:
            self._mark = now
        return 0.0

    def _settle(self, ticket: Ticket, outcome: Outcome) -> None:
        with self._lock:
            now = self._clock()
            self._in_flight -= 1
            if outcome.ok:
                self._ok += 1
                ceiling = self.max_concurrency or math.inf
                self._limit = min(ceiling, self._limit + 1)
            elif outcome.throttled:
                self._throttled(ticket, outcome, now)
            self._wake_head()

    def _throttled(self, ticket: Ticket, outcome: Outcome, now: float) -> None:
        if outcome.status == 429:
            self.stats.rate_limited += 1
        retry_after = outcome.retry_after
        if retry_after is not None:
            self._paused_until = max(self._paused_until, now + min(retry_after, self.max_pause))
        if ticket.sent_at < self._last_event:
            return  # sent before the last rate-limit answer arrived: the same event
        self._last_event = now
        self._limit = max(1.0, math.floor(min(self._limit, self._in_flight + 1) / 2))
        if self._mark is not None and now > self._mark and self._ok:
            pace = PACE_BACKOFF * self._ok / (now - self._mark)
            if self.rate_limit is not None:
                pace = min(pace, self.rate_limit / 60.0)
            self._learned = (pace, now)
            self._tokens = min(self._tokens, 0.0)
        self._mark, self._ok = now, 0

    def _wake_head(self) -> None:
        if self._line:
            self._line[0].wake()

    # ------------------------------------------------------------------ waiting (drivers)

    def _enter(self, waker: _Waker) -> Ticket | None:
        """Admit at once when nobody waits and there is room; else join the line."""
        with self._lock:
            now = self._clock()
            if not self._line and self._admit(now) == 0.0:
                return Ticket(self, now)
            self._line.append(waker)
            return None

    def _try_head(self, waker: _Waker) -> Ticket | float:
        """For a waiter in line: a ticket, or how long to wait (``inf``: until woken)."""
        with self._lock:
            waker.arm()
            if self._line[0] is not waker:
                return math.inf
            now = self._clock()
            wait = self._admit(now)
            if wait == 0.0:
                self._line.popleft()
                self._wake_head()
                return Ticket(self, now)
            return wait

    def _leave(self, waker: _Waker) -> None:
        with self._lock:
            was_head = bool(self._line) and self._line[0] is waker
            try:
                self._line.remove(waker)
            except ValueError:
                return
            if was_head:
                self._wake_head()

    def _held(self, seconds: float) -> None:
        with self._lock:
            self.stats.waited += seconds

    def acquire(self) -> Ticket:
        """Wait (blocking this thread) until a request may be sent; return its ticket."""
        waker = _ThreadWaker()
        ticket = self._enter(waker)
        if ticket is not None:
            return ticket
        try:
            while True:
                step = self._try_head(waker)
                if isinstance(step, Ticket):
                    return step
                if math.isinf(step):
                    waker.event.wait()
                    continue
                started = self._clock()
                waker.event.wait(step)
                self._held(self._clock() - started)
        except BaseException:
            self._leave(waker)
            raise

    async def aacquire(self) -> Ticket:
        """Async form of :meth:`acquire`: waits without blocking the event loop."""
        waker = _TaskWaker(asyncio.get_running_loop())
        ticket = self._enter(waker)
        if ticket is not None:
            return ticket
        try:
            while True:
                step = self._try_head(waker)
                if isinstance(step, Ticket):
                    return step
                assert waker.future is not None
                if math.isinf(step):
                    await waker.future
                    continue
                started = self._clock()
                await asyncio.wait((waker.future,), timeout=step)
                self._held(self._clock() - started)
        except BaseException:
            self._leave(waker)
            raise
