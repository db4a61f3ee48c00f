"""LlamaIndex integration of llamavision.

``LlamaVision``, ``LlamaVisionMultiModal``, ``CaptionReader`` and the image RAG helpers.
"""

from __future__ import annotations

from llamavision.errors import missing_extra

try:
    import llama_index.core  # noqa: F401
except ImportError as exc:
    raise missing_extra("llamaindex", "llamaindex_llamavision", exc) from None

from llamaindex_llamavision.base import LlamaVision
from llamaindex_llamavision.multi_modal import LlamaVisionMultiModal
from llamaindex_llamavision.rag import (
    CaptionImages,
    WordLlamaEmbedding,
    WorkersAIEmbedding,
    caption_embedding,
    caption_index,
)
from llamaindex_llamavision.readers import CaptionReader

__all__ = [
    "CaptionImages",
    "CaptionReader",
    "LlamaVision",
    "LlamaVisionMultiModal",
    "WordLlamaEmbedding",
    "WorkersAIEmbedding",
    "caption_embedding",
    "caption_index",
]
