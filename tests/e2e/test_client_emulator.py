"""The real client against the emulator over a real loopback socket, both providers,
sync and async, streamed and not.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
from PIL import Image as PILImage

from llamavision import (
    APIConnectionError,
    AuthenticationError,
    BadRequestError,
    ChatResult,
    LicenseAgreementRequiredError,
    LlamaVisionClient,
    MalformedResponseError,
    Message,
    RateLimitError,
    ServiceUnavailableError,
    StreamAccumulator,
    StreamInterruptedError,
    Tool,
)
from llamavision.emulator import Emulator, Fault, Reply

PROVIDERS = ["aigateway", "cloudflare"]
MODES = ["chat", "stream", "achat", "astream"]
WEATHER = Tool(
    "get_weather",
    "Current weather in a city",
    {
        "type": "object",
        "properties": {"city": {"type": "string"}, "unit": {"enum": ["C", "F"]}},
        "required": ["city", "unit"],
    },
)


def make(provider: str, **kwargs: Any) -> LlamaVisionClient:
    kwargs.setdefault("retry_backoff", 0.01)
    if provider == "cloudflare":
        kwargs.setdefault("accept_license", True)
    return LlamaVisionClient(provider, **kwargs)


def call(client: LlamaVisionClient, mode: str, messages: Any, **kwargs: Any) -> ChatResult:
    """Run one request in the given mode; streamed modes are folded into a ChatResult."""
    if mode == "chat":
        return client.chat(messages, **kwargs)
    if mode == "achat":
        return asyncio.run(client.achat(messages, **kwargs))
    acc = StreamAccumulator()
    if mode == "stream":
        for delta in client.stream(messages, **kwargs):
            acc.add(delta)
    else:

        async def run() -> None:
            async for delta in client.astream(messages, **kwargs):
                acc.add(delta)

        asyncio.run(run())
    return acc.result()


@pytest.fixture(params=PROVIDERS)
def provider(request: pytest.FixtureRequest, emulator: Emulator) -> str:
    return str(request.param)


@pytest.fixture(params=MODES)
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_text_usage_and_cost(provider: str, mode: str, emulator: Emulator) -> None:
    result = call(make(provider), mode, "Say hello")
    assert "synthetic answer from the llamavision emulator" in result.text
    assert "'Say hello'" in result.text
    assert result.finish_reason == "stop"
    assert result.usage is not None and result.usage.completion_tokens > 0
    assert result.cost is not None and result.cost > 0
    assert result.provider == provider


def test_the_right_image_reaches_the_provider(provider: str, mode: str, emulator: Emulator) -> None:
    green = PILImage.new("RGB", (2400, 1200), (20, 170, 40))
    result = call(make(provider), mode, [Message.user("What colour is it?", image=green)])
    assert "1120x560 JPEG image, mostly green" in result.text
    assert len(emulator.requests[-1].images) == 1


def test_multi_turn_with_system_prompt(provider: str, mode: str, emulator: Emulator) -> None:
    messages = [
        Message.system("You are terse."),
        Message.user("First question"),
        Message.assistant("First answer"),
        Message.user("Second question"),
    ]
    result = call(make(provider), mode, messages)
    assert "'Second question'" in result.text
    roles = [m["role"] for m in emulator.requests[-1].messages]
    assert roles == ["system", "user", "assistant", "user"]


def test_tool_round_trip(provider: str, mode: str, emulator: Emulator) -> None:
    client = make(provider)
    question = [Message.user("Use get_weather for the city in this picture.")]
    first = call(client, mode, question, tools=[WEATHER])
    assert first.finish_reason == "tool_calls"
    (tool_call,) = first.tool_calls
    assert tool_call.name == "get_weather"
    assert set(tool_call.arguments) == {"city", "unit"} and tool_call.arguments["unit"] in "CF"
    assert tool_call.id
    follow_up = [*question, first.to_message(), Message.tool(tool_call.id, "18C and sunny")]
    second = call(client, mode, follow_up, tools=[WEATHER])
    assert "get_weather returned '18C and sunny'" in second.text
    assert second.tool_calls == []


def test_scripted_reply_with_several_tool_calls(
    provider: str, mode: str, emulator: Emulator
) -> None:
    emulator.script(
        Reply(
            text="Checking both.",
            tool_calls=[
                ("get_weather", {"city": "Oslo", "unit": "C"}),
                ("get_weather", {"city": "Rome", "unit": "F"}),
            ],
            usage=(50, 20),
        )
    )
    result = call(make(provider), mode, "weather?", tools=[WEATHER])
    assert result.text == "Checking both."
    assert [c.arguments["city"] for c in result.tool_calls] == ["Oslo", "Rome"]
    assert len({c.id for c in result.tool_calls}) == 2
    assert result.usage is not None and (
        result.usage.prompt_tokens,
        result.usage.completion_tokens,
    ) == (50, 20)


def test_forced_tool_choice(emulator: Emulator, mode: str) -> None:
    result = call(make("aigateway"), mode, "anything", tools=[WEATHER], tool_choice="required")
    assert result.tool_calls[0].name == "get_weather"


def test_json_mode_on_aigateway(emulator: Emulator, mode: str) -> None:
    result = call(make("aigateway"), mode, "Describe as JSON", response_format="json_object")
    assert json.loads(result.text)["question"] == "Describe as JSON"
    schema = {
        "name": "colour",
        "schema": {
            "type": "object",
            "properties": {"colour": {"type": "string"}, "confidence": {"type": "number"}},
            "required": ["colour", "confidence"],
        },
    }
    result = call(make("aigateway"), mode, "Which colour?", response_format=schema)
    assert set(json.loads(result.text)) == {"colour", "confidence"}


def test_max_tokens_truncates_with_finish_reason_length(
    provider: str, mode: str, emulator: Emulator
) -> None:
    result = call(make(provider), mode, "Tell me everything", max_tokens=3)
    assert result.finish_reason == "length" or provider == "cloudflare"
    assert len(result.text.split()) == 3


def test_cloudflare_choices_shaped_stream_counts_usage_once(emulator: Emulator) -> None:
    emulator.cloudflare_stream_shape = "choices"
    emulator.script(Reply(text="one two three", usage=(40, 3)))
    result = call(make("cloudflare"), "stream", "count")
    assert result.text == "one two three"
    assert result.usage is not None and result.usage.total_tokens == 43


# --------------------------------------------------------------------------- faults


@pytest.mark.parametrize("status", [429, 500, 502, 503])
def test_retryable_faults_are_retried(
    provider: str, mode: str, status: int, emulator: Emulator
) -> None:
    emulator.fail(Fault("status", status=status, retry_after="0"))
    result = call(make(provider), mode, "hi")
    assert "synthetic" in result.text
    assert len(emulator.requests) == 1  # the failed attempt was refused before being recorded


def test_retry_after_is_honoured_over_the_wire(provider: str, emulator: Emulator) -> None:
    emulator.fail(Fault("status", status=429, retry_after="1"))
    started = time.monotonic()
    make(provider).chat("hi")
    assert time.monotonic() - started >= 0.95


def test_exhausted_retries_raise_the_typed_error(provider: str, emulator: Emulator) -> None:
    emulator.fail(*[Fault("status", status=429, retry_after="0")] * 3)
    with pytest.raises(RateLimitError) as info:
        make(provider, max_retries=2).chat("hi")
    assert info.value.provider == provider and info.value.retry_after == 0


def test_a_slow_provider_times_out_and_is_retried(provider: str, emulator: Emulator) -> None:
    emulator.fail(Fault("delay", seconds=0.6))
    result = make(provider, timeout=0.3).chat("hi")
    assert "synthetic" in result.text
    emulator.fail(*[Fault("delay", seconds=0.6)] * 2)
    with pytest.raises(APIConnectionError, match="timed out"):
        make(provider, timeout=0.3, max_retries=1).chat("hi")


@pytest.mark.parametrize("stream_mode", ["stream", "astream"])
def test_stream_cut_after_n_events(provider: str, stream_mode: str, emulator: Emulator) -> None:
    emulator.script(Reply(text="alpha beta gamma delta epsilon"))
    emulator.fail(Fault("cut", after_events=3))
    with pytest.raises(StreamInterruptedError) as info:
        call(make(provider), stream_mode, "hi")
    assert info.value.partial_text in ("alpha beta", "alpha beta gamma")
    assert info.value.partial_text.startswith("alpha")
    assert len(emulator.requests) == 1  # nothing is retried once text reached the caller


@pytest.mark.parametrize("kind", ["malformed_json", "unknown_event"])
def test_bad_stream_events_are_reported(provider: str, kind: str, emulator: Emulator) -> None:
    emulator.script(Reply(text="kept words here"))
    emulator.fail(Fault(kind, after_events=2))  # type: ignore[arg-type]
    with pytest.raises(StreamInterruptedError) as info:
        call(make(provider), "stream", "hi")
    assert isinstance(info.value.__cause__, MalformedResponseError)
    assert info.value.partial_text.startswith("kept")


@pytest.mark.parametrize("kind", ["malformed_json", "bad_body"])
def test_bad_reply_bodies_are_reported(provider: str, kind: str, emulator: Emulator) -> None:
    emulator.fail(Fault(kind))  # type: ignore[arg-type]
    with pytest.raises(MalformedResponseError):
        make(provider).chat("hi")


def test_failover_between_providers(emulator: Emulator) -> None:
    emulator.fail(*[Fault("status", status=503, provider="aigateway")] * 2)
    result = make(
        "aigateway", max_retries=1, fallback_providers=["cloudflare"], accept_license=True
    ).chat("hi")
    assert result.provider == "cloudflare" and "(cloudflare)" in result.text
    emulator.fail(*[Fault("status", status=502, provider="cloudflare")] * 2)
    deltas = list(make("cloudflare", max_retries=1, fallback_providers=["aigateway"]).stream("x"))
    assert deltas[-1].provider == "aigateway"


async def test_async_failover(emulator: Emulator) -> None:
    emulator.fail(Fault("status", status=500, provider="aigateway"))
    client = make(
        "aigateway", max_retries=0, fallback_providers=["cloudflare"], accept_license=True
    )
    async with client:
        result = await client.achat("hi")
    assert result.provider == "cloudflare"


# --------------------------------------------------------------------------- auth and license


def test_wrong_keys_get_each_providers_auth_error(provider: str, emulator: Emulator) -> None:
    with pytest.raises(AuthenticationError) as info:
        make(provider, api_key="sk-bad-key-123").chat("hi")
    assert info.value.status_code == 401 and "sk-bad-key-123" not in str(info.value)


def test_license_gate_without_consent(emulator: Emulator, mode: str) -> None:
    with pytest.raises(LicenseAgreementRequiredError, match="accept_license=True"):
        call(make("cloudflare", accept_license=False), mode, "hi")
    assert emulator.agreed_accounts == set()


def test_license_gate_with_consent_agrees_once(emulator: Emulator, mode: str) -> None:
    client = make("cloudflare", accept_license=True)
    call(client, mode, "first")
    call(client, mode, "second")
    assert emulator.agreed_accounts == {"emulator-account"}
    assert [m["text"] for r in emulator.requests for m in r.messages] == ["first", "second"]


def test_emulator_validates_requests_like_the_provider(emulator: Emulator) -> None:
    with pytest.raises(BadRequestError, match="max_tokens"):
        make("aigateway").chat("hi", max_tokens=5000)
    with pytest.raises(BadRequestError, match="temperature"):
        make("cloudflare").chat("hi", temperature=7)


def test_requests_can_be_read_back(provider: str, emulator: Emulator) -> None:
    make(provider).chat([Message.system("sys"), Message.user("question")], temperature=0.5)
    (received,) = emulator.requests
    assert received.provider == provider and received.body["temperature"] == 0.5
    assert [m["text"] for m in received.messages] == ["sys", "question"]


def test_service_unavailable_surfaces_after_retries(emulator: Emulator) -> None:
    emulator.fail(*[Fault("status", status=503)] * 3)
    with pytest.raises(ServiceUnavailableError, match="fallback_providers"):
        make("aigateway", max_retries=2).chat("hi")


def test_emulated_workers_ai_cuts_at_its_default_256_tokens_and_we_never_rely_on_it(
    emulator: Emulator, emulator_server: Any
) -> None:
    import httpx

    long = " ".join(f"w{i}" for i in range(300))
    emulator.script(Reply(text=long), Reply(text=long))
    url = emulator_server.url + "/client/v4/accounts/emulator-account/ai/run/"
    url += "@cf/meta/llama-3.2-11b-vision-instruct"
    emulator.license_gate = False
    raw = httpx.post(
        url,
        json={"messages": [{"role": "user", "content": "Talk."}]},
        headers={"Authorization": "Bearer emulator-token"},
    ).json()["result"]
    assert len(raw["response"].split()) == 256 and raw["usage"]["completion_tokens"] == 256
    assert "finish_reason" not in raw  # nothing on the wire says it was cut
    result = make("cloudflare").chat("Talk.")
    assert len(result.text.split()) == 300 and result.finish_reason == "stop"


@pytest.mark.parametrize("provider", PROVIDERS)
def test_an_authentication_error_names_the_credential_in_use(
    emulator: Emulator, provider: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(AuthenticationError, match="the api_key you passed") as passed:
        LlamaVisionClient(provider, api_key="wrong-key", max_retries=0).chat("hi")
    env = "AIGATEWAY_API_KEY" if provider == "aigateway" else "CLOUDFLARE_API_TOKEN"
    assert env not in str(passed.value)
    monkeypatch.setenv(env, "wrong-key-from-env")
    with pytest.raises(AuthenticationError, match=env):
        LlamaVisionClient(provider, max_retries=0).chat("hi")
