"""LiteLLM's ``cloudflare/`` provider against the emulator: text, image, streamed, tools.

LiteLLM (1.95 and later) sends Workers AI requests to Cloudflare's OpenAI-compatible route,
``POST /client/v4/accounts/{account_id}/ai/v1/chat/completions``, with the ``@cf/`` model in the
body; before the emulator served that route, every call was a 404. The AI Gateway route is
OpenAI's own, which LiteLLM's ``openai/`` provider calls.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import litellm
import pytest

from llamavision.emulator import DEFAULT_ACCOUNT_ID, DEFAULT_CLOUDFLARE_TOKEN, Emulator
from llamavision.emulator.server import EmulatorServer
from tests.e2e.support import SAMPLE_DATA_URL, WEATHER_TOOL

MODEL = "cloudflare/@cf/meta/llama-3.2-11b-vision-instruct"


@pytest.fixture
def cloudflare(
    emulator: Emulator, emulator_server: EmulatorServer, monkeypatch: pytest.MonkeyPatch
) -> Iterator[dict[str, str]]:
    """What a LiteLLM user sets for Workers AI, pointed at the emulator; licence agreed."""
    monkeypatch.setenv("CLOUDFLARE_ACCOUNT_ID", DEFAULT_ACCOUNT_ID)
    monkeypatch.setenv("CLOUDFLARE_API_KEY", DEFAULT_CLOUDFLARE_TOKEN)
    options = {
        "api_base": f"{emulator_server.url}/client/v4/accounts/{DEFAULT_ACCOUNT_ID}/ai/v1",
        "api_key": DEFAULT_CLOUDFLARE_TOKEN,
    }
    litellm.completion(MODEL, messages=[{"role": "user", "content": "agree"}], **options)
    emulator.requests.clear()
    yield options


def test_text(cloudflare: dict[str, str], emulator: Emulator) -> None:
    reply = litellm.completion(MODEL, messages=[{"role": "user", "content": "Hi"}], **cloudflare)
    assert "synthetic answer" in reply.choices[0].message.content
    assert reply.usage.prompt_tokens > 0 and reply.usage.completion_tokens > 0
    (received,) = emulator.requests
    assert received.provider == "cloudflare" and received.path.endswith("/ai/v1/chat/completions")


def test_an_image_streamed(cloudflare: dict[str, str], emulator: Emulator) -> None:
    question = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is this?"},
                {"type": "image_url", "image_url": {"url": SAMPLE_DATA_URL}},
            ],
        }
    ]
    chunks = list(litellm.completion(MODEL, messages=question, stream=True, **cloudflare))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(chunks) > 2 and "synthetic answer" in text and "(cloudflare)" in text
    (received,) = emulator.requests
    assert received.images == [SAMPLE_DATA_URL] and received.stream


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_a_tool_call(cloudflare: dict[str, str], stream: bool) -> None:
    reply = litellm.completion(
        MODEL,
        messages=[{"role": "user", "content": "What is the weather in Paris?"}],
        tools=[WEATHER_TOOL],
        tool_choice="required",
        stream=stream,
        **cloudflare,
    )
    if stream:
        reply = litellm.stream_chunk_builder(list(reply))
    (call,) = reply.choices[0].message.tool_calls
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "example"}


def test_errors_are_typed(cloudflare: dict[str, str]) -> None:
    wrong = {**cloudflare, "api_key": "wrong"}
    with pytest.raises(litellm.AuthenticationError):
        litellm.completion(MODEL, messages=[{"role": "user", "content": "Hi"}], **wrong)
