"""The emulator's neutral machinery, shared by its provider routes and the app.

What a request was (:class:`Received`), what to answer (:class:`Answer`, :class:`Reply`,
:class:`Fault`), the HTTP response a route renders (:class:`Response`), what a route module
offers (:class:`Route`) and what it may ask of the emulator (:class:`State`), and the default
answers. The provider routes (``aigateway.py``, ``cloudflare.py``) import this module only;
the app (``app.py``) imports them and registers them.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
import time
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

    def summary(self) -> dict[str, Any]:
        """Return the request as plain data, each image as its type and size (no bytes).

        What the emulator's control API serves for ``GET /_emulator/requests``.
        """
        return {
            "provider": self.provider,
            "path": self.path,
            "messages": self.messages,
            "images": [describe_image_url(url) for url in self.images],
            "tools": self.tools,
            "tool_choice": self.tool_choice,
            "response_format": self.response_format,
            "max_tokens": self.max_tokens,
            "stream": self.stream,
            "headers": self.headers,
        }


def describe_image_url(url: str) -> str:
    """Return a data URL as ``"image/png, 2,101 bytes"``; any other URL as it is."""
    if not url.startswith("data:"):
        return url
    head, _, data = url.partition(",")
    mime = head.removeprefix("data:").split(";", 1)[0] or "unknown type"
    size = len(data) * 3 // 4 - data.endswith("=") - data.endswith("==")
    return f"{mime}, {size:,} bytes"


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
    reason: str | None = None  # why a refusal was made, for the request log (429s)


class EmulatorError(Exception):
    """Raised by a route to answer with the provider's error envelope."""

    def __init__(self, status: int, message: str, code: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code


class State(Protocol):
    """What a route may read and change of the emulator serving it."""

    license_gate: bool
    cloudflare_stream_shape: Literal["response", "choices"]
    agreed_accounts: set[str]
    gateway_token: str | None
    gateway_cache: dict[str, tuple[float, Response]]

    def answer(self, received: Received) -> Answer:
        """Return the answer to a request (scripted, faulted or the default)."""

    def record(self, received: Received) -> None:
        """Keep a received request for inspection."""

    def count_embedded(self, texts: int) -> None:
        """Count the texts of an embedding run."""

    def check_key(self, provider: str, headers: Mapping[str, str]) -> bool:
        """Return whether the request carries ``provider``'s accepted credential."""


class Route(Protocol):
    """What a provider's route module offers (see ``aigateway.py`` and ``cloudflare.py``)."""

    NAME: str

    def matches(self, path: str) -> bool:
        """Return whether this route serves ``path``."""

    def handle(self, emulator: State, path: str, headers: dict[str, str], raw: bytes) -> Response:
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


def declared_length(headers: Mapping[str, str]) -> int:
    """Return the request's declared ``Content-Length`` (0 when absent or not a number)."""
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


async def send_response(response: Response, send: ASGISend) -> None:
    """Send ``response`` over ASGI: a whole body, or its events one by one (a stream)."""
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


def prompt_tokens(received: Received) -> int:
    """Return the deterministic prompt-token count the emulator reports for a request."""
    chars = sum(len(m.get("text", "")) for m in received.messages)
    return max(1, math.ceil(chars / 4)) + IMAGE_TOKENS * len(received.images)
