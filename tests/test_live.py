"""Against the real providers: run only with real credentials (``pytest -m live``).

Each test skips cleanly when its provider's credentials are not set, or when a
``*_BASE_URL`` points elsewhere (for example at the emulator).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest

from llamavision import LlamaVisionClient, Message, StreamAccumulator, Tool

SAMPLES = Path(__file__).resolve().parent.parent / "examples" / "images"
CREDENTIALS = {
    "aigateway": ("AIGATEWAY_API_KEY",),
    "cloudflare": ("CLOUDFLARE_ACCOUNT_ID", "CLOUDFLARE_API_TOKEN"),
}
BASE_URLS = {"aigateway": "AIGATEWAY_BASE_URL", "cloudflare": "CLOUDFLARE_BASE_URL"}

pytestmark = pytest.mark.live


@pytest.fixture(params=sorted(CREDENTIALS))
def provider(request: pytest.FixtureRequest) -> str:
    name = str(request.param)
    missing = [v for v in CREDENTIALS[name] if not os.environ.get(v)]
    if missing or os.environ.get(BASE_URLS[name]):
        pytest.skip(f"live {name} test: set {' and '.join(CREDENTIALS[name])} (and no base URL)")
    return name


def client(provider: str) -> LlamaVisionClient:
    return LlamaVisionClient(provider, accept_license=True)


def test_the_model_sees_the_image(provider: str) -> None:
    result = client(provider).chat(
        [Message.user("What colour is the square? One word.", image=SAMPLES / "red-square.png")],
        max_tokens=10,
    )
    assert "red" in result.text.lower()
    assert result.usage is not None and result.cost is not None and result.cost > 0


def test_streaming_and_usage(provider: str) -> None:
    acc = StreamAccumulator()
    for delta in client(provider).stream("Count from 1 to 5.", max_tokens=40):
        acc.add(delta)
    result = acc.result()
    assert "3" in result.text and result.usage is not None and result.finish_reason


def test_tool_round_trip(provider: str) -> None:
    weather = Tool(
        "get_weather",
        "Current weather in a city",
        {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    )
    c = client(provider)
    question = [Message.user("What is the weather in Paris? Use the tool.")]
    first = c.chat(question, tools=[weather])
    assert first.tool_calls and first.tool_calls[0].arguments.get("city")
    call = first.tool_calls[0]
    final = c.chat(
        [*question, first.to_message(), Message.tool(call.id, "18C, sunny")], tools=[weather]
    )
    assert "18" in final.text


def test_llamaindex_classes(provider: str) -> None:
    from llama_index.core.llms import ChatMessage, ImageBlock, TextBlock
    from llama_index.core.schema import ImageNode

    from llamaindex_llamavision import LlamaVision, LlamaVisionMultiModal

    llm = LlamaVision(provider=provider, accept_license=True, max_tokens=20)
    message = ChatMessage(
        role="user",
        blocks=[
            ImageBlock(path=SAMPLES / "blue-circle.jpg"),
            TextBlock(text="Which colour? One word."),
        ],
    )
    assert "blue" in str(llm.chat([message]).message.content).lower()
    mm = LlamaVisionMultiModal(provider=provider, accept_license=True, max_tokens=20)
    text = mm.complete(
        "Which colour? One word.",
        image_documents=[ImageNode(image_path=str(SAMPLES / "red-square.png"))],
    )
    assert "red" in text.text.lower()


def test_workers_ai_embeddings_find_a_paraphrase() -> None:
    missing = [v for v in CREDENTIALS["cloudflare"] if not os.environ.get(v)]
    if missing or os.environ.get(BASE_URLS["cloudflare"]):
        pytest.skip("live cloudflare test: set CLOUDFLARE_ACCOUNT_ID and CLOUDFLARE_API_TOKEN")
    from llamavision.embeddings import WorkersAIEmbedder

    embedder = WorkersAIEmbedder()
    square, sunset, query = embedder.embed(
        ["A red square on a white background.", "The sun setting over the sea.", "crimson box"]
    )
    assert len(square) == embedder.dimensions == 768

    def cosine(a: list[float], b: list[float]) -> float:
        return sum(x * y for x, y in zip(a, b, strict=True)) / math.hypot(*a) / math.hypot(*b)

    assert cosine(query, square) > cosine(query, sunset)
