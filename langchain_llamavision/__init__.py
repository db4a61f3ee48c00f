"""LangChain integration of llamavision: ``ChatLlamaVision`` and ``CaptionLoader``."""

from __future__ import annotations

from llamavision.errors import missing_extra

try:
    import langchain_core  # noqa: F401
except ImportError as exc:
    raise missing_extra("langchain", "langchain_llamavision", exc) from None

from langchain_llamavision.chat_models import ChatLlamaVision, local_image_block
from langchain_llamavision.document_loaders import CaptionLoader

__all__ = ["CaptionLoader", "ChatLlamaVision", "local_image_block"]
