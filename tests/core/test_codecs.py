"""Golden tests of the two pure codecs, built from the payloads in PROVIDERS.md."""

from __future__ import annotations

import json

import pytest

from llamavision import (
    AuthenticationError,
    ChatRequest,
    GenerationParams,
    Image,
    InsufficientCreditsError,
    LicenseAgreementRequiredError,
    MalformedResponseError,
    Message,
    NotFoundError,
    RateLimitError,
    RemoteImage,
    ResolvedImage,
    ServerError,
    ServiceUnavailableError,
    StreamAccumulator,
    Tool,
    ToolCall,
    Usage,
)
from llamavision.errors import BadRequestError, PermissionDeniedError, parse_retry_after
from llamavision.providers import openai_compat as oa
from llamavision.providers import workers_ai as cf

PNG = ResolvedImage(b"\x89PNG\r\n\x1a\nxx", "image/png", 2, 2)
WEATHER = Tool(
    "get_weather",
    "Weather in a city",
    {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)


def conversation() -> tuple[Message, ...]:
    call = ToolCall("call_1", "get_weather", {"city": "Paris"})
    return (
        Message.system("Be brief."),
        Message.user("What is the weather where this was taken?", image=PNG),
        Message.assistant("", [call]),
        Message.tool("call_1", "18C and sunny"),
    )


def sse(parser: object, *events: str) -> StreamAccumulator:
    acc = StreamAccumulator()
    for data in events:
        if data == "[DONE]":
            acc.add(parser.finish())  # type: ignore[attr-defined]
        else:
            for delta in parser.feed(data):  # type: ignore[attr-defined]
                acc.add(delta)
    return acc


# --------------------------------------------------------------------------- AI Gateway


def test_openai_request_has_the_chat_completions_shape() -> None:
    request = ChatRequest(
        conversation(),
        model=oa.DEFAULT_MODEL,
        params=GenerationParams(temperature=0.2, max_tokens=64, stop=("END",), seed=7),
        tools=(WEATHER, Tool("get_time", "The time")),
        tool_choice="get_weather",
        stream=True,
    )
    path, body = oa.build_payload(request)
    assert path == "/chat/completions"
    # a named choice travels as "required" with only that tool offered (see test_tool_choice_*)
    assert body == {
        "model": "meta/llama-3.2-11b-vision-instruct",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": PNG.data_url()}},
                    {"type": "text", "text": "What is the weather where this was taken?"},
                ],
            },
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "18C and sunny"},
        ],
        "temperature": 0.2,
        "max_tokens": 64,
        "seed": 7,
        "stop": ["END"],
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "get_weather",
                    "description": "Weather in a city",
                    "parameters": WEATHER.parameters,
                },
            }
        ],
        "tool_choice": "required",
        "stream": True,
        "stream_options": {"include_usage": True},
    }


def test_openai_passes_remote_urls_and_json_modes() -> None:
    msg = Message.user("hi", image=RemoteImage("https://example.com/a.jpg"))
    _, body = oa.build_payload(
        ChatRequest((msg,), "m", GenerationParams(response_format="json_object"))
    )
    assert body["messages"][0]["content"][0]["image_url"]["url"] == "https://example.com/a.jpg"
    assert body["response_format"] == {"type": "json_object"}
    schema = {"name": "answer", "schema": {"type": "object"}}
    _, body = oa.build_payload(ChatRequest((msg,), "m", GenerationParams(response_format=schema)))
    assert body["response_format"] == {"type": "json_schema", "json_schema": schema}


def test_openai_leaves_out_what_it_does_not_take() -> None:
    request = ChatRequest(
        (Message.user("hi"),), "m", GenerationParams(top_k=5, repetition_penalty=1.1)
    )
    _, body = oa.build_payload(request)  # the client warns, once per call (test_client)
    assert oa.UNSUPPORTED_PARAMS == ("top_k", "repetition_penalty")
    assert "top_k" not in body and "repetition_penalty" not in body


def test_openai_parses_a_reply_with_tool_calls() -> None:
    result = oa.parse_result(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 1,
            "model": "meta/llama-3.2-11b-vision-instruct",
            "choices": [
                {
                    "index": 0,
                    "message": {
                        "role": "assistant",
                        "content": None,
                        "tool_calls": [
                            {
                                "id": "call_9",
                                "type": "function",
                                "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'},
                            }
                        ],
                    },
                    "finish_reason": "tool_calls",
                }
            ],
            "usage": {"prompt_tokens": 20, "completion_tokens": 5, "total_tokens": 25},
        }
    )
    assert result.text == ""
    assert result.tool_calls == [ToolCall("call_9", "get_weather", {"city": "Oslo"})]
    assert result.finish_reason == "tool_calls"
    assert result.usage == Usage(20, 5, 25)
    assert result.request_id == "chatcmpl-1"


def test_openai_stream_with_interleaved_tool_calls_and_usage() -> None:
    chunk = '{{"id":"c","choices":[{{"index":0,"delta":{delta}}}]}}'
    events = [
        chunk.format(delta='{"role":"assistant"}'),
        chunk.format(delta='{"content":"Let me check."}'),
        chunk.format(
            delta='{"tool_calls":[{"index":0,"id":"call_a","type":"function",'
            '"function":{"name":"get_weather","arguments":""}}]}'
        ),
        chunk.format(
            delta='{"tool_calls":[{"index":1,"id":"call_b","type":"function",'
            '"function":{"name":"get_weather","arguments":"{\\"ci"}}]}'
        ),
        chunk.format(delta='{"tool_calls":[{"index":0,"function":{"arguments":"{\\"city\\":"}}]}'),
        chunk.format(
            delta='{"tool_calls":[{"index":1,"function":{"arguments":"ty\\":\\"Rome\\"}"}}]}'
        ),
        chunk.format(delta='{"tool_calls":[{"index":0,"function":{"arguments":"\\"Oslo\\"}"}}]}'),
        '{"id":"c","choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}',
        '{"id":"c","choices":[],"usage":{"prompt_tokens":9,"completion_tokens":4,"total_tokens":13}}',
        "[DONE]",
    ]
    result = sse(oa.StreamParser(), *events).result()
    assert result.text == "Let me check."
    assert result.tool_calls == [
        ToolCall("call_a", "get_weather", {"city": "Oslo"}),
        ToolCall("call_b", "get_weather", {"city": "Rome"}),
    ]
    assert result.finish_reason == "tool_calls"
    assert result.usage == Usage(9, 4, 13)


def test_openai_stream_rejects_garbage_instead_of_dropping_it() -> None:
    with pytest.raises(MalformedResponseError, match="not valid JSON"):
        oa.StreamParser().feed("{nope")
    with pytest.raises(MalformedResponseError, match="unknown stream event"):
        oa.StreamParser().feed('{"what": 1}')
    with pytest.raises(ServerError, match="overloaded"):
        oa.StreamParser().feed('{"error": {"message": "overloaded", "type": "server_error"}}')


@pytest.mark.parametrize(
    ("status", "kind", "cls"),
    [
        (400, "invalid_request_error", BadRequestError),
        (401, "authentication_error", AuthenticationError),
        (402, "insufficient_credits", InsufficientCreditsError),
        (403, "permission_denied", PermissionDeniedError),
        (404, "not_found", NotFoundError),
        (429, "rate_limit_error", RateLimitError),
        (500, "server_error", ServerError),
        (502, "bad_gateway", ServiceUnavailableError),
        (503, "service_unavailable", ServiceUnavailableError),
        (504, "gateway_timeout", ServiceUnavailableError),
    ],
)
def test_openai_error_statuses(status: int, kind: str, cls: type[Exception]) -> None:
    body = {"error": {"message": f"boom {kind}", "type": kind, "param": None, "code": kind}}
    error = oa.error_from(
        status, {"retry-after": "3", "x-request-id": "req-1"}, json.dumps(body).encode()
    )
    assert type(error) is cls
    assert error.status_code == status and error.code == kind and error.request_id == "req-1"
    assert f"boom {kind}" in str(error) and "aigateway" in str(error)
    if status == 401:
        assert "AIGATEWAY_API_KEY" in str(error)
    if cls is RateLimitError:
        assert error.retry_after == 3.0  # type: ignore[attr-defined]
    assert error.retryable == (status in (429, 500, 502, 503, 504))


def test_error_from_a_non_json_body_keeps_the_text() -> None:
    error = oa.error_from(502, {}, b"<html>Bad gateway</html>")
    assert isinstance(error, ServiceUnavailableError) and "Bad gateway" in str(error)


def test_retry_after_accepts_seconds_and_http_dates() -> None:
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:10 GMT", now=1445412480.0) == 10.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


# --------------------------------------------------------------------------- Cloudflare


def test_cloudflare_request_uses_the_messages_shape_with_inline_images() -> None:
    request = ChatRequest(
        conversation(),
        model=cf.DEFAULT_MODEL,
        params=GenerationParams(temperature=0.3, top_k=40, max_tokens=99, repetition_penalty=1.1),
        tools=(WEATHER,),
    )
    path, body = cf.build_payload(request)
    assert path == "/@cf/meta/llama-3.2-11b-vision-instruct"
    assert body == {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": PNG.data_url()}},
                    {"type": "text", "text": "What is the weather where this was taken?"},
                ],
            },
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {"id": "call_1", "name": "get_weather", "arguments": {"city": "Paris"}}
                ],
            },
            {
                "role": "tool",
                "name": "get_weather",
                "tool_call_id": "call_1",
                "content": "18C and sunny",
            },
        ],
        "max_tokens": 99,
        "temperature": 0.3,
        "top_k": 40,
        "repetition_penalty": 1.1,
        "tools": [
            {
                "name": "get_weather",
                "description": "Weather in a city",
                "parameters": WEATHER.parameters,
            }
        ],
    }


def test_cloudflare_refuses_remote_urls_and_drops_what_it_lacks() -> None:
    with pytest.raises(TypeError, match="inline"):
        cf.build_payload(
            ChatRequest((Message.user("x", image=RemoteImage("https://e.com/a.png")),), "m")
        )
    _, body = cf.build_payload(
        ChatRequest(
            (Message.user("x"),),
            "m",
            GenerationParams(stop=("x",), response_format="json_object"),
            stream=True,
        )
    )
    assert cf.UNSUPPORTED_PARAMS == ("stop", "response_format")
    assert body == {
        "messages": [{"role": "user", "content": "x"}],
        "max_tokens": cf.MAX_OUTPUT_TOKENS,  # never Workers AI's silent 256
        "stream": True,
    }


def test_cloudflare_tool_choice_maps_to_the_offered_tools() -> None:
    other = Tool("other")
    req = ChatRequest((Message.user("x"),), "m", tools=(WEATHER, other), tool_choice="other")
    assert [t["name"] for t in cf.build_payload(req)[1]["tools"]] == ["other"]
    req = ChatRequest((Message.user("x"),), "m", tools=(WEATHER, other), tool_choice="none")
    assert "tools" not in cf.build_payload(req)[1]


def test_cloudflare_reply_with_object_arguments_gets_stable_minted_ids() -> None:
    body = {
        "result": {
            "response": None,
            "tool_calls": [{"name": "get_weather", "arguments": {"city": "Lima"}}],
            "usage": {"prompt_tokens": 30, "completion_tokens": 8, "total_tokens": 38},
        },
        "success": True,
        "errors": [],
        "messages": [],
    }
    first, again = cf.parse_result(body), cf.parse_result(json.loads(json.dumps(body)))
    (call,) = first.tool_calls
    assert call.name == "get_weather" and call.arguments == {"city": "Lima"}
    assert call.id.startswith("call_0_") and call.id == again.tool_calls[0].id
    assert first.finish_reason == "tool_calls"
    assert first.usage == Usage(30, 8, 38)


def test_cloudflare_text_reply() -> None:
    result = cf.parse_result(
        {
            "result": {
                "response": "A cat.",
                "usage": {
                    "prompt_tokens": 5,
                    "completion_tokens": 3,
                    "total_tokens": 8,
                    "neurons": 1.5,
                },
            },
            "success": True,
            "errors": [],
            "messages": [],
        }
    )
    assert (result.text, result.finish_reason, result.usage) == ("A cat.", "stop", Usage(5, 3, 8))
    with pytest.raises(MalformedResponseError, match="no result"):
        cf.parse_result({"success": True})


def test_cloudflare_stream_seen_in_the_wild() -> None:
    acc = sse(
        cf.StreamParser(),
        '{"response":"Hello","tool_calls":[],"p":"abdefgh"}',
        '{"response":" world","p":"abdefghijk"}',
        '{"tool_calls":[],"p":"abdefghijklmn"}',
        '{"response":"","usage":{"prompt_tokens":169,"completion_tokens":48,"total_tokens":217}}',
        "[DONE]",
    )
    result = acc.result()
    assert result.text == "Hello world"
    assert result.usage == Usage(169, 48, 217)
    assert result.finish_reason == "stop"


def test_cloudflare_choices_shaped_stream_counts_usage_once() -> None:
    chunk = (
        '{{"object":"chat.completion.chunk","choices":[{{"index":0,"delta":{{"content":"{t}"}}}}],'
        '"usage":{{"prompt_tokens":12,"completion_tokens":1,"total_tokens":13}}}}'
    )
    result = sse(
        cf.StreamParser(),
        chunk.format(t="Hi"),
        chunk.format(t=" there"),
        '{"response":"","usage":{"prompt_tokens":12,"completion_tokens":2,"total_tokens":14,'
        '"prompt_tokens_details":{"cached_tokens":0}}}',
        "[DONE]",
    ).result()
    assert result.text == "Hi there"
    assert result.usage == Usage(12, 2, 14)


def test_cloudflare_streamed_tool_calls_get_distinct_indexes() -> None:
    result = sse(
        cf.StreamParser(),
        '{"response":"","tool_calls":[{"name":"get_weather","arguments":{"city":"A"}}]}',
        '{"tool_calls":[{"name":"get_weather","arguments":{"city":"B"}}]}',
        "[DONE]",
    ).result()
    assert [c.arguments["city"] for c in result.tool_calls] == ["A", "B"]
    assert len({c.id for c in result.tool_calls}) == 2
    assert result.finish_reason == "tool_calls"


def test_cloudflare_unknown_event_is_reported_not_dropped() -> None:
    with pytest.raises(MalformedResponseError, match="unknown stream event"):
        cf.StreamParser().feed('{"text":"lost words"}')
    with pytest.raises(MalformedResponseError, match="not valid JSON"):
        cf.StreamParser().feed('{"response":"cut')


@pytest.mark.parametrize("status", [403, 500])
def test_cloudflare_license_error_says_how_to_accept(status: int) -> None:
    body = {
        "result": None,
        "success": False,
        "errors": [
            {
                "code": 5016,
                "message": "Prior to using this model, you must submit the prompt 'agree' to "
                "agree to the Meta Llama 3.2 Community License.",
            }
        ],
        "messages": [],
    }
    error = cf.error_from(status, {"cf-ray": "ray-1"}, json.dumps(body).encode())
    assert isinstance(error, LicenseAgreementRequiredError)
    assert not error.retryable
    assert error.code == 5016 and error.request_id == "ray-1"
    assert "accept_license=True" in str(error) and '{"prompt": "agree"}' in str(error)


def test_cloudflare_auth_and_capacity_errors() -> None:
    def envelope(code: int, message: str) -> bytes:
        return json.dumps(
            {
                "result": None,
                "success": False,
                "errors": [{"code": code, "message": message}],
                "messages": [],
            }
        ).encode()

    auth = cf.error_from(403, {}, envelope(10000, "Authentication error"))
    assert isinstance(auth, AuthenticationError) and "CLOUDFLARE_API_TOKEN" in str(auth)
    busy = cf.error_from(503, {"retry-after": "2"}, envelope(3040, "Capacity temporarily exceeded"))
    assert isinstance(busy, ServiceUnavailableError) and busy.retryable
    limited = cf.error_from(429, {"retry-after": "4"}, envelope(3036, "Rate limited"))
    assert isinstance(limited, RateLimitError) and limited.retry_after == 4.0


def test_image_parts_must_be_resolved_first() -> None:
    with pytest.raises(TypeError, match="resolved"):
        oa.build_payload(ChatRequest((Message("user", (Image("cat.png"),)),), "m"))


def test_unparsable_tool_arguments_are_kept_as_invalid_calls() -> None:
    body = {
        "id": "c",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "a",
                            "type": "function",
                            "function": {"name": "f", "arguments": '{"x": 1'},
                        },
                        {"id": "b", "type": "function", "function": {"name": "g", "arguments": ""}},
                    ],
                },
                "finish_reason": "tool_calls",
            }
        ],
    }
    result = oa.parse_result(body)
    assert result.tool_calls == [ToolCall("b", "g", {})]
    (bad,) = result.invalid_tool_calls
    assert (bad.id, bad.name, bad.arguments) == ("a", "f", '{"x": 1')
    assert "not valid JSON" in bad.error
    acc = sse(
        oa.StreamParser(),
        '{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"a","type":"function",'
        '"function":{"name":"f","arguments":"[1, 2]"}}]}}]}',
        "[DONE]",
    )
    assert acc.result().invalid_tool_calls[0].error == "arguments are not a JSON object"


def test_cloudflare_json_valued_response_becomes_text() -> None:
    body = {
        "result": {"response": {"colour": "red"}},
        "success": True,
        "errors": [],
        "messages": [],
    }
    assert json.loads(cf.parse_result(body).text) == {"colour": "red"}
    acc = sse(cf.StreamParser(), '{"response":{"colour":"red"},"usage":null}', "[DONE]")
    assert json.loads(acc.result().text) == {"colour": "red"}


def test_cloudflare_embedding_run_and_reply() -> None:
    # The bge models' documented shapes: {"text": [...]} -> {"shape": [n, d], "data": [...]}
    path, body = cf.embedding_payload("@cf/baai/bge-small-en-v1.5", ["a", "b"])
    assert (path, body) == ("/@cf/baai/bge-small-en-v1.5", {"text": ["a", "b"]})
    reply = {
        "result": {"shape": [2, 3], "data": [[0.1, -0.2, 0.3], [1, 0, 0]], "pooling": "mean"},
        "success": True,
        "errors": [],
        "messages": [],
    }
    assert cf.parse_embeddings(reply, count=2, dimensions=3) == [[0.1, -0.2, 0.3], [1.0, 0, 0]]
    assert cf.embedding_dimensions("@cf/baai/bge-large-en-v1.5") == 1024


@pytest.mark.parametrize(
    "result",
    [
        None,
        {"shape": [1, 3], "data": [[0.1, 0.2, 0.3]]},  # one vector where two were asked for
        {"shape": [2, 2], "data": [[0.1, 0.2], [0.3, 0.4]]},  # the wrong size
        {"data": [[0.1, "x", 0.3], [0.1, 0.2, 0.3]]},  # not numbers
        {"data": "nope"},
    ],
)
def test_cloudflare_embedding_replies_of_the_wrong_shape_are_malformed(result: object) -> None:
    with pytest.raises(MalformedResponseError, match="embedding"):
        cf.parse_embeddings({"result": result, "success": True}, count=2, dimensions=3)
