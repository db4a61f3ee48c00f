"""LangChain integration of llamavision: ``ChatLlamaVision``, ``CaptionLoader``, image RAG."""

from __future__ import annotations

from llamavision.errors import missing_extra

try:
    import langchain_core  # noqa: F401
except ImportError as exc:
    raise missing_extra("langchain", "langchain_llamavision", exc) from None

from langchain_llamavision.chat_models import ChatLlamaVision, local_image_block
from langchain_llamavision.document_loaders import CaptionLoader
from langchain_llamavision.rag import (
    WordLlamaEmbeddings,
    WorkersAIEmbeddings,
    caption_embeddings,
    caption_store,
    image_question,
)

__all__ = [
    "CaptionLoader",
    "ChatLlamaVision",
    "WordLlamaEmbeddings",
    "WorkersAIEmbeddings",
    "caption_embeddings",
    "caption_store",
    "image_question",
    "local_image_block",
]
