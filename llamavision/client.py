"""``LlamaVisionClient``: one httpx client per instance, retries, failover, streaming.

Sync and async share everything but the I/O: the codecs, the retry policy, image preparation
and the decoration of results. Streams are never buffered: each delta is yielded as it arrives,
and once one has reached the caller nothing is retried.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import os
import random
import re
import threading
import time
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Generator,
    Iterator,
    Mapping,
    Sequence,
)
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, TypeVar

import httpx
from pydantic import SecretStr

from llamavision import __version__, downloads, tracing
from llamavision.errors import (
    APIConnectionError,
    ConfigurationError,
    ImageError,
    LicenseAgreementRequiredError,
    LlamaVisionError,
    MalformedResponseError,
    StreamInterruptedError,
)
from llamavision.images import (
    ImageOptions,
    RemoteImage,
    ResolvedImage,
    compose_grid,
    load_image_bytes,
    resolve_image,
)
from llamavision.messages import (
    ChatRequest,
    ChatResult,
    GenerationParams,
    Image,
    Message,
    Part,
    Price,
    StreamDelta,
    Tool,
    ToolChoice,
)
from llamavision.providers import PROVIDERS, Codec
from llamavision.providers.codec import CloudflareGateway
from llamavision.ratelimit import Governor, RateGovernor, RateStats, Releasable, is_throttle
from llamavision.streams import AsyncChatStream, ChatStream

logger = logging.getLogger("llamavision")
T = TypeVar("T")
E = TypeVar("E", bound=LlamaVisionError)
MultiImage = Literal["error", "latest", "grid"]
Messages = str | Message | Sequence[Message]
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
            "Authorization": f"Bearer {self.api_key.get_secret_value()}",
        }

    def secrets(self) -> list[str]:
        """Return the credentials this endpoint sends, to keep them out of errors and logs."""
        token = self.gateway.token if self.gateway else None
        return [s.get_secret_value() for s in (self.api_key, token) if s is not None]


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
    )


def _gateway(
    providers: Sequence[str],
    gateway_id: str | None,
    token: str | SecretStr | None,
    **options: Any,
) -> CloudflareGateway | None:
    """Return the Cloudflare AI Gateway the settings and the environment ask for, if any."""
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
    if not _SENDABLE.fullmatch(text):
        raise ConfigurationError(
            f"The {what} holds a control or non-ASCII character (not shown here), so it cannot "
            "be sent in an HTTP header: check the variable or file it comes from."
        )
    return SecretStr(text)


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
        if name.lower() in ("authorization", "cf-aig-authorization"):
            raise ConfigurationError(
                f"The header {name!r} would replace a credential: pass the key as api_key "
                "(or the Cloudflare AI Gateway token as gateway_token) instead."
            )
    return out


class LlamaVisionClient:
    """Chat with Llama 3.2 11B Vision on AI Gateway or Cloudflare Workers AI.

    Args:
        provider: ``"aigateway"`` (default) or ``"cloudflare"``.
        api_key: the credential; defaults to ``AIGATEWAY_API_KEY`` or ``CLOUDFLARE_API_TOKEN``.
        account_id: Cloudflare account id; defaults to ``CLOUDFLARE_ACCOUNT_ID``.
        base_url: override the endpoint (any OpenAI-compatible server for ``aigateway``;
            a ``.../ai/run`` or Cloudflare AI Gateway ``.../workers-ai`` URL for
            ``cloudflare``). Defaults to ``AIGATEWAY_BASE_URL`` / ``CLOUDFLARE_BASE_URL``,
            then the provider's public URL.
        model: the model id, if not the provider's id of Llama 3.2 11B Vision.
        timeout: seconds allowed per request.
        max_retries: retries of 429, 500, 502, 503, 504 and connection errors.
        retry_backoff: first backoff in seconds; doubles each retry, with jitter.
        max_retry_wait: longest ``Retry-After`` honoured; a longer one fails over or raises.
        max_concurrency: most requests in flight at once, per provider, whoever sends them
            (threads, tasks); ``None`` for no fixed maximum. Halved on a rate-limit answer,
            then grown back by one per success.
        rate_limit: requests per minute to stay under, per provider (a token bucket), e.g.
            Workers AI's published 300; ``None`` to learn the limit from 429 answers. Either
            way a 429's ``Retry-After`` pauses every caller of this client.
        governor: a governor for the primary provider shared beyond this client (such as
            ``llamavision.ray``'s, shared by the actors of a job); replaces
            ``max_concurrency`` and ``rate_limit`` for it.
        fallback_providers: providers tried in order (configured from the environment) when
            the previous one fails with a retryable error before anything was streamed.
        accept_license: on Cloudflare, accept Meta's license once if the account has not.
        multi_image: several images in one conversation: ``"error"``, ``"latest"`` or
            ``"grid"``.
        image_transport: on Cloudflare, send the image as an ``image_url`` part of the
            message (default) or in the top-level ``image`` field, the schema's other
            transport; other providers always use ``image_url``.
        image_options: how images are validated, downscaled and encoded.
        prices: USD prices per provider, overriding the defaults.
        default_headers: HTTP headers sent with every provider request (never the
            credential's: ``Authorization`` is refused, pass ``api_key``).
        gateway_id: route ``provider="cloudflare"`` through Cloudflare AI Gateway (the
            Cloudflare product, not the AI Gateway provider); defaults to
            ``CLOUDFLARE_GATEWAY_ID``.
        gateway_token: the token of an authenticated gateway; defaults to
            ``CLOUDFLARE_AI_GATEWAY_AUTH``.
        gateway_cache_ttl: seconds the gateway answers an identical request from its cache
            (a cache hit costs nothing).
        gateway_skip_cache: bypass the gateway's cache.
        gateway_cache_key: a cache key of your own.
        gateway_metadata: tags for the gateway's logs (a flat dict).
        tracer_provider: an OpenTelemetry tracer provider; by default the application's
            global one (no spans, at the cost of one check, when none is configured).
        trace_content: record prompts and answers in spans (images only as their type).
        http_client: an ``httpx.Client`` to use instead of the client's own.
        http_async_client: an ``httpx.AsyncClient`` to use instead of the client's own.

    Raises:
        ConfigurationError: a credential or account id is missing (no request is sent).

    Example:
        .. code-block:: python

            with LlamaVisionClient() as client:
                result = client.chat([Message.user("What is this?", image="cat.jpg")])
                print(result.text)

    """

    def __init__(
        self,
        provider: str = "aigateway",
        *,
        api_key: str | SecretStr | None = None,
        account_id: str | None = None,
        base_url: str | None = None,
        model: str | None = None,
        timeout: float = 60.0,
        max_retries: int = 2,
        retry_backoff: float = 0.5,
        max_retry_wait: float = 60.0,
        max_concurrency: int | None = None,
        rate_limit: float | None = None,
        governor: Governor | None = None,
        fallback_providers: Sequence[str] = (),
        accept_license: bool = False,
        multi_image: MultiImage = "error",
        image_transport: Literal["image_url", "image"] = "image_url",
        image_options: ImageOptions | None = None,
        prices: Mapping[str, Price] | None = None,
        default_headers: Mapping[str, str] | None = None,
        gateway_id: str | None = None,
        gateway_token: str | SecretStr | None = None,
        gateway_cache_ttl: int | None = None,
        gateway_skip_cache: bool = False,
        gateway_cache_key: str | None = None,
        gateway_metadata: Mapping[str, str | int | float | bool] | None = None,
        tracer_provider: Any = None,
        trace_content: bool = False,
        http_client: httpx.Client | None = None,
        http_async_client: httpx.AsyncClient | None = None,
    ) -> None:
        if multi_image not in ("error", "latest", "grid"):
            raise ConfigurationError(
                f"multi_image must be 'error', 'latest' or 'grid', not {multi_image!r}."
            )
        if image_transport not in ("image_url", "image"):
            raise ConfigurationError(
                f"image_transport must be 'image_url' or 'image', not {image_transport!r}."
            )
        self.image_field = image_transport == "image"
        self.tracer_provider = tracer_provider
        self.trace_content = trace_content
        prices = prices or {}

        def make_governor() -> RateGovernor:
            try:
                return RateGovernor(
                    max_concurrency=max_concurrency,
                    rate_limit=rate_limit,
                    max_pause=max_retry_wait,
                )
            except ValueError as exc:
                raise ConfigurationError(str(exc)) from None

        names = [provider, *fallback_providers]
        gateway = _gateway(
            names,
            gateway_id,
            gateway_token,
            cache_ttl=gateway_cache_ttl,
            skip_cache=gateway_skip_cache,
            cache_key=gateway_cache_key,
            metadata=gateway_metadata,
        )
        self.endpoints: tuple[Endpoint, ...] = tuple(
            make_endpoint(
                name,
                api_key=api_key if i == 0 else None,
                account_id=account_id,
                base_url=base_url if i == 0 else None,
                model=model if i == 0 else None,
                price=prices.get(name),
                governor=(governor if i == 0 else None) or make_governor(),
                default_headers=default_headers,
                gateway=gateway,
            )
            for i, name in enumerate(names)
        )
        self.timeout = timeout
        self.max_retries = max_retries
        self.retry_backoff = retry_backoff
        self.max_retry_wait = max_retry_wait
        self.accept_license = accept_license
        self.multi_image: MultiImage = multi_image
        self.image_options = image_options or ImageOptions()
        self._http = http_client
        self._ahttp = http_async_client
        self._owns_http = http_client is None
        self._owns_ahttp = http_async_client is None
        self._aloop: asyncio.AbstractEventLoop | None = None
        self._dl: httpx.Client | None = None  # image downloads: no credentials, checked
        self._adl: httpx.AsyncClient | None = None
        self._adl_loop: asyncio.AbstractEventLoop | None = None
        self._agreed: set[str] = set()
        self._lock = threading.Lock()

    @property
    def provider(self) -> str:
        """The primary provider's name."""
        return self.endpoints[0].provider

    @property
    def model(self) -> str:
        """The primary provider's model id."""
        return self.endpoints[0].model

    def redact(self, error: E) -> E:
        """Remove this client's secrets from an error (a server may echo the key back).

        Every error the client raises passes through here: its message, arguments, code and
        request id never carry a configured credential, whole, escaped or in part (any
        :data:`SECRET_WINDOW` characters of it), and a cause or context that shows one is
        dropped from the chain (tracebacks print those too).
        """
        clean = self._clean
        error.message = clean(error.message)
        error.args = tuple(clean(a) for a in error.args)
        error.code = clean(error.code)
        error.request_id = clean(error.request_id)
        if error.__cause__ is not None and self._safe_cause(error.__cause__) is None:
            error.__cause__, error.__suppress_context__ = None, True
        if error.__context__ is not None and self._safe_cause(error.__context__) is None:
            error.__context__ = None
        return error

    def _safe_cause(self, exc: BaseException) -> BaseException | None:
        """Return ``exc`` to chain as a cause, or ``None`` if its chain shows a secret."""
        seen: BaseException | None = exc
        while seen is not None:
            text = f"{seen} {seen.args!r}"
            if self._clean(text) != text:
                return None
            seen = seen.__cause__ or seen.__context__
        return exc

    def _clean(self, value: T) -> T:
        """Return ``value`` with this client's secrets replaced, if it is text."""
        if isinstance(value, str):
            secrets = {secret for ep in self.endpoints for secret in ep.secrets()}
            secrets |= {s.encode("unicode_escape").decode("ascii") for s in secrets}
            for secret in sorted((s for s in secrets if len(s) >= 4), key=len, reverse=True):
                value = value.replace(secret, "[redacted]")  # type: ignore[assignment]
                for i in range(len(secret) - SECRET_WINDOW + 1):
                    value = value.replace(secret[i : i + SECRET_WINDOW], "[redacted]")  # type: ignore[assignment]
        return value

    @property
    def rate_stats(self) -> RateStats:
        """What rate limiting has cost this client so far, over all its providers."""
        stats = [ep.governor.stats for ep in self.endpoints]
        return RateStats(sum(s.rate_limited for s in stats), sum(s.waited for s in stats))

    def __repr__(self) -> str:
        return (
            f"LlamaVisionClient(provider={self.provider!r}, model={self.model!r}, "
            f"base_url={self.endpoints[0].base_url!r})"
        )

    # ----------------------------------------------------------------- public, sync

    def chat(
        self,
        messages: Messages,
        *,
        tools: Sequence[Tool] = (),
        tool_choice: ToolChoice | None = None,
        params: GenerationParams | None = None,
        extra_headers: Mapping[str, str] | None = None,
        **overrides: Any,
    ) -> ChatResult:
        """Send a conversation and return the complete answer.

        Args:
            messages: the conversation (a string is one user message).
            tools: tools the model may call.
            tool_choice: ``"auto"``, ``"none"``, ``"required"`` or a tool's name.
            params: sampling parameters.
            extra_headers: HTTP headers for this call only (added to ``default_headers``).
            **overrides: fields of :class:`GenerationParams` (``temperature=0.2``) that
                override ``params``.

        Raises:
            LlamaVisionError: a typed subclass saying what went wrong and what to do.

        """
        request = self._request(
            messages, tools, tool_choice, params, overrides, extra_headers, stream=False
        )
        call = self._trace(request)
        try:
            with call.current():
                result = self._retrying(self._image_resolver(request), self._chat_once, call)
        except BaseException as exc:
            call.fail(exc)
            raise
        call.end(result, *self._answered_by(result))
        return result

    def stream(
        self,
        messages: Messages,
        *,
        tools: Sequence[Tool] = (),
        tool_choice: ToolChoice | None = None,
        params: GenerationParams | None = None,
        extra_headers: Mapping[str, str] | None = None,
        **overrides: Any,
    ) -> ChatStream:
        """Stream the answer, delta by delta, as it arrives.

        Text and tool-call deltas come first; the last delta carries the finish reason, usage
        and cost. Arguments are those of :meth:`chat`. The request is sent on the first
        ``next()``; the stream gives back its connection and concurrency slot when it ends,
        fails, is closed (``close()`` or ``with``) or is dropped (see :class:`ChatStream`).

        Raises:
            ConfigurationError: at once, for arguments that cannot be sent.
            StreamInterruptedError: the stream broke after text had been yielded; its
                ``partial_text`` holds that text.
            LlamaVisionError: any other failure, before anything was yielded.

        """
        request = self._request(
            messages, tools, tool_choice, params, overrides, extra_headers, stream=True
        )
        return ChatStream(self._stream(request))

    def _stream(self, request: ChatRequest) -> Generator[StreamDelta, None, None]:
        call = self._trace(request)
        try:
            with call.current():
                opened = self._retrying(self._image_resolver(request), self._open_stream, call)
        except BaseException as exc:
            call.fail(exc)
            raise
        opened.call = call  # the span ends with the stream's last chunk
        yield from opened.deltas()  # closing this closes that, which releases everything

    def close(self) -> None:
        """Close the HTTP connection pools this client created."""
        if self._http is not None and self._owns_http:
            self._http.close()
            self._http = None
        if self._dl is not None:
            self._dl.close()
            self._dl = None

    def __enter__(self) -> LlamaVisionClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ----------------------------------------------------------------- public, async

    async def achat(
        self,
        messages: Messages,
        *,
        tools: Sequence[Tool] = (),
        tool_choice: ToolChoice | None = None,
        params: GenerationParams | None = None,
        extra_headers: Mapping[str, str] | None = None,
        **overrides: Any,
    ) -> ChatResult:
        """Async form of :meth:`chat`."""
        request = self._request(
            messages, tools, tool_choice, params, overrides, extra_headers, stream=False
        )
        call = self._trace(request)
        try:
            messages_for = await self._aimage_resolver(request)
            with call.current():
                result = await self._aretrying(messages_for, self._achat_once, call)
        except BaseException as exc:
            call.fail(exc)
            raise
        call.end(result, *self._answered_by(result))
        return result

    def astream(
        self,
        messages: Messages,
        *,
        tools: Sequence[Tool] = (),
        tool_choice: ToolChoice | None = None,
        params: GenerationParams | None = None,
        extra_headers: Mapping[str, str] | None = None,
        **overrides: Any,
    ) -> AsyncChatStream:
        """Async form of :meth:`stream` (see :class:`AsyncChatStream`)."""
        request = self._request(
            messages, tools, tool_choice, params, overrides, extra_headers, stream=True
        )
        return AsyncChatStream(self._astream(request))

    async def _astream(self, request: ChatRequest) -> AsyncGenerator[StreamDelta, None]:
        call = self._trace(request)
        try:
            messages_for = await self._aimage_resolver(request)
            with call.current():
                opened = await self._aretrying(messages_for, self._aopen_stream, call)
        except BaseException as exc:
            call.fail(exc)
            raise
        opened.call = call
        deltas = opened.deltas()
        try:
            async for delta in deltas:
                yield delta
        finally:
            await deltas.aclose()  # at once, not whenever the event loop finalizes it

    async def aclose(self) -> None:
        """Close the async HTTP connection pool (and the sync one), if this client created them."""
        if self._ahttp is not None and self._owns_ahttp:
            await self._ahttp.aclose()
            self._ahttp = None
        if self._adl is not None:
            await self._adl.aclose()
            self._adl = None
        self.close()

    async def __aenter__(self) -> LlamaVisionClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # ----------------------------------------------------------------- shared helpers

    def _client(self) -> httpx.Client:
        if self._http is None:
            with self._lock:  # LangChain's batch calls a fresh client from many threads at once
                if self._http is None:
                    self._http = httpx.Client(timeout=self.timeout)
        return self._http

    def _aclient(self) -> httpx.AsyncClient:
        # An AsyncClient's connections belong to one event loop; when we own the client and
        # the loop changed (a new asyncio.run, a notebook cell), start a fresh pool.
        loop = asyncio.get_running_loop()
        if self._ahttp is None or (self._owns_ahttp and self._aloop is not loop):
            self._ahttp = httpx.AsyncClient(timeout=self.timeout)
            self._aloop = loop
        return self._ahttp

    def _request(
        self,
        messages: Messages,
        tools: Sequence[Tool],
        tool_choice: ToolChoice | None,
        params: GenerationParams | None,
        overrides: Mapping[str, Any],
        extra_headers: Mapping[str, str] | None,
        *,
        stream: bool,
    ) -> ChatRequest:
        if isinstance(messages, str):
            messages = (Message.user(messages),)
        elif isinstance(messages, Message):
            messages = (messages,)
        params = params or GenerationParams()
        if overrides:
            try:
                params = dataclasses.replace(params, **overrides)
            except TypeError as exc:
                fields = ", ".join(f.name for f in dataclasses.fields(GenerationParams))
                raise ConfigurationError(
                    f"Unknown generation parameter ({exc}). Known: {fields}; put anything "
                    "else in extra={...}."
                ) from None
        return ChatRequest(
            messages=tuple(messages),
            model=self.model,
            params=params,
            tools=tuple(tools),
            tool_choice=tool_choice,
            stream=stream,
            headers=check_headers(extra_headers),
        )

    def _retry_delay(self, error: LlamaVisionError, attempt: int) -> float | None:
        """Seconds to wait before retrying the same provider, or ``None`` to stop retrying it.

        A rate-limit answer's ``Retry-After`` is waited out by the provider's governor, for
        every caller at once, so this caller adds no delay of its own.
        """
        if not error.retryable or attempt >= self.max_retries:
            return None
        retry_after = getattr(error, "retry_after", None)
        if retry_after is not None:
            if retry_after > self.max_retry_wait:
                return None
            return 0.0 if is_throttle(error) else retry_after
        backoff = self.retry_backoff * 2**attempt
        return float(backoff * (0.5 + random.random()))

    def _next_step(
        self,
        ep: Endpoint,
        error: LlamaVisionError,
        attempt: int,
        is_last: bool,
        call: tracing.Call = tracing.NOT_TRACED,
    ) -> float | None:
        """Decide after a failure: a delay to retry ``ep``, ``None`` to move on, or raise."""
        if isinstance(error, LicenseAgreementRequiredError):
            if not self.accept_license or ep.provider in self._agreed:
                raise self.redact(error)
            return -1.0  # accept the license, then retry at once
        delay = self._retry_delay(error, attempt)
        if delay is None and (not error.retryable or is_last):
            raise self.redact(error)
        kind = type(error).__name__
        if delay is not None:
            logger.info(
                "%s failed (%s); retry %d/%d %s",
                ep.provider,
                kind,
                attempt + 1,
                self.max_retries,
                f"in {delay:.2f}s" if delay else "after the shared pause",
            )
            call.event("retry", provider=ep.provider, attempt=attempt + 1, delay=max(delay, 0.0),
                       **{"error.type": kind})  # fmt: skip
        else:
            logger.info("%s failed (%s); failing over", ep.provider, kind)
            call.event("failover", provider=ep.provider, **{"error.type": kind})
        return delay

    def _retrying(
        self,
        prepare: Callable[[Endpoint], ChatRequest],
        once: Callable[[Endpoint, ChatRequest, Releasable], T],
        call: tracing.Call,
    ) -> T:
        """Run ``once`` under each provider's governor, retrying and failing over.

        ``prepare`` gives each provider the request it can take (downloading images it cannot
        fetch) before a slot of its governor is taken: a slow download holds up no one else.
        ``once`` releases its ticket when it succeeds (a stream, when it ends); this loop
        releases it when ``once`` fails.
        """
        for i, ep in enumerate(self.endpoints):
            prepared = prepare(ep)
            attempt = 0
            while True:
                ticket = ep.governor.acquire()
                try:
                    return once(ep, prepared, ticket)
                except LlamaVisionError as error:
                    ticket.release(error)
                    delay = self._next_step(ep, error, attempt, i == len(self.endpoints) - 1, call)
                except BaseException as exc:
                    ticket.release(exc)
                    raise
                if delay is None:
                    break
                if delay < 0:
                    self._agree(ep)
                    continue
                if delay:
                    time.sleep(delay)
                attempt += 1
        raise AssertionError("unreachable: the last endpoint raises")  # pragma: no cover

    async def _aretrying(
        self,
        prepare: Callable[[Endpoint], Awaitable[ChatRequest]],
        once: Callable[[Endpoint, ChatRequest, Releasable], Awaitable[T]],
        call: tracing.Call,
    ) -> T:
        """Async form of :meth:`_retrying`."""
        for i, ep in enumerate(self.endpoints):
            prepared = await prepare(ep)
            attempt = 0
            while True:
                ticket = await ep.governor.aacquire()
                try:
                    return await once(ep, prepared, ticket)
                except LlamaVisionError as error:
                    ticket.release(error)
                    delay = self._next_step(ep, error, attempt, i == len(self.endpoints) - 1, call)
                except BaseException as exc:
                    ticket.release(exc)
                    raise
                if delay is None:
                    break
                if delay < 0:
                    await self._aagree(ep)
                    continue
                if delay:
                    await asyncio.sleep(delay)
                attempt += 1
        raise AssertionError("unreachable: the last endpoint raises")  # pragma: no cover

    def _finish(
        self,
        ep: Endpoint,
        result: ChatResult | StreamDelta,
        headers: httpx.Headers,
    ) -> None:
        result.provider = ep.provider
        result.model = result.model or ep.model
        result.request_id = headers.get(ep.codec.REQUEST_ID_HEADER) or result.request_id
        result.metadata = ep.codec.response_metadata(headers)
        if result.usage is not None:
            free = ep.codec.served_from_cache(headers)
            result.cost = 0.0 if free else ep.price.cost(result.usage)

    def _trace(self, request: ChatRequest) -> tracing.Call:
        ep = self.endpoints[0]
        return tracing.start(
            request,
            ep.provider,
            ep.codec.MAX_OUTPUT_TOKENS,
            tracer_provider=self.tracer_provider,
            content=self.trace_content,
        )

    def _answered_by(self, result: ChatResult | StreamDelta) -> tuple[str, str]:
        """Return the provider and base URL that answered (after a failover, not the first)."""
        ep = next((e for e in self.endpoints if e.provider == result.provider), self.endpoints[0])
        return ep.provider, ep.base_url

    def _empty(self, ep: Endpoint, prepared: ChatRequest, request_id: str | None) -> None:
        """Warn about an empty answer to an image request (reported as a silent failure)."""
        if self._has_images(prepared):
            logger.warning(
                "%s returned an empty answer (no text, no tool call) to a request with an "
                "image (request id %s). Such silent empties are reported for image requests; "
                "check the image%s, or ask again.",
                ep.provider,
                self._clean(request_id),
                ep.codec.EMPTY_ANSWER_HINT,
            )

    # ----------------------------------------------------------------- images

    def _local_images(self, request: ChatRequest) -> tuple[Message, ...]:
        """Resolve every image (no network), then apply the one-image policy.

        Leaves several images only for ``grid``, which the resolvers compose once remote
        images are downloaded.
        """
        opts = self.image_options
        messages = [
            dataclasses.replace(
                m,
                parts=tuple(
                    Image(resolve_image(p.source, opts)) if isinstance(p, Image) else p
                    for p in m.parts
                ),
            )
            if m.images
            else m
            for m in request.messages
        ]
        images = [i.source for m in messages for i in m.images]
        count = len({i.data if isinstance(i, ResolvedImage) else i.url for i in images})
        if count <= 1:  # no image, one image, or the same image several times: keep the last
            return self._apply_policy(tuple(messages), None)
        if self.multi_image == "error":
            raise ImageError(
                f"This conversation holds {count} images, but Llama 3.2 Vision is trained for "
                "one image per conversation. Send one image, or pass multi_image='latest' to "
                "keep only the last one, or multi_image='grid' to compose them into one "
                "labelled grid (for comparisons)."
            )
        if self.multi_image == "latest":
            return self._apply_policy(tuple(messages), None)
        return tuple(messages)

    @staticmethod
    def _has_images(request: ChatRequest) -> bool:
        return any(isinstance(p, Image) for m in request.messages for p in m.parts)

    def _apply_policy(
        self, messages: tuple[Message, ...], images: list[ResolvedImage] | None
    ) -> tuple[Message, ...]:
        """Keep one image: the last (``latest``) or a grid of all (``grid``, given resolved)."""
        total = sum(len(m.images) for m in messages)
        if total <= 1:
            return messages
        keep = compose_grid(images, self.image_options) if images is not None else None
        seen, out = 0, []
        for m in messages:
            parts: list[Part] = []
            for p in m.parts:
                if isinstance(p, Image):
                    seen += 1
                    if keep is not None and seen == 1:
                        parts.append(Image(keep))
                    elif keep is None and seen == total:
                        parts.append(p)
                    continue
                parts.append(p)
            out.append(dataclasses.replace(m, parts=tuple(parts)))
        return tuple(out)

    def _image_resolver(self, request: ChatRequest) -> Callable[[Endpoint], ChatRequest]:
        """Return a function giving each endpoint the request with images it can take."""
        if not self._has_images(request):
            return lambda ep: dataclasses.replace(request, model=ep.model)
        local = self._local_images(request)
        downloads: dict[str, ResolvedImage] = {}

        def inline(image: Image) -> ResolvedImage:
            src = image.source
            if isinstance(src, RemoteImage):
                if src.url not in downloads:
                    downloads[src.url] = self._download(src.url)
                return downloads[src.url]
            return src  # type: ignore[no-any-return]

        if sum(len(m.images) for m in local) > 1:  # only "grid" leaves several
            local = self._apply_policy(local, [inline(i) for m in local for i in m.images])

        def for_endpoint(ep: Endpoint) -> ChatRequest:
            messages = local
            if not ep.codec.FETCHES_IMAGE_URLS:
                messages = tuple(_map_images(m, lambda i: Image(inline(i))) for m in local)
            return dataclasses.replace(request, messages=messages, model=ep.model)

        return for_endpoint

    async def _aimage_resolver(
        self, request: ChatRequest
    ) -> Callable[[Endpoint], Awaitable[ChatRequest]]:
        if not self._has_images(request):

            async def plain(ep: Endpoint) -> ChatRequest:
                return dataclasses.replace(request, model=ep.model)

            return plain
        local = await _image_work(self._local_images, request)
        downloads: dict[str, ResolvedImage] = {}

        async def inline(image: Image) -> ResolvedImage:
            src = image.source
            if isinstance(src, RemoteImage):
                if src.url not in downloads:
                    downloads[src.url] = await self._adownload(src.url)
                return downloads[src.url]
            return src  # type: ignore[no-any-return]

        if sum(len(m.images) for m in local) > 1:  # only "grid" leaves several
            grid = [await inline(i) for m in local for i in m.images]
            local = await _image_work(self._apply_policy, local, grid)

        async def for_endpoint(ep: Endpoint) -> ChatRequest:
            messages = local
            if not ep.codec.FETCHES_IMAGE_URLS:
                resolved = {id(i): Image(await inline(i)) for m in local for i in m.images}
                messages = tuple(_map_images(m, lambda i: resolved[id(i)]) for m in local)
            return dataclasses.replace(request, messages=messages, model=ep.model)

        return for_endpoint

    def _download(self, url: str) -> ResolvedImage:
        if self._dl is None:
            with self._lock:
                if self._dl is None:
                    self._dl = downloads.http_client(self.image_options)
        data = downloads.download(self._dl, url, self.image_options)
        return load_image_bytes(data, self.image_options, origin=url)

    async def _adownload(self, url: str) -> ResolvedImage:
        loop = asyncio.get_running_loop()
        if self._adl is None or self._adl_loop is not loop:
            self._adl = downloads.async_http_client(self.image_options)
            self._adl_loop = loop
        data = await downloads.adownload(self._adl, url, self.image_options)
        return await _image_work(load_image_bytes, data, self.image_options, origin=url)

    # ----------------------------------------------------------------- license

    def _agree(self, ep: Endpoint) -> None:
        path, body = _license_request(ep)
        logger.warning("accepting Meta's license on %s for this account", ep.provider)
        response = _send(
            lambda: self._client().post(
                ep.base_url + path, json=body, headers=ep.headers(cache=False)
            ),
            ep,
        )
        self._after_agree(ep, response)

    async def _aagree(self, ep: Endpoint) -> None:
        path, body = _license_request(ep)
        logger.warning("accepting Meta's license on %s for this account", ep.provider)
        response = await _asend(
            self._aclient().post(ep.base_url + path, json=body, headers=ep.headers(cache=False)), ep
        )
        self._after_agree(ep, response)

    def _after_agree(self, ep: Endpoint, response: httpx.Response) -> None:
        if response.status_code >= 400:
            error = _status_error(ep, response)
            if not isinstance(error, LicenseAgreementRequiredError):
                raise self.redact(error)
        self._agreed.add(ep.provider)

    # ----------------------------------------------------------------- one attempt

    def _chat_once(self, ep: Endpoint, prepared: ChatRequest, ticket: Releasable) -> ChatResult:
        path, body = ep.codec.build_payload(prepared, image_field=self.image_field)
        response = _send(
            lambda: self._client().post(
                ep.base_url + path, json=body, headers=ep.headers(prepared.headers)
            ),
            ep,
        )
        try:
            result = self._parse_reply(ep, response, body.get("max_tokens"), prepared)
        finally:
            _unlink(response)
        ticket.release()
        return result

    async def _achat_once(
        self, ep: Endpoint, prepared: ChatRequest, ticket: Releasable
    ) -> ChatResult:
        path, body = ep.codec.build_payload(prepared, image_field=self.image_field)
        response = await _asend(
            self._aclient().post(
                ep.base_url + path, json=body, headers=ep.headers(prepared.headers)
            ),
            ep,
        )
        try:
            result = self._parse_reply(ep, response, body.get("max_tokens"), prepared)
        finally:
            _unlink(response)
        ticket.release()
        return result

    def _parse_reply(
        self,
        ep: Endpoint,
        response: httpx.Response,
        max_tokens: int | None,
        prepared: ChatRequest,
    ) -> ChatResult:
        if response.status_code >= 400:
            raise _status_error(ep, response)
        try:
            body = response.json()
        except ValueError as exc:
            raise MalformedResponseError(
                f"{ep.provider} answered HTTP {response.status_code} with a body that is not "
                f"JSON: {response.text[:200]!r}",
                provider=ep.provider,
                status_code=response.status_code,
            ) from exc
        result = ep.codec.parse_result(body, max_tokens=max_tokens)
        self._finish(ep, result, response.headers)
        if not (result.text or result.tool_calls or result.invalid_tool_calls):
            self._empty(ep, prepared, result.request_id)
        return result

    def _open_stream(self, ep: Endpoint, prepared: ChatRequest, ticket: Releasable) -> _OpenStream:
        path, body = ep.codec.build_payload(prepared, image_field=self.image_field)
        http = self._client()
        req = http.build_request(
            "POST", ep.base_url + path, json=body, headers=ep.headers(prepared.headers)
        )
        response = _send(lambda: http.send(req, stream=True), ep)
        opened = _OpenStream(self, ep, prepared, response, body.get("max_tokens"), ticket)
        opened.start()
        return opened

    async def _aopen_stream(
        self, ep: Endpoint, prepared: ChatRequest, ticket: Releasable
    ) -> _AsyncOpenStream:
        path, body = ep.codec.build_payload(prepared, image_field=self.image_field)
        http = self._aclient()
        req = http.build_request(
            "POST", ep.base_url + path, json=body, headers=ep.headers(prepared.headers)
        )
        response = await _asend(http.send(req, stream=True), ep)
        opened = _AsyncOpenStream(self, ep, prepared, response, body.get("max_tokens"), ticket)
        await opened.start()
        return opened


# The SSE readers below are the hottest loop of a stream, so the line handling is written
# out in both rather than called per line. Only ``data:`` fields matter to these providers;
# ``event:``, ``id:``, ``retry:`` and comments are ignored, as the SSE specification allows.


def sse_data(lines: Iterator[str]) -> Iterator[str]:
    """Yield the data of each server-sent event, from httpx's decoded lines."""
    data: list[str] = []
    for line in lines:
        if line.startswith("data:"):
            data.append(line[6:] if line.startswith(" ", 5) else line[5:])
        elif not line and data:
            yield data[0] if len(data) == 1 else "\n".join(data)
            data.clear()
    if data:
        yield "\n".join(data)


async def asse_data(lines: AsyncIterator[str]) -> AsyncIterator[str]:
    """Async form of :func:`sse_data`."""
    data: list[str] = []
    async for line in lines:
        if line.startswith("data:"):
            data.append(line[6:] if line.startswith(" ", 5) else line[5:])
        elif not line and data:
            yield data[0] if len(data) == 1 else "\n".join(data)
            data.clear()
    if data:
        yield "\n".join(data)


_IMAGE_WORKERS = ThreadPoolExecutor(os.cpu_count() or 2, thread_name_prefix="llamavision-image")


async def _image_work(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run CPU-bound image work (decode, resize, encode) off the event loop.

    One pool per process, as large as the CPU count: more decodes at once would not finish
    sooner, each only holds a decoded image in memory meanwhile.
    """
    call = functools.partial(fn, *args, **kwargs)
    return await asyncio.get_running_loop().run_in_executor(_IMAGE_WORKERS, call)


def _map_images(message: Message, fn: Callable[[Image], Image]) -> Message:
    if not message.images:
        return message
    parts = tuple(fn(p) if isinstance(p, Image) else p for p in message.parts)
    return dataclasses.replace(message, parts=parts)


_EMPTY = httpx.ByteStream(b"")


def _unlink(response: httpx.Response) -> None:
    """Break httpx's response <-> stream cycle once a response is closed.

    Without it the request, whose body carries the image (hundreds of kB), lives until the
    next garbage collection; under load and on long runs that backlog is what peak memory
    measures.
    """
    response.stream = _EMPTY


def _status_error(ep: Endpoint, response: httpx.Response) -> LlamaVisionError:
    return ep.codec.error_from(
        response.status_code, response.headers, response.content, model=ep.model
    )


def _license_request(ep: Endpoint) -> tuple[str, dict[str, Any]]:
    request = ep.codec.license_agreement(ep.model)
    if request is None:  # pragma: no cover - only providers with a license gate raise it
        raise ConfigurationError(f"{ep.provider} has no license to accept.")
    return request


def _connection_error(ep: Endpoint, exc: Exception) -> APIConnectionError:
    kind = "timed out" if isinstance(exc, httpx.TimeoutException) else "could not be reached"
    return APIConnectionError(
        f"{ep.provider} {kind} at {ep.base_url} ({type(exc).__name__}: {exc}). Check the "
        "network and base_url, or raise timeout.",
        provider=ep.provider,
    )


def _send(call: Callable[[], httpx.Response], ep: Endpoint) -> httpx.Response:
    try:
        return call()
    except httpx.TransportError as exc:
        raise _connection_error(ep, exc) from exc


async def _asend(call: Awaitable[httpx.Response], ep: Endpoint) -> httpx.Response:
    try:
        return await call
    except httpx.TransportError as exc:
        raise _connection_error(ep, exc) from exc


_UNFINISHED = RuntimeError("the stream was not read to the end")


class _StreamBase:
    """State of one opened stream, shared by the sync and async readers."""

    def __init__(
        self,
        client: LlamaVisionClient,
        ep: Endpoint,
        prepared: ChatRequest,
        response: httpx.Response,
        max_tokens: int | None,
        ticket: Releasable,
    ) -> None:
        self.client = client
        self.ep = ep
        self.prepared = prepared
        self.response = response
        self.ticket = ticket
        self.parser = ep.codec.stream_parser(max_tokens=max_tokens)
        self.pending: list[StreamDelta] = []
        self.pieces: list[str] = []
        self.done = False
        self.call = tracing.NOT_TRACED

    def status_error(self) -> LlamaVisionError:
        return _status_error(self.ep, self.response)

    def on_data(self, data: str) -> list[StreamDelta]:
        if data == "[DONE]":
            self.done = True
            return [self.final()]
        return self.parser.feed(data)

    def on_end(self) -> list[StreamDelta]:
        """Handle the end of the body before [DONE]: fine after a finish reason, else a cut."""
        if self.parser.complete:
            self.done = True
            return [self.final()]
        raise APIConnectionError(
            f"{self.ep.provider} closed the stream before it was complete (no [DONE]).",
            provider=self.ep.provider,
        )

    def final(self) -> StreamDelta:
        delta = self.parser.finish()
        self.client._finish(self.ep, delta, self.response.headers)
        self.call.end(delta, self.ep.provider, self.ep.base_url)
        if not self.pieces and delta.finish_reason != "tool_calls":
            self.client._empty(self.ep, self.prepared, delta.request_id)
        return delta

    def settle(self) -> None:
        """Give the request's slot back: a success only if the stream was read to the end."""
        self.ticket.release(None if self.done else _UNFINISHED)
        self.call.fail(_UNFINISHED)  # no-op when the last chunk already ended the span

    def interrupted(self, exc: BaseException) -> StreamInterruptedError:
        text = "".join(self.pieces)
        return StreamInterruptedError(
            f"The {self.ep.provider} stream broke after {len(text)} characters ({exc}). "
            "The text received so far is in .partial_text; ask again to get the rest.",
            partial_text=text,
            provider=self.ep.provider,
            request_id=self.response.headers.get(self.ep.codec.REQUEST_ID_HEADER),
        )


class _OpenStream(_StreamBase):
    """A stream whose first delta has arrived (so that everything before it can be retried)."""

    def start(self) -> None:
        try:
            if self.response.status_code >= 400:
                self.response.read()
                raise self.status_error()
            self.events = sse_data(self.response.iter_lines())
            while not self.pending:
                self.pending = self._next()
        except BaseException:
            self.response.close()
            raise

    def _next(self) -> list[StreamDelta]:
        try:
            event = next(self.events, None)
        except httpx.TransportError as exc:
            raise _connection_error(self.ep, exc) from exc
        if event is None:
            return self.on_end()
        return self.on_data(event)

    def deltas(self) -> Generator[StreamDelta, None, None]:
        pieces = self.pieces
        try:
            while True:
                for delta in self.pending:
                    if delta.text:
                        pieces.append(delta.text)
                    yield delta
                if self.done:
                    return
                try:
                    self.pending = self._next()
                except LlamaVisionError as exc:
                    error = self.client.redact(self.interrupted(exc))
                    self.call.fail(error)
                    raise error from self.client._safe_cause(exc)
        finally:
            self.response.close()
            _unlink(self.response)
            self.settle()


class _AsyncOpenStream(_StreamBase):
    """Async twin of :class:`_OpenStream`."""

    async def start(self) -> None:
        try:
            if self.response.status_code >= 400:
                await self.response.aread()
                raise self.status_error()
            self.events = asse_data(self.response.aiter_lines())
            while not self.pending:
                self.pending = await self._next()
        except BaseException:
            await self.response.aclose()
            raise

    async def _next(self) -> list[StreamDelta]:
        try:
            event = await anext(self.events, None)
        except httpx.TransportError as exc:
            raise _connection_error(self.ep, exc) from exc
        if event is None:
            return self.on_end()
        return self.on_data(event)

    async def deltas(self) -> AsyncGenerator[StreamDelta, None]:
        pieces = self.pieces
        try:
            while True:
                for delta in self.pending:
                    if delta.text:
                        pieces.append(delta.text)
                    yield delta
                if self.done:
                    return
                try:
                    self.pending = await self._next()
                except LlamaVisionError as exc:
                    error = self.client.redact(self.interrupted(exc))
                    self.call.fail(error)
                    raise error from self.client._safe_cause(exc)
        finally:
            await self.response.aclose()
            _unlink(self.response)
            self.settle()
