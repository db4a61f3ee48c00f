"""Cloudflare Workers AI, native ``/ai/run/`` route: its own request and reply envelope.

Pure functions, no I/O. Every detail of this wire format lives here and nowhere else.
Differences from OpenAI that matter: tool-call arguments arrive as JSON objects and carry no
id (we mint stable ones), images must travel inline, the stream has two event shapes, and
Meta's license must be accepted once per account (error 5016).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from llamavision.errors import (
    AuthenticationError,
    LicenseAgreementRequiredError,
    LlamaVisionError,
    MalformedResponseError,
    parse_retry_after,
    status_error,
)
from llamavision.images import ResolvedImage
from llamavision.messages import (
    ChatRequest,
    ChatResult,
    FinishReason,
    Image,
    InvalidToolCall,
    Message,
    Price,
    StreamDelta,
    Text,
    ToolCall,
    ToolCallChunk,
    ToolResult,
    Usage,
    make_tool_call,
    split_tool_calls,
)
from llamavision.providers import openai_compat
from llamavision.providers._common import clip, decode_error_body, drop_unsupported, load_event

NAME = "cloudflare"
DEFAULT_BASE_URL = "https://api.cloudflare.com/client/v4/accounts/{account_id}/ai/run"
DEFAULT_MODEL = "@cf/meta/llama-3.2-11b-vision-instruct"
KEY_ENV = "CLOUDFLARE_API_TOKEN"
ACCOUNT_ENV = "CLOUDFLARE_ACCOUNT_ID"
CONTEXT_WINDOW = 131_000
MAX_OUTPUT_TOKENS = 4_096
PRICE = Price(input_per_million=0.24, output_per_million=0.24)
FETCHES_IMAGE_URLS = False
REQUEST_ID_HEADER = "cf-ray"
LICENSE_ERROR_CODE = 5016
AGREE_PAYLOAD = {"prompt": "agree"}
_AUTH_CODES = frozenset({10000, 10001, 9106, 9109})
_SAMPLING = (
    "max_tokens",
    "temperature",
    "top_p",
    "top_k",
    "seed",
    "repetition_penalty",
    "frequency_penalty",
    "presence_penalty",
)
_EVENT_KEYS = frozenset({"response", "tool_calls", "usage", "choices", "p"})


def path_for(model: str) -> str:
    """Return the route of ``model`` relative to the ``.../ai/run`` base URL."""
    return "/" + model.lstrip("/")


def build_payload(request: ChatRequest) -> tuple[str, dict[str, Any]]:
    """Build the path (relative to the base URL) and JSON body of a messages-shaped run."""
    params = request.params
    body: dict[str, Any] = {"messages": _messages(request.messages)}
    for name in _SAMPLING:
        value = getattr(params, name)
        if value is not None:
            body[name] = value
    drop_unsupported(NAME, params, ("stop", "response_format"))
    tools = request.tools
    if tools and request.tool_choice not in (None, "auto"):
        # Workers AI has no tool_choice; the closest honest mapping is to offer fewer tools.
        if request.tool_choice == "none":
            tools = ()
        elif request.tool_choice != "required":
            tools = tuple(t for t in tools if t.name == request.tool_choice) or tools
    if tools:
        body["tools"] = [
            {"name": t.name, "description": t.description, "parameters": dict(t.parameters)}
            for t in tools
        ]
    if request.stream:
        body["stream"] = True
    body.update(params.extra)
    return path_for(request.model), body


def _messages(messages: tuple[Message, ...]) -> list[dict[str, Any]]:
    names: dict[str, str] = {}
    out: list[dict[str, Any]] = []
    for message in messages:
        if message.role == "tool":
            result = next(p for p in message.parts if isinstance(p, ToolResult))
            out.append(
                {
                    "role": "tool",
                    "name": result.name or names.get(result.tool_call_id, ""),
                    "tool_call_id": result.tool_call_id,
                    "content": result.content,
                }
            )
        elif message.role == "assistant":
            entry: dict[str, Any] = {"role": "assistant", "content": message.text}
            if message.tool_calls:
                names.update((c.id, c.name) for c in message.tool_calls)
                entry["tool_calls"] = [
                    {"id": c.id, "name": c.name, "arguments": c.arguments}
                    for c in message.tool_calls
                ]
            out.append(entry)
        elif message.images:
            content: list[dict[str, Any]] = []
            for part in message.parts:
                if isinstance(part, Text):
                    content.append({"type": "text", "text": part.text})
                elif isinstance(part, Image):
                    content.append({"type": "image_url", "image_url": {"url": _data_url(part)}})
            out.append({"role": message.role, "content": content})
        else:
            out.append({"role": message.role, "content": message.text})
    return out


def _data_url(image: Image) -> str:
    if isinstance(image.source, ResolvedImage):
        return image.source.data_url()
    raise TypeError(
        "Cloudflare needs images inline: resolve (and download) them before encoding, "
        f"got {type(image.source).__name__}"
    )


def license_agreement(model: str) -> tuple[str, dict[str, Any]]:
    """Return the request that accepts Meta's license for the account (sent once)."""
    return path_for(model), dict(AGREE_PAYLOAD)


def mint_tool_call_id(index: int, name: str, arguments: Any) -> str:
    """Return a stable id for a Cloudflare tool call (which has none).

    The same call at the same position always gets the same id, so tool results can be matched.
    """
    digest = hashlib.sha1(
        json.dumps([index, name, arguments], sort_keys=True, default=str).encode()
    ).hexdigest()
    return f"call_{index}_{digest[:12]}"


def _tool_call(index: int, raw: Any) -> ToolCall | InvalidToolCall:
    if isinstance(raw, Mapping) and "function" in raw:  # OpenAI-shaped, seen on newer models
        raw = {"id": raw.get("id"), **raw["function"]}
    name = raw["name"]
    arguments = raw.get("arguments") or {}
    call_id = raw.get("id") or mint_tool_call_id(index, name, arguments)
    return make_tool_call(call_id, name, arguments)


def parse_result(body: Any) -> ChatResult:
    """Parse a complete reply: the ``{"result": ..., "success": true}`` envelope.

    Raises:
        MalformedResponseError: the body is not such an envelope.

    """
    result = body.get("result") if isinstance(body, Mapping) else None
    if not isinstance(result, Mapping):
        raise MalformedResponseError(
            f"{NAME} reply has no result object: {clip(body)}", provider=NAME
        )
    if "choices" in result:
        parsed = openai_compat.parse_result(result)
        parsed.provider, parsed.raw = NAME, body
        return parsed
    try:
        calls, invalid = split_tool_calls(
            _tool_call(i, c) for i, c in enumerate(result.get("tool_calls") or ())
        )
    except (KeyError, TypeError) as exc:
        raise MalformedResponseError(
            f"{NAME} tool call is malformed (missing {exc}): {clip(result)}",
            provider=NAME,
        ) from exc
    text = _response_text(result.get("response"))
    finish: FinishReason = "tool_calls" if calls or invalid else "stop"
    return ChatResult(
        text=text,
        tool_calls=calls,
        invalid_tool_calls=invalid,
        finish_reason=finish,
        usage=openai_compat.parse_usage(result.get("usage")),
        provider=NAME,
        raw=body,
    )


def _response_text(value: Any) -> str:
    """Return ``response`` as text: it may be missing, or a JSON value with JSON mode."""
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value)


class StreamParser:
    """Parses the ``data:`` payloads of one Workers AI stream, in order.

    Handles both event shapes (``{"response": ...}`` and OpenAI-style ``choices`` chunks),
    ignores the ``p`` padding, mints ids for tool calls, and reports usage once: the final
    cumulative usage event wins over incremental per-chunk usage, which is never added to it.
    """

    __slots__ = ("_calls", "_final_usage", "_incremental", "finish_reason", "model")

    def __init__(self) -> None:
        self._calls = 0
        self._final_usage: Usage | None = None
        self._incremental: list[int] | None = None
        self.finish_reason: FinishReason | None = None
        self.model: str | None = None

    complete = False  # Workers AI marks the end only with [DONE]

    def feed(self, data: str) -> list[StreamDelta]:
        """Parse one event's data into text and tool-call deltas.

        Raises:
            MalformedResponseError: the event is not JSON or of no known shape.
            LlamaVisionError: the event reports an error.

        """
        event = load_event(data, NAME)
        text = event.get("response")
        if text.__class__ is str and len(event) <= 2 and (len(event) == 1 or "p" in event):
            return [StreamDelta(text)] if text else []  # the common case: text and padding
        if not _EVENT_KEYS.intersection(event):
            if "errors" in event or "error" in event:
                raise error_from_body(500, {}, event, streaming=True)
            raise MalformedResponseError(
                f"{NAME} sent an unknown stream event: {clip(data)}", provider=NAME
            )
        if "choices" in event:
            self.model = self.model or event.get("model")
            usage = openai_compat.parse_usage(event.get("usage"))
            if usage is not None:
                inc = self._incremental or [0, 0]
                self._incremental = [inc[0] + usage.prompt_tokens, inc[1] + usage.completion_tokens]
            return openai_compat.parse_choice_delta(event["choices"], self)
        usage = openai_compat.parse_usage(event.get("usage"))
        if usage is not None:
            self._final_usage = usage
        text = _response_text(text)
        raw_calls = event.get("tool_calls") or ()
        if not raw_calls:
            return [StreamDelta(text=text)] if text else []
        chunks = []
        try:
            for raw in raw_calls:
                call = _tool_call(self._calls, raw)
                arguments = (
                    call.arguments if isinstance(call, InvalidToolCall) else call.arguments_json()
                )
                chunks.append(ToolCallChunk(self._calls, call.id, call.name, arguments))
                self._calls += 1
        except (KeyError, TypeError) as exc:
            raise MalformedResponseError(
                f"{NAME} streamed a malformed tool call: {clip(data)}",
                provider=NAME,
            ) from exc
        return [StreamDelta(text=text, tool_call_chunks=tuple(chunks))]

    def finish(self) -> StreamDelta:
        """Return the closing delta: finish reason and the usage, counted once."""
        usage = self._final_usage
        if usage is None and self._incremental is not None:
            prompt, completion = self._incremental
            usage = Usage(prompt, completion, prompt + completion)
        reason = self.finish_reason or ("tool_calls" if self._calls else "stop")
        return StreamDelta(finish_reason=reason, usage=usage, provider=NAME, model=self.model)


def error_from(status: int, headers: Mapping[str, str], content: bytes) -> LlamaVisionError:
    """Map an HTTP error reply (the ``{"success": false, "errors": [...]}`` envelope)."""
    return error_from_body(status, headers, decode_error_body(content))


def error_from_body(
    status: int, headers: Mapping[str, str], body: Any, *, streaming: bool = False
) -> LlamaVisionError:
    """Map a decoded Workers AI error body to a typed exception."""
    errors = body.get("errors") if isinstance(body, Mapping) else None
    if isinstance(errors, list) and errors and isinstance(errors[0], Mapping):
        code = errors[0].get("code")
        message = "; ".join(str(e.get("message", e)) for e in errors)
    elif isinstance(body, Mapping) and isinstance(body.get("error"), (str, Mapping)):
        return openai_compat.error_from_body(status, headers, body, streaming=streaming)
    else:
        code, message = None, (clip(body) if body else "(empty body)")
    request_id = headers.get(REQUEST_ID_HEADER)
    if code == LICENSE_ERROR_CODE or "submit the prompt 'agree'" in message:
        return LicenseAgreementRequiredError(
            "Cloudflare requires accepting Meta's Llama 3.2 Community License once per account "
            f"before this model can be used (Cloudflare said: {message}). Pass "
            "accept_license=True to the client to accept it automatically, or send the prompt "
            "'agree' once yourself: curl https://api.cloudflare.com/client/v4/accounts/"
            "$CLOUDFLARE_ACCOUNT_ID/ai/run/@cf/meta/llama-3.2-11b-vision-instruct "
            '-H "Authorization: Bearer $CLOUDFLARE_API_TOKEN" -d \'{"prompt": "agree"}\'',
            provider=NAME,
            status_code=status,
            code=code,
            request_id=request_id,
        )
    if streaming:
        message = f"error event in the stream: {message}"
    if code in _AUTH_CODES and status in (400, 401, 403):
        return AuthenticationError(
            f"{NAME} returned HTTP {status}: {message} Check {KEY_ENV} (a token with Workers AI "
            f"permission) and {ACCOUNT_ENV}.",
            provider=NAME,
            status_code=status,
            code=code,
            request_id=request_id,
        )
    return status_error(
        status,
        message,
        provider=NAME,
        key_env=f"{KEY_ENV} and {ACCOUNT_ENV}",
        code=code,
        request_id=request_id,
        retry_after=parse_retry_after(headers.get("retry-after")),
    )
