"""``ChatLlamaVision``: Llama 3.2 11B Vision as a LangChain chat model.

This module only translates LangChain types to :mod:`llamavision.messages` and back; every
wire detail lives in the core's provider codecs.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from operator import itemgetter
from pathlib import Path
from typing import Any, Literal, cast

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import LangSmithParams, LanguageModelInput
from langchain_core.language_models.chat_models import (
    BaseChatModel,
    agenerate_from_stream,
    generate_from_stream,
)
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.messages.ai import UsageMetadata
from langchain_core.messages.content import create_image_block
from langchain_core.messages.tool import invalid_tool_call, tool_call, tool_call_chunk
from langchain_core.output_parsers import JsonOutputParser, PydanticOutputParser
from langchain_core.output_parsers.openai_tools import (
    JsonOutputKeyToolsParser,
    PydanticToolsParser,
)
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable, RunnableMap, RunnablePassthrough
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_json_schema, convert_to_openai_tool
from langchain_core.utils.pydantic import is_basemodel_subclass
from pydantic import ConfigDict, Field, PrivateAttr, model_validator
from typing_extensions import Self

from llamavision import messages as core
from llamavision.client import LlamaVisionClient
from llamavision.images import ImageOptions, ResolvedImage, image_source, resolve_image
from llamavision.providers import PROVIDERS
from llamavision.settings import LlamaVisionSettings

PROVIDER_TAG = "llamavision"


def to_core_message(message: BaseMessage) -> core.Message:
    """Translate one LangChain message into the neutral model.

    Images may be standard content blocks (``url`` or ``base64`` + ``mime_type``), the older
    ``source_type`` form or OpenAI-style ``image_url`` blocks; langchain-core's
    ``content_blocks`` normalises them, and the core resolves them for each provider.

    Raises:
        ValueError: the message type or a content block is not supported.

    """
    if isinstance(message, ToolMessage):
        return core.Message.tool(message.tool_call_id, message.text, message.name)
    if isinstance(message, SystemMessage):
        return core.Message.system(message.text)
    parts: list[core.Part] = []
    for block in cast("list[dict[str, Any]]", message.content_blocks):
        kind = block["type"]
        if kind == "text":
            parts.append(core.Text(block["text"]))
        elif kind == "image":
            parts.append(core.Image(_image(block)))
        elif kind == "non_standard" and isinstance(block["value"].get("image_url"), str):
            parts.append(core.Image(image_source(url=block["value"]["image_url"])))
        elif kind == "non_standard" and isinstance(message, AIMessage):
            continue  # provider-specific history (e.g. tool_use blocks); calls are in tool_calls
        elif kind in ("tool_call", "reasoning", "invalid_tool_call", "tool_call_chunk"):
            continue
        else:
            raise ValueError(
                f"ChatLlamaVision cannot send a {kind!r} content block: Llama 3.2 Vision takes "
                "text and one image."
            )
    if isinstance(message, AIMessage):
        calls = [core.ToolCall(c["id"] or "", c["name"], c["args"]) for c in message.tool_calls]
        return core.Message("assistant", (*parts, *calls))
    if isinstance(message, HumanMessage) or message.type in ("human", "user"):
        return core.Message("user", tuple(parts))
    raise ValueError(f"ChatLlamaVision cannot send a {message.type!r} message.")


def local_image_block(
    path: str | os.PathLike[str], options: ImageOptions | None = None
) -> dict[str, Any]:
    """Return a standard LangChain image block holding a local image file (base64 inline).

    The image is checked and prepared as every image is (EXIF-rotated, downscaled to what
    the model sees, re-encoded), so the block is no larger than what would be sent.

    The way to send a file from this machine: image ``url`` fields are only http(s) or
    ``data:`` URLs, never read from the disk.

    Raises:
        ImageError: the file is missing, too large, or not a JPEG, PNG, WebP or GIF.

    Example:
        .. code-block:: python

            from langchain_core.messages import HumanMessage
            from langchain_llamavision import ChatLlamaVision, local_image_block

            message = HumanMessage(content_blocks=[
                {"type": "text", "text": "What is in this photo?"},
                local_image_block("photo.jpg"),
            ])
            ChatLlamaVision().invoke([message])

    """
    image = resolve_image(Path(path), options)
    assert isinstance(image, ResolvedImage)  # a path always resolves locally
    return dict(create_image_block(base64=image.base64(), mime_type=image.mime_type))


def _image(block: Any) -> Any:
    if block.get("file_id"):
        raise ValueError("Image blocks with a file_id cannot be sent: pass a url or base64.")
    return image_source(url=block.get("url"), base64_data=block.get("base64"))


def _usage(usage: core.Usage | None) -> UsageMetadata | None:
    if usage is None:
        return None
    return UsageMetadata(
        input_tokens=usage.prompt_tokens,
        output_tokens=usage.completion_tokens,
        total_tokens=usage.total_tokens,
    )


def _metadata(result: core.ChatResult | core.StreamDelta) -> dict[str, Any]:
    return {**core.result_metadata(result), "model_provider": PROVIDER_TAG}


def to_ai_message(result: core.ChatResult) -> AIMessage:
    """Translate a complete answer into an ``AIMessage``."""
    return AIMessage(
        content=result.text,
        tool_calls=[tool_call(name=c.name, args=c.arguments, id=c.id) for c in result.tool_calls],
        invalid_tool_calls=[
            invalid_tool_call(name=c.name, args=c.arguments, id=c.id, error=c.error)
            for c in result.invalid_tool_calls
        ],
        usage_metadata=_usage(result.usage),
        response_metadata=_metadata(result),
        id=result.request_id,
    )


def to_chunk(delta: core.StreamDelta) -> AIMessageChunk:
    """Translate one stream delta into an ``AIMessageChunk`` (the last carries metadata)."""
    chunks = [
        # index 0 is the text's: with output_version="v1", LangChain merges content blocks by
        # index, and a call sharing the text's would be folded into the text block
        tool_call_chunk(name=c.name, args=c.arguments, id=c.id, index=c.index + 1)
        for c in delta.tool_call_chunks
    ]
    if delta.finish_reason is None:
        return AIMessageChunk(content=delta.text, tool_call_chunks=chunks)
    return AIMessageChunk(
        content=delta.text,
        id=delta.request_id,  # the merged message's id, as invoke() gives it, not lc_run--
        tool_call_chunks=chunks,
        usage_metadata=_usage(delta.usage),
        response_metadata=_metadata(delta),
        chunk_position="last",
    )


class ChatLlamaVision(LlamaVisionSettings, BaseChatModel):
    """Llama 3.2 11B Vision Instruct on AI Gateway or Cloudflare Workers AI.

    Setup:
        Install ``llamavision[langchain]`` and set ``AIGATEWAY_API_KEY`` (AI Gateway), or
        ``CLOUDFLARE_ACCOUNT_ID`` and ``CLOUDFLARE_API_TOKEN`` (Cloudflare).

    Key init args (completion):
        temperature, max_tokens, top_p, top_k, stop, seed, frequency_penalty,
        presence_penalty, repetition_penalty: sampling; a parameter the provider lacks is
        dropped with one warning.

    Key init args (client):
        provider: ``"aigateway"`` (default) or ``"cloudflare"``.
        model: the model id, if not the provider's id of Llama 3.2 11B Vision.
        api_key, account_id, base_url, timeout, max_retries, fallback_providers,
        accept_license, multi_image, http_client, http_async_client.

    Instantiate:
        .. code-block:: python

            from langchain_llamavision import ChatLlamaVision

            llm = ChatLlamaVision(provider="cloudflare", temperature=0.2, accept_license=True)

    Invoke with an image:
        .. code-block:: python

            from langchain_core.messages import HumanMessage

            message = HumanMessage(content=[
                {"type": "text", "text": "What is in this photo?"},
                {"type": "image", "url": "https://example.com/cat.jpg"},
            ])
            llm.invoke([message])

    Stream, tools and structured output work as with any LangChain chat model:
    ``llm.stream(...)``, ``llm.bind_tools([...])``, ``llm.with_structured_output(Schema)``.
    """

    model_name: str | None = Field(default=None, alias="model")
    """The model id; ``None`` means the provider's id of Llama 3.2 11B Vision."""
    model_kwargs: dict[str, Any] = Field(default_factory=dict)
    """Extra body parameters sent to the provider as they are."""
    streaming: bool = False
    """Stream even from ``invoke`` (callbacks then see every token)."""

    model_config = ConfigDict(populate_by_name=True, protected_namespaces=())

    _client: LlamaVisionClient = PrivateAttr()

    @model_validator(mode="after")
    def _build_client(self) -> Self:
        self._client = self.build_client(self.model_name)
        if self.model_name is None:
            self.model_name = self._client.model
        return self

    @property
    def _llm_type(self) -> str:
        return "llamavision-chat"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        params = self.generation_params()
        sampling = {k: getattr(params, k) for k in ("temperature", "max_tokens", "top_p", "top_k")}
        return {
            "provider": self.provider,
            "model_name": self.model_name,
            **{k: v for k, v in sampling.items() if v is not None},
        }

    @property
    def lc_secrets(self) -> dict[str, str]:
        """Secrets and where they come from."""
        codec = PROVIDERS[self.provider]
        gateway = next(c for c in PROVIDERS.values() if c.GATEWAY_TOKEN_ENV)
        return {"api_key": codec.KEY_ENV, "gateway_token": str(gateway.GATEWAY_TOKEN_ENV)}

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = LangSmithParams(
            ls_provider=PROVIDER_TAG,
            ls_model_name=str(kwargs.get("model") or self.model_name),
            ls_model_type="chat",
        )
        temperature = kwargs.get("temperature", self.temperature)
        if temperature is not None:
            params["ls_temperature"] = temperature
        max_tokens = kwargs.get("max_tokens", self.max_tokens)
        if max_tokens is not None:
            params["ls_max_tokens"] = max_tokens
        stop = stop or kwargs.get("stop") or self.stop
        if stop:
            params["ls_stop"] = stop
        return params

    # ------------------------------------------------------------------ request building

    def _call_args(
        self, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any]
    ) -> dict[str, Any]:
        if stop is not None:
            kwargs["stop"] = stop
        kwargs.pop("stream", None)
        return self.request_args(
            [to_core_message(m) for m in messages], extra=self.model_kwargs, **kwargs
        )

    # ------------------------------------------------------------------ generation

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        if self.streaming:
            return generate_from_stream(self._stream(messages, stop, run_manager, **kwargs))
        result = self._client.chat(**self._call_args(messages, stop, kwargs))
        return _chat_result(result)

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        if self.streaming:
            return await agenerate_from_stream(self._astream(messages, stop, run_manager, **kwargs))
        result = await self._client.achat(**self._call_args(messages, stop, kwargs))
        return _chat_result(result)

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        for delta in self._client.stream(**self._call_args(messages, stop, kwargs)):
            chunk = ChatGenerationChunk(message=to_chunk(delta))
            if run_manager is not None:
                run_manager.on_llm_new_token(delta.text, chunk=chunk)
            yield chunk

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        async for delta in self._client.astream(**self._call_args(messages, stop, kwargs)):
            chunk = ChatGenerationChunk(message=to_chunk(delta))
            if run_manager is not None:
                await run_manager.on_llm_new_token(delta.text, chunk=chunk)
            yield chunk

    # ------------------------------------------------------------------ tools and structure

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | BaseTool],
        *,
        tool_choice: str | bool | dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Bind tools (Pydantic models, functions, ``@tool``s or dicts) to the model.

        Args:
            tools: the tools, converted with LangChain's ``convert_to_openai_tool``.
            tool_choice: ``"auto"``, ``"none"``, ``"any"``/``"required"``, ``True``, a tool
                name, or ``{"type": "function", "function": {"name": ...}}``.
            **kwargs: more arguments bound to every call.

        """
        formatted = [convert_to_openai_tool(t) for t in tools]
        if tool_choice is not None and tool_choice is not False:
            kwargs["tool_choice"] = tool_choice
        return super().bind(tools=formatted, **kwargs)

    def with_structured_output(
        self,
        schema: dict[str, Any] | type | None = None,
        *,
        method: Literal["function_calling", "json_mode", "json_schema"] = "function_calling",
        include_raw: bool = False,
        strict: bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, dict[str, Any] | Any]:
        """Return a runnable whose output follows ``schema``.

        Args:
            schema: a Pydantic model, a TypedDict, a JSON schema or an OpenAI tool dict.
            method: ``"function_calling"`` (a forced tool call), ``"json_mode"`` (JSON
                object; the prompt must describe the shape) or ``"json_schema"``
                (schema-constrained output). Workers AI has no JSON mode, so when it may
                answer (``provider`` or ``fallback_providers``) both JSON methods use
                function calling.
            include_raw: also return the raw message and any parsing error.
            strict: with ``"json_schema"``, ask the provider to follow the schema strictly.
            **kwargs: unsupported; raises if given.

        """
        if kwargs:
            raise ValueError(f"Unsupported arguments: {sorted(kwargs)}")
        if schema is None and method != "json_mode":
            raise ValueError(f"method={method!r} needs a schema.")
        providers = [self.provider, *self.fallback_providers]
        if schema is not None and not all(PROVIDERS[p].JSON_MODE for p in providers):
            method = "function_calling"  # every provider that may answer must take it
        target: Any = schema
        is_pydantic = isinstance(target, type) and is_basemodel_subclass(target)
        fmt = {"kwargs": {"method": method}, "schema": schema}
        llm: Runnable[Any, Any]
        parser: Runnable[Any, Any]
        if method == "function_calling":
            name = convert_to_openai_tool(target)["function"]["name"]
            llm = self.bind_tools([target], tool_choice=name, ls_structured_output_format=fmt)
            parser = (
                PydanticToolsParser(tools=[target], first_tool_only=True)
                if is_pydantic
                else JsonOutputKeyToolsParser(key_name=name, first_tool_only=True)
            )
        else:
            response_format: Any = "json_object"
            if method == "json_schema":
                json_schema = convert_to_json_schema(target)
                response_format = {
                    "name": json_schema.get("title", "output"),
                    "schema": json_schema,
                }
                if strict is not None:
                    response_format["strict"] = strict
            llm = self.bind(response_format=response_format, ls_structured_output_format=fmt)
            parser = (
                PydanticOutputParser(pydantic_object=target) if is_pydantic else JsonOutputParser()
            )
        if not include_raw:
            return llm | parser
        parsed = RunnablePassthrough.assign(
            parsed=itemgetter("raw") | parser, parsing_error=lambda _: None
        ).with_fallbacks(
            [RunnablePassthrough.assign(parsed=lambda _: None)],
            exception_key="parsing_error",
        )
        return RunnableMap(raw=llm) | parsed


def _chat_result(result: core.ChatResult) -> ChatResult:
    message = to_ai_message(result)
    return ChatResult(
        generations=[
            ChatGeneration(message=message, generation_info={"finish_reason": result.finish_reason})
        ],
        llm_output={"model_name": result.model, "provider": result.provider},
    )
