"""One typed exception hierarchy for everything that can go wrong.

Every error carries, where known, the provider, the HTTP status, the provider's own error code
and the request id, and a message that says what to do next. None of them ever carries a key.
"""

from __future__ import annotations


class LlamaVisionError(Exception):
    """Base class of every error raised by llamavision.

    Attributes:
        provider: ``"aigateway"`` or ``"cloudflare"`` when the error came from a provider.
        status_code: the HTTP status of the reply, if there was one.
        code: the provider's own error code (e.g. ``"rate_limit_error"`` or ``5016``).
        request_id: the provider's request id, for support tickets.

    """

    retryable: bool = False

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


class ImageError(LlamaVisionError):
    """An image could not be read, is of an unsupported type, or breaks a size limit."""


class APIStatusError(LlamaVisionError):
    """The provider answered with an error status."""


class BadRequestError(APIStatusError):
    """The provider rejected the request as malformed (HTTP 400 or 422)."""


class AuthenticationError(APIStatusError):
    """The key or token was missing, wrong or revoked (HTTP 401)."""


class PermissionDeniedError(APIStatusError):
    """The key is valid but not allowed to do this (HTTP 403)."""


class InsufficientCreditsError(APIStatusError):
    """The account has no credits left (HTTP 402)."""


class NotFoundError(APIStatusError):
    """The model or route does not exist (HTTP 404)."""


class RateLimitError(APIStatusError):
    """Too many requests (HTTP 429); ``retry_after`` is the wait the provider asked for, if any."""

    retryable = True

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs: object) -> None:
        super().__init__(message, **kwargs)  # type: ignore[arg-type]
        self.retry_after = retry_after


class ServerError(APIStatusError):
    """The provider failed internally (HTTP 500); retried automatically."""

    retryable = True


class ServiceUnavailableError(APIStatusError):
    """The provider is overloaded or down (HTTP 502, 503, 504); retried automatically."""

    retryable = True


class LicenseAgreementRequiredError(PermissionDeniedError):
    """Cloudflare wants Meta's license accepted once for this account (error 5016)."""


class APIConnectionError(LlamaVisionError):
    """The provider could not be reached, or did not answer in time; retried automatically."""

    retryable = True


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


_STATUS_ERRORS: dict[int, tuple[type[APIStatusError], str]] = {
    400: (BadRequestError, "Check the request: parameters, messages and tool schemas."),
    401: (AuthenticationError, "Check {key_env}: it is missing, wrong or revoked."),
    402: (InsufficientCreditsError, "Add credits to the account behind {key_env}."),
    403: (PermissionDeniedError, "Check that {key_env} is allowed to use this model."),
    404: (NotFoundError, "Check the model id and base_url."),
    422: (BadRequestError, "Check the request: parameters, messages and tool schemas."),
    429: (RateLimitError, "Slow down (lower concurrency) or raise max_retries."),
    500: (ServerError, "The provider failed; try again later or set fallback_providers."),
    502: (
        ServiceUnavailableError,
        "The provider is unavailable; try again later or set fallback_providers.",
    ),
    503: (
        ServiceUnavailableError,
        "The provider is overloaded; try again later or set fallback_providers.",
    ),
    504: (
        ServiceUnavailableError,
        "The provider timed out; try again later or set fallback_providers.",
    ),
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
) -> APIStatusError:
    """Build the typed error for an HTTP error status, with what to do next.

    Args:
        status: the HTTP status.
        provider_message: what the provider said, verbatim.
        provider: the provider's name, as users pass it.
        key_env: the environment variable(s) holding the credential, for the hint.
        code: the provider's own error code.
        request_id: the provider's request id.
        retry_after: seconds the provider asked to wait (429 and 503).

    """
    default = (ServerError, _STATUS_ERRORS[500][1]) if status >= 500 else _STATUS_ERRORS[400]
    cls, hint = _STATUS_ERRORS.get(status, default)
    message = (
        f"{provider} returned HTTP {status}: {provider_message} {hint.format(key_env=key_env)}"
    )
    kwargs: dict[str, object] = {
        "provider": provider,
        "status_code": status,
        "code": code,
        "request_id": request_id,
    }
    if cls is RateLimitError:
        return RateLimitError(message, retry_after=retry_after, **kwargs)
    return cls(message, **kwargs)  # type: ignore[arg-type]


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
