"""LangChain integration of llamavision: ``ChatLlamaVision``."""

from __future__ import annotations

from langchain_llamavision.chat_models import ChatLlamaVision

__all__ = ["ChatLlamaVision"]
