"""The retry policy: what to do after a failed attempt, decided without I/O.

:meth:`RetryPolicy.step` looks at the error, the attempt number and whether another provider
is left, and returns a :class:`Step`: retry after a delay, fail over to the next provider,
accept the model's license and retry, or raise. The client's sync and async loops carry the
step out (sleep, switch endpoint, send the license request); they decide nothing themselves.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from llamavision.errors import LicenseAgreementRequiredError, LlamaVisionError
from llamavision.ratelimit import is_throttle

Action = Literal["retry", "failover", "accept_license", "raise"]


@dataclass(frozen=True)
class Step:
    """What to do after a failed attempt.

    Attributes:
        action: ``"retry"`` the same provider after ``delay`` seconds, ``"failover"`` to the
            next provider, ``"accept_license"`` then retry at once, or ``"raise"`` the error.
        delay: seconds to wait before a retry (``0`` when a rate-limit answer's
            ``Retry-After`` is waited out by the provider's governor, for every caller).

    """

    action: Action
    delay: float = 0.0


@dataclass(frozen=True)
class RetryPolicy:
    """Retries with exponential backoff and jitter, ``Retry-After`` and failover.

    Args:
        max_retries: retries of one provider after its first attempt.
        backoff: the first backoff in seconds; doubles each retry, times a jitter in
            ``[0.5, 1.5)``.
        max_wait: the longest ``Retry-After`` honoured; a longer one fails over or raises.
        accept_license: accept a model's license when a provider asks for it (once).
        jitter: the random source, in ``[0, 1)`` (a fixed one makes delays exact in tests).

    """

    max_retries: int = 2
    backoff: float = 0.5
    max_wait: float = 60.0
    accept_license: bool = False
    jitter: Callable[[], float] = field(default=random.random, repr=False, compare=False)

    def step(
        self,
        error: LlamaVisionError,
        attempt: int,
        *,
        last_provider: bool,
        license_accepted: bool = False,
    ) -> Step:
        """Decide what follows ``error`` on the ``attempt``-th retry (0 for the first try).

        Args:
            error: the typed error of the failed attempt.
            attempt: how many retries of this provider came before.
            last_provider: no provider is left to fail over to.
            license_accepted: this provider's license was already accepted by this client
                (by another call, maybe while this one was in flight: a refusal is then
                retried within ``max_retries``, and raised after).

        """
        if isinstance(error, LicenseAgreementRequiredError):
            if not self.accept_license:
                return Step("raise")
            if not license_accepted:
                return Step("accept_license")
            return Step("retry") if attempt < self.max_retries else Step("raise")
        delay = self.retry_delay(error, attempt)
        if delay is not None:
            return Step("retry", delay)
        if error.retryable and not last_provider:
            return Step("failover")
        return Step("raise")

    def retry_delay(self, error: LlamaVisionError, attempt: int) -> float | None:
        """Return the seconds to wait before retrying the same provider, or ``None`` not to."""
        if not error.retryable or attempt >= self.max_retries:
            return None
        retry_after = getattr(error, "retry_after", None)
        if retry_after is not None:
            if retry_after > self.max_wait:
                return None
            return 0.0 if is_throttle(error) else float(retry_after)
        return float(self.backoff * 2**attempt * (0.5 + self.jitter()))
