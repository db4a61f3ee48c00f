"""OpenTelemetry spans for model calls, following the GenAI semantic conventions.

When the application has configured a tracer provider (``opentelemetry-api``, the ``otel``
extra), each call is one CLIENT span named ``chat {model}`` with ``gen_ai.*`` attributes: the
operation, provider, request model and parameters, response id, model and finish reasons,
input and output tokens, plus our cost as ``llamavision.cost_usd``. Retries and failovers
are span events; a streamed call's span ends with its last chunk. Prompts, answers and images
are not recorded unless the client is created with ``trace_content=True`` (and then images
only as their type, never their bytes). Without a tracer provider, a call costs one check.
"""

from __future__ import annotations

import json
import mimetypes
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

from llamavision._version import __version__
from llamavision.images import RemoteImage, ResolvedImage, sniff_mime
from llamavision.messages import ChatRequest, ChatResult, Image, StreamDelta, Text, ToolCall

try:
    from opentelemetry import trace
    from opentelemetry.trace import NoOpTracerProvider, ProxyTracerProvider, SpanKind, StatusCode
except ImportError:  # pragma: no cover - tracing is an optional extra
    trace = None  # type: ignore[assignment]

_PARAMS = {
    "temperature": "gen_ai.request.temperature",
    "top_p": "gen_ai.request.top_p",
    "top_k": "gen_ai.request.top_k",
    "seed": "gen_ai.request.seed",
    "frequency_penalty": "gen_ai.request.frequency_penalty",
    "presence_penalty": "gen_ai.request.presence_penalty",
}


class Call:
    """The span of one model call; the no-op :data:`NOT_TRACED` when tracing is off."""

    __slots__ = ("content", "span")

    def __init__(self, span: Any = None, content: bool = False) -> None:
        self.span = span
        self.content = content

    @contextmanager
    def current(self) -> Iterator[None]:
        """Make the span current while a request is sent (HTTP spans nest under it)."""
        if self.span is None:
            yield
            return
        with trace.use_span(self.span, end_on_exit=False):
            yield

    def event(self, name: str, **attributes: Any) -> None:
        """Record a retry or a failover."""
        if self.span is not None:
            self.span.add_event(f"llamavision.{name}", _clean(attributes))

    def end(self, result: ChatResult | StreamDelta, provider: str, base_url: str) -> None:
        """End the span with what the answer said (for a stream: its last delta)."""
        span = self.span
        if span is None or not span.is_recording():
            return
        self.span = None
        host = urlsplit(base_url)
        attributes: dict[str, Any] = {
            "gen_ai.provider.name": provider,
            "server.address": host.hostname,
            "server.port": host.port or (443 if host.scheme == "https" else 80),
            "gen_ai.response.model": result.model,
            "gen_ai.response.id": result.request_id,
            "llamavision.cost_usd": result.cost,
        }
        if result.finish_reason:
            attributes["gen_ai.response.finish_reasons"] = [result.finish_reason]
        if result.usage is not None:
            attributes["gen_ai.usage.input_tokens"] = result.usage.prompt_tokens
            attributes["gen_ai.usage.output_tokens"] = result.usage.completion_tokens
        if self.content and isinstance(result, ChatResult):
            attributes["gen_ai.output.messages"] = json.dumps([_output(result)])
        span.set_attributes(_clean(attributes))
        span.end()

    def fail(self, error: BaseException) -> None:
        """End the span as failed."""
        span = self.span
        if span is None or not span.is_recording():
            return
        self.span = None
        span.set_attribute("error.type", type(error).__name__)
        span.set_status(StatusCode.ERROR, str(error))
        span.end()


NOT_TRACED: Call = Call()


def start(
    request: ChatRequest,
    provider: str,
    max_tokens: int,
    *,
    tracer_provider: Any = None,
    content: bool = False,
) -> Call:
    """Start the span of a call, or return :data:`NOT_TRACED` when no tracing is configured."""
    if trace is None:
        return NOT_TRACED
    tracer_provider = tracer_provider or trace.get_tracer_provider()
    if isinstance(tracer_provider, (ProxyTracerProvider, NoOpTracerProvider)):
        return NOT_TRACED  # the application configured no tracing
    tracer = tracer_provider.get_tracer("llamavision", __version__)
    params = request.params
    attributes: dict[str, Any] = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": provider,
        "gen_ai.request.model": request.model,
        "gen_ai.request.max_tokens": params.max_tokens or max_tokens,
        **{key: getattr(params, name) for name, key in _PARAMS.items()},
    }
    if params.stop:
        attributes["gen_ai.request.stop_sequences"] = list(params.stop)
    if content:
        attributes["gen_ai.input.messages"] = json.dumps(
            [_message(m.role, m.parts) for m in request.messages]
        )
    span = tracer.start_span(
        f"chat {request.model}", kind=SpanKind.CLIENT, attributes=_clean(attributes)
    )
    return Call(span, content)


def _clean(attributes: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in attributes.items() if v is not None}


def _message(role: str, parts: Any) -> dict[str, Any]:
    out: list[dict[str, Any]] = []
    for part in parts:
        if isinstance(part, Text):
            out.append({"type": "text", "content": part.text})
        elif isinstance(part, Image):  # the image's type only, never its bytes
            out.append({"type": "blob", "modality": "image", "mime_type": _image_type(part)})
        elif isinstance(part, ToolCall):
            out.append(
                {"type": "tool_call", "id": part.id, "name": part.name, "arguments": part.arguments}
            )
        else:
            out.append(
                {"type": "tool_call_response", "id": part.tool_call_id, "response": part.content}
            )
    return {"role": role, "parts": out}


def _image_type(image: Image) -> str | None:
    """Return an image's MIME type without reading it (by its magic bytes, or its name)."""
    source = image.source
    if isinstance(source, ResolvedImage):
        return source.mime_type
    if isinstance(source, (bytes, bytearray)):
        return sniff_mime(bytes(source[:16]))
    name = source.url if isinstance(source, RemoteImage) else source
    if isinstance(name, (str, os.PathLike)) and not str(name).startswith("data:"):
        return mimetypes.guess_type(str(name))[0]
    return None


def _output(result: ChatResult) -> dict[str, Any]:
    message = _message("assistant", [Text(result.text), *result.tool_calls])
    message["finish_reason"] = result.finish_reason
    return message
