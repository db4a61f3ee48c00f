"""``LlamaVisionMultiModal``: the ``MultiModalLLM`` interface, for multimodal query engines.

It delegates to :class:`~llamaindex_llamavision.LlamaVision`; only ``image_documents``
(``ImageNode`` / ``ImageDocument`` / ``ImageBlock``) are translated here.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    ChatResponseAsyncGen,
    ChatResponseGen,
    CompletionResponse,
    CompletionResponseAsyncGen,
    CompletionResponseGen,
    ImageBlock,
    MessageRole,
    TextBlock,
)
from llama_index.core.bridge.pydantic import Field, PrivateAttr, model_validator
from llama_index.core.multi_modal_llms import MultiModalLLM, MultiModalLLMMetadata
from llama_index.core.schema import ImageNode
from typing_extensions import Self

from llamaindex_llamavision.base import LlamaVision, WithoutSecrets
from llamavision.settings import LlamaVisionSettings


def image_block(document: ImageNode | ImageBlock) -> ImageBlock:
    """Return an ``ImageBlock`` for an image document (base64 image, path or URL)."""
    if isinstance(document, ImageBlock):
        return document
    if document.image:
        return ImageBlock(image=document.image.encode(), image_mimetype=document.image_mimetype)
    if document.image_path:
        return ImageBlock(path=Path(document.image_path), image_mimetype=document.image_mimetype)
    if document.image_url:
        return ImageBlock(url=document.image_url, image_mimetype=document.image_mimetype)
    raise ValueError(f"Image document {document.node_id} has no image, image_path or image_url.")


class LlamaVisionMultiModal(WithoutSecrets, LlamaVisionSettings, MultiModalLLM):
    """Llama 3.2 11B Vision as a LlamaIndex ``MultiModalLLM`` (``image_documents`` style).

    Use it where LlamaIndex asks for a multi-modal LLM, e.g.
    ``MultiModalVectorStoreIndex.as_query_engine(llm=LlamaVisionMultiModal())``. The model is
    trained for one image per conversation, and query engines retrieve several: by default
    (``multi_image="grid"``) they are composed into one labelled grid. To send only the best
    match, retrieve one (``similarity_top_k=1, image_similarity_top_k=1``).

    Examples:
        ```python
        from llama_index.core.schema import ImageDocument
        from llamaindex_llamavision import LlamaVisionMultiModal

        mm = LlamaVisionMultiModal(provider="cloudflare", accept_license=True)
        print(mm.complete("Describe it.", image_documents=[ImageDocument(image_path="a.jpg")]))
        ```

    """

    model: str | None = Field(default=None, description="Model id (provider default if None).")
    multi_image: Literal["error", "latest", "grid"] = Field(
        default="grid",
        description=(
            "Several images in one call (a query engine retrieves several): compose them into "
            "one labelled grid (the default here), keep the latest, or refuse."
        ),
    )
    additional_kwargs: dict[str, Any] = Field(default_factory=dict)
    rate_limiter: Any = Field(
        default=None,
        exclude=True,
        description=(
            "A llama_index BaseRateLimiter, as on BaseLLM: LlamaIndex's completion and chat "
            "decorators acquire it before each call."
        ),
    )

    _llm: LlamaVision = PrivateAttr()

    @model_validator(mode="after")
    def _build_llm(self) -> Self:
        settings = {name: getattr(self, name) for name in LlamaVisionSettings.model_fields}
        self._llm = LlamaVision(
            **settings, model=self.model, additional_kwargs=self.additional_kwargs
        )
        self.api_key = self._llm.api_key
        self.model = self._llm.model
        return self

    @classmethod
    def class_name(cls) -> str:
        """Return the class name (it must say "multi" for LlamaIndex's engines)."""
        return "llamavision_multi_modal_llm"

    @property
    def metadata(self) -> MultiModalLLMMetadata:
        """Context window, output limit and image limit of the model."""
        meta = self._llm.metadata
        return MultiModalLLMMetadata(
            context_window=meta.context_window,
            num_output=meta.num_output,
            num_input_files=1,  # the model is trained for one image per conversation
            is_function_calling_model=meta.is_function_calling_model,
            model_name=meta.model_name,
        )

    def to_payload(self) -> dict[str, Any]:
        """Return a credential-free description for instrumentation events.

        LlamaIndex's callback decorators call this on every model, but ``MultiModalLLM``
        (unlike ``BaseLLM``) does not define it.
        """
        return {"class_name": self.class_name(), **self.metadata.model_dump()}

    @staticmethod
    def _messages(prompt: str, image_documents: Sequence[ImageNode | ImageBlock]) -> list[Any]:
        blocks: list[Any] = [image_block(d) for d in image_documents]
        blocks.append(TextBlock(text=prompt))
        return [ChatMessage(role=MessageRole.USER, blocks=blocks)]

    @staticmethod
    def _completion(response: ChatResponse) -> CompletionResponse:
        return CompletionResponse(
            text=response.message.content or "",
            delta=response.delta,
            raw=response.raw,
            additional_kwargs=response.additional_kwargs,
        )

    def complete(
        self, prompt: str, image_documents: Sequence[ImageNode | ImageBlock], **kwargs: Any
    ) -> CompletionResponse:
        """Answer a prompt about the given images."""
        return self._completion(self._llm.chat(self._messages(prompt, image_documents), **kwargs))

    def stream_complete(
        self, prompt: str, image_documents: Sequence[ImageNode | ImageBlock], **kwargs: Any
    ) -> CompletionResponseGen:
        """Stream the answer to a prompt about the given images."""
        stream = self._llm.stream_chat(self._messages(prompt, image_documents), **kwargs)
        return (self._completion(r) for r in stream)

    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        """Chat with ``ImageBlock``s in the messages."""
        response: ChatResponse = self._llm.chat(messages, **kwargs)
        return response

    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        """Stream a chat answer."""
        stream: ChatResponseGen = self._llm.stream_chat(messages, **kwargs)
        return stream

    async def acomplete(
        self, prompt: str, image_documents: Sequence[ImageNode | ImageBlock], **kwargs: Any
    ) -> CompletionResponse:
        """Async form of :meth:`complete`."""
        response = await self._llm.achat(self._messages(prompt, image_documents), **kwargs)
        return self._completion(response)

    async def astream_complete(
        self, prompt: str, image_documents: Sequence[ImageNode | ImageBlock], **kwargs: Any
    ) -> CompletionResponseAsyncGen:
        """Async form of :meth:`stream_complete`."""
        stream = await self._llm.astream_chat(self._messages(prompt, image_documents), **kwargs)

        async def gen() -> CompletionResponseAsyncGen:
            async for response in stream:
                yield self._completion(response)

        return gen()

    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        """Async form of :meth:`chat`."""
        response: ChatResponse = await self._llm.achat(messages, **kwargs)
        return response

    async def astream_chat(
        self, messages: Sequence[ChatMessage], **kwargs: Any
    ) -> ChatResponseAsyncGen:
        """Async form of :meth:`stream_chat`."""
        stream: ChatResponseAsyncGen = await self._llm.astream_chat(messages, **kwargs)
        return stream
