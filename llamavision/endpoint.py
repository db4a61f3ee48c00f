"""Endpoints: where a request goes, with which credential, and the HTTP plumbing around it.

An :class:`Endpoint` is one configured provider (its codec, URL, model, credential, price and
rate governor). This module builds endpoints from arguments and the environment, checks the
headers they send, keeps their secrets out of errors (:class:`Redactor`), and turns httpx's
transport failures and error replies into typed errors. Which variables and headers a
provider uses is asked of its codec.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
from pydantic import SecretStr

from llamavision._version import __version__
from llamavision.errors import APIConnectionError, ConfigurationError, LlamaVisionError
from llamavision.messages import ChatRequest, ChatResult, Image, Price, StreamDelta
from llamavision.providers import PROVIDERS, Codec
from llamavision.providers.codec import CloudflareGateway
from llamavision.ratelimit import Governor, RateGovernor

logger = logging.getLogger("llamavision")
T = TypeVar("T")
E = TypeVar("E", bound=LlamaVisionError)
SECRET_WINDOW = 12
"""Redaction also removes any run of this many characters of a credential (a partial echo)."""


@dataclass(frozen=True)
class Endpoint:
    """One configured provider: where to send, with which credential and model."""

    provider: str
    codec: Codec
    base_url: str
    model: str
    api_key: SecretStr = dataclasses.field(repr=False)
    price: Price
    governor: Governor = dataclasses.field(default_factory=RateGovernor, compare=False)
    extra_headers: Mapping[str, str] = dataclasses.field(default_factory=dict, repr=False)
    gateway: CloudflareGateway | None = None
    credential: str = ""
    """Where the credential came from, as error hints name it (a variable or an argument)."""

    def headers(
        self, call: Mapping[str, str] | None = None, *, cache: bool = True
    ) -> dict[str, str]:
        """Return the request headers: ours, the configured ones, this call's, the credential.

        ``cache=False`` keeps an internal request out of a gateway's cache.
        """
        gateway = self.codec.gateway_headers(self.gateway, cache=cache) if self.gateway else {}
        return {
            "User-Agent": f"llamavision/{__version__}",
            **self.extra_headers,
            **gateway,
            **(call or {}),
            **self.codec.auth_headers(self.api_key.get_secret_value()),
        }

    def secrets(self) -> list[str]:
        """Return the credentials this endpoint sends, to keep them out of errors and logs."""
        token = self.gateway.token if self.gateway else None
        return [s.get_secret_value() for s in (self.api_key, token) if s is not None]

    def finish(self, result: ChatResult | StreamDelta, headers: httpx.Headers) -> None:
        """Complete a result with what this endpoint and the response headers say (cost)."""
        result.provider = self.provider
        result.model = result.model or self.model
        result.request_id = headers.get(self.codec.REQUEST_ID_HEADER) or result.request_id
        result.metadata = self.codec.response_metadata(headers)
        if result.usage is not None:
            free = self.codec.served_from_cache(headers)
            result.cost = 0.0 if free else self.price.cost(result.usage)

    def status_error(self, response: httpx.Response) -> LlamaVisionError:
        """Return the typed error of an HTTP error reply (its body read)."""
        return self.codec.error_from(
            response.status_code,
            response.headers,
            response.content,
            model=self.model,
            credential=self.credential or None,
        )

    def connection_error(self, exc: Exception) -> APIConnectionError:
        """Return the typed error of a transport failure (retryable)."""
        kind = "timed out" if isinstance(exc, httpx.TimeoutException) else "could not be reached"
        return APIConnectionError(
            f"{self.provider} {kind} at {self.base_url} ({type(exc).__name__}: {exc}). Check "
            "the network and base_url, or raise timeout.",
            provider=self.provider,
        )


def make_endpoint(
    provider: str,
    *,
    api_key: str | SecretStr | None = None,
    account_id: str | None = None,
    base_url: str | None = None,
    model: str | None = None,
    price: Price | None = None,
    governor: Governor | None = None,
    default_headers: Mapping[str, str] | None = None,
    gateway: CloudflareGateway | None = None,
) -> Endpoint:
    """Configure one provider from arguments, falling back to the environment.

    Raises:
        ConfigurationError: the provider is unknown, a credential is missing, or a header
            would replace the credential.

    """
    codec = PROVIDERS.get(provider)
    if codec is None:
        raise ConfigurationError(
            f"Unknown provider {provider!r}: use one of {', '.join(map(repr, PROVIDERS))}."
        )
    key = api_key if api_key is not None else os.environ.get(codec.KEY_ENV)
    key = None if key is None else credential(key, f"{provider} credential ({codec.KEY_ENV})")
    if key is None or not key.get_secret_value():
        raise ConfigurationError(
            f"No credential for {provider}: set the {codec.KEY_ENV} environment variable or "
            "pass api_key=...",
            provider=provider,
        )
    headers = check_headers(default_headers)
    if codec.GATEWAY_BASE_URL is None:
        gateway = None  # a gateway fronts only the providers that can be routed through it
    if gateway is not None:
        check_header_values(codec.gateway_headers(gateway))  # e.g. a cache key with a newline
        url = (
            base_url
            or os.environ.get(str(codec.GATEWAY_BASE_URL_ENV))
            or str(codec.GATEWAY_BASE_URL)
        )
        url = url.replace("{gateway_id}", gateway.gateway_id)
    else:
        url = base_url or os.environ.get(codec.BASE_URL_ENV) or codec.DEFAULT_BASE_URL
    if "{account_id}" in url and codec.ACCOUNT_ENV:
        account = account_id or os.environ.get(codec.ACCOUNT_ENV)
        if not account:
            raise ConfigurationError(
                f"No account id for {provider}: set the {codec.ACCOUNT_ENV} environment "
                "variable or pass account_id=...",
                provider=provider,
            )
        url = url.replace("{account_id}", account)
    return Endpoint(
        provider=provider,
        codec=codec,
        base_url=url.rstrip("/"),
        model=model or codec.DEFAULT_MODEL,
        api_key=key,
        price=price or codec.PRICE,
        governor=governor or RateGovernor(),
        extra_headers=headers,
        gateway=gateway,
        credential=codec.KEY_ENV if api_key is None else "the api_key you passed",
    )


def gateway_from(
    providers: Sequence[str],
    gateway_id: str | None,
    token: str | SecretStr | None,
    **options: Any,
) -> CloudflareGateway | None:
    """Return the Cloudflare AI Gateway the settings and the environment ask for, if any.

    Raises:
        ConfigurationError: gateway options without a gateway id, or a gateway id for
            providers none of which can be routed through a gateway.

    """
    # the codec that can be routed through a gateway names the gateway's variables
    names = next(codec for codec in PROVIDERS.values() if codec.GATEWAY_ENV)
    id_env, token_env = str(names.GATEWAY_ENV), str(names.GATEWAY_TOKEN_ENV)
    explicit = gateway_id is not None
    gateway_id = gateway_id or os.environ.get(id_env) or None
    if gateway_id is None:
        given = [k for k, v in options.items() if v not in (None, False)]
        if given or token is not None:
            raise ConfigurationError(
                f"gateway_{(given or ['token'])[0]} configures Cloudflare AI Gateway: set "
                f"gateway_id (or {id_env}) too."
            )
        return None
    if not any(getattr(PROVIDERS.get(name), "GATEWAY_BASE_URL", None) for name in providers):
        if explicit:
            raise ConfigurationError(
                "gateway_id routes provider='cloudflare' through Cloudflare AI Gateway (the "
                "Cloudflare product); the AI Gateway provider needs no gateway_id."
            )
        return None
    token = token if token is not None else os.environ.get(token_env)
    secret = None if token is None else credential(token, "Cloudflare AI Gateway token")
    return CloudflareGateway(gateway_id, secret or None, **options)


_CREDENTIAL_HEADERS = frozenset(h for c in PROVIDERS.values() for h in c.CREDENTIAL_HEADERS)
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an HTTP header name (RFC 9110)
_SENDABLE = re.compile(r"[\x20-\x7e]*")  # what a header value may hold: visible ASCII and space


def credential(value: str | SecretStr, what: str) -> SecretStr:
    """Return a credential without surrounding whitespace, refusing one that cannot be sent.

    Keys read from a CRLF ``.env`` file or a secret file often end in a carriage return or a
    newline: surrounding whitespace is stripped. A control or non-ASCII character inside is
    refused, without showing it.

    Raises:
        ConfigurationError: the credential holds a character no HTTP header can carry.

    """
    text = (value.get_secret_value() if isinstance(value, SecretStr) else value).strip()
    if is_mask(text):
        raise ConfigurationError(
            f"The {what} is {text!r}, the mask a dump writes in place of a secret, not the "
            "secret: pass the real value (or leave it out to read it from the environment)."
        )
    if not _SENDABLE.fullmatch(text):
        raise ConfigurationError(
            f"The {what} holds a control or non-ASCII character (not shown here), so it cannot "
            "be sent in an HTTP header: check the variable or file it comes from."
        )
    return SecretStr(text)


def is_mask(text: str) -> bool:
    """Return whether ``text`` is a masked secret (all asterisks, as pydantic dumps one)."""
    return len(text) >= 3 and text.strip("*") == ""


def check_header_values(headers: Mapping[str, str]) -> dict[str, str]:
    """Return headers whose names and values can be sent, without surrounding whitespace.

    Raises:
        ConfigurationError: a name is not an HTTP token, or a value holds a control or
            non-ASCII character (the value is not shown: it may be a secret).

    """
    out = {}
    for name, value in headers.items():
        if not isinstance(name, str) or not _TOKEN.fullmatch(name):
            raise ConfigurationError(f"{name!r} is not a valid HTTP header name.")
        text = value.strip() if isinstance(value, str) else None
        if text is None or not _SENDABLE.fullmatch(text):
            raise ConfigurationError(
                f"The value of the header {name!r} holds a control or non-ASCII character "
                "(not shown here), so it cannot be sent: headers carry visible ASCII only."
            )
        out[name] = text
    return out


def check_headers(headers: Mapping[str, str] | None) -> dict[str, str]:
    """Return user headers as a dict, refusing any that would replace a credential.

    Raises:
        ConfigurationError: a header is a credential header, or cannot be sent (see
            :func:`check_header_values`).

    """
    out = check_header_values(headers or {})
    for name in out:
        if name.lower() in _CREDENTIAL_HEADERS:
            raise ConfigurationError(
                f"The header {name!r} would replace a credential: pass the key as api_key "
                "(or the Cloudflare AI Gateway token as gateway_token) instead."
            )
    return out


class Redactor:
    """Keeps the credentials of some endpoints out of errors, log lines and causes.

    Every error a client raises passes through :meth:`redact`: its message, arguments, code
    and request id never carry a configured credential, whole, escaped or in part (any
    :data:`SECRET_WINDOW` characters of it), and a cause or context that shows one is dropped
    from the chain (tracebacks print those too).
    """

    def __init__(self, endpoints: Sequence[Endpoint]) -> None:
        secrets = {secret for ep in endpoints for secret in ep.secrets()}
        secrets |= {s.encode("unicode_escape").decode("ascii") for s in secrets}
        self._secrets = sorted((s for s in secrets if len(s) >= 4), key=len, reverse=True)

    def redact(self, error: E) -> E:
        """Remove the secrets from ``error`` (a server may echo the key back); return it."""
        clean = self.clean
        error.message = clean(error.message)
        error.args = tuple(clean(a) for a in error.args)
        error.code = clean(error.code)
        error.request_id = clean(error.request_id)
        if error.__cause__ is not None and self.safe_cause(error.__cause__) is None:
            error.__cause__, error.__suppress_context__ = None, True
        if error.__context__ is not None and self.safe_cause(error.__context__) is None:
            error.__context__ = None
        return error

    def safe_cause(self, exc: BaseException) -> BaseException | None:
        """Return ``exc`` to chain as a cause, or ``None`` if its chain shows a secret."""
        seen: BaseException | None = exc
        while seen is not None:
            text = f"{seen} {seen.args!r}"
            if self.clean(text) != text:
                return None
            seen = seen.__cause__ or seen.__context__
        return exc

    def clean(self, value: T) -> T:
        """Return ``value`` with the secrets replaced, if it is text."""
        if isinstance(value, str):
            for secret in self._secrets:
                value = value.replace(secret, "[redacted]")  # type: ignore[assignment]
                for i in range(len(secret) - SECRET_WINDOW + 1):
                    value = value.replace(secret[i : i + SECRET_WINDOW], "[redacted]")  # type: ignore[assignment]
        return value


def has_images(request: ChatRequest) -> bool:
    """Return whether any message of ``request`` holds an image."""
    return any(isinstance(p, Image) for m in request.messages for p in m.parts)


def warn_if_empty(
    ep: Endpoint, request: ChatRequest, request_id: str | None, redactor: Redactor
) -> None:
    """Warn about an empty answer to an image request (reported as a silent failure)."""
    if has_images(request):
        logger.warning(
            "%s returned an empty answer (no text, no tool call) to a request with an image "
            "(request id %s). Such silent empties are reported for image requests; check the "
            "image%s, or ask again.",
            ep.provider,
            redactor.clean(request_id),
            ep.codec.EMPTY_ANSWER_HINT,
        )


_EMPTY = httpx.ByteStream(b"")


def unlink(response: httpx.Response) -> None:
    """Break httpx's response <-> stream cycle once a response is closed.

    Without it the request, whose body carries the image (hundreds of kB), lives until the
    next garbage collection; under load and on long runs that backlog is what peak memory
    measures.
    """
    response.stream = _EMPTY


def send(call: Callable[[], httpx.Response], ep: Endpoint) -> httpx.Response:
    """Run ``call`` (an httpx request), turning a transport failure into a typed error."""
    try:
        return call()
    except httpx.TransportError as exc:
        raise ep.connection_error(exc) from exc


async def asend(call: Awaitable[httpx.Response], ep: Endpoint) -> httpx.Response:
    """Async form of :func:`send`."""
    try:
        return await call
    except httpx.TransportError as exc:
        raise ep.connection_error(exc) from exc
