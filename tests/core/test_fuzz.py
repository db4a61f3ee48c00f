"""Property-based fuzzing of both codecs and the stream reader (Hypothesis).

Replies and stream events are the providers' documented payloads with any field replaced
(null, a number, a string, a list, an object), dropped, or joined by extra fields; streams are
arbitrary byte sequences split anywhere, with invalid UTF-8 and huge lines. Whatever comes in,
only a ``LlamaVisionError`` or a well-typed result comes out.

``FUZZ_EXAMPLES`` (default 100) sets how hard each property is tried; the suite runs a fixed,
derandomized set. Failing examples found with more are kept in ``test_found_*`` below.
"""

from __future__ import annotations

import json
import os
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llamavision import (
    ChatResult,
    InvalidToolCall,
    LlamaVisionClient,
    LlamaVisionError,
    StreamAccumulator,
    StreamDelta,
    ToolCall,
    Usage,
)
from llamavision.providers import openai_compat as oa
from llamavision.providers import workers_ai as cf
from tests.recorded import serving

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "100"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=EXAMPLES <= 100,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
FINISH = {None, "stop", "length", "tool_calls", "content_filter", "error"}

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**64), max_value=2**64)
    | st.floats(allow_nan=False)
    | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)


@st.composite
def mutated(draw: st.DrawFn, template: Any) -> Any:
    """The template with any part kept, mutated, replaced, dropped, or joined by extras."""
    action = draw(st.sampled_from(["keep", "keep", "mutate", "mutate", "replace"]))
    if action == "replace":
        return draw(json_values)
    if action == "keep" or not isinstance(template, (dict, list)):
        return template
    if isinstance(template, list):
        items = [draw(mutated(item)) for item in template]
        return [i for i in items if not draw(st.booleans())] if draw(st.booleans()) else items
    out = {k: draw(mutated(v)) for k, v in template.items() if draw(st.integers(0, 5))}
    out.update(draw(st.dictionaries(st.text(max_size=6), json_values, max_size=2)))
    return out


# --------------------------------------------------------------------------- payloads

OA_TOOL = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"a":1}'}}
OA_REPLY = {
    "id": "chatcmpl-1",
    "model": "m",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "hi", "tool_calls": [OA_TOOL]},
            "finish_reason": "tool_calls",
        }
    ],
    "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
}
CF_REPLY = {
    "result": {
        "response": "hi",
        "tool_calls": [{"name": "f", "arguments": {"a": 1}}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
    },
    "success": True,
    "errors": [],
}
CF_CHOICES_REPLY = {"result": OA_REPLY, "success": True}


def oa_chunk(delta: Any, finish: Any = None) -> dict[str, Any]:
    return {
        "id": "c",
        "model": "m",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


OA_EVENTS = [
    oa_chunk({"role": "assistant", "content": ""}),
    oa_chunk({"content": "Hello"}),
    oa_chunk(
        {"tool_calls": [{"index": 0, "id": "call_1", "function": {"name": "f", "arguments": ""}}]}
    ),
    oa_chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"a":'}}]}),
    oa_chunk({}, "tool_calls"),
    {"id": "c", "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2}},
]
CF_EVENTS = [
    {"response": "Hello", "tool_calls": [], "p": "abc"},
    {"response": " world", "p": "abcdef"},
    {"response": "", "tool_calls": [{"name": "f", "arguments": {"a": 1}}]},
    {"tool_calls": [], "p": "ab"},
    {"response": "", "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}},
    oa_chunk({"content": "choices-shaped"}),
]


# --------------------------------------------------------------------------- properties


def check_usage(usage: Any) -> None:
    if usage is not None:
        assert isinstance(usage, Usage)
        for count in (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens):
            assert type(count) is int and count >= 0


def check_result(result: Any) -> None:
    assert isinstance(result, ChatResult)
    assert type(result.text) is str
    for call in result.tool_calls:
        assert isinstance(call, ToolCall) and type(call.id) is str and type(call.name) is str
        assert type(call.arguments) is dict and call.name
    for bad in result.invalid_tool_calls:
        assert isinstance(bad, InvalidToolCall)
        assert all(type(v) is str for v in (bad.id, bad.name, bad.arguments, bad.error))
    assert result.finish_reason in FINISH
    check_usage(result.usage)
    assert result.model is None or type(result.model) is str
    assert result.request_id is None or type(result.request_id) is str


def check_delta(delta: Any) -> None:
    assert isinstance(delta, StreamDelta) and type(delta.text) is str
    for chunk in delta.tool_call_chunks:
        assert type(chunk.index) is int and type(chunk.arguments) is str
        assert chunk.id is None or type(chunk.id) is str
        assert chunk.name is None or type(chunk.name) is str
    assert delta.finish_reason in FINISH
    check_usage(delta.usage)


def parse_or_error(codec: Any, body: Any) -> None:
    try:
        result = codec.parse_result(body, max_tokens=2)
    except LlamaVisionError:
        return
    check_result(result)


def stream_or_error(parser: Any, events: list[Any]) -> None:
    acc = StreamAccumulator()
    try:
        for event in events:
            data = event if isinstance(event, str) else json.dumps(event)
            for delta in parser.feed(data):
                check_delta(delta)
                acc.add(delta)
        final = parser.finish()
    except LlamaVisionError:
        return
    check_delta(final)
    acc.add(final)
    check_result(acc.result())


@FUZZ
@given(mutated(OA_REPLY))
def test_openai_replies(body: Any) -> None:
    parse_or_error(oa, body)


@FUZZ
@given(st.one_of(mutated(CF_REPLY), mutated(CF_CHOICES_REPLY)))
def test_workers_ai_replies(body: Any) -> None:
    parse_or_error(cf, body)


@FUZZ
@given(st.lists(st.sampled_from(OA_EVENTS).flatmap(mutated), max_size=8))
def test_openai_streams(events: list[Any]) -> None:
    stream_or_error(oa.stream_parser(max_tokens=2), events)


@FUZZ
@given(st.lists(st.sampled_from(CF_EVENTS).flatmap(mutated), max_size=8))
def test_workers_ai_streams(events: list[Any]) -> None:
    stream_or_error(cf.stream_parser(max_tokens=2), events)


@FUZZ
@given(
    st.integers(400, 599),
    st.one_of(
        mutated({"error": {"message": "m", "type": "t", "code": "c"}}),
        mutated({"success": False, "errors": [{"code": 3036, "message": "m"}]}),
        json_values,
    ).map(lambda b: json.dumps(b).encode())
    | st.binary(max_size=64),
    st.dictionaries(
        st.sampled_from(["retry-after", "x-request-id", "cf-ray"]), st.text(max_size=30)
    ),
)
def test_error_replies_always_map_to_a_typed_error(
    status: int, content: bytes, headers: dict[str, str]
) -> None:
    for codec in (oa, cf):
        error = codec.error_from(status, headers, content, model="m")
        assert isinstance(error, LlamaVisionError) and type(error.message) is str
        assert error.retry_after is None or error.retry_after >= 0  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- bytes on the wire


@st.composite
def sse_bodies(draw: st.DrawFn, events: list[Any]) -> list[bytes]:
    """A stream's bytes: events, comments, noise, invalid UTF-8, huge lines; split anywhere."""
    parts: list[bytes] = []
    for _ in range(draw(st.integers(0, 6))):
        kind = draw(st.sampled_from(["event", "event", "event", "comment", "noise", "huge"]))
        if kind == "event":
            data = json.dumps(draw(st.sampled_from(events).flatmap(mutated))).encode()
        elif kind == "comment":
            data = b": keep-alive"
        elif kind == "huge":
            data = b'{"response": "' + b"x" * draw(st.integers(10_000, 200_000)) + b'"}'
        else:
            data = draw(st.binary(max_size=40))
        prefix = b"data: " if kind != "comment" else b""
        parts.append(prefix + data + draw(st.sampled_from([b"\n\n", b"\r\n\r\n", b"\n"])))
    if draw(st.booleans()):
        parts.append(b"data: [DONE]\n\n")
    body = b"".join(parts)
    cuts = sorted(set(draw(st.lists(st.integers(0, len(body)), max_size=6))))
    return [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]


@FUZZ
@given(
    st.sampled_from([("aigateway", OA_EVENTS), ("cloudflare", CF_EVENTS)]).flatmap(
        lambda p: st.tuples(st.just(p[0]), sse_bodies(p[1]))
    )
)
def test_client_streams_from_arbitrary_bytes(case: tuple[str, list[bytes]]) -> None:
    provider, chunks = case
    client = LlamaVisionClient(provider, account_id="a", **serving(chunks))
    try:
        for delta in client.stream("hi"):
            check_delta(delta)
    except LlamaVisionError:
        pass


@settings(FUZZ, max_examples=max(10, EXAMPLES // 4))
@given(sse_bodies(OA_EVENTS))
def test_only_text_reaches_langchain_and_llamaindex(chunks: list[bytes]) -> None:
    from llama_index.core.llms import ChatMessage

    from langchain_llamavision import ChatLlamaVision
    from llamaindex_llamavision import LlamaVision

    try:
        for chunk in ChatLlamaVision(**serving(chunks)).stream("hi"):
            assert type(chunk.content) is str
    except LlamaVisionError:
        pass
    try:
        for response in LlamaVision(**serving(chunks)).stream_chat([ChatMessage(content="hi")]):
            assert type(response.delta) is str
            calls = [b for b in response.message.blocks if b.block_type == "tool_call"]
            text = response.message.content
            assert type(text) is str or (text is None and calls)  # LlamaIndex's convention
    except LlamaVisionError:
        pass


# --------------------------------------------------------------------------- found by fuzzing


def test_found_an_empty_stream_reaches_llamaindex_as_empty_text() -> None:
    from llama_index.core.llms import ChatMessage

    from llamaindex_llamavision import LlamaVision

    llm = LlamaVision(**serving([b"data: [DONE]\n\n"]))
    *_, last = llm.stream_chat([ChatMessage(content="hi")])
    assert last.message.content == "" and last.delta == ""


def test_found_a_streamed_tool_call_without_a_name_is_invalid_not_lost() -> None:
    events = [
        oa_chunk({"tool_calls": [{}]}),
        oa_chunk({"tool_calls": [{"function": {"arguments": "{}"}}]}),
    ]
    acc = StreamAccumulator()
    for event in events:
        for delta in oa.StreamParser().feed(json.dumps(event)):
            acc.add(delta)
    result = acc.result()
    assert result.tool_calls == []
    assert [(c.name, c.arguments, c.error) for c in result.invalid_tool_calls] == [
        ("", "{}", "the tool call has no name")
    ]
