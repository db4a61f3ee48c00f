"""The emulator's shared machinery: routing, auth keys, scripts, faults and default answers.

Each provider's wire format lives in its own route module (``aigateway.py``,
``cloudflare.py``); this module only sees the neutral :class:`Received` request and produces
an :class:`Answer`, which the route renders in its provider's format.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import math
import re
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from PIL import Image as PILImage
from PIL import ImageStat

from llamavision.errors import ImageError
from llamavision.images import ImageOptions, open_image

Scope = dict[str, Any]
ASGIReceive = Callable[[], Awaitable[dict[str, Any]]]
ASGISend = Callable[[dict[str, Any]], Awaitable[None]]

DEFAULT_AIGATEWAY_KEY = "emulator-key"
DEFAULT_CLOUDFLARE_TOKEN = "emulator-token"
DEFAULT_ACCOUNT_ID = "emulator-account"
MAX_BODY = 32 * 1024 * 1024  # bytes of a request body, checked before reading it
IMAGE_TOKENS = 1601  # what one image costs in prompt tokens, deterministic stand-in

_COLOURS = {
    "red": (200, 30, 30),
    "green": (30, 160, 60),
    "blue": (30, 60, 200),
    "yellow": (230, 210, 40),
    "orange": (240, 140, 30),
    "purple": (130, 40, 160),
    "cyan": (40, 200, 210),
    "white": (245, 245, 245),
    "black": (15, 15, 15),
    "grey": (128, 128, 128),
}


@dataclass
class Reply:
    """An answer queued by a test or notebook: what the model says to the next request.

    ``tool_calls`` holds ``(name, arguments)`` pairs; ``provider`` limits the reply to one
    route. Without ``usage`` (``(prompt, completion)`` tokens) or ``finish_reason``, the
    provider's rules apply as to any answer: one token per word, cut at the request's
    ``max_tokens`` (Workers AI: 256 when the request sets none). With either, it is sent as is.
    """

    text: str = ""
    tool_calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    finish_reason: str | None = None
    usage: tuple[int, int] | None = None
    provider: str | None = None


FaultKind = Literal[
    "status", "quota", "delay", "cut", "malformed_json", "unknown_event", "bad_body"
]


@dataclass
class Fault:
    """A failure injected into the next matching request.

    Kinds: ``status`` (answer ``status`` with the provider's error envelope and, if set,
    ``Retry-After``), ``quota`` (the provider's used-up-allocation answer: Workers AI's 3036,
    HTTP 429; AI Gateway's ``insufficient_credits``, HTTP 402), ``delay`` (wait ``seconds``
    then answer normally), ``cut`` (drop the connection after ``after_events`` stream
    events), ``malformed_json`` (a stream event, or a reply body, that is not JSON),
    ``unknown_event`` (a stream event of no known shape) and ``bad_body`` (a 200 reply that is
    JSON but not the provider's shape).

    A fault is spent by one request, unless ``lasting`` is set: it then answers every
    matching request for that many seconds after the first (a rate-limit window, a quota
    used up until :meth:`Emulator.reset`, with ``math.inf``).
    """

    kind: FaultKind
    status: int = 500
    retry_after: str | None = None
    seconds: float = 0.0
    after_events: int = 1
    message: str = "injected by the emulator"
    provider: str | None = None
    lasting: float = 0.0
    _until: float | None = field(default=None, repr=False, compare=False)


class TokenBucket:
    """``per_minute`` requests a minute, refilled continuously, holding at most ``burst``."""

    def __init__(self, per_minute: float, burst: float) -> None:
        self.rate = per_minute / 60.0
        self.burst = burst
        self.tokens = burst
        self.stamp = time.monotonic()

    def take(self) -> float:
        """Take a token (return 0), or return the seconds until one is available."""
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate


@dataclass
class Received:
    """A request as the emulator understood it, whatever the provider."""

    provider: str
    path: str
    body: dict[str, Any]
    messages: list[dict[str, Any]]
    images: list[str]
    tools: list[dict[str, Any]]
    tool_choice: Any = None
    response_format: Any = None
    max_tokens: int | None = None
    stream: bool = False
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Answer:
    """What the emulator says, before a route renders it."""

    text: str
    tool_calls: list[tuple[str, dict[str, Any]]]
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int

    def pieces(self) -> list[str]:
        """Split the text into the token-like pieces that a stream sends one by one."""
        return re.findall(r"\s*\S+", self.text) or ([self.text] if self.text else [])


@dataclass
class Response:
    """A reply: a JSON body, or a list of SSE ``data:`` payloads when ``events`` is set."""

    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    events: list[str] | None = None
    cut_after: int | None = None
    raw: bytes | None = None
    answered: bool = False


class EmulatorError(Exception):
    """Raised by a route to answer with the provider's error envelope."""

    def __init__(self, status: int, message: str, code: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code


class Route(Protocol):
    """What a provider's route module offers (see ``aigateway.py`` and ``cloudflare.py``)."""

    NAME: str

    def matches(self, path: str) -> bool:
        """Return whether this route serves ``path``."""

    def handle(
        self, emulator: Emulator, path: str, headers: dict[str, str], raw: bytes
    ) -> Response:
        """Serve one request."""

    def error_response(self, error: EmulatorError) -> Response:
        """Render an error in the provider's envelope."""

    def account(self, path: str, headers: Mapping[str, str]) -> str:
        """Return who is calling (an account, or a key), for per-account rate limits."""

    def rate_limit_error(self, per_minute: float) -> EmulatorError:
        """Return the provider's answer to a request beyond its rate limit."""

    def quota_error(self) -> EmulatorError:
        """Return the provider's answer once the account's allocation is used up."""

    def auth_error(self) -> EmulatorError:
        """Return the provider's answer to a request without the accepted key."""

    def too_large(self, limit: int) -> EmulatorError:
        """Return the provider's answer to a request body over ``limit`` bytes."""


class Emulator:
    """An ASGI app that speaks AI Gateway's and Cloudflare Workers AI's wire formats.

    Answers are deterministic and honest: they say they are synthetic and describe what was
    received (the question; the image's format, size and mean colour). Tests and notebooks
    may queue exact replies (:meth:`script`) and faults (:meth:`fail`), and read back what was
    received (:attr:`requests`).

    Args:
        aigateway_key: the only AI Gateway key accepted.
        cloudflare_token: the only Cloudflare token accepted.
        license_gate: emulate Cloudflare's one-time license acceptance (error 5016).
        cloudflare_stream_shape: stream ``response``-shaped events (as this model does) or
            OpenAI-style ``choices`` chunks (as newer models on the same route do).
        rate_limit: requests per minute allowed per account (Cloudflare) or key (AI
            Gateway), as a token bucket; beyond it, the provider's own 429 with
            ``Retry-After``. ``None`` for no limit.
        rate_burst: requests the bucket holds when rested; by default five seconds' worth.
        keep_requests: how many received requests :attr:`requests` keeps (the latest), so
            that a long run does not keep every image; :attr:`counters` counts them all.
        gateway_token: make the Cloudflare AI Gateway route an authenticated gateway that
            wants this token in ``cf-aig-authorization``.
        latency: seconds each model answer takes to start, as a real model's would (a
            caption from the real service takes seconds); ``0`` answers at once.

    Attributes:
        requests: the latest received model requests, oldest first.
        counters: ``requests`` (model requests, whatever the answer), ``received`` (those
            the model answered) and ``rate_limited`` (refused by the rate limit).

    """

    def __init__(
        self,
        *,
        aigateway_key: str = DEFAULT_AIGATEWAY_KEY,
        cloudflare_token: str = DEFAULT_CLOUDFLARE_TOKEN,
        license_gate: bool = True,
        cloudflare_stream_shape: Literal["response", "choices"] = "response",
        rate_limit: float | None = None,
        rate_burst: float | None = None,
        keep_requests: int = 1000,
        gateway_token: str | None = None,
        latency: float = 0.0,
        max_body: int = MAX_BODY,
    ) -> None:
        from llamavision.emulator import aigateway, cloudflare

        self.max_body = max_body
        self.keys = {aigateway.NAME: aigateway_key, cloudflare.NAME: cloudflare_token}
        self.license_gate = license_gate
        self.cloudflare_stream_shape = cloudflare_stream_shape
        self.agreed_accounts: set[str] = set()
        self.requests: deque[Received] = deque(maxlen=keep_requests)
        self._replies: list[Reply] = []
        self._faults: list[Fault] = []
        self.rate_limit = rate_limit
        self.rate_burst = rate_burst
        self.counters = {"requests": 0, "received": 0, "rate_limited": 0}
        self.gateway_token = gateway_token
        self.latency = latency
        self.gateway_cache: dict[str, tuple[float, Response]] = {}
        self._buckets: dict[tuple[str, str], TokenBucket] = {}
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._hold: tuple[int, threading.Event] | None = None
        self._inflight = 0
        self._hosted: dict[str, Response] = {}
        self.downloads: deque[dict[str, str]] = deque(maxlen=keep_requests)
        self._routes: tuple[Route, ...] = (aigateway, cloudflare)

    # ------------------------------------------------------------------ scripting API

    def script(self, *replies: Reply) -> None:
        """Queue exact replies, used in order by the next matching requests."""
        with self._lock:
            self._replies.extend(replies)

    def fail(self, *faults: Fault) -> None:
        """Queue faults, each spent by the next matching request."""
        with self._lock:
            self._faults.extend(faults)

    def host_image(
        self,
        name: str,
        data: bytes = b"",
        content_type: str = "image/png",
        *,
        status: int = 200,
        headers: Mapping[str, str] | None = None,
    ) -> str:
        """Serve ``data`` at ``GET /images/{name}`` (a stand-in for an image on the web).

        ``status`` and ``headers`` make other answers (``status=302, headers={"location":
        ...}`` for a redirect). The headers of each such download are kept in
        :attr:`downloads`. Returns the path; prefix it with the server's URL.
        """
        answer = Response(
            status, raw=data, headers={"content-type": content_type, **(headers or {})}
        )
        with self._lock:
            self._hosted[name] = answer
        return f"/images/{name}"

    def reset(self, drain_timeout: float = 5.0) -> None:
        """Forget what tests queued and what was received: start afresh.

        Clears replies and faults, received requests, counters, rate-limit buckets, holds and
        license acceptances. Waits first (up to ``drain_timeout`` seconds) for requests still
        being served, so that a slow request of one test cannot take a reply queued by the next.
        """
        with self._changed:
            if self._hold is not None:
                self._hold[1].set()
            self._changed.wait_for(lambda: not self._inflight, drain_timeout)
            self._replies.clear()
            self._faults.clear()
            self.requests.clear()
            self.agreed_accounts.clear()
            self._hosted.clear()
            self.downloads.clear()
            self._buckets.clear()
            self.gateway_cache.clear()
            self._hold = None
            self.counters = dict.fromkeys(self.counters, 0)

    def hold(self, after: int) -> threading.Event:
        """Hold every model request after the first ``after`` until the event is set.

        Held requests have been received (they count in :attr:`requests`) but get no answer
        yet: a test can act while a client is known to be waiting, with no timing involved.
        """
        release = threading.Event()
        with self._lock:
            self._hold = (after, release)
        return release

    def wait_for_requests(self, count: int, timeout: float = 30.0) -> bool:
        """Wait until ``count`` model requests have been received; return whether they were.

        ``timeout`` only bounds a failing test: nothing here depends on timing.
        """
        with self._changed:
            return self._changed.wait_for(lambda: self.counters["received"] >= count, timeout)

    def _take(self, queue: list[Any], provider: str) -> Any:
        with self._lock:
            for i, item in enumerate(queue):
                if item.provider in (None, provider):
                    return queue.pop(i)
        return None

    def take_fault(self, provider: str) -> Fault | None:
        """Take the next fault for ``provider``, if any (a lasting one stays while it lasts)."""
        now = time.monotonic()
        with self._lock:
            for i, fault in enumerate(self._faults):
                if fault.provider not in (None, provider):
                    continue
                if fault._until is not None and now >= fault._until:
                    del self._faults[i]
                    continue
                if fault.lasting and fault._until is None:
                    fault._until = now + fault.lasting
                if fault._until is None:
                    del self._faults[i]
                return fault
        return None

    def record(self, received: Received) -> None:
        """Remember a received request (credentials only as whether they were accepted)."""
        received.headers = self.masked(received.provider, received.headers)
        with self._changed:
            self.requests.append(received)
            self.counters["received"] += 1
            self._changed.notify_all()

    def _over_rate(self, route: Route, path: str, headers: Mapping[str, str]) -> float:
        """Take a token from the caller's bucket: 0, or the seconds until one is due."""
        if self.rate_limit is None:
            return 0.0
        key = (route.NAME, route.account(path, headers))
        with self._lock:
            bucket = self._buckets.get(key)
            if bucket is None or bucket.rate != self.rate_limit / 60.0:
                burst = self.rate_burst or max(1.0, self.rate_limit / 12.0)
                bucket = self._buckets[key] = TokenBucket(self.rate_limit, burst)
            return bucket.take()

    # ------------------------------------------------------------------ answers

    def answer(self, received: Received) -> Answer:
        """Return the scripted reply for a request, or the default deterministic answer."""
        reply: Reply | None = self._take(self._replies, received.provider)
        if reply is not None and (reply.usage is not None or reply.finish_reason is not None):
            prompt, completion = reply.usage or (_prompt_tokens(received), len(reply.text.split()))
            return Answer(
                reply.text,
                reply.tool_calls,
                reply.finish_reason or ("tool_calls" if reply.tool_calls else "stop"),
                prompt,
                completion,
            )
        text, calls = (reply.text, reply.tool_calls) if reply else default_answer(received)
        answer = Answer(text, calls, "tool_calls" if calls else "stop", _prompt_tokens(received), 0)
        pieces = answer.pieces()  # one piece, one token; the limit applies as the provider's
        if received.max_tokens is not None and len(pieces) > received.max_tokens:
            answer.text = "".join(pieces[: received.max_tokens])
            answer.finish_reason = "length"
            pieces = pieces[: received.max_tokens]
        answer.completion_tokens = max(1, len(pieces)) if not calls else 8 * len(calls)
        return answer

    # ------------------------------------------------------------------ ASGI

    async def __call__(self, scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
        """Serve one ASGI connection."""
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        # Who is asking and how much, before reading a byte of the body.
        route = self._route(scope["path"]) if scope["method"] == "POST" else None
        early = None
        if route is not None and not self.check_key(route.NAME, headers):
            early = route.error_response(route.auth_error())
        elif route is not None and _declared_length(headers) > self.max_body:
            early = route.error_response(route.too_large(self.max_body))
        if early is not None:
            await _send(early, send)
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_body and route is not None:
                await _send(route.error_response(route.too_large(self.max_body)), send)
                return
            if not message.get("more_body"):
                break
        with self._lock:
            self._inflight += 1
        try:
            response = await self.handle(scope["method"], scope["path"], headers, b"".join(chunks))
            await _send(response, send)
        finally:
            with self._changed:
                self._inflight -= 1
                self._changed.notify_all()

    async def handle(
        self, method: str, path: str, headers: Mapping[str, str], body: bytes
    ) -> Response:
        """Route one request to its provider and build the reply."""
        if method == "GET" and path.startswith("/images/"):
            with self._lock:
                self.downloads.append({"path": path, **self.masked(None, headers)})
                hosted = self._hosted.get(path.removeprefix("/images/"))
            if hosted is None:
                return Response(404, {"error": "no such image"})
            return hosted
        route = self._route(path)
        if route is None:
            return Response(
                404,
                {
                    "error": {
                        "message": f"No route for {path}",
                        "type": "not_found",
                        "param": None,
                        "code": "not_found",
                    }
                },
            )
        if method != "POST":
            return route.error_response(EmulatorError(405, f"{method} is not allowed here"))
        with self._lock:
            self.counters["requests"] += 1
        fault = self.take_fault(route.NAME)
        if fault is not None and fault.kind == "delay":
            await asyncio.sleep(fault.seconds)
            fault = None
        if fault is not None and fault.kind in ("status", "quota"):
            error = route.quota_error() if fault.kind == "quota" else None
            response = route.error_response(error or EmulatorError(fault.status, fault.message))
            if fault.retry_after is not None:
                response.headers["retry-after"] = fault.retry_after
            return response
        wait = self._over_rate(route, path, headers)
        if wait:
            with self._lock:
                self.counters["rate_limited"] += 1
            assert self.rate_limit is not None
            response = route.error_response(route.rate_limit_error(self.rate_limit))
            response.headers["retry-after"] = str(max(1, math.ceil(wait)))
            return response
        try:
            response = route.handle(self, path, dict(headers), body)
        except EmulatorError as exc:
            response = route.error_response(exc)
        if self.latency and response.answered:
            await asyncio.sleep(self.latency)
        hold = self._hold
        if hold is not None and response.answered and self.counters["received"] > hold[0]:
            await asyncio.to_thread(hold[1].wait)
        if fault is not None and not response.answered:
            with self._lock:  # not spent: it applies to the next real answer
                self._faults.insert(0, fault)
        elif fault is not None:
            apply_fault(response, fault)
        return response

    def masked(self, provider: str | None, headers: Mapping[str, str]) -> dict[str, str]:
        """Return ``headers`` with credentials replaced by whether they were accepted.

        The emulator never keeps a credential: ``[accepted]`` or ``[refused]`` (and ``[sent]``
        for a gateway token when no gateway token is required).
        """
        out = dict(headers)
        if "authorization" in out:
            ok = provider is not None and self.check_key(provider, headers)
            out["authorization"] = "[accepted]" if ok else "[refused]"
        if "cf-aig-authorization" in out:
            token = self.gateway_token
            ok = token is not None and out["cf-aig-authorization"] == f"Bearer {token}"
            out["cf-aig-authorization"] = (
                "[sent]" if token is None else "[accepted]" if ok else "[refused]"
            )
        return out

    def _route(self, path: str) -> Route | None:
        return next((route for route in self._routes if route.matches(path)), None)

    def check_key(self, provider: str, headers: Mapping[str, str]) -> bool:
        """Return whether the request carries the accepted key for ``provider``."""
        return headers.get("authorization", "") == f"Bearer {self.keys[provider]}"


def _declared_length(headers: Mapping[str, str]) -> int:
    try:
        return int(headers.get("content-length") or 0)
    except ValueError:
        return 0


def apply_fault(response: Response, fault: Fault) -> None:
    """Spoil an answer: cut its stream, or slip in a malformed or unknown event or body."""
    if response.events is None:
        if fault.kind == "malformed_json":
            response.raw = b'{"truncated": '
        elif fault.kind == "bad_body":
            response.body = {"unexpected": "shape"}
        return
    at = min(fault.after_events, len(response.events) - 1)
    if fault.kind == "cut":
        response.cut_after = at
    elif fault.kind == "malformed_json":
        response.events.insert(at, '{"response": "trunc')
    elif fault.kind == "unknown_event":
        response.events.insert(at, '{"kind": "mystery", "payload": "lost text?"}')


async def _send(response: Response, send: ASGISend) -> None:
    if response.events is None:
        body = response.raw if response.raw is not None else json.dumps(response.body).encode()
        headers = {"content-type": "application/json", **response.headers}
        await send(
            {
                "type": "http.response.start",
                "status": response.status,
                "headers": [(k.encode(), v.encode()) for k, v in headers.items()],
            }
        )
        await send({"type": "http.response.body", "body": body})
        return
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"text/event-stream"),
                (b"cache-control", b"no-cache"),
                *((k.encode(), v.encode()) for k, v in response.headers.items()),
            ],
        }
    )
    for i, data in enumerate(response.events):
        if response.cut_after is not None and i >= response.cut_after:
            raise ConnectionAbortedError("stream cut by an injected fault")
        await send(
            {"type": "http.response.body", "body": f"data: {data}\n\n".encode(), "more_body": True}
        )
    await send({"type": "http.response.body", "body": b""})


# ---------------------------------------------------------------------- default answers


def default_answer(received: Received) -> tuple[str, list[tuple[str, dict[str, Any]]]]:
    """Answer honestly and deterministically from what was received."""
    messages = received.messages
    last = messages[-1] if messages else {"role": "user", "text": ""}
    if last["role"] == "tool":
        results = [m for m in messages[_last_assistant(messages) + 1 :] if m["role"] == "tool"]
        said = "; ".join(f"{m.get('name') or 'tool'} returned {m['text']!r}" for m in results)
        return f"Synthetic answer from the llamavision emulator: {said}.", []
    tool = _tool_to_call(received, last.get("text", ""))
    if tool is not None:
        return "", [(tool["name"], example_for(tool.get("parameters") or {}))]
    question = next((m["text"] for m in reversed(messages) if m["role"] == "user"), "")
    seen = describe_image(received.images[-1]) if received.images else "no image"
    fmt = received.response_format
    if isinstance(fmt, Mapping) and fmt.get("type") == "json_schema":
        schema = (fmt.get("json_schema") or {}).get("schema") or {}
        return json.dumps(example_for(schema)), []
    if isinstance(fmt, Mapping) and fmt.get("type") == "json_object":
        payload = {"source": "llamavision emulator", "question": question, "image": seen}
        return json.dumps(payload), []
    if len(question) > 240:
        question = question[:120] + " [...] " + question[-100:]
    return (
        f"This is a synthetic answer from the llamavision emulator ({received.provider}). "
        f"I received {seen}. You asked: {question!r}",
        [],
    )


def _last_assistant(messages: list[dict[str, Any]]) -> int:
    for i in range(len(messages) - 1, -1, -1):
        if messages[i]["role"] == "assistant":
            return i
    return -1


def _name_words(name: str) -> set[str]:
    """Words of a tool name: ``get_weather`` -> {weather}, ``JokeTypedDict`` -> {joke, typed}."""
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", name).replace("_", " ").replace("-", " ")
    return {w for w in spaced.lower().split() if len(w) > 3} - {"dict", "tool", "function"}


def _mentioned(tool: Mapping[str, Any], text: str) -> bool:
    words = set(re.findall(r"[a-z0-9]+", text.lower()))
    return tool["name"].lower() in text.lower() or bool(_name_words(tool["name"]) & words)


def _tool_to_call(received: Received, text: str) -> dict[str, Any] | None:
    """Pick the tool to call, if any.

    The tool that ``tool_choice`` forces; else (for ``auto``) the first tool whose name, or a
    word of it, the last user message mentions.
    """
    tools, choice = received.tools, received.tool_choice
    if not tools or choice == "none":
        return None
    if isinstance(choice, Mapping):
        name = (choice.get("function") or {}).get("name")
        return next((t for t in tools if t["name"] == name), None)
    mentioned = next((t for t in tools if _mentioned(t, text)), None)
    if choice == "required":
        return mentioned or tools[0]
    return mentioned


def example_for(schema: Mapping[str, Any], defs: Mapping[str, Any] | None = None) -> Any:
    """Return a value that validates against a JSON schema (required properties only)."""
    defs = (
        defs if defs is not None else {**schema.get("$defs", {}), **schema.get("definitions", {})}
    )
    if "$ref" in schema:
        return example_for(defs.get(schema["$ref"].rsplit("/", 1)[-1], {}), defs)
    for key in ("anyOf", "oneOf", "allOf"):
        if schema.get(key):
            options = [s for s in schema[key] if s.get("type") != "null"] or schema[key]
            return example_for(options[0], defs)
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    if "default" in schema:
        return schema["default"]
    kind = schema.get("type", "object" if "properties" in schema else "string")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object":
        props = schema.get("properties", {})
        required = schema.get("required", list(props))
        return {name: example_for(props.get(name, {}), defs) for name in required}
    if kind == "array":
        return [example_for(schema.get("items", {}), defs)] * max(1, schema.get("minItems", 1))
    if kind == "integer":
        return int(schema.get("minimum", 1))
    if kind == "number":
        return float(schema.get("minimum", 1.5))
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    return "example"


def decode_image(url: str) -> tuple[PILImage.Image, tuple[int, int]]:
    """Decode a data URL or base64 image, as a provider would: safely, or not at all.

    The image is opened by the decoder of its sniffed type only and drafted down (JPEGs decode
    at 1/8 scale) before its pixels are decoded. Returns it with the size that was sent.

    Raises:
        EmulatorError: a 400, as the providers answer an image they cannot read.

    """
    payload = url.partition(",")[2] if url.startswith("data:") else url
    try:
        img, _ = open_image(base64.b64decode(payload, validate=True))
        size = img.size
        img.draft("RGB", (96, 96))  # the description needs no more
        if img.size[0] * img.size[1] > ImageOptions().max_pixels:
            raise ImageError(f"{size[0]}x{size[1]} pixels, a decompression bomb")
        img.load()
    except (binascii.Error, ValueError) as exc:
        raise EmulatorError(400, f"Invalid image: its base64 cannot be read ({exc}).") from None
    except ImageError as exc:
        raise EmulatorError(400, f"Invalid image: {exc.message}") from None
    except Exception as exc:
        why = type(exc).__name__
        raise EmulatorError(400, f"Invalid image: it cannot be decoded ({why}).") from None
    return img, size


def describe_image(url: str) -> str:
    """Describe an image honestly: format, size and mean colour.

    Raises:
        EmulatorError: the image cannot be read (see :func:`decode_image`).

    """
    if url.startswith(("http://", "https://")):
        return f"an image URL ({url}) that the emulator does not fetch"
    img, (width, height) = decode_image(url)
    rgb = img.convert("RGB")
    mean = tuple(int(v) for v in ImageStat.Stat(rgb).mean)
    small = rgb.resize((24, 24))
    counts: dict[str, int] = {}
    for y in range(24):
        for x in range(24):
            pixel = small.getpixel((x, y))
            name = min(_COLOURS, key=lambda c: math.dist(_COLOURS[c], pixel))  # type: ignore[arg-type]
            counts[name] = counts.get(name, 0) + 1
    ranked = sorted(counts, key=lambda c: -counts[c])
    main = [c for c in ranked if counts[c] >= 0.15 * 576][:3] or ranked[:1]
    return (
        f"a {width}x{height} {img.format} image, mostly {' and '.join(main)} "
        f"(mean colour #{mean[0]:02x}{mean[1]:02x}{mean[2]:02x})"
    )


def _prompt_tokens(received: Received) -> int:
    chars = sum(len(m.get("text", "")) for m in received.messages)
    return max(1, math.ceil(chars / 4)) + IMAGE_TOKENS * len(received.images)
