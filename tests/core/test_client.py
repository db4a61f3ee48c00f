"""The client over httpx.MockTransport: retries, errors, streams, failover, images, config."""

from __future__ import annotations

import io
import json
import logging
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from PIL import Image as PILImage

from llamavision import (
    APIConnectionError,
    AuthenticationError,
    ConfigurationError,
    ImageError,
    LicenseAgreementRequiredError,
    LlamaVisionClient,
    LlamaVisionError,
    MalformedResponseError,
    Message,
    RateLimitError,
    ServiceUnavailableError,
    StreamAccumulator,
    StreamInterruptedError,
    Tool,
    UnsupportedParameterWarning,
)
from llamavision.retry import RetryPolicy, Step

Reply = httpx.Response | Callable[[httpx.Request], httpx.Response]


@pytest.fixture(autouse=True)
def no_provider_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "AIGATEWAY_API_KEY",
        "AIGATEWAY_BASE_URL",
        "CLOUDFLARE_API_TOKEN",
        "CLOUDFLARE_ACCOUNT_ID",
        "CLOUDFLARE_BASE_URL",
    ):
        monkeypatch.delenv(name, raising=False)


class Script:
    """A MockTransport that answers from a queue and records what it was sent."""

    def __init__(self, *replies: Reply) -> None:
        self.replies = list(replies)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        reply = self.replies.pop(0)
        return reply(request) if callable(reply) else reply

    def bodies(self) -> list[dict[str, Any]]:
        return [json.loads(r.content) for r in self.requests if r.method == "POST"]

    def client(self, provider: str = "aigateway", **kwargs: Any) -> LlamaVisionClient:
        creds: dict[str, Any] = {"api_key": "sk-test-secret"}
        if provider == "cloudflare":
            creds["account_id"] = "acc123"
        return LlamaVisionClient(
            provider,
            http_client=httpx.Client(transport=httpx.MockTransport(self)),
            http_async_client=httpx.AsyncClient(transport=httpx.MockTransport(self)),
            **{"retry_backoff": 0.001, **creds, **kwargs},
        )


def completion(text: str = "ok") -> httpx.Response:
    return httpx.Response(
        200,
        json={
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 1,
            "model": "meta/llama-3.2-11b-vision-instruct",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 1000, "completion_tokens": 100, "total_tokens": 1100},
        },
        headers={"x-request-id": "req-42"},
    )


def cf_result(text: str = "ok") -> httpx.Response:
    return httpx.Response(
        200,
        json={
            "result": {
                "response": text,
                "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
            },
            "success": True,
            "errors": [],
            "messages": [],
        },
        headers={"cf-ray": "ray-7"},
    )


def oa_error(status: int, kind: str, **headers: str) -> httpx.Response:
    return httpx.Response(
        status,
        json={"error": {"message": f"{kind} happened", "type": kind, "param": None, "code": kind}},
        headers=headers,
    )


def cf_error(status: int, code: int, message: str) -> httpx.Response:
    return httpx.Response(
        status,
        json={
            "result": None,
            "success": False,
            "errors": [{"code": code, "message": message}],
            "messages": [],
        },
    )


def sse_response(events: list[str], *, cut: bool = False) -> httpx.Response:
    class Body(httpx.SyncByteStream, httpx.AsyncByteStream):
        def __iter__(self) -> Iterator[bytes]:
            for e in events:
                yield f"data: {e}\n\n".encode()
            if cut:
                raise httpx.RemoteProtocolError("peer closed connection")

        async def __aiter__(self) -> Any:
            for chunk in self:
                yield chunk

    return httpx.Response(200, headers={"content-type": "text/event-stream"}, stream=Body())


def chunk(text: str) -> str:
    return json.dumps({"id": "c1", "choices": [{"index": 0, "delta": {"content": text}}]})


STREAM_END = [
    '{"id":"c1","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}',
    '{"id":"c1","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}',
    "[DONE]",
]


# --------------------------------------------------------------------------- configuration


def test_missing_credentials_name_the_variable_before_any_request() -> None:
    with pytest.raises(ConfigurationError, match="AIGATEWAY_API_KEY"):
        LlamaVisionClient()
    with pytest.raises(ConfigurationError, match="CLOUDFLARE_API_TOKEN"):
        LlamaVisionClient("cloudflare", account_id="acc")
    with pytest.raises(ConfigurationError, match="CLOUDFLARE_ACCOUNT_ID"):
        LlamaVisionClient("cloudflare", api_key="t")
    with pytest.raises(ConfigurationError, match="CLOUDFLARE_API_TOKEN"):
        LlamaVisionClient(api_key="k", fallback_providers=["cloudflare"])
    with pytest.raises(ConfigurationError, match="Unknown provider 'openai'"):
        LlamaVisionClient("openai", api_key="k")


def test_credentials_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLOUDFLARE_API_TOKEN", "cf-token-secret")
    monkeypatch.setenv("CLOUDFLARE_ACCOUNT_ID", "acc9")
    script = Script(cf_result("hello"))
    client = LlamaVisionClient(
        "cloudflare", http_client=httpx.Client(transport=httpx.MockTransport(script))
    )
    assert client.chat("hi").text == "hello"
    (request,) = script.requests
    assert str(request.url) == (
        "https://api.cloudflare.com/client/v4/accounts/acc9/ai/run/"
        "@cf/meta/llama-3.2-11b-vision-instruct"
    )
    assert request.headers["authorization"] == "Bearer cf-token-secret"


def test_key_never_shows_in_repr_or_errors() -> None:
    script = Script(oa_error(401, "authentication_error"))
    client = script.client(max_retries=0)
    assert "sk-test-secret" not in repr(client)
    assert "sk-test-secret" not in repr(client.endpoints)
    with pytest.raises(AuthenticationError) as info:
        client.chat("hi")
    assert "sk-test-secret" not in str(info.value) and "the api_key you passed" in str(info.value)


def echo(status: int, provider: str, *, stream: bool = False) -> Reply:
    """A server that puts the credential it received into everything it answers."""

    def reply(request: httpx.Request) -> httpx.Response:
        key = request.headers["authorization"].removeprefix("Bearer ")
        said = f"Invalid credential {key} (Bearer {key})"
        headers = {"x-request-id": key, "cf-ray": key}
        if stream:
            events: list[dict[str, Any]] = [
                {"response": "Half an ans"},
                {"errors": [{"code": 3043, "message": said}]},
            ]
            if provider == "aigateway":
                events = [
                    {"choices": [{"index": 0, "delta": {"content": "Half an ans"}}]},
                    {"error": {"message": said, "code": key}},
                ]
            body = "".join(f"data: {json.dumps(e)}\n\n" for e in events)
            return httpx.Response(200, text=body, headers=headers)
        if status == 200:  # not even JSON
            return httpx.Response(200, text=f"<html>{said}</html>", headers=headers)
        if provider == "cloudflare":
            envelope = {"success": False, "errors": [{"code": key, "message": said}]}
            return httpx.Response(status, json=envelope, headers=headers)
        envelope = {"error": {"message": said, "type": "x", "code": key}}
        return httpx.Response(status, json=envelope, headers=headers)

    return reply


@pytest.mark.parametrize("provider", ["aigateway", "cloudflare"])
@pytest.mark.parametrize(
    ("status", "stream", "cls"),
    [
        (401, False, AuthenticationError),
        (500, False, LlamaVisionError),  # retried, then raised
        (200, False, MalformedResponseError),
        (200, True, StreamInterruptedError),
    ],
)
def test_a_key_echoed_by_the_server_never_reaches_an_error_or_a_log(
    provider: str, status: int, stream: bool, cls: type, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    script = Script(*[echo(status, provider, stream=stream)] * 3)
    client = script.client(provider, max_retries=2)
    with pytest.raises(cls) as caught:
        if stream:
            list(client.stream("hi"))
        else:
            client.chat("hi")
    error = caught.value
    shown = [str(error), repr(error), *map(str, error.args), error.message]
    shown += [str(error.code), str(error.request_id), caplog.text]
    assert not [text for text in shown if "sk-test-secret" in text]
    assert "[redacted]" in str(error)


def test_unknown_generation_parameter_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="temprature"):
        Script().client().chat("hi", temprature=0.5)


def test_base_url_override_reaches_any_openai_compatible_server() -> None:
    script = Script(completion())
    client = script.client(base_url="http://localhost:8000/v1/", model="llama-local")
    client.chat("hi", temperature=0)
    assert str(script.requests[0].url) == "http://localhost:8000/v1/chat/completions"
    assert script.bodies()[0]["model"] == "llama-local"
    assert script.bodies()[0]["temperature"] == 0


# --------------------------------------------------------------------------- results


def test_chat_result_carries_usage_cost_and_request_id() -> None:
    result = Script(completion("A red square.")).client().chat("What is it?")
    assert result.text == "A red square." and result.finish_reason == "stop"
    assert result.usage is not None and result.usage.total_tokens == 1100
    assert result.cost == pytest.approx((1000 * 0.049 + 100 * 0.680) / 1e6)
    assert (result.provider, result.request_id) == ("aigateway", "req-42")


def test_prices_can_be_overridden() -> None:
    from llamavision import Price

    result = Script(cf_result()).client("cloudflare", prices={"cloudflare": Price(1.0, 2.0)})
    assert result.chat("hi").cost == pytest.approx((10 * 1.0 + 5 * 2.0) / 1e6)


def test_malformed_reply_bodies_raise_typed_errors() -> None:
    client = Script(
        httpx.Response(200, text="<html>not json</html>"),
        httpx.Response(200, json={"object": "chat.completion"}),
    ).client()
    with pytest.raises(MalformedResponseError, match="not JSON"):
        client.chat("hi")
    with pytest.raises(MalformedResponseError, match="not a chat completion"):
        client.chat("hi")


# --------------------------------------------------------------------------- retries


@pytest.mark.parametrize(
    "failure",
    [
        oa_error(429, "rate_limit_error"),
        oa_error(500, "server_error"),
        oa_error(502, "bad_gateway"),
        oa_error(503, "service_unavailable"),
        oa_error(504, "gateway_timeout"),
    ],
)
def test_retryable_statuses_are_retried(failure: httpx.Response) -> None:
    script = Script(failure, completion("second time lucky"))
    assert script.client().chat("hi").text == "second time lucky"
    assert len(script.requests) == 2


def test_connection_errors_are_retried_then_reported() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    script = Script(refuse, refuse, refuse)
    with pytest.raises(APIConnectionError, match="could not be reached"):
        script.client(max_retries=2).chat("hi")
    assert len(script.requests) == 3


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, "invalid_request_error"),
        (401, "authentication_error"),
        (402, "insufficient_credits"),
        (404, "not_found"),
    ],
)
def test_client_errors_are_not_retried(status: int, kind: str) -> None:
    script = Script(oa_error(status, kind), completion())
    with pytest.raises(Exception, match=f"{kind} happened") as info:
        script.client().chat("hi")
    assert info.value.status_code == status  # type: ignore[attr-defined]
    assert len(script.requests) == 1


def test_retries_give_up_after_max_retries_with_the_last_error() -> None:
    script = Script(*[oa_error(503, "service_unavailable")] * 4)
    with pytest.raises(ServiceUnavailableError):
        script.client(max_retries=3).chat("hi")
    assert len(script.requests) == 4


def test_retry_after_is_honoured() -> None:
    script = Script(oa_error(429, "rate_limit_error", **{"retry-after": "1"}), completion())
    started = time.monotonic()
    script.client().chat("hi")
    assert time.monotonic() - started >= 0.95


def test_a_retry_after_beyond_the_cap_raises_at_once() -> None:
    script = Script(oa_error(429, "rate_limit_error", **{"retry-after": "3600"}), completion())
    started = time.monotonic()
    with pytest.raises(RateLimitError) as info:
        script.client(max_retry_wait=5).chat("hi")
    assert info.value.retry_after == 3600 and time.monotonic() - started < 1
    assert len(script.requests) == 1


def test_backoff_grows_exponentially_with_jitter() -> None:
    policy = RetryPolicy(max_retries=5, backoff=0.5)
    error = ServiceUnavailableError("x")
    steps = [policy.step(error, attempt, last_provider=True) for attempt in range(5)]
    for attempt, step in enumerate(steps):
        assert step.action == "retry" and 0.25 * 2**attempt <= step.delay <= 0.75 * 2**attempt
    assert policy.step(error, 5, last_provider=True) == Step("raise")
    assert policy.step(error, 5, last_provider=False) == Step("failover")
    exact = RetryPolicy(backoff=1.0, jitter=lambda: 0.5)
    assert [exact.step(error, n, last_provider=True).delay for n in range(2)] == [1.0, 2.0]


def test_the_retry_policy_decides_each_step_without_io() -> None:
    policy = RetryPolicy(max_retries=2, max_wait=10.0, accept_license=True)
    limited = RateLimitError("slow", status_code=429, retry_after=3.0)
    assert policy.step(limited, 0, last_provider=True) == Step("retry", 0.0)  # the governor waits
    too_long = RateLimitError("slow", status_code=429, retry_after=3600.0)
    assert policy.step(too_long, 0, last_provider=False) == Step("failover")
    refused = AuthenticationError("no", status_code=401)
    assert policy.step(refused, 0, last_provider=False) == Step("raise")
    gate = LicenseAgreementRequiredError("agree first", status_code=403)
    assert policy.step(gate, 0, last_provider=True) == Step("accept_license")
    accepted = {"last_provider": True, "license_accepted": True}  # by a call in flight
    assert policy.step(gate, 0, **accepted) == Step("retry")  # type: ignore[arg-type]
    assert policy.step(gate, 2, **accepted) == Step("raise")  # type: ignore[arg-type]
    assert RetryPolicy().step(gate, 0, last_provider=True) == Step("raise")


# --------------------------------------------------------------------------- failover


def test_failover_to_cloudflare_after_retryable_failures(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLOUDFLARE_API_TOKEN", "cf-secret")
    monkeypatch.setenv("CLOUDFLARE_ACCOUNT_ID", "acc")
    script = Script(
        oa_error(503, "service_unavailable"),
        oa_error(503, "service_unavailable"),
        cf_result("from cloudflare"),
    )
    result = script.client(max_retries=1, fallback_providers=["cloudflare"]).chat("hi")
    assert (result.text, result.provider) == ("from cloudflare", "cloudflare")
    assert "cloudflare.com" in str(script.requests[-1].url)
    assert script.requests[-1].headers["authorization"] == "Bearer cf-secret"


def test_no_failover_on_a_non_retryable_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLOUDFLARE_API_TOKEN", "cf-secret")
    monkeypatch.setenv("CLOUDFLARE_ACCOUNT_ID", "acc")
    script = Script(oa_error(401, "authentication_error"), cf_result())
    with pytest.raises(AuthenticationError):
        script.client(fallback_providers=["cloudflare"]).chat("hi")
    assert len(script.requests) == 1


# --------------------------------------------------------------------------- license


LICENSE = "Prior to using this model, you must submit the prompt 'agree' to agree to the license."


def test_license_error_without_consent_tells_how_to_accept() -> None:
    script = Script(cf_error(403, 5016, LICENSE))
    with pytest.raises(LicenseAgreementRequiredError, match="accept_license=True"):
        script.client("cloudflare").chat("hi")
    assert len(script.requests) == 1


def test_accept_license_sends_agree_once_then_retries() -> None:
    script = Script(
        cf_error(500, 5016, LICENSE),
        cf_result("Thank you for agreeing to the license."),
        cf_result("now it works"),
        cf_result("and keeps working"),
    )
    client = script.client("cloudflare", accept_license=True)
    assert client.chat("hi").text == "now it works"
    assert client.chat("again").text == "and keeps working"
    assert [b.get("prompt") for b in script.bodies()] == [None, "agree", None, None]


# --------------------------------------------------------------------------- streaming


def test_stream_yields_deltas_then_a_final_one_with_usage_and_cost() -> None:
    script = Script(sse_response([chunk("Hel"), chunk("lo"), *STREAM_END]))
    deltas = list(script.client().stream("hi"))
    assert [d.text for d in deltas] == ["Hel", "lo", ""]
    final = deltas[-1]
    assert final.finish_reason == "stop" and final.usage is not None
    assert final.cost == pytest.approx((3 * 0.049 + 2 * 0.680) / 1e6)
    body = script.bodies()[0]
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}


def test_stream_cut_after_text_raises_with_the_partial_text_and_no_retry() -> None:
    script = Script(sse_response([chunk("The answer "), chunk("is")], cut=True), completion())
    received = []
    with pytest.raises(StreamInterruptedError) as info:
        for delta in script.client().stream("hi"):
            received.append(delta.text)
    assert received == ["The answer ", "is"]
    assert info.value.partial_text == "The answer is"
    assert len(script.requests) == 1


def test_stream_that_ends_without_done_is_a_cut() -> None:
    script = Script(sse_response([chunk("half")]))
    with pytest.raises(StreamInterruptedError, match="before it was complete") as info:
        list(script.client().stream("hi"))
    assert info.value.partial_text == "half"


def test_stream_cut_before_any_text_is_retried() -> None:
    script = Script(
        sse_response(
            ['{"id":"c1","choices":[{"index":0,"delta":{"role":"assistant"}}]}'], cut=True
        ),
        sse_response([chunk("fine"), *STREAM_END]),
    )
    assert "".join(d.text for d in script.client().stream("hi")) == "fine"
    assert len(script.requests) == 2


def test_stream_error_status_is_read_from_the_envelope() -> None:
    script = Script(cf_error(403, 5016, LICENSE))
    with pytest.raises(LicenseAgreementRequiredError, match="Cloudflare said: Prior"):
        list(script.client("cloudflare").stream("hi"))


def test_malformed_event_mid_stream_is_reported_with_the_text_so_far() -> None:
    script = Script(sse_response([chunk("kept"), "{broken json", *STREAM_END]))
    with pytest.raises(StreamInterruptedError, match="not valid JSON") as info:
        list(script.client().stream("hi"))
    assert info.value.partial_text == "kept"
    assert isinstance(info.value.__cause__, MalformedResponseError)


def test_cloudflare_stream_with_tool_call() -> None:
    script = Script(
        sse_response(
            [
                '{"response":"","tool_calls":[{"name":"lookup","arguments":{"q":"cat"}}],"p":"ab"}',
                '{"response":"","usage":{"prompt_tokens":4,"completion_tokens":6,"total_tokens":10}}',
                "[DONE]",
            ]
        )
    )
    acc = StreamAccumulator()
    for delta in script.client("cloudflare").stream("hi", tools=[Tool("lookup")]):
        acc.add(delta)
    result = acc.result()
    assert result.tool_calls[0].name == "lookup" and result.tool_calls[0].arguments == {"q": "cat"}
    assert result.finish_reason == "tool_calls" and result.cost == pytest.approx(10 * 0.24 / 1e6)


async def test_async_chat_stream_and_retry() -> None:
    script = Script(
        oa_error(503, "service_unavailable"),
        completion("async ok"),
        sse_response([chunk("a"), chunk("b"), *STREAM_END]),
    )
    async with script.client() as client:
        assert (await client.achat("hi")).text == "async ok"
        texts = [d.text async for d in client.astream("hi")]
    assert texts == ["a", "b", ""]


async def test_async_stream_cut_keeps_partial_text() -> None:
    script = Script(sse_response([chunk("part")], cut=True))
    with pytest.raises(StreamInterruptedError) as info:
        async for _ in script.client().astream("hi"):
            pass
    assert info.value.partial_text == "part"


# --------------------------------------------------------------------------- images


def png(color: tuple[int, int, int], size: tuple[int, int] = (40, 40)) -> bytes:
    out = io.BytesIO()
    PILImage.new("RGB", size, color).save(out, format="PNG")
    return out.getvalue()


def sent_image_urls(body: dict[str, Any]) -> list[str]:
    return [
        part["image_url"]["url"]
        for m in body["messages"]
        if isinstance(m["content"], list)
        for part in m["content"]
        if part["type"] == "image_url"
    ]


def test_remote_url_passes_through_to_aigateway() -> None:
    script = Script(completion())
    script.client().chat([Message.user("what?", image="https://img.example/cat.png")])
    assert sent_image_urls(script.bodies()[0]) == ["https://img.example/cat.png"]


def test_several_images_are_refused_by_default_before_any_request() -> None:
    script = Script(completion())
    with pytest.raises(ImageError, match="multi_image='grid'"):
        script.client().chat([Message.user("compare", images=[png((255, 0, 0)), png((0, 0, 255))])])
    assert script.requests == []


def test_latest_keeps_only_the_last_image() -> None:
    script = Script(completion())
    red, blue = png((255, 0, 0)), png((0, 0, 255))
    script.client(multi_image="latest").chat(
        [
            Message.user("first", image=red),
            Message.assistant("red"),
            Message.user("second", image=blue),
        ]
    )
    urls = sent_image_urls(script.bodies()[0])
    assert len(urls) == 1 and urls[0].endswith(__import__("base64").b64encode(blue).decode())


def test_grid_composes_all_images_into_one() -> None:
    script = Script(completion())
    script.client(multi_image="grid").chat(
        [Message.user("compare these two photos", images=[png((255, 0, 0)), png((0, 0, 255))])]
    )
    (url,) = sent_image_urls(script.bodies()[0])
    assert url.startswith("data:image/jpeg;base64,")
    assert script.bodies()[0]["messages"][0]["content"][-1]["text"] == "compare these two photos"


def test_unreadable_image_fails_before_any_request() -> None:
    script = Script(completion())
    with pytest.raises(ImageError, match="PDF"):
        script.client().chat([Message.user("?", image=b"%PDF-1.4")])
    assert script.requests == []


def test_the_same_image_twice_counts_as_one() -> None:
    script = Script(completion())
    red = png((255, 0, 0))
    script.client().chat(
        [
            Message.user("first", image=red),
            Message.assistant("ok"),
            Message.user("again", image=red),
        ]
    )
    assert len(sent_image_urls(script.bodies()[0])) == 1


def test_sse_reader_follows_the_event_stream_format() -> None:
    from llamavision.streams import sse_data

    lines = [
        ": keep-alive comment",
        "event: message",
        "id: 7",
        'data: {"a":',
        "data:1}",
        "",
        "",
        "retry: 100",
        "data:no-space",
        "",
        "data: tail-without-blank-line",
    ]
    assert list(sse_data(iter(lines))) == ['{"a":\n1}', "no-space", "tail-without-blank-line"]


async def test_async_latest_and_grid_policies() -> None:
    red, blue = png((255, 0, 0)), png((0, 0, 255))
    conversation = [Message.user("compare", images=[red, blue])]
    script = Script(completion(), completion())
    await script.client(multi_image="grid").achat(conversation)
    await script.client(multi_image="latest").achat(conversation)
    grid, latest = (sent_image_urls(b) for b in script.bodies())
    assert len(grid) == 1 and grid[0].startswith("data:image/jpeg;base64,")
    assert latest == ["data:image/png;base64," + __import__("base64").b64encode(blue).decode()]


def test_a_dropped_parameter_warns_once_per_call_at_the_callers_line() -> None:
    script = Script(oa_error(503, "overloaded"), completion(), completion())
    client = script.client(max_retries=2)
    with pytest.warns(
        UnsupportedParameterWarning, match="aigateway does not support top_k"
    ) as seen:
        client.chat("hi", top_k=5)  # a retry builds the body again: still one warning
    assert len(seen) == 1 and seen[0].filename == __file__
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        client.chat("hi", temperature=0.1)  # nothing dropped, nothing said
