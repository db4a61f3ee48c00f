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
  limit from the start;
- an optional :class:`CircuitBreaker` holds every request back while the provider seems down
  (connection errors, 5xx answers in a row), lets one probe through now and then, and gives
  up after a limit (:class:`~llamavision.ProviderOutageError`).

Time held back is counted by reason (:class:`RateStats`): a ``Retry-After`` pause, pacing,
or an outage.

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

from llamavision.errors import APIConnectionError, LlamaVisionError, ProviderOutageError

PACE_BACKOFF = 0.9
"""After a rate-limit answer, pace at this fraction of the rate the provider allowed."""
PACE_GROWTH = 0.02
"""Then probe upward by this fraction of that pace per second."""


@dataclass(slots=True)
class RateStats:
    """What rate limiting cost so far.

    Attributes:
        requests: requests admitted (retries included).
        rate_limited: requests answered HTTP 429.
        paused: seconds during which new requests were held back by a ``Retry-After`` pause.
        paced: seconds during which new requests were held back to keep a pace (the
            ``rate_limit``, or the one learned from 429 answers): planned, not lost.
        outage: seconds during which new requests were held back by the circuit breaker.

    Seconds are wall-clock time, not summed over callers.

    """

    requests: int = 0
    rate_limited: int = 0
    paused: float = 0.0
    paced: float = 0.0
    outage: float = 0.0

    @property
    def waited(self) -> float:
        """Seconds new requests were held back, for any reason."""
        return self.paused + self.paced + self.outage

    def __add__(self, other: RateStats) -> RateStats:
        return RateStats(
            self.requests + other.requests,
            self.rate_limited + other.rate_limited,
            self.paused + other.paused,
            self.paced + other.paced,
            self.outage + other.outage,
        )


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
    outage: bool = False

    @classmethod
    def of(cls, error: BaseException | None) -> Outcome:
        """Describe the outcome of a request that raised ``error`` (``None``: success)."""
        if error is None:
            return SUCCESS
        if isinstance(error, LlamaVisionError) and is_throttle(error):
            return cls(False, True, error.status_code, getattr(error, "retry_after", None))
        if isinstance(error, APIConnectionError) or (
            isinstance(error, LlamaVisionError) and (error.status_code or 0) >= 500
        ):
            return OUTAGE
        return FAILURE


SUCCESS = Outcome(ok=True)
FAILURE = Outcome(ok=False)
OUTAGE = Outcome(ok=False, outage=True)


class CircuitBreaker:
    """Holds requests back while a provider seems down (sans-I/O; a governor drives it).

    After ``threshold`` outage outcomes in a row (connection errors, 5xx answers), the breaker
    opens: no request is sent but one probe every ``probe_every`` seconds (by default a tenth of
    ``give_up_after``, at most 10 s). A probe that gets
    any answer but a 5xx closes it; after ``give_up_after`` seconds open, every waiting and
    later request raises :class:`~llamavision.ProviderOutageError`.
    """

    def __init__(
        self, threshold: int = 5, *, give_up_after: float = 300.0, probe_every: float | None = None
    ) -> None:
        if threshold < 1:
            raise ValueError("outage_after must be at least 1 failure.")
        self.threshold = threshold
        self.give_up_after = give_up_after
        self.probe_every = min(10.0, give_up_after / 10) if probe_every is None else probe_every
        self.failures = 0
        self.opened: float | None = None
        self._probe_at = 0.0
        self._probing = False

    @classmethod
    def optional(cls, outage_after: int | None, outage_limit: float) -> CircuitBreaker | None:
        """Return the breaker a client's ``outage_after``/``outage_limit`` ask for, if any."""
        return None if outage_after is None else cls(outage_after, give_up_after=outage_limit)

    def wait(self, now: float) -> float:
        """Return 0 when a request may go (a probe, if open), else the seconds to wait.

        Raises:
            ProviderOutageError: the breaker has been open for ``give_up_after`` seconds.

        """
        if self.opened is None:
            return 0.0
        if now - self.opened >= self.give_up_after:
            raise ProviderOutageError(
                f"The provider has failed to answer (connection errors or 5xx answers, "
                f"{self.failures} in a row) for {now - self.opened:.0f} s, probed every "
                f"{self.probe_every:g} s: it seems down. Nothing more is sent; try again once "
                "it is back (a caption run keeps what it finished)."
            )
        if self._probing:
            return math.inf
        return max(0.0, min(self._probe_at, self.opened + self.give_up_after) - now)

    def sent(self) -> bool:
        """Note that a request was admitted; return whether it is the open breaker's probe."""
        if self.opened is None:
            return False
        self._probing = True
        return True

    def settle(self, outcome: Outcome, now: float, probe: bool) -> None:
        """Take a request's outcome into account."""
        if not outcome.outage:
            self.failures, self.opened, self._probing = 0, None, False
            return
        self.failures += 1
        if probe:
            self._probing = False
            self._probe_at = now + self.probe_every
        elif self.opened is None and self.failures >= self.threshold:
            self.opened = now
            self._probe_at = now + self.probe_every


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

    __slots__ = ("_governor", "_released", "probe", "sent_at")

    def __init__(self, governor: RateGovernor, sent_at: float, probe: bool = False) -> None:
        self._governor = governor
        self.sent_at = sent_at
        self.probe = probe
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
    __slots__ = ("event", "why")

    def __init__(self) -> None:
        self.event = threading.Event()
        self.why = "paced"

    def arm(self) -> None:
        self.event.clear()

    def wake(self) -> None:
        self.event.set()


class _TaskWaker:
    __slots__ = ("future", "loop", "why")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.future: asyncio.Future[None] | None = None
        self.why = "paced"

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
        breaker: a :class:`CircuitBreaker` that holds requests back while the provider
            seems down; ``None`` sends them regardless (each fails on its own).
        clock: the time source (monotonic seconds).

    """

    def __init__(
        self,
        *,
        max_concurrency: int | None = None,
        rate_limit: float | None = None,
        max_pause: float = 60.0,
        breaker: CircuitBreaker | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_concurrency is not None and max_concurrency < 1:
            raise ValueError("max_concurrency must be at least 1.")
        if rate_limit is not None and rate_limit <= 0:
            raise ValueError("rate_limit must be a positive number of requests per minute.")
        self.max_concurrency = max_concurrency
        self.rate_limit = rate_limit
        self.max_pause = max_pause
        self.breaker = breaker
        self.stats = RateStats()
        self._why = "paced"  # what the latest wait returned by _admit is for
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
            return self._ticket(now) if wait == 0.0 else wait

    def _admit(self, now: float) -> float:
        """Admit one request (return 0) or return how long to wait (``inf``: for a slot).

        Raises:
            ProviderOutageError: the breaker gave up on the provider.

        """
        if self.breaker is not None:
            wait = self.breaker.wait(now)
            if wait:
                self._why = "outage"
                return wait
        if self._in_flight >= self._limit:
            return math.inf
        if now < self._paused_until:
            self._why = "paused"
            return self._paused_until - now
        pace = self.pace(now)
        if pace is not None:
            self._tokens = min(1.0, self._tokens + (now - self._stamp) * pace)
            self._stamp = now
            if self._tokens < 1.0:
                self._why = "paced"
                return (1.0 - self._tokens) / pace
            self._tokens -= 1.0
        self._stamp = now
        self._in_flight += 1
        self.stats.requests += 1
        if self._mark is None:
            self._mark = now
        return 0.0

    def _ticket(self, now: float) -> Ticket:
        """Return the ticket of a request just admitted (the breaker's probe, maybe)."""
        return Ticket(self, now, self.breaker is not None and self.breaker.sent())

    def _settle(self, ticket: Ticket, outcome: Outcome) -> None:
        with self._lock:
            now = self._clock()
            self._in_flight -= 1
            if self.breaker is not None:
                self.breaker.settle(outcome, now, ticket.probe)
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
                return self._ticket(now)
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
                return self._ticket(now)
            waker.why = self._why
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

    def _held(self, seconds: float, why: str) -> None:
        with self._lock:
            setattr(self.stats, why, getattr(self.stats, why) + seconds)

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
                self._held(self._clock() - started, waker.why)
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
                self._held(self._clock() - started, waker.why)
        except BaseException:
            self._leave(waker)
            raise
