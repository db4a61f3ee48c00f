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
    ConfigurationError,
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
from llamavision.providers._common import (
    as_count,
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

NAME = "cloudflare"
DEFAULT_BASE_URL = "https://api.cloudflare.com/client/v4/accounts/{account_id}/ai/run"
DEFAULT_MODEL = "@cf/meta/llama-3.2-11b-vision-instruct"
KEY_ENV = "CLOUDFLARE_API_TOKEN"
ACCOUNT_ENV = "CLOUDFLARE_ACCOUNT_ID"
CONTEXT_WINDOW = 131_000
MAX_OUTPUT_TOKENS = 4_096
"""Also the ``max_tokens`` sent when the caller sets none: Workers AI's own default for this
model is 256, which cuts ordinary answers short without saying so."""
PRICE = Price(input_per_million=0.24, output_per_million=0.24)
FETCHES_IMAGE_URLS = False
REQUEST_ID_HEADER = "cf-ray"
GATEWAY_BASE_URL = "https://gateway.ai.cloudflare.com/v1/{account_id}/{gateway_id}/workers-ai"
GATEWAY_ENV = "CLOUDFLARE_GATEWAY_ID"  # the names pydantic-ai's Cloudflare provider reads too
GATEWAY_TOKEN_ENV = "CLOUDFLARE_AI_GATEWAY_AUTH"
GATEWAY_BASE_URL_ENV = "CLOUDFLARE_GATEWAY_BASE_URL"  # the gateway route of another host
BASE_URL_ENV = "CLOUDFLARE_BASE_URL"
JSON_MODE = False  # no response_format: structured output goes through a tool call
EMPTY_ANSWER_HINT = ", try image_transport='image'"  # silent empties seen with image_url parts
UNSUPPORTED_PARAMS = ("stop", "response_format")  # not sent; the client warns once per call
CREDENTIAL_HEADERS = (
    "authorization",
    "cf-aig-authorization",
)  # a user header may not replace these
END_OF_STREAM = "[DONE]"
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


def auth_headers(key: str) -> dict[str, str]:
    """Return the headers that carry the credential."""
    return {"Authorization": f"Bearer {key}"}


def max_tokens(request: ChatRequest) -> int:
    """Return the output limit sent with ``request`` (the caller's, else the model's most)."""
    return request.params.max_tokens or MAX_OUTPUT_TOKENS


def build_payload(request: ChatRequest, *, image_field: bool = False) -> tuple[str, dict[str, Any]]:
    """Build the path (relative to the base URL) and JSON body of a messages-shaped run.

    The image travels as an ``image_url`` data URL in the message content, or with
    ``image_field`` as the top-level ``image`` field (base64), the schema's other transport.
    """
    params = request.params
    messages = request.messages
    image = None
    if image_field:
        images = [i for m in messages for i in m.images]
        image = images[-1] if images else None
        messages = tuple(
            m if not m.images else Message(m.role, tuple(p for p in m.parts if p not in images))
            for m in messages
        )
    body: dict[str, Any] = {
        "messages": _messages(messages),
        "max_tokens": max_tokens(request),
    }
    if image is not None:
        body["image"] = _inline(image).base64()
    for name in _SAMPLING:
        value = getattr(params, name)
        if value is not None:
            body[name] = value
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
    return _inline(image).data_url()


def _inline(image: Image) -> ResolvedImage:
    if isinstance(image.source, ResolvedImage):
        return image.source
    raise TypeError(
        "Cloudflare needs images inline: resolve (and download) them before encoding, "
        f"got {type(image.source).__name__}"
    )


EMBEDDING_MODELS: Mapping[str, tuple[int, float]] = {
    "@cf/baai/bge-small-en-v1.5": (384, 0.020),
    "@cf/baai/bge-base-en-v1.5": (768, 0.0666),
    "@cf/baai/bge-large-en-v1.5": (1024, 0.20),
}
"""Workers AI's text embedding models: dimensions, and USD per million input tokens."""
DEFAULT_EMBEDDING_MODEL = "@cf/baai/bge-base-en-v1.5"
MAX_EMBEDDING_BATCH = 100
"""The most texts one embedding run takes."""


def embedding_dimensions(model: str) -> int:
    """Return the dimension of ``model``'s embeddings.

    Raises:
        ConfigurationError: ``model`` is not one of :data:`EMBEDDING_MODELS`.

    """
    known = EMBEDDING_MODELS.get(model)
    if known is None:
        raise ConfigurationError(
            f"{model!r} is not a Workers AI text embedding model this package knows: use one "
            f"of {', '.join(map(repr, EMBEDDING_MODELS))}."
        )
    return known[0]


def embedding_payload(model: str, texts: list[str]) -> tuple[str, dict[str, Any]]:
    """Build the path and JSON body of an embedding run (at most :data:`MAX_EMBEDDING_BATCH`)."""
    return path_for(model), {"text": texts}


def parse_embeddings(body: Any, *, count: int, dimensions: int) -> list[list[float]]:
    """Parse an embedding run's reply: ``{"result": {"shape": [n, d], "data": [[...]]}}``.

    Raises:
        MalformedResponseError: no ``data``, or not ``count`` vectors of ``dimensions`` numbers.

    """
    result = body.get("result") if isinstance(body, Mapping) else None
    result = as_mapping(result, NAME, "an embedding reply with a result")
    data = as_list(result.get("data"), NAME, "embeddings")
    if len(data) != count or not all(
        isinstance(row, list) and len(row) == dimensions for row in data
    ):
        what = f"{len(data)} embeddings where {count} of {dimensions} numbers were asked for"
        raise malformed(NAME, what, result.get("shape"))
    try:
        return [[float(x) for x in row] for row in data]
    except (TypeError, ValueError):
        raise malformed(NAME, "embeddings that are not numbers", data[:1]) from None


def license_agreement(model: str) -> tuple[str, dict[str, Any]]:
    """Return the request that accepts Meta's license for the account (sent once)."""
    return path_for(model), dict(AGREE_PAYLOAD)


def gateway_headers(gateway: CloudflareGateway, *, cache: bool = True) -> dict[str, str]:
    """Return the ``cf-aig-*`` request headers of a Cloudflare AI Gateway (PROVIDERS.md 4).

    ``cache=False`` bypasses the gateway's cache (for internal requests).
    """
    headers: dict[str, str] = {}
    if gateway.token is not None:
        headers["cf-aig-authorization"] = f"Bearer {gateway.token.get_secret_value()}"
    if cache and gateway.cache_ttl is not None:
        headers["cf-aig-cache-ttl"] = str(int(gateway.cache_ttl))
    if gateway.skip_cache or not cache:
        headers["cf-aig-skip-cache"] = "true"
    if cache and gateway.cache_key:
        headers["cf-aig-cache-key"] = gateway.cache_key
    if gateway.metadata:
        headers["cf-aig-metadata"] = json.dumps(
            dict(gateway.metadata), separators=(",", ":"), allow_nan=False
        )
    return headers


def response_metadata(headers: Mapping[str, str]) -> dict[str, Any]:
    """Return what Cloudflare AI Gateway says about an answer: cache status, log and event id."""
    found = {
        name: headers.get(f"cf-aig-{header}")
        for name, header in (
            ("cache_status", "cache-status"),
            ("log_id", "log-id"),
            ("event_id", "event-id"),
        )
    }
    gateway = {k: v for k, v in found.items() if v}
    return {"cloudflare_ai_gateway": gateway} if gateway else {}


def served_from_cache(headers: Mapping[str, str]) -> bool:
    """Return whether Cloudflare AI Gateway answered from its cache (which costs nothing)."""
    return headers.get("cf-aig-cache-status", "").upper() == "HIT"


def mint_tool_call_id(index: int, name: str, arguments: Any) -> str:
    """Return a stable id for a Cloudflare tool call (which has none).

    The same call at the same position always gets the same id, so tool results can be matched.
    """
    digest = hashlib.sha1(
        json.dumps([index, name, arguments], sort_keys=True, default=str).encode()
    ).hexdigest()
    return f"call_{index}_{digest[:12]}"


def _tool_call(index: int, raw: Any) -> ToolCall | InvalidToolCall:
    call = as_mapping(raw, NAME, "a tool call")
    if "function" in call:  # OpenAI-shaped, seen on newer models
        call = {"id": call.get("id"), **as_mapping(call["function"], NAME, "a tool call")}
    name = as_text(call.get("name"), NAME, "a tool name")
    if not name:
        raise malformed(NAME, "a tool call without a name", raw)
    arguments = call.get("arguments")
    if not isinstance(arguments, Mapping):
        arguments = as_json_text(arguments)
    call_id = as_text(call.get("id"), NAME, "a tool-call id") or mint_tool_call_id(
        index, name, arguments
    )
    return make_tool_call(call_id, name, arguments)


def _length_or(reason: FinishReason, usage: Usage | None, max_tokens: int | None) -> FinishReason:
    """Workers AI's response-shaped replies carry no finish reason: infer a cut from usage."""
    if usage is not None and max_tokens and usage.completion_tokens >= max_tokens:
        return "length"
    return reason


def parse_result(body: Any, *, max_tokens: int | None = None) -> ChatResult:
    """Parse a complete reply: the ``{"result": ..., "success": true}`` envelope.

    ``max_tokens`` is the limit that was sent: an answer that used all of it was cut, and
    says so with ``finish_reason="length"``.

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
    calls, invalid = split_tool_calls(
        _tool_call(i, c)
        for i, c in enumerate(as_list(result.get("tool_calls"), NAME, "tool_calls"))
    )
    usage = parse_usage(result.get("usage"))
    return ChatResult(
        text=_response_text(result.get("response")),
        tool_calls=calls,
        invalid_tool_calls=invalid,
        finish_reason=_length_or("tool_calls" if calls or invalid else "stop", usage, max_tokens),
        usage=usage,
        provider=NAME,
        raw=body,
    )


def _response_text(value: Any) -> str:
    """Return ``response`` as text: it may be missing, a scalar, or a JSON value (JSON mode)."""
    if isinstance(value, (Mapping, list)):
        return json.dumps(value)
    return as_text(value, NAME, "a response")


class StreamParser:
    """Parses the ``data:`` payloads of one Workers AI stream, in order.

    Handles both event shapes (``{"response": ...}`` and OpenAI-style ``choices`` chunks),
    ignores the ``p`` padding, mints ids for tool calls, and reports usage once: the final
    cumulative usage event wins over incremental per-chunk usage, which is never added to it.
    """

    __slots__ = (
        "_calls",
        "_final_usage",
        "_incremental",
        "announced",
        "ended",
        "finish_reason",
        "max_tokens",
        "model",
    )

    def __init__(self, max_tokens: int | None = None) -> None:
        self._calls = 0
        self._final_usage: Usage | None = None
        self._incremental: list[int] | None = None
        self.announced: dict[int, list[bool]] = {}
        self.finish_reason: FinishReason | None = None
        self.max_tokens = max_tokens
        self.model: str | None = None
        self.ended = False

    complete = False  # Workers AI marks the end only with [DONE]

    def feed(self, data: str) -> list[StreamDelta]:
        """Parse one event's data into text and tool-call deltas.

        Raises:
            MalformedResponseError: the event is not JSON or of no known shape.
            LlamaVisionError: the event reports an error.

        """
        if data == END_OF_STREAM:
            self.ended = True
            return []
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
            model = event.get("model")
            self.model = self.model or (model if isinstance(model, str) else None)
            usage = parse_usage(event.get("usage"))
            if usage is not None:
                inc = self._incremental or [0, 0]
                self._incremental = [inc[0] + usage.prompt_tokens, inc[1] + usage.completion_tokens]
            return openai_compat.parse_choice_delta(event["choices"], self)
        usage = parse_usage(event.get("usage"))
        if usage is not None:
            self._final_usage = usage
        text = _response_text(text)
        raw_calls = as_list(event.get("tool_calls"), NAME, "streamed tool_calls")
        if not raw_calls:
            return [StreamDelta(text=text)] if text else []
        chunks = []
        for raw in raw_calls:
            call = _tool_call(self._calls, raw)
            arguments = (
                call.arguments if isinstance(call, InvalidToolCall) else call.arguments_json()
            )
            chunks.append(ToolCallChunk(self._calls, call.id, call.name, arguments))
            self._calls += 1
        return [StreamDelta(text=text, tool_call_chunks=tuple(chunks))]

    def finish(self) -> StreamDelta:
        """Return the closing delta: finish reason and the usage, counted once."""
        usage = self._final_usage
        if usage is None and self._incremental is not None:
            prompt, completion = self._incremental
            usage = Usage(prompt, completion, prompt + completion)
        reason = self.finish_reason or _length_or(
            "tool_calls" if self._calls or self.announced else "stop", usage, self.max_tokens
        )
        return StreamDelta(finish_reason=reason, usage=usage, provider=NAME, model=self.model)


def stream_parser(*, max_tokens: int | None = None) -> StreamParser:
    """Return a parser for one stream; ``max_tokens`` is the limit that was sent."""
    return StreamParser(max_tokens)


def error_from(
    status: int,
    headers: Mapping[str, str],
    content: bytes,
    *,
    model: str | None = None,
    credential: str | None = None,
) -> LlamaVisionError:
    """Map an HTTP error reply (the ``{"success": false, "errors": [...]}`` envelope)."""
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
    """Map a decoded Workers AI error body to a typed exception, by its code, then status."""
    errors = body.get("errors") if isinstance(body, Mapping) else None
    if isinstance(errors, list) and errors and isinstance(errors[0], Mapping):
        code = as_count(errors[0].get("code"))
        message = clip(
            "; ".join(
                str(e.get("message", e)) if isinstance(e, Mapping) else str(e) for e in errors
            ),
            1000,
        )
    elif isinstance(body, Mapping) and isinstance(body.get("error"), (str, Mapping)):
        return openai_compat.error_from_body(
            status, headers, body, streaming=streaming, model=model, credential=credential
        )
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
            f"{NAME} returned HTTP {status}: {message} Check {credential or KEY_ENV} (a token "
            "with Workers AI "
            f"permission) and {ACCOUNT_ENV}, and through Cloudflare AI Gateway the gateway's "
            f"token ({GATEWAY_TOKEN_ENV}).",
            provider=NAME,
            status_code=status,
            code=code,
            request_id=request_id,
        )
    return status_error(
        status,
        message,
        provider=NAME,
        key_env=f"{credential or KEY_ENV} and {ACCOUNT_ENV}",
        code=code,
        request_id=request_id,
        retry_after=parse_retry_after(headers.get("retry-after")),
        kind=ERROR_CODES.get(code) if code is not None else None,
        model=model,
    )
