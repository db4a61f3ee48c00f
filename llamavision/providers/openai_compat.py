"""AI Gateway, and any OpenAI-compatible server: the Chat Completions wire format.

Pure functions, no I/O. Every detail of this wire format lives here and nowhere else.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from llamavision.errors import (
    LlamaVisionError,
    MalformedResponseError,
    parse_retry_after,
    status_error,
)
from llamavision.images import RemoteImage, ResolvedImage
from llamavision.messages import (
    ChatRequest,
    ChatResult,
    FinishReason,
    Image,
    Message,
    Price,
    StreamDelta,
    Text,
    ToolCallChunk,
    ToolResult,
    Usage,
    make_tool_call,
    split_tool_calls,
)
from llamavision.providers._common import clip, decode_error_body, drop_unsupported, load_event

NAME = "aigateway"
DEFAULT_BASE_URL = "https://api.aigateway.sh/v1"
DEFAULT_MODEL = "meta/llama-3.2-11b-vision-instruct"
KEY_ENV = "AIGATEWAY_API_KEY"
CONTEXT_WINDOW = 128_000
MAX_OUTPUT_TOKENS = 4_096
PRICE = Price(input_per_million=0.049, output_per_million=0.680)
FETCHES_IMAGE_URLS = True
REQUEST_ID_HEADER = "x-request-id"
PATH = "/chat/completions"
_SAMPLING = ("temperature", "top_p", "max_tokens", "seed", "frequency_penalty", "presence_penalty")
_FINISH: dict[str, FinishReason] = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",
    "content_filter": "content_filter",
}


def build_payload(request: ChatRequest) -> tuple[str, dict[str, Any]]:
    """Build the path (relative to the base URL) and JSON body of a chat completion."""
    params = request.params
    body: dict[str, Any] = {
        "model": request.model,
        "messages": [_message(m) for m in request.messages],
    }
    for name in _SAMPLING:
        value = getattr(params, name)
        if value is not None:
            body[name] = value
    if params.stop:
        body["stop"] = list(params.stop)
    if params.response_format == "json_object":
        body["response_format"] = {"type": "json_object"}
    elif params.response_format is not None:
        body["response_format"] = {
            "type": "json_schema",
            "json_schema": dict(params.response_format),
        }
    drop_unsupported(NAME, params, ("top_k", "repetition_penalty"))
    if request.tools:
        body["tools"] = [
            {
                "type": "function",
                "function": {
                    "name": t.name,
                    "description": t.description,
                    "parameters": dict(t.parameters),
                },
            }
            for t in request.tools
        ]
        if request.tool_choice is not None:
            body["tool_choice"] = _tool_choice(request.tool_choice)
    if request.stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    body.update(params.extra)
    return PATH, body


def _tool_choice(choice: str) -> Any:
    if choice in ("auto", "none", "required"):
        return choice
    return {"type": "function", "function": {"name": choice}}


def image_url(image: Image) -> str:
    """Return the URL to send for an image part: a data URL, or a remote URL as given."""
    src = image.source
    if isinstance(src, ResolvedImage):
        return src.data_url()
    if isinstance(src, RemoteImage):
        return src.url
    raise TypeError(f"image parts must be resolved before encoding, got {type(src).__name__}")


def _message(message: Message) -> dict[str, Any]:
    role = message.role
    if role == "tool":
        result = next(p for p in message.parts if isinstance(p, ToolResult))
        return {"role": "tool", "tool_call_id": result.tool_call_id, "content": result.content}
    if role == "assistant":
        out: dict[str, Any] = {"role": "assistant", "content": message.text or None}
        calls = message.tool_calls
        if calls:
            out["tool_calls"] = [
                {
                    "id": c.id,
                    "type": "function",
                    "function": {"name": c.name, "arguments": c.arguments_json()},
                }
                for c in calls
            ]
        return out
    if all(isinstance(p, Text) for p in message.parts):
        return {"role": role, "content": message.text}
    content: list[dict[str, Any]] = []
    for part in message.parts:
        if isinstance(part, Text):
            content.append({"type": "text", "text": part.text})
        elif isinstance(part, Image):
            content.append({"type": "image_url", "image_url": {"url": image_url(part)}})
    return {"role": role, "content": content}


def parse_result(body: Any) -> ChatResult:
    """Parse a complete (non-streamed) chat completion.

    Raises:
        MalformedResponseError: the body is not a chat completion.

    """
    try:
        choice = body["choices"][0]
        message = choice["message"]
        text = message.get("content") or ""
        calls, invalid = split_tool_calls(
            make_tool_call(c["id"], c["function"]["name"], c["function"]["arguments"])
            for c in message.get("tool_calls") or ()
        )
    except (KeyError, IndexError, TypeError) as exc:
        raise MalformedResponseError(
            f"{NAME} reply is not a chat completion (missing {exc}): {clip(body)}",
            provider=NAME,
        ) from exc
    return ChatResult(
        text=text if isinstance(text, str) else json.dumps(text),
        tool_calls=calls,
        invalid_tool_calls=invalid,
        finish_reason=_FINISH.get(choice.get("finish_reason") or ""),
        usage=parse_usage(body.get("usage")),
        provider=NAME,
        model=body.get("model"),
        request_id=body.get("id"),
        raw=body,
    )


def parse_usage(usage: Any) -> Usage | None:
    """Read an OpenAI-style usage object (extra keys are ignored)."""
    if not isinstance(usage, Mapping):
        return None
    prompt = int(usage.get("prompt_tokens") or 0)
    completion = int(usage.get("completion_tokens") or 0)
    return Usage(prompt, completion, int(usage.get("total_tokens") or prompt + completion))


class StreamParser:
    """Parses the ``data:`` payloads of one streamed chat completion, in order."""

    __slots__ = ("finish_reason", "model", "request_id", "usage")

    def __init__(self) -> None:
        self.finish_reason: FinishReason | None = None
        self.usage: Usage | None = None
        self.model: str | None = None
        self.request_id: str | None = None

    def feed(self, data: str) -> list[StreamDelta]:
        """Parse one event's data into text and tool-call deltas.

        Raises:
            MalformedResponseError: the event is not JSON or not a completion chunk.
            LlamaVisionError: the event reports an error.

        """
        chunk = load_event(data, NAME)
        choices = chunk.get("choices")
        if choices is None:
            if "error" in chunk:
                raise error_from_body(500, {}, chunk, streaming=True)
            raise MalformedResponseError(
                f"{NAME} sent an unknown stream event: {clip(data)}", provider=NAME
            )
        if self.request_id is None:
            self.request_id = chunk.get("id")
            self.model = chunk.get("model")
        usage = chunk.get("usage")
        if usage:
            self.usage = parse_usage(usage)
        return parse_choice_delta(choices, self)

    @property
    def complete(self) -> bool:
        """Whether the stream announced its end (a finish reason was seen)."""
        return self.finish_reason is not None

    def finish(self) -> StreamDelta:
        """Return the closing delta: finish reason and usage."""
        return StreamDelta(
            finish_reason=self.finish_reason or "stop",
            usage=self.usage,
            provider=NAME,
            model=self.model,
            request_id=self.request_id,
        )


def parse_choice_delta(choices: Any, state: StreamParser | Any) -> list[StreamDelta]:
    """Turn the ``choices`` of one ``chat.completion.chunk`` into deltas.

    Also used for Cloudflare's OpenAI-shaped events; records the finish reason on ``state``.
    """
    if not choices:
        return []
    try:
        choice = choices[0]
        delta = choice.get("delta") or {}
        reason = choice.get("finish_reason")
        if reason:
            state.finish_reason = _FINISH.get(reason, "stop")
        text = delta.get("content") or ""
        calls = delta.get("tool_calls")
        if not calls:
            return [StreamDelta(text=text)] if text else []
        if len(calls) == 1:
            chunks: tuple[ToolCallChunk, ...] = (_tool_call_chunk(0, calls[0]),)
        else:
            chunks = tuple([_tool_call_chunk(i, c) for i, c in enumerate(calls)])
    except (AttributeError, IndexError, TypeError) as exc:
        raise MalformedResponseError(
            f"malformed stream chunk ({exc}): {clip(choices)}", provider=NAME
        ) from exc
    return [StreamDelta(text=text, tool_call_chunks=chunks)]


def _tool_call_chunk(position: int, call: Any) -> ToolCallChunk:
    fn = call.get("function") or {}
    arguments = fn.get("arguments")
    if arguments is None:
        arguments = ""
    elif arguments.__class__ is not str:
        arguments = json.dumps(arguments, separators=(",", ":"))
    return ToolCallChunk(call.get("index", position), call.get("id"), fn.get("name"), arguments)


def error_from(status: int, headers: Mapping[str, str], content: bytes) -> LlamaVisionError:
    """Map an HTTP error reply to a typed exception."""
    return error_from_body(status, headers, decode_error_body(content))


def error_from_body(
    status: int, headers: Mapping[str, str], body: Any, *, streaming: bool = False
) -> LlamaVisionError:
    """Map a decoded error body (``{"error": {...}}``) to a typed exception."""
    error = body.get("error") if isinstance(body, Mapping) else None
    if isinstance(error, Mapping):
        message = str(error.get("message") or error)
        code = error.get("code") or error.get("type")
    else:
        message, code = (clip(body) if body else "(empty body)"), None
    if streaming:
        message = f"error event in the stream: {message}"
    return status_error(
        status,
        message,
        provider=NAME,
        key_env=KEY_ENV,
        code=code,
        request_id=headers.get(REQUEST_ID_HEADER),
        retry_after=parse_retry_after(headers.get("retry-after")),
    )
