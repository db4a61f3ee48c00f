"""One typed exception hierarchy for everything that can go wrong.

Every error carries, where known, the provider, the HTTP status, the provider's own error code
and the request id, and a message that says what to do next. None of them ever carries a key.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class LlamaVisionError(Exception):
    """Base class of every error raised by llamavision.

    Attributes:
        provider: ``"aigateway"`` or ``"cloudflare"`` when the error came from a provider.
        status_code: the HTTP status of the reply, if there was one.
        code: the provider's own error code (e.g. ``"rate_limit_error"`` or ``5016``).
        request_id: the provider's request id, for support tickets.
        retryable: whether the client retries it (and may fail over).
        account_level: whether every later request of the same account would fail the same
            way (credentials, permissions, quota, licence, unknown model): batch jobs stop on
            these instead of failing item after item.

    """

    retryable: bool = False
    account_level: bool = False

    def __init__(
        self,
        message: str,
        *,
        provider: str | None = None,
        status_code: int | None = None,
        code: str | int | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.provider = provider
        self.status_code = status_code
        self.code = code
        self.request_id = request_id

    def __reduce__(self) -> tuple[object, ...]:
        # Keep every attribute across pickling (Ray sends exceptions between processes).
        return _rebuild, (type(self), self.message, self.__dict__)

    def __str__(self) -> str:
        where = [
            f"{name}={value}"
            for name, value in (
                ("provider", self.provider),
                ("status", self.status_code),
                ("code", self.code),
                ("request_id", self.request_id),
            )
            if value is not None
        ]
        return f"{self.message} [{', '.join(where)}]" if where else self.message


class ConfigurationError(LlamaVisionError):
    """The client is missing a setting (a key, an account id) or has an invalid one."""

    account_level = True


class MissingExtraError(ConfigurationError, ImportError):
    """A feature needs an optional extra that is not installed; the message names the extra.

    It is an ``ImportError`` too, so code that guards an optional import keeps working.
    """


def missing_extra(extra: str, feature: str, cause: ImportError) -> MissingExtraError:
    """Build the error for ``feature`` used without ``pip install 'llamavision[extra]'``."""
    return MissingExtraError(
        f"{feature} needs the '{extra}' extra ({cause.name or cause} is not installed): "
        f"pip install 'llamavision[{extra}]'"
    )


def unknown_parameter(name: str, known: Iterable[str], where: str, hint: str) -> ConfigurationError:
    """Return the error for a keyword nothing takes, naming the closest known one.

    Args:
        name: the keyword given.
        known: the keywords ``where`` takes.
        where: what was called, e.g. ``"ChatLlamaVision"``.
        hint: where anything else belongs (a provider-specific body field, say).

    """
    close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
    guess = f" Did you mean {close[0]!r}?" if close else ""
    return ConfigurationError(f"{where} takes no parameter {name!r}.{guess} {hint}")


class ImageError(LlamaVisionError):
    """An image could not be read, is of an unsupported type, or breaks a size limit."""


class APIStatusError(LlamaVisionError):
    """The provider answered with an error status.

    ``retry_after`` is the wait in seconds the provider asked for (``Retry-After``), if any.
    """

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs: object) -> None:
        super().__init__(message, **kwargs)  # type: ignore[arg-type]
        self.retry_after = retry_after


class BadRequestError(APIStatusError):
    """The provider rejected the request as malformed (HTTP 400 or 422)."""


class RequestTooLargeError(BadRequestError):
    """The request was too large for the provider (HTTP 413): shrink the image or history."""


class AuthenticationError(APIStatusError):
    """The key or token was missing, wrong or revoked (HTTP 401)."""

    account_level = True


class PermissionDeniedError(APIStatusError):
    """The key is valid but not allowed to do this (HTTP 403)."""

    account_level = True


class InsufficientCreditsError(APIStatusError):
    """The account has no credits left (HTTP 402)."""

    account_level = True


class NotFoundError(APIStatusError):
    """The model or route does not exist (HTTP 404, Workers AI 5007 and 3042)."""

    account_level = True


class RateLimitError(APIStatusError):
    """Too many requests (HTTP 429); retried after ``retry_after`` seconds when given."""

    retryable = True


class QuotaExceededError(RateLimitError):
    """The account's daily allocation is used up (Workers AI 3036 or 4006, OpenAI quota).

    An HTTP 429 that no retry can fix: wait for the daily reset, or upgrade the plan.
    """

    retryable = False
    account_level = True


class ServerError(APIStatusError):
    """The provider failed internally (HTTP 500); retried automatically."""

    retryable = True


class ServiceUnavailableError(APIStatusError):
    """The provider is overloaded, out of capacity, down or timed out; retried automatically.

    HTTP 408, 502, 503 and 504, and Workers AI's capacity (3040) and timeout (3007, 3008)
    errors.
    """

    retryable = True


class LicenseAgreementRequiredError(PermissionDeniedError):
    """Cloudflare wants Meta's license accepted once for this account (error 5016)."""


class APIConnectionError(LlamaVisionError):
    """The provider could not be reached, or did not answer in time; retried automatically."""

    retryable = True


class ProviderOutageError(LlamaVisionError):
    """The provider has been unreachable or failing (5xx) for longer than the client waits.

    Raised by a client with a circuit breaker (``outage_after``) instead of sending more
    requests; every later request would fail too, so a batch job stops, keeping what is done.
    """

    account_level = True


class NothingCaptionedError(LlamaVisionError):
    """A captioning run captioned no image: every one it tried failed (see the message)."""


class MalformedResponseError(LlamaVisionError):
    """The provider's reply could not be understood."""


class StreamInterruptedError(LlamaVisionError):
    """A stream broke after part of the answer had been delivered.

    ``partial_text`` holds every piece of text received before the break, so nothing is lost.
    """

    def __init__(self, message: str, *, partial_text: str = "", **kwargs: object) -> None:
        super().__init__(message, **kwargs)  # type: ignore[arg-type]
        self.partial_text = partial_text


class UnsupportedParameterWarning(UserWarning):
    """A generation parameter the chosen provider does not accept was dropped."""


ErrorKind = tuple[type[APIStatusError], str]
"""A typed error class and the hint that tells the user what to do."""

_RETRY_LATER = "try again later or set fallback_providers."
QUOTA_HINT = (
    "The account's daily allocation is used up and retrying will not help: wait for the "
    "daily reset or upgrade the plan, then run again."
)
STATUS_ERRORS: dict[int, ErrorKind] = {
    400: (BadRequestError, "Check the request: parameters, messages and tool schemas."),
    401: (AuthenticationError, "Check {key_env}: it is missing, wrong or revoked."),
    402: (InsufficientCreditsError, "Add credits to the account behind {key_env}."),
    403: (PermissionDeniedError, "Check that {key_env} is allowed to use this model."),
    404: (NotFoundError, "Check the model id ({model}) and base_url."),
    408: (ServiceUnavailableError, f"The provider timed out; {_RETRY_LATER}"),
    413: (
        RequestTooLargeError,
        "Send a smaller image (ImageOptions(max_side=..., jpeg_quality=...)) or a shorter "
        "conversation.",
    ),
    422: (BadRequestError, "Check the request: parameters, messages and tool schemas."),
    429: (
        RateLimitError,
        "Slow down: lower the concurrency, set rate_limit=... requests per minute, or raise "
        "max_retries.",
    ),
    500: (ServerError, f"The provider failed; {_RETRY_LATER}"),
    502: (ServiceUnavailableError, f"The provider is unavailable; {_RETRY_LATER}"),
    503: (ServiceUnavailableError, f"The provider is overloaded; {_RETRY_LATER}"),
    504: (ServiceUnavailableError, f"The provider timed out; {_RETRY_LATER}"),
}


def status_error(
    status: int,
    provider_message: str,
    *,
    provider: str,
    key_env: str,
    code: str | int | None = None,
    request_id: str | None = None,
    retry_after: float | None = None,
    kind: ErrorKind | None = None,
    model: str | None = None,
) -> APIStatusError:
    """Build the typed error for an HTTP error reply, with what to do next.

    Args:
        status: the HTTP status.
        provider_message: what the provider said, verbatim.
        provider: the provider's name, as users pass it.
        key_env: the environment variable(s) holding the credential, for the hint.
        code: the provider's own error code.
        request_id: the provider's request id.
        retry_after: seconds the provider asked to wait (``Retry-After``).
        kind: the error class and hint, when the provider's own code says more than the
            status; by default they follow the status.
        model: the model id that was requested, named in hints.

    """
    if kind is None:
        default = STATUS_ERRORS[500] if status >= 500 else STATUS_ERRORS[400]
        kind = STATUS_ERRORS.get(status, default)
    cls, hint = kind
    hint = hint.format(key_env=key_env, model=model or "as configured")
    return cls(
        f"{provider} returned HTTP {status}: {provider_message} {hint}",
        provider=provider,
        status_code=status,
        code=code,
        request_id=request_id,
        retry_after=retry_after,
    )


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Parse a ``Retry-After`` header (delay in seconds, or an HTTP date) into seconds.

    Returns ``None`` when the header is absent or unreadable.
    """
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    import time
    from email.utils import parsedate_to_datetime

    try:
        when = parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when - (time.time() if now is None else now))


def _rebuild(
    cls: type[LlamaVisionError], message: str, attributes: dict[str, object]
) -> LlamaVisionError:
    error = cls.__new__(cls)
    Exception.__init__(error, message)
    error.__dict__.update(attributes)
    return error
