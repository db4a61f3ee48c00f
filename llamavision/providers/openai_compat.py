"""AI Gateway, and any OpenAI-compatible server: the Chat Completions wire format.

Pure functions, no I/O. Every detail of this wire format lives here and nowhere else.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from llamavision.errors import (
    QUOTA_HINT,
    ConfigurationError,
    ErrorKind,
    InsufficientCreditsError,
    LlamaVisionError,
    MalformedResponseError,
    QuotaExceededError,
    parse_retry_after,
    status_error,
)
from llamavision.images import RemoteImage, ResolvedImage
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
from llamavision.providers._common import (
    as_json_text,
    as_list,
    as_mapping,
    as_text,
    clip,
    decode_error_body,
    load_event,
    malformed,
    parse_usage,
)
from llamavision.providers.cloudflare_errors import ERROR_CODES
from llamavision.providers.codec import CloudflareGateway

NAME = "aigateway"
DEFAULT_BASE_URL = "https://api.aigateway.sh/v1"
DEFAULT_MODEL = "meta/llama-3.2-11b-vision-instruct"
KEY_ENV = "AIGATEWAY_API_KEY"
ACCOUNT_ENV = None
CONTEXT_WINDOW = 128_000
MAX_OUTPUT_TOKENS = 4_096
"""Also the ``max_tokens`` sent when the caller sets none: OpenAI-compatible fronts of
Workers AI (Cloudflare's ``/ai/v1``) otherwise cut answers at 256 tokens."""
PRICE = Price(input_per_million=0.049, output_per_million=0.680)
FETCHES_IMAGE_URLS = True
REQUEST_ID_HEADER = "x-request-id"
GATEWAY_BASE_URL = None  # Cloudflare AI Gateway fronts the cloudflare provider here
BASE_URL_ENV = "AIGATEWAY_BASE_URL"
GATEWAY_ENV = GATEWAY_TOKEN_ENV = GATEWAY_BASE_URL_ENV = None
JSON_MODE = True  # response_format json_object and json_schema
EMPTY_ANSWER_HINT = ""
UNSUPPORTED_PARAMS = ("top_k", "repetition_penalty")  # not sent; the client warns once per call
CREDENTIAL_HEADERS = ("authorization",)  # no user header may replace these
END_OF_STREAM = "[DONE]"
PATH = "/chat/completions"
_SAMPLING = ("temperature", "top_p", "seed", "frequency_penalty", "presence_penalty")
_FINISH: dict[str, FinishReason] = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",
    "content_filter": "content_filter",
}
_QUOTA_CODES = frozenset({"insufficient_quota"})
_CREDIT_CODES = frozenset({"insufficient_credits", "insufficient_balance"})
_PREFIXED_CODE = re.compile(r"^\s*(\d{4,5})\s*:")  # "4006: you have used up ..." (Cloudflare)


def auth_headers(key: str) -> dict[str, str]:
    """Return the headers that carry the credential."""
    return {"Authorization": f"Bearer {key}"}


def max_tokens(request: ChatRequest) -> int:
    """Return the output limit sent with ``request`` (the caller's, else the model's most)."""
    return request.params.max_tokens or MAX_OUTPUT_TOKENS


def build_payload(request: ChatRequest, *, image_field: bool = False) -> tuple[str, dict[str, Any]]:
    """Build the path (relative to the base URL) and JSON body of a chat completion.

    Images always travel as ``image_url`` parts: this format has no separate image field.
    """
    params = request.params
    body: dict[str, Any] = {
        "model": request.model,
        "messages": [_message(m) for m in request.messages],
        "max_tokens": max_tokens(request),
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
    tools, choice = request.tools, request.tool_choice
    if tools and choice not in (None, "auto", "none", "required"):
        # A named choice is sent as "call a tool" with only that tool on offer: servers that
        # ignore the named form (llama.cpp's does) still end with a call to that tool.
        tools = tuple(t for t in tools if t.name == choice) or tools
        choice = "required"
    if tools:
        body["tools"] = [
            {
                "type": "function",
                "function": {
                    "name": t.name,
                    "description": t.description,
                    "parameters": dict(t.parameters),
                },
            }
            for t in tools
        ]
        if choice is not None:
            body["tool_choice"] = choice
    if request.stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    body.update(params.extra)
    return PATH, body


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


def license_agreement(model: str) -> None:
    """OpenAI-compatible servers have no license gate."""


def gateway_headers(gateway: CloudflareGateway, *, cache: bool = True) -> dict[str, str]:
    """Refuse: this provider is not routed through Cloudflare AI Gateway here."""
    raise ConfigurationError(
        "Cloudflare AI Gateway (gateway_id) routes provider='cloudflare'; the AI Gateway "
        "provider is reached directly."
    )


def response_metadata(headers: Mapping[str, str]) -> dict[str, Any]:
    """Nothing beyond the body."""
    return {}


def served_from_cache(headers: Mapping[str, str]) -> bool:
    """No cache in front of this provider."""
    return False


def parse_result(body: Any, *, max_tokens: int | None = None) -> ChatResult:
    """Parse a complete (non-streamed) chat completion.

    Raises:
        MalformedResponseError: the body is not a chat completion.

    """
    body = as_mapping(body, NAME, "a reply")
    choices = as_list(body.get("choices"), NAME, "choices")
    if not choices:
        raise malformed(NAME, "a reply without choices (not a chat completion)", body)
    choice = as_mapping(choices[0], NAME, "a choice")
    message = as_mapping(choice.get("message"), NAME, "a choice message")
    calls, invalid = split_tool_calls(
        _tool_call(i, raw)
        for i, raw in enumerate(as_list(message.get("tool_calls"), NAME, "tool_calls"))
    )
    return ChatResult(
        text=as_text(message.get("content"), NAME, "message content"),
        tool_calls=calls,
        invalid_tool_calls=invalid,
        finish_reason=_finish_reason(choice.get("finish_reason")),
        usage=parse_usage(body.get("usage")),
        provider=NAME,
        model=_optional_text(body.get("model")),
        request_id=_optional_text(body.get("id")),
        raw=body,
    )


def _tool_call(position: int, raw: Any) -> ToolCall | InvalidToolCall:
    call = as_mapping(raw, NAME, "a tool call")
    function = as_mapping(call.get("function"), NAME, "a tool-call function")
    name = as_text(function.get("name"), NAME, "a tool name")
    if not name:
        raise malformed(NAME, "a tool call without a name", call)
    call_id = as_text(call.get("id"), NAME, "a tool-call id") or f"call_{position}"
    return make_tool_call(call_id, name, as_json_text(function.get("arguments")))


def _finish_reason(value: Any) -> FinishReason | None:
    if not value or not isinstance(value, str):
        return None
    return _FINISH.get(value, "stop")


def _optional_text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


class StreamParser:
    """Parses the ``data:`` payloads of one streamed chat completion, in order.

    A tool call's id and name reach the caller once, with its first fragment, whether the
    server sends them only there (OpenAI) or repeats them in every fragment (llama.cpp's
    server): frameworks concatenate the fields of fragments.
    """

    __slots__ = ("announced", "ended", "finish_reason", "model", "request_id", "usage")

    def __init__(self) -> None:
        self.finish_reason: FinishReason | None = None
        self.usage: Usage | None = None
        self.model: str | None = None
        self.request_id: str | None = None
        self.announced: dict[int, list[bool]] = {}  # index -> [id sent, name sent]
        self.ended = False

    def feed(self, data: str) -> list[StreamDelta]:
        """Parse one event's data into text and tool-call deltas.

        Raises:
            MalformedResponseError: the event is not JSON or not a completion chunk.
            LlamaVisionError: the event reports an error.

        """
        if data == END_OF_STREAM:
            self.ended = True
            return []
        chunk = load_event(data, NAME)
        choices = chunk.get("choices")
        if choices is None:
            if "error" in chunk:
                raise error_from_body(500, {}, chunk, streaming=True)
            raise MalformedResponseError(
                f"{NAME} sent an unknown stream event: {clip(data)}", provider=NAME
            )
        if self.request_id is None:
            self.request_id = _optional_text(chunk.get("id"))
            self.model = _optional_text(chunk.get("model"))
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


def stream_parser(*, max_tokens: int | None = None) -> StreamParser:
    """Return a parser for one stream (the finish reason comes from the server)."""
    return StreamParser()


def parse_choice_delta(choices: Any, state: Any) -> list[StreamDelta]:
    """Turn the ``choices`` of one ``chat.completion.chunk`` into deltas.

    Also used for Cloudflare's OpenAI-shaped events. ``state`` records the finish reason and
    which tool calls were announced (it has ``finish_reason`` and ``announced``).
    """
    if not choices:
        return []
    if choices.__class__ is not list:
        raise malformed(NAME, "choices that are not a list", choices)
    choice = choices[0]
    if choice.__class__ is not dict:
        raise malformed(NAME, "a stream choice that is not an object", choice)
    delta = choice.get("delta") or {}
    if delta.__class__ is not dict:
        raise malformed(NAME, "a stream delta that is not an object", delta)
    reason = choice.get("finish_reason")
    if reason:
        state.finish_reason = _finish_reason(reason) or "stop"
    text = delta.get("content")
    if text.__class__ is not str:
        text = as_text(text, NAME, "streamed content")
    calls = delta.get("tool_calls")
    if not calls:
        return [StreamDelta(text=text)] if text else []
    if calls.__class__ is not list:
        raise malformed(NAME, "streamed tool_calls that are not a list", calls)
    chunks = tuple([_tool_call_chunk(i, c, state.announced) for i, c in enumerate(calls)])
    return [StreamDelta(text=text, tool_call_chunks=chunks)]


def _tool_call_chunk(position: int, call: Any, announced: dict[int, list[bool]]) -> ToolCallChunk:
    if call.__class__ is not dict:
        raise malformed(NAME, "a streamed tool call that is not an object", call)
    fn = call.get("function") or {}
    if fn.__class__ is not dict:
        raise malformed(NAME, "a streamed tool-call function that is not an object", fn)
    index = call.get("index", position)
    if index.__class__ is not int:
        raise malformed(NAME, "a streamed tool call whose index is not an integer", call)
    call_id = call.get("id") or None
    name = fn.get("name") or None
    seen = announced.get(index)
    if seen is None:
        seen = announced[index] = [False, False]
    if call_id is not None:
        call_id = None if seen[0] else as_text(call_id, NAME, "a tool-call id")
        seen[0] = True
    if name is not None:
        name = None if seen[1] else as_text(name, NAME, "a tool name")
        seen[1] = True
    return ToolCallChunk(index, call_id, name, as_json_text(fn.get("arguments")))


def error_from(
    status: int,
    headers: Mapping[str, str],
    content: bytes,
    *,
    model: str | None = None,
    credential: str | None = None,
) -> LlamaVisionError:
    """Map an HTTP error reply to a typed exception."""
    return error_from_body(
        status, headers, decode_error_body(content), model=model, credential=credential
    )


def error_from_body(
    status: int,
    headers: Mapping[str, str],
    body: Any,
    *,
    streaming: bool = False,
    model: str | None = None,
    credential: str | None = None,
) -> LlamaVisionError:
    """Map a decoded error body (``{"error": {...}}``) to a typed exception."""
    error = body.get("error") if isinstance(body, Mapping) else None
    if isinstance(error, Mapping):
        message = clip(error.get("message") or error, 1000)
        code = error.get("code") or error.get("type")
        code = code if isinstance(code, (str, int)) and not isinstance(code, bool) else None
    elif isinstance(error, str):
        message, code = clip(error, 1000), None
    else:
        message, code = (clip(body) if body else "(empty body)"), None
    if streaming:
        message = f"error event in the stream: {message}"
    return status_error(
        status,
        message,
        provider=NAME,
        key_env=credential or KEY_ENV,
        code=code,
        request_id=headers.get(REQUEST_ID_HEADER),
        retry_after=parse_retry_after(headers.get("retry-after")),
        kind=_kind(code, message),
        model=model,
    )


def _kind(code: Any, message: str) -> ErrorKind | None:
    """Return what the provider's code says beyond the status, if anything."""
    if code in _QUOTA_CODES:
        return QuotaExceededError, QUOTA_HINT
    if code in _CREDIT_CODES:
        return InsufficientCreditsError, "Add credits to the account behind {key_env}."
    prefixed = _PREFIXED_CODE.match(message.removeprefix("error event in the stream: "))
    if prefixed:  # Cloudflare's OpenAI-compatible route puts Workers AI codes in the message
        return ERROR_CODES.get(int(prefixed.group(1)))
    return None
