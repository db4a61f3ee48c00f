"""``LlamaVision``: Llama 3.2 11B Vision as a LlamaIndex function-calling LLM.

This module only translates LlamaIndex types to :mod:`llamavision.messages` and back; every
wire detail lives in the core's provider codecs.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from llama_index.core.base.llms.generic_utils import (
    achat_to_completion_decorator,
    astream_chat_to_completion_decorator,
    chat_to_completion_decorator,
    stream_chat_to_completion_decorator,
)
from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    ChatResponseAsyncGen,
    ChatResponseGen,
    CompletionResponse,
    CompletionResponseAsyncGen,
    CompletionResponseGen,
    ImageBlock,
    LLMMetadata,
    MessageRole,
    TextBlock,
    ToolCallBlock,
)
from llama_index.core.bridge.pydantic import Field, PrivateAttr, model_validator
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.llms.function_calling import FunctionCallingLLM
from llama_index.core.llms.llm import ToolSelection
from llama_index.core.llms.utils import parse_partial_json
from typing_extensions import Self

from llamavision import messages as core
from llamavision.client import LlamaVisionClient
from llamavision.images import image_source
from llamavision.providers import PROVIDERS
from llamavision.settings import LlamaVisionSettings

if TYPE_CHECKING:
    from llama_index.core.tools.types import BaseTool

_ROLES: dict[str, core.Role] = {
    "system": "system",
    "developer": "system",
    "user": "user",
    "assistant": "assistant",
    "model": "assistant",
    "chatbot": "assistant",
    "tool": "tool",
    "function": "tool",
}


def image_from_block(block: ImageBlock) -> Any:
    """Return a core image source for an ``ImageBlock``.

    A bare URL is passed on (AI Gateway fetches it; for Cloudflare the core downloads it);
    inline bytes and paths go through LlamaIndex's own ``resolve_image``.
    """
    if block.url is not None and block.image is None and block.path is None:
        return image_source(url=str(block.url))
    return image_source(data=block.resolve_image().read())


def to_core_message(message: ChatMessage) -> core.Message:
    """Translate a LlamaIndex ``ChatMessage`` into the neutral model.

    Raises:
        ValueError: the role or a block type is not supported.

    """
    role = _ROLES.get(str(message.role.value if hasattr(message.role, "value") else message.role))
    if role is None:
        raise ValueError(f"LlamaVision cannot send a message with role {message.role!r}.")
    if role == "tool":
        kwargs = message.additional_kwargs
        call_id = kwargs.get("tool_call_id") or kwargs.get("tool_id") or ""
        return core.Message.tool(str(call_id), message.content or "", kwargs.get("name"))
    parts: list[core.Part] = []
    for block in message.blocks:
        if isinstance(block, TextBlock):
            parts.append(core.Text(block.text))
        elif isinstance(block, ImageBlock):
            parts.append(core.Image(image_from_block(block)))
        elif isinstance(block, ToolCallBlock):
            args = block.tool_kwargs
            arguments = args if isinstance(args, dict) else json.loads(args or "{}")
            parts.append(core.ToolCall(block.tool_call_id or "", block.tool_name, arguments))
        else:
            raise ValueError(
                f"LlamaVision cannot send a {type(block).__name__}: Llama 3.2 Vision takes "
                "text and one image."
            )
    has_blocks = any(isinstance(p, core.ToolCall) for p in parts)
    for call in () if has_blocks else message.additional_kwargs.get("tool_calls") or ():
        # OpenAI-style history (our own messages carry both: the blocks are what counts)
        fn = call["function"] if isinstance(call, dict) else call.function
        fn = fn if isinstance(fn, dict) else fn.model_dump()
        call_id = call["id"] if isinstance(call, dict) else call.id
        parts.append(core.ToolCall(call_id, fn["name"], json.loads(fn["arguments"] or "{}")))
    return core.Message(role, tuple(parts))


def to_chat_message(
    text: str, calls: Sequence[core.ToolCall] | Sequence[core.ToolCallChunk]
) -> ChatMessage:
    """Build the assistant ``ChatMessage`` for an answer (tool calls as ``ToolCallBlock``).

    An answer without text has no text block when it calls tools (as LlamaIndex's own
    integrations do), and an empty one otherwise: its ``content`` is ``""``, never ``None``.
    Calls still streaming in (``ToolCallChunk``) carry their arguments as received so far, a
    JSON string that may be cut, as LlamaIndex's OpenAI integration streams them. The same
    calls are listed OpenAI-style under ``additional_kwargs["tool_calls"]``, where LlamaIndex's
    streaming structured output looks for them.
    """
    blocks: list[Any] = [TextBlock(text=text)] if text or not calls else []
    listed = []
    for c in calls:
        name = c.name or ""
        blocks.append(ToolCallBlock(tool_call_id=c.id, tool_name=name, tool_kwargs=c.arguments))
        arguments = c.arguments if isinstance(c.arguments, str) else json.dumps(c.arguments)
        listed.append(
            {"id": c.id, "type": "function", "function": {"name": name, "arguments": arguments}}
        )
    extra = {"tool_calls": listed} if listed else {}
    return ChatMessage(role=MessageRole.ASSISTANT, blocks=blocks, additional_kwargs=extra)


def _answer_kwargs(result: core.ChatResult | core.StreamAccumulator) -> dict[str, Any]:
    """Return the metadata and token counts LlamaIndex users find in ``additional_kwargs``."""
    usage = dataclasses.asdict(result.usage) if result.usage is not None else {}
    return {**core.result_metadata(result), **usage}


def _raw(reply: Any, usage: core.Usage | None) -> dict[str, Any]:
    """Return ``raw`` as LlamaIndex's handlers read it: a dict with OpenAI-style ``usage``.

    ``TokenCountingHandler`` and the instrumentation read ``raw["usage"]``; the provider's
    reply (a Workers AI envelope keeps its usage under ``result``) is kept around it.
    """
    raw = dict(reply) if isinstance(reply, Mapping) else {}
    if usage is not None:
        raw["usage"] = dataclasses.asdict(usage)
    return raw


def to_chat_response(result: core.ChatResult) -> ChatResponse:
    """Translate a complete answer into a ``ChatResponse`` (usage and cost in kwargs)."""
    return ChatResponse(
        message=to_chat_message(result.text, result.tool_calls),
        raw=_raw(result.raw, result.usage),
        additional_kwargs=_answer_kwargs(result),
    )


class WithoutSecrets:
    """LlamaIndex serialisation (``to_dict``, ``to_json``, ``dict``) without credentials.

    As LlamaIndex's own ``OpenAI`` class does, a serialised model carries no secret; rebuilt
    with ``from_dict``/``from_json``, it reads its credentials from the environment again.
    """

    def dict(self, **kwargs: Any) -> dict[str, Any]:
        """Return the model's fields as LlamaIndex serialises them, credentials left out."""
        exclude = kwargs.get("exclude") or set()
        if isinstance(exclude, Mapping):
            kwargs["exclude"] = {
                **exclude,
                **dict.fromkeys(LlamaVisionSettings.SECRET_FIELDS, True),
            }
        else:
            kwargs["exclude"] = set(exclude) | LlamaVisionSettings.SECRET_FIELDS
        return super().dict(**kwargs)  # type: ignore[misc,no-any-return]


class LlamaVision(WithoutSecrets, LlamaVisionSettings, FunctionCallingLLM):
    """Llama 3.2 11B Vision Instruct on AI Gateway or Cloudflare Workers AI.

    Takes ``ChatMessage``s with ``TextBlock`` and ``ImageBlock`` (url, path, bytes or base64)
    and calls tools, so it works with ``FunctionAgent``, ``ReActAgent``, structured
    prediction and chat engines.

    Examples:
        ``pip install "llamavision[llamaindex]"`` and set ``AIGATEWAY_API_KEY`` (or
        ``CLOUDFLARE_ACCOUNT_ID`` and ``CLOUDFLARE_API_TOKEN`` with ``provider="cloudflare"``).

        ```python
        from llama_index.core.llms import ChatMessage, ImageBlock, TextBlock
        from llamaindex_llamavision import LlamaVision

        llm = LlamaVision(temperature=0.2)
        message = ChatMessage(role="user", blocks=[
            ImageBlock(path="photo.jpg"), TextBlock(text="What is in this photo?"),
        ])
        print(llm.chat([message]))
        ```

    """

    model: str | None = Field(
        default=None, description="Model id; None means the provider's Llama 3.2 11B Vision."
    )
    additional_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="Extra body parameters sent to the provider as is."
    )

    _client: LlamaVisionClient = PrivateAttr()

    @model_validator(mode="after")
    def _build_client(self) -> Self:
        self._client = self.build_client(self.model)
        if self.model is None:
            self.model = self._client.model
        return self

    @classmethod
    def class_name(cls) -> str:
        """Return the class name used in serialisation."""
        return "LlamaVision"

    @property
    def metadata(self) -> LLMMetadata:
        """Context window, output limit and capabilities of the model."""
        codec = PROVIDERS[self.provider]
        return LLMMetadata(
            context_window=codec.CONTEXT_WINDOW,
            num_output=self.max_tokens or codec.MAX_OUTPUT_TOKENS,
            is_chat_model=True,
            is_function_calling_model=True,
            model_name=str(self.model),
        )

    # ------------------------------------------------------------------ request building

    def _call_args(self, messages: Sequence[ChatMessage], kwargs: dict[str, Any]) -> dict[str, Any]:
        kwargs.pop("allow_parallel_tool_calls", None)
        return self.request_args(
            [to_core_message(m) for m in messages], extra=self.additional_kwargs, **kwargs
        )

    # ------------------------------------------------------------------ chat

    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        """Send the conversation and return the complete answer."""
        return to_chat_response(self._client.chat(**self._call_args(messages, kwargs)))

    @llm_chat_callback()
    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        """Async form of :meth:`chat`."""
        return to_chat_response(await self._client.achat(**self._call_args(messages, kwargs)))

    @llm_chat_callback()
    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        """Stream the answer: each response holds the text so far and the new ``delta``."""
        deltas = self._client.stream(**self._call_args(messages, kwargs))

        def gen() -> ChatResponseGen:
            streamed = _Streamed()
            for delta in deltas:
                yield streamed.response(delta)

        return gen()

    @llm_chat_callback()
    async def astream_chat(
        self, messages: Sequence[ChatMessage], **kwargs: Any
    ) -> ChatResponseAsyncGen:
        """Async form of :meth:`stream_chat`."""
        deltas = self._client.astream(**self._call_args(messages, kwargs))

        async def gen() -> ChatResponseAsyncGen:
            streamed = _Streamed()
            async for delta in deltas:
                yield streamed.response(delta)

        return gen()

    # ------------------------------------------------------------------ completion

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        """Complete a prompt (sent as one user message)."""
        return chat_to_completion_decorator(self.chat)(prompt, **kwargs)

    @llm_completion_callback()
    async def acomplete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponse:
        """Async form of :meth:`complete`."""
        return await achat_to_completion_decorator(self.achat)(prompt, **kwargs)

    @llm_completion_callback()
    def stream_complete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponseGen:
        """Stream the completion of a prompt."""
        return stream_chat_to_completion_decorator(self.stream_chat)(prompt, **kwargs)

    @llm_completion_callback()
    async def astream_complete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponseAsyncGen:
        """Async form of :meth:`stream_complete`."""
        return await astream_chat_to_completion_decorator(self.astream_chat)(prompt, **kwargs)

    # ------------------------------------------------------------------ tools

    def _prepare_chat_with_tools(
        self,
        tools: Sequence[BaseTool],
        user_msg: str | ChatMessage | None = None,
        chat_history: list[ChatMessage] | None = None,
        verbose: bool = False,
        allow_parallel_tool_calls: bool = False,
        tool_required: bool = False,
        **kwargs: Any,
    ) -> dict[str, Any]:
        messages = list(chat_history or [])
        if user_msg is not None:
            if isinstance(user_msg, str):
                user_msg = ChatMessage(role=MessageRole.USER, content=user_msg)
            messages.append(user_msg)
        return {
            "messages": messages,
            "tools": [t.metadata.to_openai_tool() for t in tools],
            "tool_choice": "required" if tool_required else "auto",
            "allow_parallel_tool_calls": allow_parallel_tool_calls,
            **kwargs,
        }

    def _validate_chat_with_tools_response(
        self,
        response: ChatResponse,
        tools: Sequence[BaseTool],
        allow_parallel_tool_calls: bool = False,
        **kwargs: Any,
    ) -> ChatResponse:
        if not allow_parallel_tool_calls:
            calls = [b for b in response.message.blocks if isinstance(b, ToolCallBlock)]
            for extra in calls[1:]:
                response.message.blocks.remove(extra)
        return response

    def get_tool_calls_from_response(
        self,
        response: ChatResponse,
        error_on_no_tool_call: bool = True,
        **kwargs: Any,
    ) -> list[ToolSelection]:
        """Return the tool calls of a response as ``ToolSelection``s.

        Raises:
            ValueError: there is none and ``error_on_no_tool_call`` is set.

        """
        calls = [b for b in response.message.blocks if isinstance(b, ToolCallBlock)]
        if not calls and error_on_no_tool_call:
            raise ValueError(
                f"Expected at least one tool call, got none. Answer: {response.message.content!r}"
            )
        return [
            ToolSelection(
                tool_id=c.tool_call_id or "",
                tool_name=c.tool_name,
                tool_kwargs=_arguments(c.tool_kwargs),
            )
            for c in calls
        ]


def _arguments(kwargs: dict[str, Any] | str) -> dict[str, Any]:
    """Return a call's arguments as a dict; a string still streaming in is parsed partially."""
    if isinstance(kwargs, dict):
        return kwargs
    try:
        parsed = parse_partial_json(kwargs)
    except (ValueError, TypeError):
        return {}
    return parsed if isinstance(parsed, dict) else {}


class _Streamed:
    """Turns deltas into LlamaIndex's cumulative stream responses."""

    __slots__ = ("acc", "text")

    def __init__(self) -> None:
        self.acc = core.StreamAccumulator()
        self.text = ""  # kept as one string: LlamaIndex wants the text so far in every response

    def response(self, delta: core.StreamDelta) -> ChatResponse:
        self.acc.add(delta)
        self.text += delta.text
        if delta.finish_reason is not None:
            message = to_chat_message(self.text, self.acc.result().tool_calls)
        elif delta.tool_call_chunks:
            message = to_chat_message(self.text, self.acc.tool_calls_so_far())
        else:
            message = ChatMessage(role=MessageRole.ASSISTANT, content=self.text)
        extra = _answer_kwargs(self.acc) if delta.finish_reason is not None else {}
        raw = _raw(None, delta.usage)
        return ChatResponse(message=message, delta=delta.text, raw=raw, additional_kwargs=extra)
