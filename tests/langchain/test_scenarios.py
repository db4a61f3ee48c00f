"""What LangChain users build: an image RAG chain, an agent, every image form, callbacks."""

from __future__ import annotations

import asyncio
import base64
import re
import sys
from pathlib import Path
from typing import Any

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.documents import Document
from langchain_core.messages import AIMessageChunk, HumanMessage, SystemMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.runnables import RunnableLambda
from langchain_core.tools import tool

from langchain_llamavision import ChatLlamaVision
from llamavision import (
    AuthenticationError,
    ImageError,
    ImageOptions,
    LicenseAgreementRequiredError,
    StreamInterruptedError,
)
from llamavision.emulator import Emulator, EmulatorServer, Fault, Reply
from tests.recorded import (
    LLAMA_CPP_PYTHON_TOOL_STREAM,
    LLAMA_SERVER_TOOL_STREAM,
    NUMERIC_TOKEN_STREAM,
    TOOL_ID,
    http_clients,
)

SAMPLES = Path(__file__).resolve().parents[2] / "examples" / "images"
PROVIDERS = ["aigateway", "cloudflare"]
LOOPBACK = ImageOptions(allow_private_urls=True)


@pytest.fixture(params=PROVIDERS)
def llm(request: pytest.FixtureRequest, emulator: Emulator) -> ChatLlamaVision:
    # The emulator hosts its images on loopback: downloads from there need the opt-in.
    return ChatLlamaVision(
        provider=request.param, accept_license=True, max_retries=1, image_options=LOOPBACK
    )


def b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


class Tokens(BaseCallbackHandler):
    def __init__(self) -> None:
        self.tokens: list[str] = []

    def on_llm_new_token(self, token: str, **kwargs: Any) -> None:
        self.tokens.append(token)


# --------------------------------------------------------------------------- image RAG


CAPTIONS = {
    "red-square.png": "A red square in the middle of a white page.",
    "blue-circle.jpg": "A large blue circle on a pale background.",
    "sunset.jpg": "An orange and purple sunset over a dark sea.",
}


def retriever(question: str) -> Document:
    """A keyword retriever over image captions (what BM25 would do, without downloads)."""
    docs = [
        Document(page_content=c, metadata={"image_path": str(SAMPLES / name)})
        for name, c in CAPTIONS.items()
    ]
    words = set(re.findall(r"\w+", question.lower()))
    return max(docs, key=lambda d: len(words & set(re.findall(r"\w+", d.page_content.lower()))))


def rag_prompt(inputs: dict[str, Any]) -> list[Any]:
    doc: Document = inputs["doc"]
    mime = "image/png" if doc.metadata["image_path"].endswith(".png") else "image/jpeg"
    return [
        SystemMessage("Answer using the image and its caption."),
        HumanMessage(
            content=[
                {"type": "text", "text": f"Caption: {doc.page_content}\nQuestion: {inputs['q']}"},
                {
                    "type": "image",
                    "base64": b64(Path(doc.metadata["image_path"])),
                    "mime_type": mime,
                },
            ]
        ),
    ]


def test_image_rag_chain_streams_an_answer_about_the_retrieved_image(llm: ChatLlamaVision) -> None:
    chain = (
        {"doc": RunnableLambda(retriever), "q": RunnableLambda(lambda q: q)}
        | RunnableLambda(rag_prompt)
        | llm
        | StrOutputParser()
    )
    tokens = Tokens()
    pieces = list(
        chain.stream("What is at the sunset over the sea?", config={"callbacks": [tokens]})
    )
    answer = "".join(pieces)
    assert len(pieces) > 5 and len(tokens.tokens) >= len(pieces)
    assert "900x600 JPEG image" in answer and "orange" in answer


async def test_image_rag_chain_async(llm: ChatLlamaVision) -> None:
    chain = (
        {"doc": RunnableLambda(retriever), "q": RunnableLambda(lambda q: q)}
        | RunnableLambda(rag_prompt)
        | llm
        | StrOutputParser()
    )
    pieces = [p async for p in chain.astream("Which picture has a red square?")]
    assert "640x480 PNG image, mostly white and red" in "".join(pieces)
    assert "red" in await chain.ainvoke("the red square")


# --------------------------------------------------------------------------- agent


@tool
def get_weather(city: str) -> str:
    """Get the current weather in a city."""
    return f"It is 18C and sunny in {city}."


def test_agent_with_an_image_and_a_tool(llm: ChatLlamaVision) -> None:
    from langchain.agents import create_agent

    agent = create_agent(llm, tools=[get_weather])
    question = HumanMessage(
        content=[
            {"type": "text", "text": "What is the weather where this photo was taken?"},
            {"type": "image", "base64": b64(SAMPLES / "sunset.jpg"), "mime_type": "image/jpeg"},
        ]
    )
    state = agent.invoke({"messages": [question]})
    kinds = [m.type for m in state["messages"]]
    assert kinds == ["human", "ai", "tool", "ai"]
    assert state["messages"][1].tool_calls[0]["name"] == "get_weather"
    assert "18C and sunny" in state["messages"][-1].text


@pytest.mark.skipif(
    sys.version_info < (3, 11),
    reason="before Python 3.11 LangGraph cannot pass callbacks through async code, so an "
    "agent streams no model chunks (ChatOpenAI streams none there either)",
)
async def test_agent_async_streams_tool_call_chunks(llm: ChatLlamaVision) -> None:
    from langchain.agents import create_agent

    agent = create_agent(llm, tools=[get_weather])
    chunks: list[AIMessageChunk] = []
    async for message, _meta in agent.astream(
        {"messages": [HumanMessage("Check the weather in Oslo, please.")]},
        stream_mode="messages",
    ):
        if isinstance(message, AIMessageChunk):
            chunks.append(message)
    assert any(c.tool_call_chunks for c in chunks)
    ends = [i for i, c in enumerate(chunks) if c.chunk_position == "last"]
    assert len(ends) == 2  # one model call that asks for the tool, one that answers
    first = sum(chunks[1 : ends[0] + 1], chunks[0])
    final = sum(chunks[ends[0] + 2 : ends[1] + 1], chunks[ends[0] + 1])
    assert [call["name"] for call in first.tool_calls] == ["get_weather"]
    assert "18C and sunny" in final.text


def test_streamed_tool_call_chunks_merge(llm: ChatLlamaVision) -> None:
    chunks = list(llm.bind_tools([get_weather]).stream("What is the weather in Rome?"))
    merged = sum(chunks[1:], chunks[0])
    assert isinstance(merged, AIMessageChunk)
    assert merged.tool_calls[0]["name"] == "get_weather"
    assert set(merged.tool_calls[0]["args"]) == {"city"}
    assert merged.usage_metadata is not None and merged.usage_metadata["total_tokens"] > 0
    assert merged.response_metadata["finish_reason"] == "tool_calls"


# --------------------------------------------------------------------------- image forms


@pytest.mark.parametrize(
    "form",
    [
        "standard-url",
        "standard-base64",
        "source-type-url",
        "source-type-base64",
        "openai-image-url",
        "openai-data-url",
        "openai-plain-string",
    ],
)
def test_every_image_form_reaches_either_provider(
    llm: ChatLlamaVision, emulator: Emulator, emulator_server: EmulatorServer, form: str
) -> None:
    data = (SAMPLES / "red-square.png").read_bytes()
    url = emulator_server.url + emulator.host_image("red.png", data)
    data_url = "data:image/png;base64," + base64.b64encode(data).decode()
    block = {
        "standard-url": {"type": "image", "url": url},
        "standard-base64": {
            "type": "image",
            "base64": b64(SAMPLES / "red-square.png"),
            "mime_type": "image/png",
        },
        "source-type-url": {"type": "image", "source_type": "url", "url": url},
        "source-type-base64": {
            "type": "image",
            "source_type": "base64",
            "mime_type": "image/png",
            "data": b64(SAMPLES / "red-square.png"),
        },
        "openai-image-url": {"type": "image_url", "image_url": {"url": url}},
        "openai-data-url": {"type": "image_url", "image_url": {"url": data_url}},
        "openai-plain-string": {"type": "image_url", "image_url": data_url},
    }[form]
    reply = llm.invoke([HumanMessage(content=[{"type": "text", "text": "What?"}, block])])
    (sent,) = emulator.requests[-1].images
    if llm.provider == "aigateway" and "url" in form and "data" not in form:
        assert sent == url  # AI Gateway fetches URLs itself
        assert "does not fetch" in reply.text
    else:
        assert sent.startswith("data:image/")  # Cloudflare gets it inline
        assert "640x480 PNG image, mostly white and red" in reply.text


def test_unsupported_blocks_fail_clearly(llm: ChatLlamaVision) -> None:
    with pytest.raises(ValueError, match="file_id"):
        llm.invoke([HumanMessage(content=[{"type": "image", "file_id": "file-1"}])])
    with pytest.raises(ValueError, match="cannot send a 'audio' content block"):
        llm.invoke(
            [HumanMessage(content=[{"type": "audio", "base64": "AAAA", "mime_type": "audio/wav"}])]
        )
    with pytest.raises(ImageError, match="PDF"):
        llm.invoke(
            [
                HumanMessage(
                    content=[
                        {
                            "type": "image",
                            "base64": base64.b64encode(b"%PDF-1.4").decode(),
                            "mime_type": "image/png",
                        }
                    ]
                )
            ]
        )


# --------------------------------------------------------------------------- errors


def test_typed_errors_surface_unchanged(emulator: Emulator) -> None:
    with pytest.raises(LicenseAgreementRequiredError, match="accept_license=True"):
        list(ChatLlamaVision(provider="cloudflare").stream("hi"))
    with pytest.raises(AuthenticationError):
        ChatLlamaVision(api_key="sk-wrong").invoke("hi")
    emulator.fail(Fault("cut", after_events=4))
    with pytest.raises(StreamInterruptedError) as info:
        list(ChatLlamaVision().stream("tell me a story"))
    assert info.value.partial_text


def test_malformed_stream_event_is_reported_not_dropped(
    llm: ChatLlamaVision, emulator: Emulator
) -> None:
    emulator.fail(Fault("unknown_event", after_events=3))
    with pytest.raises(StreamInterruptedError, match="unknown stream event"):
        list(llm.stream("hi"))


def test_streaming_flag_sends_tokens_to_callbacks_from_invoke(emulator: Emulator) -> None:
    tokens = Tokens()
    llm = ChatLlamaVision(streaming=True, callbacks=[tokens])
    message = llm.invoke("Say something")
    assert len(tokens.tokens) > 5 and "".join(tokens.tokens) == message.text
    assert message.usage_metadata is not None


async def test_astream_events_and_batch(llm: ChatLlamaVision) -> None:
    events = [e["event"] async for e in llm.astream_events("hi", version="v2")]
    assert events[0] == "on_chat_model_start" and events[-1] == "on_chat_model_end"
    assert events.count("on_chat_model_stream") > 3
    questions = ["one", "two", "three"]
    answers = await llm.abatch(questions)
    assert all(f"'{q}'" in a.text for q, a in zip(questions, answers, strict=True))
    assert [("'x'" in m.text) for m in llm.batch(["x"])] == [True]


def test_rate_limiter_and_disable_streaming_are_honoured(emulator: Emulator) -> None:
    from langchain_core.rate_limiters import InMemoryRateLimiter

    limiter = InMemoryRateLimiter(requests_per_second=100, check_every_n_seconds=0.01)
    llm = ChatLlamaVision(rate_limiter=limiter, disable_streaming=True)
    chunks = list(llm.stream("hi"))
    assert len(chunks) == 1 and "synthetic" in chunks[0].text
    assert emulator.requests[-1].stream is False


def test_output_version_v1_gives_standard_content_blocks(emulator: Emulator) -> None:
    message = (
        ChatLlamaVision(output_version="v1").bind_tools([get_weather]).invoke("weather in Lima?")
    )
    assert any(block["type"] == "tool_call" for block in message.content_blocks)


def test_api_key_is_secret(emulator: Emulator) -> None:
    llm = ChatLlamaVision(api_key="sk-very-secret")
    assert "sk-very-secret" not in repr(llm) and "sk-very-secret" not in str(llm.model_dump())


def test_several_images_need_a_policy(emulator: Emulator) -> None:
    blocks = [
        {"type": "image", "base64": b64(SAMPLES / n), "mime_type": "image/jpeg"}
        for n in ("sunset.jpg", "blue-circle.jpg")
    ]
    message = HumanMessage(content=[{"type": "text", "text": "Compare these two photos"}, *blocks])
    with pytest.raises(ImageError, match="multi_image='grid'"):
        ChatLlamaVision().invoke([message])
    reply = ChatLlamaVision(multi_image="grid").invoke([message])
    assert "JPEG image" in reply.text and len(emulator.requests[-1].images) == 1


def test_sync_and_async_mix_in_one_process(emulator: Emulator) -> None:
    llm = ChatLlamaVision()
    assert asyncio.run(llm.ainvoke("a")).text and llm.invoke("b").text
    assert asyncio.run(llm.ainvoke("c")).text


# --------------------------------------------------------------------------- real servers' quirks


@pytest.mark.parametrize(
    "events",
    [LLAMA_CPP_PYTHON_TOOL_STREAM, LLAMA_SERVER_TOOL_STREAM],
    ids=["llama-cpp-python", "llama-server"],
)
def test_streamed_tool_calls_merge_right_whatever_the_server_repeats(
    events: list[dict[str, Any]],
) -> None:
    llm = ChatLlamaVision(**http_clients(events))
    chunks = list(llm.stream("Weather in Oslo?"))
    merged = sum(chunks[1:], chunks[0])
    assert isinstance(merged, AIMessageChunk)
    assert merged.tool_calls == [
        {"name": "get_weather", "args": {"city": "Oslo"}, "id": TOOL_ID, "type": "tool_call"}
    ]

    async def astream() -> AIMessageChunk:
        achunks = [c async for c in llm.astream("Weather in Oslo?")]
        return sum(achunks[1:], achunks[0])  # type: ignore[return-value]

    assert asyncio.run(astream()).tool_calls == merged.tool_calls


def test_numeric_tokens_reach_langchain_as_text() -> None:
    llm = ChatLlamaVision(streaming=True, **http_clients(NUMERIC_TOKEN_STREAM))
    tokens = Tokens()
    chunks = list(llm.stream("Answer?", config={"callbacks": [tokens]}))
    assert all(isinstance(c.content, str) for c in chunks)
    assert "".join(tokens.tokens) == "The answer is 42 and 0."
    assert llm.invoke("Answer?").content == "The answer is 42 and 0."  # streamed and merged


def test_an_answer_cut_at_the_output_limit_says_length(emulator: Emulator) -> None:
    llm = ChatLlamaVision(provider="cloudflare", accept_license=True, max_tokens=5)
    assert llm.invoke("Describe everything.").response_metadata["finish_reason"] == "length"
    chunks = list(llm.stream("Describe everything."))
    assert chunks[-1].response_metadata["finish_reason"] == "length"


def test_any_tool_choice_asks_for_some_tool_call(emulator: Emulator) -> None:
    llm = ChatLlamaVision(max_retries=0).bind_tools([get_weather], tool_choice="any")
    llm.invoke("Hello there.")
    assert emulator.requests[-1].body["tool_choice"] == "required"


# --------------------------------------------------------------------------- shared rate limits


@pytest.mark.parametrize("mode", ["batch", "abatch"])
def test_batch_callers_share_one_429_pause(emulator: Emulator, mode: str) -> None:
    emulator.fail(Fault("status", status=429, retry_after="1", lasting=1.0))
    llm = ChatLlamaVision(max_concurrency=1)
    questions = [f"question {i}" for i in range(4)]
    config = {"max_concurrency": 4}  # LangChain runs four threads or tasks at once
    if mode == "batch":
        replies = llm.batch(questions, config=config)
    else:
        replies = asyncio.run(llm.abatch(questions, config=config))
    assert [r.text for r in replies] and len(replies) == 4
    assert emulator.counters["requests"] == 5  # one 429, then nobody sent into the window


@pytest.mark.parametrize("provider", ["aigateway", "cloudflare"])
def test_streamed_and_invoked_messages_carry_the_providers_request_id(
    emulator: Emulator, provider: str
) -> None:
    llm = ChatLlamaVision(provider=provider, accept_license=True)
    invoked = llm.invoke("hi")
    merged = None
    for chunk in llm.stream("hi"):
        merged = chunk if merged is None else merged + chunk
    assert merged is not None and invoked.id and merged.id
    assert not merged.id.startswith("lc_") and not invoked.id.startswith("lc_")
    assert merged.id != invoked.id  # two requests, two ids: the provider's, both


def test_a_streamed_message_has_the_request_id_as_invoke_does(llm: ChatLlamaVision) -> None:
    invoked = llm.invoke("hi")
    merged = None
    for chunk in llm.stream("hi"):
        merged = chunk if merged is None else merged + chunk
    assert merged is not None
    for message in (invoked, merged):
        assert message.id and message.id == message.response_metadata["request_id"]


@pytest.mark.parametrize(
    "block",
    [
        {"type": "image", "url": str(SAMPLES / "red-square.png")},
        {"type": "image_url", "image_url": {"url": str(SAMPLES / "red-square.png")}},
        {"type": "image", "url": (SAMPLES / "red-square.png").as_uri()},
    ],
    ids=["image-url-path", "openai-image-url-path", "file-uri"],
)
def test_a_local_path_in_a_url_field_is_refused(
    llm: ChatLlamaVision, emulator: Emulator, block: dict[str, Any]
) -> None:
    message = HumanMessage(content=[{"type": "text", "text": "What is it?"}, block])
    with pytest.raises(ImageError, match="local_image_block"):
        llm.invoke([message])
    assert emulator.counters["received"] == 0


def test_a_local_file_is_sent_with_local_image_block(llm: ChatLlamaVision) -> None:
    from langchain_llamavision import local_image_block

    block = local_image_block(SAMPLES / "red-square.png")
    assert block["type"] == "image" and block["mime_type"] == "image/png"
    message = HumanMessage(content_blocks=[{"type": "text", "text": "What is it?"}, block])
    assert "red" in llm.invoke([message]).text


@pytest.mark.parametrize("version", ["v0", "v1"])
def test_text_then_a_tool_call_stream_into_two_blocks(emulator: Emulator, version: str) -> None:
    """A model that says a little (```json) before its call: LangChain merges v1 blocks by
    index, so the call must not share the text's index or it is folded into the text."""

    @tool
    def magic(x: int) -> int:
        """Return a magic number."""
        return x

    emulator.script(Reply(text="```json\n", tool_calls=[("magic", {"x": 3})]))
    llm = ChatLlamaVision(output_version=version).bind_tools([magic])
    merged: Any = None
    for chunk in llm.stream("use magic"):
        merged = chunk if merged is None else merged + chunk
    assert [b["type"] for b in merged.content_blocks] == ["text", "tool_call"]
    assert merged.tool_calls[0]["args"] == {"x": 3}
