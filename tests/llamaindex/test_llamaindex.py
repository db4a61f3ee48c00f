"""LlamaVision and LlamaVisionMultiModal against the emulator, both providers, sync and async."""

from __future__ import annotations

import asyncio
import base64
import inspect
import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
from llama_index.core.base.llms.base import BaseLLM
from llama_index.core.base.llms.types import ToolCallBlock
from llama_index.core.llms import ChatMessage, ImageBlock, TextBlock
from llama_index.core.llms.function_calling import FunctionCallingLLM
from llama_index.core.multi_modal_llms import MultiModalLLM
from llama_index.core.schema import ImageDocument
from llama_index.core.tools import FunctionTool
from pydantic import BaseModel

from llamaindex_llamavision import LlamaVision, LlamaVisionMultiModal
from llamaindex_llamavision.base import to_core_message
from llamavision import (
    ConfigurationError,
    ImageError,
    ImageOptions,
    LicenseAgreementRequiredError,
    LlamaVisionClient,
    StreamInterruptedError,
)
from llamavision import messages as core
from llamavision.emulator import Emulator, EmulatorServer, Fault, Reply
from tests.colour_embedding import ColourEmbedding
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
def provider(request: pytest.FixtureRequest, emulator: Emulator) -> str:
    return str(request.param)


@pytest.fixture
def llm(provider: str) -> LlamaVision:
    # The emulator hosts its images on loopback: downloads from there need the opt-in.
    return LlamaVision(
        provider=provider, accept_license=True, max_retries=1, image_options=LOOPBACK
    )


@pytest.fixture
def mm(provider: str) -> LlamaVisionMultiModal:
    return LlamaVisionMultiModal(
        provider=provider, accept_license=True, max_retries=1, image_options=LOOPBACK
    )


def get_weather(city: str) -> str:
    """Get the current weather in a city."""
    return f"It is 18C and sunny in {city}."


WEATHER = FunctionTool.from_defaults(get_weather)


def red_square_message(block: ImageBlock) -> list[ChatMessage]:
    return [ChatMessage(role="user", blocks=[block, TextBlock(text="What shape is this?")])]


# --------------------------------------------------------------------------- base classes


def test_class_hierarchy_and_metadata(emulator: Emulator) -> None:
    names = [b.__name__ for b in LlamaVision.__mro__]
    assert BaseLLM.__name__ in names and FunctionCallingLLM.__name__ in names
    assert MultiModalLLM.__name__ in [b.__name__ for b in LlamaVisionMultiModal.__mro__]
    assert "multi" in LlamaVisionMultiModal.class_name()
    meta = LlamaVision().metadata
    assert (meta.context_window, meta.num_output) == (128_000, 4_096)
    assert meta.is_chat_model and meta.is_function_calling_model
    assert LlamaVision(provider="cloudflare").metadata.context_window == 131_000
    mm_meta = LlamaVisionMultiModal(max_tokens=500).metadata
    assert mm_meta.num_output == 500 and mm_meta.num_input_files == 1


def test_key_comes_from_the_environment_and_stays_secret(emulator: Emulator) -> None:
    llm = LlamaVision()
    assert llm.api_key is not None and llm.api_key.get_secret_value() == "emulator-key"
    assert "emulator-key" not in repr(llm) and "emulator-key" not in str(llm.to_dict())
    assert "emulator-key" not in str(LlamaVisionMultiModal().to_payload())


# --------------------------------------------------------------------------- chat and images


@pytest.mark.parametrize("form", ["path", "bytes", "base64", "url"])
def test_image_blocks_of_every_kind(
    llm: LlamaVision, emulator: Emulator, emulator_server: EmulatorServer, form: str
) -> None:
    data = (SAMPLES / "red-square.png").read_bytes()
    block = {
        "path": lambda: ImageBlock(path=SAMPLES / "red-square.png"),
        "bytes": lambda: ImageBlock(image=data),
        "base64": lambda: ImageBlock(image=base64.b64encode(data), image_mimetype="image/png"),
        "url": lambda: ImageBlock(url=emulator_server.url + emulator.host_image("red.png", data)),
    }[form]()
    response = llm.chat(red_square_message(block))
    if form == "url" and llm.provider == "aigateway":
        assert "does not fetch" in response.message.content  # passed through to the provider
    else:
        assert "640x480 PNG image, mostly white and red" in response.message.content
    assert response.additional_kwargs["total_tokens"] > 0 and response.additional_kwargs["cost"]


def test_stream_chat_is_cumulative_with_usage_at_the_end(llm: LlamaVision) -> None:
    responses = list(llm.stream_chat([ChatMessage(role="user", content="Tell me something")]))
    assert len(responses) > 5
    assert "".join(r.delta or "" for r in responses) == responses[-1].message.content
    assert responses[2].message.content.startswith(responses[1].message.content)
    assert responses[-1].additional_kwargs["finish_reason"] == "stop"
    assert responses[-1].additional_kwargs["total_tokens"] > 0


async def test_async_chat_and_stream(llm: LlamaVision) -> None:
    response = await llm.achat([ChatMessage(role="user", content="hello")])
    assert "'hello'" in response.message.content
    stream = await llm.astream_chat([ChatMessage(role="user", content="hello again")])
    responses = [r async for r in stream]
    assert "'hello again'" in responses[-1].message.content


def test_completion_forms(llm: LlamaVision) -> None:
    assert "'Say hi'" in llm.complete("Say hi").text
    pieces = list(llm.stream_complete("Say hi"))
    assert "".join(p.delta or "" for p in pieces) == pieces[-1].text

    async def run() -> tuple[str, str]:
        done = await llm.acomplete("async hi")
        last = [p async for p in await llm.astream_complete("async stream")][-1]
        return done.text, last.text

    done, streamed = asyncio.run(run())
    assert "'async hi'" in done and "'async stream'" in streamed


def test_multi_turn_and_system_prompt(llm: LlamaVision, emulator: Emulator) -> None:
    llm.chat(
        [
            ChatMessage(role="system", content="Be terse."),
            ChatMessage(role="user", content="Hi"),
            ChatMessage(role="assistant", content="Hello."),
            ChatMessage(role="user", content="Bye"),
        ]
    )
    assert [m["role"] for m in emulator.requests[-1].messages] == [
        "system",
        "user",
        "assistant",
        "user",
    ]


# --------------------------------------------------------------------------- tools


def test_chat_with_tools_round_trip(llm: LlamaVision) -> None:
    response = llm.chat_with_tools([WEATHER], "What is the weather in Oslo?")
    (selection,) = llm.get_tool_calls_from_response(response)
    assert selection.tool_name == "get_weather" and set(selection.tool_kwargs) == {"city"}
    result = WEATHER(**selection.tool_kwargs)
    history = [
        ChatMessage(role="user", content="What is the weather in Oslo?"),
        response.message,
        ChatMessage(
            role="tool", content=str(result), additional_kwargs={"tool_call_id": selection.tool_id}
        ),
    ]
    final = llm.chat_with_tools([WEATHER], chat_history=history)
    assert "18C and sunny" in final.message.content
    assert llm.get_tool_calls_from_response(final, error_on_no_tool_call=False) == []
    with pytest.raises(ValueError, match="Expected at least one tool call"):
        llm.get_tool_calls_from_response(final)


def test_streamed_and_async_tool_calls(llm: LlamaVision) -> None:
    *_, last = llm.stream_chat_with_tools([WEATHER], "weather in Lima?")
    assert llm.get_tool_calls_from_response(last)[0].tool_name == "get_weather"

    async def run() -> list[Any]:
        response = await llm.achat_with_tools([WEATHER], "weather in Quito?")
        stream = await llm.astream_chat_with_tools([WEATHER], "weather in Quito?")
        streamed = [r async for r in stream]
        return [llm.get_tool_calls_from_response(r)[0] for r in (response, streamed[-1])]

    assert [s.tool_name for s in asyncio.run(run())] == ["get_weather", "get_weather"]


def test_parallel_tool_calls_only_when_allowed(llm: LlamaVision, emulator: Emulator) -> None:
    two = Reply(tool_calls=[("get_weather", {"city": "A"}), ("get_weather", {"city": "B"})])
    emulator.script(two, two)
    single = llm.chat_with_tools([WEATHER], "weather?")
    assert len(llm.get_tool_calls_from_response(single)) == 1
    both = llm.chat_with_tools([WEATHER], "weather?", allow_parallel_tool_calls=True)
    assert len(llm.get_tool_calls_from_response(both)) == 2


class Colour(BaseModel):
    """The main colour of an image."""

    name: str
    confidence: float


def test_structured_predict_and_structured_llm(llm: LlamaVision) -> None:
    from llama_index.core.prompts import PromptTemplate

    colour = llm.structured_predict(
        Colour, PromptTemplate("Name the colour of {thing}."), thing="a tomato"
    )
    assert isinstance(colour, Colour)
    sllm = llm.as_structured_llm(Colour)
    response = sllm.chat([ChatMessage(role="user", content="Which colour? Use Colour.")])
    assert isinstance(response.raw, Colour)


def test_function_agent_completes_a_tool_task(llm: LlamaVision) -> None:
    from llama_index.core.agent.workflow import FunctionAgent, ToolCallResult

    agent = FunctionAgent(tools=[WEATHER], llm=llm)

    async def run() -> tuple[str, list[Any]]:
        handler = agent.run(user_msg="What is the weather in Paris?")
        events = [e async for e in handler.stream_events()]
        return str(await handler), events

    answer, events = asyncio.run(run())
    assert "18C and sunny" in answer
    results = [e for e in events if isinstance(e, ToolCallResult)]
    assert results and results[0].tool_name == "get_weather"


def test_react_agent_runs(llm: LlamaVision, emulator: Emulator) -> None:
    from llama_index.core.agent.workflow import ReActAgent

    emulator.script(
        Reply(
            text='Thought: I need the weather.\nAction: get_weather\nAction Input: {"city": "Rome"}'
        ),
        Reply(text="Thought: I can answer.\nAnswer: It is 18C and sunny in Rome."),
    )
    agent = ReActAgent(tools=[WEATHER], llm=llm)

    async def run() -> str:
        return str(await agent.run(user_msg="What is the weather in Rome?"))

    assert "18C and sunny in Rome" in asyncio.run(run())
    assert "18C and sunny" in emulator.requests[-1].messages[-1]["text"]  # the observation


def test_instrumentation_sees_every_token(llm: LlamaVision) -> None:
    from llama_index.core.instrumentation import get_dispatcher
    from llama_index.core.instrumentation.event_handlers import BaseEventHandler
    from llama_index.core.instrumentation.events.llm import (
        LLMChatEndEvent,
        LLMChatInProgressEvent,
        LLMChatStartEvent,
    )

    seen: list[Any] = []

    class Collect(BaseEventHandler):
        def handle(self, event: Any, **kwargs: Any) -> None:
            seen.append(event)

    dispatcher = get_dispatcher()
    handler = Collect()
    dispatcher.add_event_handler(handler)
    try:
        responses = list(llm.stream_chat([ChatMessage(role="user", content="count")]))
    finally:
        dispatcher.event_handlers.remove(handler)
    kinds = [type(e) for e in seen]
    assert kinds[0] is LLMChatStartEvent and kinds[-1] is LLMChatEndEvent
    assert kinds.count(LLMChatInProgressEvent) == len(responses)
    assert "api_key" not in str(seen[0].model_dict) and "emulator-key" not in str(seen)


# --------------------------------------------------------------------------- errors


def test_typed_errors_surface_unchanged(emulator: Emulator) -> None:
    with pytest.raises(LicenseAgreementRequiredError):
        LlamaVision(provider="cloudflare").chat([ChatMessage(role="user", content="hi")])
    emulator.fail(Fault("cut", after_events=4))
    with pytest.raises(StreamInterruptedError):
        list(LlamaVision().stream_chat([ChatMessage(role="user", content="a long story")]))
    two = [
        ChatMessage(
            role="user",
            blocks=[
                ImageBlock(path=SAMPLES / "sunset.jpg"),
                ImageBlock(path=SAMPLES / "blue-circle.jpg"),
                TextBlock(text="compare"),
            ],
        )
    ]
    with pytest.raises(ImageError, match="multi_image"):
        LlamaVision().chat(two)
    assert "JPEG image" in LlamaVision(multi_image="grid").chat(two).message.content


# --------------------------------------------------------------------------- MultiModalLLM


def image_documents() -> dict[str, ImageDocument]:
    data = (SAMPLES / "sunset.jpg").read_bytes()
    return {
        "path": ImageDocument(image_path=str(SAMPLES / "sunset.jpg")),
        "base64": ImageDocument(image=base64.b64encode(data).decode(), image_mimetype="image/jpeg"),
    }


@pytest.mark.parametrize("form", ["path", "base64"])
def test_multimodal_complete_with_image_documents(mm: LlamaVisionMultiModal, form: str) -> None:
    doc = image_documents()[form]
    assert "900x600 JPEG image" in mm.complete("Describe it.", image_documents=[doc]).text
    last = list(mm.stream_complete("Describe it.", image_documents=[doc]))[-1]
    assert "900x600 JPEG image" in last.text and last.additional_kwargs["cost"] > 0


def test_multimodal_url_documents(
    mm: LlamaVisionMultiModal, emulator: Emulator, emulator_server: EmulatorServer
) -> None:
    url = emulator_server.url + emulator.host_image(
        "sunset.jpg", (SAMPLES / "sunset.jpg").read_bytes(), "image/jpeg"
    )
    text = mm.complete("What?", image_documents=[ImageDocument(image_url=url)]).text
    assert ("does not fetch" in text) if mm.provider == "aigateway" else ("900x600" in text)


async def test_multimodal_async_and_chat(mm: LlamaVisionMultiModal) -> None:
    doc = image_documents()["path"]
    assert "900x600" in (await mm.acomplete("What?", image_documents=[doc])).text
    pieces = [p async for p in await mm.astream_complete("What?", image_documents=[doc])]
    assert "900x600" in pieces[-1].text
    message = ChatMessage(
        role="user", blocks=[ImageBlock(path=SAMPLES / "red-square.png"), TextBlock(text="What?")]
    )
    assert "640x480" in (await mm.achat([message])).message.content
    assert "640x480" in mm.chat([message]).message.content
    assert "640x480" in list(mm.stream_chat([message]))[-1].message.content
    streamed = [r async for r in await mm.astream_chat([message])]
    assert "640x480" in streamed[-1].message.content


def test_multimodal_query_engine_over_an_image_index(
    mm: LlamaVisionMultiModal, emulator: Emulator
) -> None:
    from llama_index.core.indices import MultiModalVectorStoreIndex
    from llama_index.core.schema import ImageNode, TextNode

    embed = ColourEmbedding()
    nodes = [
        ImageNode(image_path=str(SAMPLES / "red-square.png"), text="a red square"),
        ImageNode(image_path=str(SAMPLES / "blue-circle.jpg"), text="a blue circle"),
        ImageNode(image_path=str(SAMPLES / "sunset.jpg"), text="an orange sunset"),
        TextNode(text="Notes: the sunset photo was taken on the coast."),
    ]
    index = MultiModalVectorStoreIndex(nodes, embed_model=embed, image_embed_model=embed)
    engine = index.as_query_engine(llm=mm, similarity_top_k=1, image_similarity_top_k=1)
    response = engine.query("Which picture shows a blue shape?")
    assert "800x600 JPEG image, mostly white and blue" in str(response)
    assert response.metadata is not None and len(response.metadata["image_nodes"]) == 1
    assert "Which picture shows a blue shape?" in emulator.requests[-1].messages[-1]["text"]


def test_current_multimodal_engine_with_the_chat_llm(llm: LlamaVision, emulator: Emulator) -> None:
    from llama_index.core.indices import MultiModalVectorStoreIndex
    from llama_index.core.query_engine import RetrieverQueryEngine
    from llama_index.core.schema import ImageNode

    if "multimodal" not in inspect.signature(RetrieverQueryEngine.from_args).parameters:
        pytest.skip("multimodal=True engines arrived in llama-index-core 0.14.23")

    embed = ColourEmbedding()
    nodes = [
        ImageNode(image_path=str(SAMPLES / "red-square.png"), text="a red square"),
        ImageNode(image_path=str(SAMPLES / "blue-circle.jpg"), text="a blue circle"),
    ]
    index = MultiModalVectorStoreIndex(nodes, embed_model=embed, image_embed_model=embed)
    retriever = index.as_retriever(similarity_top_k=1, image_similarity_top_k=1)
    engine = RetrieverQueryEngine.from_args(retriever=retriever, llm=llm, multimodal=True)
    response = engine.query("Show me the red one.")
    assert "640x480 PNG image, mostly white and red" in str(response)
    assert len(emulator.requests[-1].images) == 1


# --------------------------------------------------------------------------- real servers' quirks


@pytest.mark.parametrize(
    "events",
    [LLAMA_CPP_PYTHON_TOOL_STREAM, LLAMA_SERVER_TOOL_STREAM],
    ids=["llama-cpp-python", "llama-server"],
)
def test_streamed_tool_calls_are_right_whatever_the_server_repeats(
    events: list[dict[str, Any]],
) -> None:
    llm = LlamaVision(**http_clients(events))
    *_, last = llm.stream_chat_with_tools([WEATHER], "Weather in Oslo?")
    [call] = llm.get_tool_calls_from_response(last)
    assert (call.tool_id, call.tool_name, call.tool_kwargs) == (
        TOOL_ID,
        "get_weather",
        {"city": "Oslo"},
    )


def test_numeric_tokens_reach_llamaindex_as_text() -> None:
    llm = LlamaVision(**http_clients(NUMERIC_TOKEN_STREAM))
    responses = list(llm.stream_chat([ChatMessage(role="user", content="Answer?")]))
    assert all(isinstance(r.delta, str) for r in responses)
    assert responses[-1].message.content == "The answer is 42 and 0."
    assert "".join(r.delta or "" for r in responses) == "The answer is 42 and 0."


def test_an_answer_cut_at_the_output_limit_says_length(emulator: Emulator) -> None:
    llm = LlamaVision(provider="cloudflare", accept_license=True, max_tokens=5)
    message = [ChatMessage(role="user", content="Describe everything.")]
    assert llm.chat(message).additional_kwargs["finish_reason"] == "length"
    *_, last = llm.stream_chat(message)
    assert last.additional_kwargs["finish_reason"] == "length"


def test_concurrent_calls_share_one_429_pause(emulator: Emulator) -> None:
    emulator.fail(Fault("status", status=429, retry_after="1", lasting=1.0))
    llm = LlamaVision(max_concurrency=1)

    async def run() -> list[Any]:
        asks = [llm.acomplete(f"question {i}") for i in range(4)]
        return list(await asyncio.gather(*asks))

    assert len(asyncio.run(run())) == 4
    assert emulator.counters["requests"] == 5


# --------------------------------------------------------------------------- callbacks


@pytest.mark.parametrize("provider", ["aigateway", "cloudflare"])
def test_token_counting_reads_the_real_usage_streamed_or_not(
    emulator: Emulator, provider: str
) -> None:
    from llama_index.core.callbacks import CallbackManager, TokenCountingHandler

    counter = TokenCountingHandler(tokenizer=lambda text: text.split())
    llm = LlamaVision(
        provider=provider, accept_license=True, callback_manager=CallbackManager([counter])
    )
    message = [ChatMessage(role="user", content="Tell me about the sea, in a few words.")]
    answer = llm.chat(message)
    *_, last = llm.stream_chat(message)
    usage = answer.additional_kwargs, last.additional_kwargs
    assert all(u["prompt_tokens"] > 0 and u["completion_tokens"] > 0 for u in usage)
    (chat, stream) = counter.llm_token_counts
    assert (chat.prompt_token_count, chat.completion_token_count) == (
        usage[0]["prompt_tokens"], usage[0]["completion_tokens"],
    )  # fmt: skip
    assert (stream.prompt_token_count, stream.completion_token_count) == (
        usage[1]["prompt_tokens"], usage[1]["completion_tokens"],
    )  # fmt: skip


def test_the_multimodal_llm_acquires_its_rate_limiter_before_each_call(emulator: Emulator) -> None:
    class Counting:
        calls = 0

        def acquire(self) -> None:
            self.calls += 1

        async def async_acquire(self) -> None:
            self.calls += 1

    limiter = Counting()
    mm = LlamaVisionMultiModal(rate_limiter=limiter)
    image = ImageDocument(image_path=str(SAMPLES / "sunset.jpg"))
    assert mm.complete("Describe it.", image_documents=[image]).text
    from llama_index.core.llms import callbacks

    # LlamaIndex's decorators acquire it since some 0.14 release (0.14.5 does not): as BaseLLM.
    acquires = "rate_limiter" in inspect.getsource(callbacks)
    assert limiter.calls == (1 if acquires else 0)


def test_streamed_structured_output_is_the_object_as_with_openai_like(
    llm: LlamaVision, provider: str
) -> None:
    from llama_index.core.prompts import PromptTemplate
    from llama_index.llms.openai_like import OpenAILike

    template = PromptTemplate("Name the colour of {thing}.")
    *_, last = llm.stream_structured_predict(Colour, template, thing="a tomato")
    assert isinstance(last, Colour) and last.name
    *_, response = llm.as_structured_llm(Colour).stream_chat(
        [ChatMessage(role="user", content="Which colour? Use Colour.")]
    )
    assert isinstance(response.raw, Colour) and response.raw.name

    async def astream() -> Any:
        parts = await llm.astream_structured_predict(Colour, template, thing="a tomato")
        return [p async for p in parts][-1]

    assert isinstance(asyncio.run(astream()), Colour)
    if provider == "aigateway":  # the reference: LlamaIndex's OpenAI-compatible class
        reference = OpenAILike(
            model=str(llm.model),
            api_base=os.environ["AIGATEWAY_BASE_URL"],
            api_key=os.environ["AIGATEWAY_API_KEY"],
            is_chat_model=True,
            is_function_calling_model=True,
        )
        *_, theirs = reference.stream_structured_predict(Colour, template, thing="a tomato")
        assert type(theirs) is type(last) and theirs.model_dump().keys() == last.model_dump().keys()


def test_a_tool_call_streams_its_arguments_as_they_arrive(llm: LlamaVision) -> None:
    responses = list(llm.stream_chat_with_tools([WEATHER], "weather in Paris?"))
    calls = llm.get_tool_calls_from_response(responses[-1])
    assert [c.tool_name for c in calls] == ["get_weather"] and calls[0].tool_kwargs
    for r in responses:  # wherever a call shows, LlamaIndex's helpers find it
        if any(isinstance(b, ToolCallBlock) for b in r.message.blocks):
            assert r.message.additional_kwargs["tool_calls"]
    sent_back = to_core_message(responses[-1].message)  # as history: once, not twice
    assert len([p for p in sent_back.parts if isinstance(p, core.ToolCall)]) == 1


@pytest.mark.parametrize("cls", [LlamaVision, LlamaVisionMultiModal])
def test_serialised_models_leave_secrets_out_and_read_them_again(
    cls: type[LlamaVision], emulator: Emulator
) -> None:
    from llama_index.llms.openai_like import OpenAILike

    assert json.loads(OpenAILike(model="m", api_key="k", api_base="http://x").to_json())
    model = cls(api_key="sk-passed-by-hand", default_headers={"X-A": "secret-header"})
    text = model.to_json()  # as OpenAILike's: JSON, no secret in it
    assert "sk-passed" not in text and "secret-header" not in text and "class_name" in text
    assert json.dumps(model.to_dict()) and "api_key" not in model.to_dict()
    rebuilt = cls.from_dict(json.loads(text))
    assert rebuilt.api_key is not None
    assert rebuilt.api_key.get_secret_value() == os.environ["AIGATEWAY_API_KEY"]  # from the env
    masked = cls.model_validate_json(model.model_dump_json())  # the dump holds "**********"
    assert masked.api_key is not None and masked.api_key.get_secret_value() != "**********"
    args: dict[str, Any] = {"image_documents": []} if cls is LlamaVisionMultiModal else {}
    assert masked.complete("hi", **args).text  # the key is the environment's, not the mask


def test_a_masked_key_is_never_sent() -> None:
    with pytest.raises(ConfigurationError, match="mask"):
        LlamaVisionClient(api_key="**********")


def test_a_file_url_in_an_image_block_is_refused(llm: LlamaVision, emulator: Emulator) -> None:
    block = ImageBlock(url=(SAMPLES / "sunset.jpg").as_uri())
    with pytest.raises(ImageError, match=re.escape("ImageBlock(path=...)")):
        llm.chat(red_square_message(block))
    assert emulator.counters["received"] == 0


def test_a_query_engine_works_as_first_written(emulator: Emulator) -> None:
    from llama_index.core.indices import MultiModalVectorStoreIndex
    from llama_index.core.schema import ImageNode

    embed = ColourEmbedding()
    nodes = [
        ImageNode(image_path=str(SAMPLES / "red-square.png"), text="a red square"),
        ImageNode(image_path=str(SAMPLES / "blue-circle.jpg"), text="a blue circle"),
        ImageNode(image_path=str(SAMPLES / "sunset.jpg"), text="an orange sunset"),
    ]
    index = MultiModalVectorStoreIndex(nodes, embed_model=embed, image_embed_model=embed)
    engine = index.as_query_engine(llm=LlamaVisionMultiModal())  # the defaults: several images
    response = engine.query("Which picture shows a blue shape?")
    assert response.metadata is not None and len(response.metadata["image_nodes"]) > 1
    assert len(emulator.requests[-1].images) == 1  # composed into one labelled grid
    assert "synthetic answer" in str(response)
    strict = index.as_query_engine(llm=LlamaVisionMultiModal(multi_image="error"))
    with pytest.raises(ImageError, match="similarity_top_k=1 and image_similarity_top_k=1"):
        strict.query("Which picture shows a blue shape?")
