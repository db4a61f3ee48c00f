"""``LlamaVisionClient``: the public methods, the retry loops and the lifecycle.

One room per concern, each its own module: :mod:`llamavision.endpoint` (where a request goes,
credentials, header checks, redaction), :mod:`llamavision.preparation` (images),
:mod:`llamavision.retry` (what follows a failure, decided without I/O),
:mod:`llamavision.streams` (stream readers and owners) and the provider codecs (the wire).
The client wires them together: sync and async share every decision and differ only in I/O.
Streams are never buffered: each delta is yielded as it arrives, and once one has reached the
caller nothing is retried.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import logging
import sys
import threading
import time
import warnings
from collections.abc import AsyncGenerator, Awaitable, Callable, Generator, Mapping, Sequence
from types import TracebackType
from typing import Any, Literal, TypeVar

import httpx
from pydantic import SecretStr

from llamavision import tracing
from llamavision.endpoint import (
    Endpoint,
    Redactor,
    asend,
    check_headers,
    gateway_from,
    make_endpoint,
    send,
    unlink,
    warn_if_empty,
)
from llamavision.errors import (
    ConfigurationError,
    LicenseAgreementRequiredError,
    LlamaVisionError,
    MalformedResponseError,
    UnsupportedParameterWarning,
    unknown_parameter,
)
from llamavision.images import ImageOptions
from llamavision.loops import LoopBoundClient
from llamavision.messages import (
    ChatRequest,
    ChatResult,
    GenerationParams,
    Message,
    Price,
    StreamDelta,
    Tool,
    ToolChoice,
)
from llamavision.preparation import ImagePreparer, MultiImage
from llamavision.ratelimit import CircuitBreaker, Governor, RateGovernor, RateStats, Releasable
from llamavision.retry import RetryPolicy, Step
from llamavision.streams import AsyncChatStream, AsyncStreamReader, ChatStream, StreamReader

logger = logging.getLogger("llamavision")
T = TypeVar("T")
E = TypeVar("E", bound=LlamaVisionError)
Messages = str | Message | Sequence[Message]
_PARAMS = tuple(f.name for f in dataclasses.fields(GenerationParams))
_INTERNAL = ("llamavision", "langchain_llamavision", "llamaindex_llamavision", "langchain_core",
             "langchain", "langgraph", "llama_index", "asyncio", "concurrent", "threading",
             "contextvars", "functools")  # fmt: skip


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
        outage_after: open a circuit breaker after this many connection errors or 5xx
            answers in a row: requests wait while one probe at a time checks whether the
            provider is back; ``None`` (default) lets each request fail on its own.
        outage_limit: seconds the open breaker waits for the provider to come back before
            every request raises :class:`~llamavision.ProviderOutageError`.
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
        outage_after: int | None = None,
        outage_limit: float = 300.0,
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
        **unknown: Any,
    ) -> None:
        for name in unknown:  # a typo is an error that names the closest parameter
            known = [*inspect.signature(LlamaVisionClient).parameters, *_PARAMS]
            raise unknown_parameter(
                name,
                known,
                "LlamaVisionClient",
                "Generation parameters (temperature, max_tokens...) go to chat(...).",
            )
        self.image_field = image_transport == "image"
        if image_transport not in ("image_url", "image"):
            raise ConfigurationError(
                f"image_transport must be 'image_url' or 'image', not {image_transport!r}."
            )
        self.images = ImagePreparer(image_options, multi_image)
        self.retry = RetryPolicy(max_retries, retry_backoff, max_retry_wait, accept_license)
        self.tracer_provider = tracer_provider
        self.trace_content = trace_content
        self.timeout = timeout
        prices = prices or {}

        def make_governor() -> RateGovernor:
            try:
                return RateGovernor(
                    max_concurrency=max_concurrency,
                    rate_limit=rate_limit,
                    max_pause=max_retry_wait,
                    breaker=CircuitBreaker.optional(outage_after, outage_limit),
                )
            except ValueError as exc:
                raise ConfigurationError(str(exc)) from None

        names = [provider, *fallback_providers]
        gateway = gateway_from(
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
        self.redactor = Redactor(self.endpoints)
        self._http = http_client
        self._owns_http = http_client is None
        self._ahttp = LoopBoundClient(
            lambda: httpx.AsyncClient(timeout=self.timeout), given=http_async_client
        )
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

    @property
    def image_options(self) -> ImageOptions:
        """How this client validates, downscales, encodes and downloads images."""
        return self.images.options

    def redact(self, error: E) -> E:
        """Remove this client's secrets from ``error`` (see :class:`.endpoint.Redactor`)."""
        return self.redactor.redact(error)

    @property
    def rate_stats(self) -> RateStats:
        """What rate limiting has cost this client so far, over all its providers."""
        return sum((ep.governor.stats for ep in self.endpoints), RateStats())

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
                result = self._retrying(self.images.resolver(request), self._chat_once, call)
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
                opened = self._retrying(self.images.resolver(request), self._open_stream, call)
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
        self.images.close()

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
            messages_for = await self.images.aresolver(request)
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
            messages_for = await self.images.aresolver(request)
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
        await self._ahttp.aclose()
        await self.images.aclose()
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

    async def _aclient(self) -> httpx.AsyncClient:
        return await self._ahttp.get()  # a pool per event loop, closed with its loop

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
            for name in overrides:
                if name not in _PARAMS:
                    raise unknown_parameter(
                        name,
                        _PARAMS,
                        "chat",
                        "Provider-specific body fields go in extra={...}.",
                    )
            params = dataclasses.replace(params, **overrides)
        self._warn_unsupported(params)
        return ChatRequest(
            messages=tuple(messages),
            model=self.model,
            params=params,
            tools=tuple(tools),
            tool_choice=tool_choice,
            stream=stream,
            headers=check_headers(extra_headers),
        )

    def _warn_unsupported(self, params: GenerationParams) -> None:
        """Warn once per call, at the caller's line, about parameters a provider drops."""
        dropped = []
        for ep in self.endpoints:
            names = [n for n in ep.codec.UNSUPPORTED_PARAMS if getattr(params, n) not in (None, ())]
            if names:
                verb = "it was" if len(names) == 1 else "they were"
                dropped.append(
                    f"{ep.provider} does not support {', '.join(names)}; {verb} not sent"
                )
        if dropped:
            warnings.warn(
                "; ".join(dropped) + ".", UnsupportedParameterWarning, stacklevel=_caller_level()
            )

    def _next_step(
        self,
        ep: Endpoint,
        error: LlamaVisionError,
        attempt: int,
        is_last: bool,
        call: tracing.Call,
    ) -> Step:
        """Ask the retry policy what follows ``error``; raise it, or log and trace the step."""
        step = self.retry.step(
            error, attempt, last_provider=is_last, license_accepted=ep.provider in self._agreed
        )
        kind = type(error).__name__
        if step.action == "raise":
            raise self.redact(error)
        if step.action == "retry":
            logger.info(
                "%s failed (%s); retry %d/%d %s",
                ep.provider,
                kind,
                attempt + 1,
                self.retry.max_retries,
                f"in {step.delay:.2f}s" if step.delay else "after the shared pause",
            )
            call.event("retry", provider=ep.provider, attempt=attempt + 1, delay=step.delay,
                       **{"error.type": kind})  # fmt: skip
        elif step.action == "failover":
            logger.info("%s failed (%s); failing over", ep.provider, kind)
            call.event("failover", provider=ep.provider, **{"error.type": kind})
        return step

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
                    step = self._next_step(ep, error, attempt, i == len(self.endpoints) - 1, call)
                except BaseException as exc:
                    ticket.release(exc)
                    raise
                if step.action == "failover":
                    break
                if step.action == "accept_license":
                    self._agree(ep)
                    continue
                if step.delay:
                    time.sleep(step.delay)
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
                    step = self._next_step(ep, error, attempt, i == len(self.endpoints) - 1, call)
                except BaseException as exc:
                    ticket.release(exc)
                    raise
                if step.action == "failover":
                    break
                if step.action == "accept_license":
                    await self._aagree(ep)
                    continue
                if step.delay:
                    await asyncio.sleep(step.delay)
                attempt += 1
        raise AssertionError("unreachable: the last endpoint raises")  # pragma: no cover

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

    # ----------------------------------------------------------------- license

    def _agree(self, ep: Endpoint) -> None:
        path, body = _license_request(ep)
        logger.warning("accepting Meta's license on %s for this account", ep.provider)
        response = send(
            lambda: self._client().post(
                ep.base_url + path, json=body, headers=ep.headers(cache=False)
            ),
            ep,
        )
        self._after_agree(ep, response)

    async def _aagree(self, ep: Endpoint) -> None:
        path, body = _license_request(ep)
        logger.warning("accepting Meta's license on %s for this account", ep.provider)
        http = await self._aclient()
        response = await asend(
            http.post(ep.base_url + path, json=body, headers=ep.headers(cache=False)), ep
        )
        self._after_agree(ep, response)

    def _after_agree(self, ep: Endpoint, response: httpx.Response) -> None:
        if response.status_code >= 400:
            error = ep.status_error(response)
            if not isinstance(error, LicenseAgreementRequiredError):
                raise self.redact(error)
        self._agreed.add(ep.provider)

    # ----------------------------------------------------------------- one attempt

    def _chat_once(self, ep: Endpoint, prepared: ChatRequest, ticket: Releasable) -> ChatResult:
        path, body = ep.codec.build_payload(prepared, image_field=self.image_field)
        response = send(
            lambda: self._client().post(
                ep.base_url + path, json=body, headers=ep.headers(prepared.headers)
            ),
            ep,
        )
        try:
            result = self._parse_reply(ep, response, prepared)
        finally:
            unlink(response)
        ticket.release()
        return result

    async def _achat_once(
        self, ep: Endpoint, prepared: ChatRequest, ticket: Releasable
    ) -> ChatResult:
        path, body = ep.codec.build_payload(prepared, image_field=self.image_field)
        http = await self._aclient()
        response = await asend(
            http.post(ep.base_url + path, json=body, headers=ep.headers(prepared.headers)), ep
        )
        try:
            result = self._parse_reply(ep, response, prepared)
        finally:
            unlink(response)
        ticket.release()
        return result

    def _parse_reply(
        self, ep: Endpoint, response: httpx.Response, prepared: ChatRequest
    ) -> ChatResult:
        if response.status_code >= 400:
            raise ep.status_error(response)
        try:
            body = response.json()
        except ValueError as exc:
            raise MalformedResponseError(
                f"{ep.provider} answered HTTP {response.status_code} with a body that is not "
                f"JSON: {response.text[:200]!r}",
                provider=ep.provider,
                status_code=response.status_code,
            ) from exc
        result = ep.codec.parse_result(body, max_tokens=ep.codec.max_tokens(prepared))
        ep.finish(result, response.headers)
        if not (result.text or result.tool_calls or result.invalid_tool_calls):
            warn_if_empty(ep, prepared, result.request_id, self.redactor)
        return result

    def _open_stream(self, ep: Endpoint, prepared: ChatRequest, ticket: Releasable) -> StreamReader:
        path, body = ep.codec.build_payload(prepared, image_field=self.image_field)
        http = self._client()
        req = http.build_request(
            "POST", ep.base_url + path, json=body, headers=ep.headers(prepared.headers)
        )
        response = send(lambda: http.send(req, stream=True), ep)
        reader = StreamReader(
            ep, prepared, response, ep.codec.max_tokens(prepared), ticket, self.redactor
        )
        reader.start()
        return reader

    async def _aopen_stream(
        self, ep: Endpoint, prepared: ChatRequest, ticket: Releasable
    ) -> AsyncStreamReader:
        path, body = ep.codec.build_payload(prepared, image_field=self.image_field)
        http = await self._aclient()
        req = http.build_request(
            "POST", ep.base_url + path, json=body, headers=ep.headers(prepared.headers)
        )
        response = await asend(http.send(req, stream=True), ep)
        reader = AsyncStreamReader(
            ep, prepared, response, ep.codec.max_tokens(prepared), ticket, self.redactor
        )
        await reader.start()
        return reader


def _license_request(ep: Endpoint) -> tuple[str, dict[str, Any]]:
    request = ep.codec.license_agreement(ep.model)
    if request is None:  # pragma: no cover - only providers with a license gate raise it
        raise ConfigurationError(f"{ep.provider} has no license to accept.")
    return request


def _caller_level() -> int:
    """Return the ``stacklevel`` of the first frame outside this library and the frameworks.

    A warning then points at the user's line, whichever adapter (LangChain, LlamaIndex) and
    whichever public method the call went through.
    """
    frame, level = sys._getframe(1), 1
    while frame.f_back is not None:
        module = frame.f_globals.get("__name__", "")
        if module.split(".")[0] not in _INTERNAL:
            break
        frame, level = frame.f_back, level + 1
    return level
