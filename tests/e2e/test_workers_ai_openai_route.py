"""Workers AI's OpenAI-compatible route in the emulator, driven by the official openai SDK.

``POST /client/v4/accounts/{account_id}/ai/v1/chat/completions`` (PROVIDERS.md section 5): what
the OpenAI SDKs and LiteLLM's ``cloudflare/`` provider call. Same account, token, license gate,
rate limits and faults as the native ``/ai/run/`` route; Cloudflare's error envelope. And
``/ai/v1/embeddings`` for the bge models, with the native route's vectors.
"""

from __future__ import annotations

import json

import openai
import pytest

from llamavision.embeddings import WorkersAIEmbedder
from llamavision.emulator import DEFAULT_ACCOUNT_ID, DEFAULT_CLOUDFLARE_TOKEN, Emulator, Fault
from llamavision.emulator.server import EmulatorServer
from tests.e2e.support import SAMPLE_DATA_URL, WEATHER_TOOL

MODEL = "@cf/meta/llama-3.2-11b-vision-instruct"


@pytest.fixture
def sdk(emulator: Emulator, emulator_server: EmulatorServer) -> openai.OpenAI:
    base = f"{emulator_server.url}/client/v4/accounts/{DEFAULT_ACCOUNT_ID}/ai/v1"
    return openai.OpenAI(base_url=base, api_key=DEFAULT_CLOUDFLARE_TOKEN, max_retries=0)


def agree(sdk: openai.OpenAI) -> None:
    sdk.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "agree"}])


def test_an_image_question_with_the_license_gate(sdk: openai.OpenAI, emulator: Emulator) -> None:
    question = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is this?"},
                {"type": "image_url", "image_url": {"url": SAMPLE_DATA_URL}},
            ],
        }
    ]
    with pytest.raises(openai.PermissionDeniedError) as refused:
        sdk.chat.completions.create(model=MODEL, messages=question)
    body = refused.value.body
    assert isinstance(body, dict) and body["success"] is False  # Cloudflare's envelope
    assert body["errors"][0]["code"] == 5016
    agree(sdk)
    answer = sdk.chat.completions.create(model=MODEL, messages=question, max_tokens=50)
    assert "synthetic answer" in (answer.choices[0].message.content or "")
    assert "(cloudflare)" in (answer.choices[0].message.content or "")
    assert answer.usage is not None and answer.usage.prompt_tokens > 0
    (received,) = emulator.requests
    assert received.provider == "cloudflare" and received.images == [SAMPLE_DATA_URL]


def test_a_streamed_tool_call(sdk: openai.OpenAI) -> None:
    agree(sdk)
    stream = sdk.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "What is the weather in Paris?"}],
        tools=[WEATHER_TOOL],  # type: ignore[list-item]
        tool_choice="required",
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    calls = [
        c.choices[0].delta.tool_calls for c in chunks if c.choices and c.choices[0].delta.tool_calls
    ]
    name = "".join(call[0].function.name or "" for call in calls if call[0].function)
    arguments = "".join(call[0].function.arguments or "" for call in calls if call[0].function)
    assert name == "get_weather" and json.loads(arguments) == {"city": "example"}
    assert chunks[-1].usage is not None  # usage last, as asked


def test_rate_limits_faults_and_errors_are_cloudflares(
    sdk: openai.OpenAI, emulator: Emulator
) -> None:
    agree(sdk)
    emulator.fail(Fault("status", status=503, retry_after="1", provider="cloudflare"))
    with pytest.raises(openai.InternalServerError) as failed:
        sdk.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    assert failed.value.response.headers["retry-after"] == "1"
    assert failed.value.body["errors"][0]["code"] == 3040  # type: ignore[index]
    with pytest.raises(openai.BadRequestError, match="No such model"):
        sdk.chat.completions.create(model="@cf/nope", messages=[{"role": "user", "content": "hi"}])
    wrong = openai.OpenAI(base_url=str(sdk.base_url), api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    emulator.rate_limit, emulator.rate_burst = 60, 1  # one request, then the account's 429
    sdk.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.RateLimitError) as limited:
        sdk.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    assert limited.value.body["errors"][0]["code"] == 3021  # type: ignore[index]
    assert emulator.counters["rate_limited"] == 1


def test_embeddings_are_the_native_routes_in_openais_format(
    sdk: openai.OpenAI, emulator: Emulator
) -> None:
    small = "@cf/baai/bge-small-en-v1.5"
    texts = ["a red square", "a blue circle"]
    native = WorkersAIEmbedder(small).embed(texts)
    as_floats = sdk.embeddings.create(model=small, input=texts, encoding_format="float")
    assert [e.embedding for e in as_floats.data] == native
    assert as_floats.usage.prompt_tokens == 6
    packed = sdk.embeddings.create(model=small, input=texts)  # the SDK asks for base64
    for got, want in zip(packed.data, native, strict=True):
        assert got.embedding == pytest.approx(want, abs=1e-6)
    assert emulator.counters["embedded"] == 6
    with pytest.raises(openai.BadRequestError, match="No such model"):
        sdk.embeddings.create(model="text-embedding-3-small", input=texts)
