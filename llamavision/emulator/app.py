"""The emulator app: state, scripting, faults, rate limits, and the routes registered with it.

Each provider's wire format lives in its own route module (``aigateway.py``,
``cloudflare.py``), registered here in :data:`ROUTES`; the app only sees the neutral
:class:`Received` request and produces an :class:`Answer`, which the route renders in its
provider's format. The shared types are in :mod:`llamavision.emulator.wire`.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import math
import threading
import time
from collections import deque
from collections.abc import Mapping
from typing import Any, Literal, TextIO

from llamavision.emulator import aigateway, cloudflare, cloudflare_openai
from llamavision.emulator.wire import (
    DEFAULT_ACCOUNT_ID,
    DEFAULT_AIGATEWAY_KEY,
    DEFAULT_CLOUDFLARE_TOKEN,
    MAX_BODY,
    Answer,
    ASGIReceive,
    ASGISend,
    EmulatorError,
    Fault,
    Received,
    Reply,
    Response,
    Route,
    Scope,
    TokenBucket,
    apply_fault,
    declared_length,
    default_answer,
    prompt_tokens,
    send_response,
)

ROUTES: tuple[Route, ...] = (aigateway, cloudflare, cloudflare_openai)
"""The provider routes this emulator serves, in the order they are matched."""

__all__ = [
    "DEFAULT_ACCOUNT_ID",
    "DEFAULT_AIGATEWAY_KEY",
    "DEFAULT_CLOUDFLARE_TOKEN",
    "ROUTES",
    "Emulator",
    "Fault",
    "Received",
    "Reply",
]


CONTROL_PREFIX = "/_emulator/"
"""The reserved path prefix of the control API."""

CONTROL_ACTIONS = {
    ("POST", "replies"): 'queue replies: {"replies": [Reply fields...]} (Emulator.script)',
    ("POST", "faults"): 'queue faults: {"faults": [Fault fields...]} (Emulator.fail)',
    ("GET", "requests"): "the received requests, images as type and size (Received.summary)",
    ("GET", "counters"): "requests, received, rate_limited, embedded (Emulator.counters)",
    ("POST", "reset"): "forget what was queued and received (Emulator.reset)",
    ("POST", "hold"): 'hold requests after the first N: {"after": N} (Emulator.hold)',
    ("POST", "release"): "answer the held requests (Emulator.release)",
}
"""The control API: ``(method, path under the prefix)`` -> what it does."""


def _items(data: Any, key: str) -> Any:
    """Return ``data[key]`` of a JSON object body."""
    if not isinstance(data, dict) or key not in data:
        raise ValueError(f"the body must be a JSON object with {key!r}")
    return data[key]


def reply_from_json(item: Any) -> Reply:
    """Build a :class:`Reply` from its JSON form (lists where it has tuples)."""
    if not isinstance(item, dict):
        raise ValueError(f"a reply is a JSON object of Reply's fields, not {item!r}")
    fields = dict(item)
    if "tool_calls" in fields:
        fields["tool_calls"] = [(name, dict(args)) for name, args in fields["tool_calls"]]
    if fields.get("usage") is not None:
        prompt, completion = fields["usage"]
        fields["usage"] = (int(prompt), int(completion))
    return Reply(**fields)


def fault_from_json(item: Any) -> Fault:
    """Build a :class:`Fault` from its JSON form."""
    if not isinstance(item, dict) or any(str(k).startswith("_") for k in item):
        raise ValueError(f"a fault is a JSON object of Fault's fields, not {item!r}")
    if item.get("lasting") == "inf":
        item = {**item, "lasting": math.inf}
    return Fault(**item)


class Emulator:
    """An ASGI app that speaks AI Gateway's and Cloudflare Workers AI's wire formats.

    Answers are deterministic and honest: they say they are synthetic and describe what was
    received (the question; the image's format, size and mean colour). Tests and notebooks
    may queue exact replies (:meth:`script`) and faults (:meth:`fail`), and read back what was
    received (:attr:`requests`).

    Unscripted, it calls a tool when ``tool_choice`` names it, or (``"required"``, ``"auto"``)
    when the last user message mentions the tool's name or a word of it (``"required"``
    falls back to the first tool), with placeholder arguments that validate against the
    tool's schema (required fields only); a ``json_schema`` response format gets a
    placeholder object of that schema. See the README's emulator section.

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
        request_log: where to write one line per request served (time, method, path,
            provider, status, latency and, for a 429, why), e.g. ``sys.stderr`` or an open
            file; ``None`` logs nothing.
        log_format: ``"text"`` (one readable line) or ``"json"`` (JSON lines).
        control: serve the control API under :data:`CONTROL_PREFIX`: the scripting methods
            over HTTP, for tests in another process or language (see the README).

    Attributes:
        requests: the latest received model requests, oldest first.
        counters: ``requests`` (model requests, whatever the answer), ``received`` (those
            the model answered), ``rate_limited`` (refused by the rate limit) and
            ``embedded`` (texts embedded by Workers AI's bge models).

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
        request_log: TextIO | None = None,
        log_format: Literal["text", "json"] = "text",
        control: bool = True,
    ) -> None:
        self.control = control
        if log_format not in ("text", "json"):
            raise ValueError(f"log_format must be 'text' or 'json', not {log_format!r}")
        self.request_log = request_log
        self.log_format = log_format
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
        self.counters = {"requests": 0, "received": 0, "rate_limited": 0, "embedded": 0}
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
        self._routes: tuple[Route, ...] = ROUTES

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

    def release(self) -> None:
        """Answer the requests held by :meth:`hold` (as its event does); hold no more."""
        with self._lock:
            hold, self._hold = self._hold, None
        if hold is not None:
            hold[1].set()

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

    def count_embedded(self, texts: int) -> None:
        """Count the texts of an embedding run (its request counts in ``requests`` too)."""
        with self._lock:
            self.counters["embedded"] += texts

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
            prompt, completion = reply.usage or (prompt_tokens(received), len(reply.text.split()))
            return Answer(
                reply.text,
                reply.tool_calls,
                reply.finish_reason or ("tool_calls" if reply.tool_calls else "stop"),
                prompt,
                completion,
            )
        text, calls = (reply.text, reply.tool_calls) if reply else default_answer(received)
        answer = Answer(text, calls, "tool_calls" if calls else "stop", prompt_tokens(received), 0)
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
        started = time.monotonic()
        method, path = scope["method"], scope["path"]
        route = self._route(path) if method == "POST" else None
        response = await self._serve(scope, receive, send, route)
        if self.request_log is not None and response is not None:
            self.log(method, path, route, response, time.monotonic() - started)

    async def _serve(
        self, scope: Scope, receive: ASGIReceive, send: ASGISend, route: Route | None
    ) -> Response | None:
        """Answer one HTTP request; return the response sent."""
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        # Who is asking and how much, before reading a byte of the body.
        early = None
        if scope["path"].startswith(CONTROL_PREFIX):
            early = await self._control(scope, receive)
        elif route is not None and not self.check_key(route.NAME, headers):
            early = route.error_response(route.auth_error())
        elif route is not None and declared_length(headers) > self.max_body:
            early = route.error_response(route.too_large(self.max_body))
        if early is not None:
            await send_response(early, send)
            return early
        chunks, size = [], 0
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_body and route is not None:
                refusal = route.error_response(route.too_large(self.max_body))
                await send_response(refusal, send)
                return refusal
            if not message.get("more_body"):
                break
        with self._lock:
            self._inflight += 1
        try:
            response = await self.handle(scope["method"], scope["path"], headers, b"".join(chunks))
            await send_response(response, send)
            return response
        finally:
            with self._changed:
                self._inflight -= 1
                self._changed.notify_all()

    async def _control(self, scope: Scope, receive: ASGIReceive) -> Response:
        """Answer a request of the control API (see :data:`CONTROL_PREFIX`)."""
        if not self.control:
            return Response(404, {"error": "the control API is off for this emulator"})
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        action = (scope["method"], scope["path"].removeprefix(CONTROL_PREFIX).strip("/"))
        try:
            data = json.loads(b"".join(chunks) or b"null")
            return Response(200, self.command(action, data))
        except KeyError:
            known = ", ".join(f"{m} {CONTROL_PREFIX}{p}" for m, p in CONTROL_ACTIONS)
            return Response(404, {"error": f"no such control action; there are: {known}"})
        except (TypeError, ValueError) as exc:
            return Response(400, {"error": f"bad control request: {exc}"})

    def command(self, action: tuple[str, str], data: Any) -> Any:
        """Run one control action with its JSON body; return the JSON answer.

        Each action calls the Python method of the same name (one implementation).

        Raises:
            KeyError: no such action.
            TypeError, ValueError: the body does not fit the action.

        """
        if action not in CONTROL_ACTIONS:
            raise KeyError(action)
        name = action[1]
        if name == "replies":
            self.script(*(reply_from_json(item) for item in _items(data, "replies")))
        elif name == "faults":
            self.fail(*(fault_from_json(item) for item in _items(data, "faults")))
        elif name == "requests":
            return {"requests": [received.summary() for received in list(self.requests)]}
        elif name == "counters":
            with self._lock:
                return dict(self.counters)
        elif name == "reset":
            self.reset()
        elif name == "hold":
            self.hold(int(_items(data, "after")))
        elif name == "release":
            self.release()
        return {"ok": True}

    def log(
        self, method: str, path: str, route: Route | None, response: Response, seconds: float
    ) -> None:
        """Write the request log's line for one request served."""
        assert self.request_log is not None
        when = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")
        entry = {
            "time": when.replace("+00:00", "Z"),
            "method": method,
            "path": path,
            "provider": None if route is None else route.NAME,
            "status": response.status,
            "latency_ms": round(seconds * 1000, 1),
            "reason": response.reason,
        }
        if self.log_format == "json":
            line = json.dumps(entry)
        else:
            line = (
                " ".join(str(entry[k]) for k in ("time", "method", "path", "provider", "status"))
                + f" {entry['latency_ms']}ms"
                + (f" ({response.reason})" if response.reason else "")
            )
        with self._lock:
            self.request_log.write(line + "\n")
            self.request_log.flush()

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
            response.reason = "quota used up" if fault.kind == "quota" else "injected fault"
            return response
        wait = self._over_rate(route, path, headers)
        if wait:
            with self._lock:
                self.counters["rate_limited"] += 1
            assert self.rate_limit is not None
            response = route.error_response(route.rate_limit_error(self.rate_limit))
            response.headers["retry-after"] = str(max(1, math.ceil(wait)))
            response.reason = f"over the rate limit of {self.rate_limit:g}/min"
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
