"""OpenTelemetry spans of model calls (GenAI semantic conventions), with the SDK's in-memory
exporter, against the emulator."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from langchain_llamavision import ChatLlamaVision
from llamaindex_llamavision import LlamaVision
from llamavision import AuthenticationError, LlamaVisionClient, Message, tracing
from llamavision.emulator import Emulator, Fault

RED = Path(__file__).resolve().parents[2] / "examples" / "images" / "red-square.png"
MODEL = "meta/llama-3.2-11b-vision-instruct"


@pytest.fixture
def spans() -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


def only(exporter: InMemorySpanExporter) -> ReadableSpan:
    (span,) = exporter.get_finished_spans()
    return span


def test_a_call_is_one_span_with_the_genai_attributes(
    emulator: Emulator, spans: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    provider, exporter = spans
    with LlamaVisionClient(tracer_provider=provider) as c:
        result = c.chat([Message.user("What is it?", image=RED)], temperature=0.2, seed=7)
    span = only(exporter)
    assert (span.name, span.kind) == (f"chat {MODEL}", SpanKind.CLIENT)
    a = span.attributes or {}
    assert a["gen_ai.operation.name"] == "chat" and a["gen_ai.provider.name"] == "aigateway"
    assert (a["gen_ai.request.model"], a["gen_ai.request.max_tokens"]) == (MODEL, 4096)
    assert (a["gen_ai.request.temperature"], a["gen_ai.request.seed"]) == (0.2, 7)
    assert a["gen_ai.response.finish_reasons"] == ("stop",)
    assert result.usage is not None
    assert a["gen_ai.usage.input_tokens"] == result.usage.prompt_tokens
    assert a["gen_ai.usage.output_tokens"] == result.usage.completion_tokens
    assert a["llamavision.cost_usd"] == result.cost and a["server.address"] == "127.0.0.1"
    assert a["gen_ai.response.id"] == result.request_id
    assert not any(k.startswith(("gen_ai.input", "gen_ai.output")) for k in a)  # no content


@pytest.mark.parametrize("mode", ["stream", "astream"])
def test_a_streamed_call_ends_its_span_with_the_last_chunk(
    mode: str, emulator: Emulator, spans: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    provider, exporter = spans
    client = LlamaVisionClient("cloudflare", accept_license=True, tracer_provider=provider)
    ended_before_last: list[bool] = []

    def seen(delta: Any) -> None:
        if delta.finish_reason is None:
            ended_before_last.append(bool(exporter.get_finished_spans()))

    if mode == "stream":
        for delta in client.stream("Tell me about red."):
            seen(delta)
    else:

        async def run() -> None:
            async for delta in client.astream("Tell me about red."):
                seen(delta)

        asyncio.run(run())
    assert ended_before_last and not any(ended_before_last)
    span = only(exporter)
    a = span.attributes or {}
    assert a["gen_ai.provider.name"] == "cloudflare" and a["gen_ai.usage.output_tokens"] > 0
    assert a["gen_ai.response.finish_reasons"] == ("stop",)


def test_retries_and_failovers_are_span_events(
    emulator: Emulator, spans: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    provider, exporter = spans
    emulator.fail(*[Fault("status", status=503, provider="aigateway")] * 2)
    c = LlamaVisionClient(
        max_retries=1,
        retry_backoff=0.01,
        fallback_providers=["cloudflare"],
        accept_license=True,
        tracer_provider=provider,
    )
    c.chat("hi")
    span = only(exporter)
    events = [(e.name, (e.attributes or {}).get("error.type")) for e in span.events]
    assert events == [
        ("llamavision.retry", "ServiceUnavailableError"),
        ("llamavision.failover", "ServiceUnavailableError"),
    ]
    assert (span.attributes or {})["gen_ai.provider.name"] == "cloudflare"  # who answered


def test_a_failed_call_is_an_error_span(
    emulator: Emulator, spans: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    provider, exporter = spans
    with pytest.raises(AuthenticationError):
        asyncio.run(LlamaVisionClient(api_key="wrong", tracer_provider=provider).achat("hi"))
    span = only(exporter)
    assert span.status.status_code == StatusCode.ERROR
    assert (span.attributes or {})["error.type"] == "AuthenticationError"


def test_content_only_with_the_opt_in_and_never_image_bytes(
    emulator: Emulator, spans: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    provider, exporter = spans
    c = LlamaVisionClient(tracer_provider=provider, trace_content=True)
    result = c.chat([Message.user("What is it?", image=RED)])
    a = only(exporter).attributes or {}
    (message,) = json.loads(str(a["gen_ai.input.messages"]))
    assert message["parts"] == [
        {"type": "blob", "modality": "image", "mime_type": "image/png"},
        {"type": "text", "content": "What is it?"},
    ]
    (answer,) = json.loads(str(a["gen_ai.output.messages"]))
    assert answer["parts"][0]["content"] == result.text


def test_the_applications_global_provider_is_used_and_none_costs_one_check(
    emulator: Emulator,
    spans: tuple[TracerProvider, InMemorySpanExporter],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from llamavision.messages import ChatRequest

    request = ChatRequest((Message.user("hi"),), MODEL)
    assert tracing.start(request, "aigateway", 4096) is tracing.NOT_TRACED  # nothing set up
    provider, exporter = spans
    monkeypatch.setattr(trace, "get_tracer_provider", lambda: provider)
    ChatLlamaVision().invoke("hi")
    LlamaVision().complete("hi")
    names = [s.name for s in exporter.get_finished_spans()]
    assert names == [f"chat {MODEL}"] * 2
