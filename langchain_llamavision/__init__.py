"""LangChain integration of llamavision: ``ChatLlamaVision`` and ``CaptionLoader``."""

from __future__ import annotations

from langchain_llamavision.chat_models import ChatLlamaVision
from langchain_llamavision.document_loaders import CaptionLoader

__all__ = ["CaptionLoader", "ChatLlamaVision"]
