"""What real servers send that the documentation does not promise, read right (plain data).

Numeric tokens, tool-call fragments that repeat their name and id, servers that ignore a named
``tool_choice``, and Workers AI's silent cut at its default output limit.
"""

from __future__ import annotations

import json

import pytest

from llamavision import (
    ChatRequest,
    GenerationParams,
    MalformedResponseError,
    Message,
    StreamAccumulator,
    Tool,
    ToolCall,
)
from llamavision.messages import normalize_tool_choice
from llamavision.providers import openai_compat as oa
from llamavision.providers import workers_ai as cf

WEATHER = Tool("get_weather", "Weather", {"type": "object", "properties": {"city": {}}})
CLOCK = Tool("get_time", "Time")


def run(parser: object, *events: object) -> StreamAccumulator:
    acc = StreamAccumulator()
    for event in events:
        for delta in parser.feed(event if isinstance(event, str) else json.dumps(event)):  # type: ignore[attr-defined]
            acc.add(delta)
    acc.add(parser.finish())  # type: ignore[attr-defined]
    return acc


def oa_chunk(delta: dict[str, object], finish: str | None = None) -> dict[str, object]:
    return {"id": "c", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


# --------------------------------------------------------------------------- numeric tokens


@pytest.mark.parametrize(
    ("value", "text"), [(1, "1"), (0, "0"), (2.5, "2.5"), (True, "true"), ("x", "x")]
)
def test_scalar_tokens_become_their_text_in_openai_streams(value: object, text: str) -> None:
    acc = run(oa.StreamParser(), oa_chunk({"content": "n="}), oa_chunk({"content": value}))
    assert acc.text == "n=" + text


@pytest.mark.parametrize("value", [[1], {"a": 1}])
def test_a_container_where_text_belongs_is_malformed(value: object) -> None:
    with pytest.raises(MalformedResponseError, match="not text"):
        oa.StreamParser().feed(json.dumps(oa_chunk({"content": value})))
    reply = {"choices": [{"message": {"content": value}}]}
    with pytest.raises(MalformedResponseError, match="not text"):
        oa.parse_result(reply)


def test_scalar_content_in_complete_replies_and_workers_ai_streams() -> None:
    assert oa.parse_result({"choices": [{"message": {"content": 42}}]}).text == "42"
    assert cf.parse_result({"result": {"response": 7}}).text == "7"
    acc = run(cf.StreamParser(), {"response": "Answer: "}, {"response": 3, "p": "abc"})
    assert acc.text == "Answer: 3"
    choices = run(cf.StreamParser(), oa_chunk({"content": 12}))
    assert choices.text == "12"


def test_unreadable_usage_counts_are_treated_as_absent() -> None:
    reply = {"choices": [{"message": {"content": "hi"}}], "usage": {"prompt_tokens": "lots"}}
    assert oa.parse_result(reply).usage is None
    reply["usage"] = {"prompt_tokens": 10.0, "completion_tokens": -3, "total_tokens": None}
    usage = oa.parse_result(reply).usage
    assert usage is not None and (usage.prompt_tokens, usage.completion_tokens) == (10, 0)
    assert usage.total_tokens == 10


# --------------------------------------------------------------------------- tool-call fragments


def fragments(repeat: bool) -> list[dict[str, object]]:
    """One call in three fragments; llama.cpp's server repeats id and name in each."""
    head = {"id": "call_1", "type": "function"}
    pieces = ['{"ci', 'ty": "Os', 'lo"}']
    return [
        oa_chunk(
            {
                "tool_calls": [
                    {
                        "index": 0,
                        **(head if i == 0 or repeat else {}),
                        "function": {
                            **({"name": "get_weather"} if i == 0 or repeat else {}),
                            "arguments": piece,
                        },
                    }
                ]
            }
        )
        for i, piece in enumerate(pieces)
    ] + [oa_chunk({}, "tool_calls")]


@pytest.mark.parametrize("repeat", [False, True], ids=["first-only", "repeated"])
def test_streamed_call_id_and_name_reach_the_caller_once(repeat: bool) -> None:
    parser = oa.StreamParser()
    chunks = [
        c
        for event in fragments(repeat)
        for d in parser.feed(json.dumps(event))
        for c in d.tool_call_chunks
    ]
    assert [(c.id, c.name) for c in chunks] == [
        ("call_1", "get_weather"),
        (None, None),
        (None, None),
    ]
    acc = run(oa.StreamParser(), *fragments(repeat))
    assert acc.result().tool_calls == [ToolCall("call_1", "get_weather", {"city": "Oslo"})]


def test_a_name_that_arrives_after_the_first_fragment_is_kept() -> None:
    events = [
        oa_chunk({"tool_calls": [{"index": 0, "id": "call_9", "function": {"arguments": ""}}]}),
        oa_chunk(
            {"tool_calls": [{"index": 0, "function": {"name": "get_time", "arguments": "{}"}}]}
        ),
    ]
    assert run(oa.StreamParser(), *events).result().tool_calls == [
        ToolCall("call_9", "get_time", {})
    ]


# --------------------------------------------------------------------------- tool_choice


@pytest.mark.parametrize("choice", ["any", True, "required"])
def test_any_means_call_some_tool_even_with_one_tool_bound(choice: object) -> None:
    assert normalize_tool_choice(choice, [WEATHER]) == "required"


def test_named_choices_and_their_errors() -> None:
    assert normalize_tool_choice("get_weather", [WEATHER, CLOCK]) == "get_weather"
    named = {"type": "function", "function": {"name": "get_time"}}
    assert normalize_tool_choice(named, [WEATHER, CLOCK]) == "get_time"
    with pytest.raises(ValueError, match="not a bound tool"):
        normalize_tool_choice("get_moon", [WEATHER])


def body(choice: str | None, provider: object = oa) -> dict[str, object]:
    request = ChatRequest((Message.user("hi"),), "m", tools=(WEATHER, CLOCK), tool_choice=choice)
    return provider.build_payload(request)[1]  # type: ignore[attr-defined,no-any-return]


def test_openai_named_choice_offers_only_that_tool_and_requires_a_call() -> None:
    sent = body("get_time")
    assert [t["function"]["name"] for t in sent["tools"]] == ["get_time"]  # type: ignore[attr-defined,index]
    assert sent["tool_choice"] == "required"
    assert body("required")["tool_choice"] == "required"
    assert len(body("required")["tools"]) == 2  # type: ignore[arg-type]
    assert body("auto")["tool_choice"] == "auto" and body(None).get("tool_choice") is None


def test_workers_ai_has_no_tool_choice_so_it_offers_fewer_tools() -> None:
    assert [t["name"] for t in body("get_time", cf)["tools"]] == ["get_time"]  # type: ignore[attr-defined,index]
    assert "tools" not in body("none", cf) and "tool_choice" not in body("required", cf)


# --------------------------------------------------------------------------- truncation


def test_a_default_output_limit_is_always_sent() -> None:
    plain = ChatRequest((Message.user("hi"),), "m")
    assert oa.build_payload(plain)[1]["max_tokens"] == oa.MAX_OUTPUT_TOKENS
    assert cf.build_payload(plain)[1]["max_tokens"] == cf.MAX_OUTPUT_TOKENS
    mine = ChatRequest((Message.user("hi"),), "m", GenerationParams(max_tokens=50))
    assert cf.build_payload(mine)[1]["max_tokens"] == 50


def test_workers_ai_answer_that_used_every_allowed_token_says_length() -> None:
    usage = {"prompt_tokens": 10, "completion_tokens": 256, "total_tokens": 266}
    reply = {"result": {"response": "A long ans", "usage": usage}}
    assert cf.parse_result(reply, max_tokens=256).finish_reason == "length"
    assert cf.parse_result(reply, max_tokens=300).finish_reason == "stop"
    assert cf.parse_result(reply).finish_reason == "stop"
    acc = run(cf.stream_parser(max_tokens=256), {"response": "A long ans"}, {"usage": usage})
    assert acc.finish_reason == "length"
    acc = run(cf.stream_parser(max_tokens=4096), {"response": "Short."}, {"usage": usage})
    assert acc.finish_reason == "stop"
