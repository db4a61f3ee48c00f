"""LlamaIndex integration of llamavision: ``LlamaVision`` and ``LlamaVisionMultiModal``."""

from __future__ import annotations

from llamaindex_llamavision.base import LlamaVision
from llamaindex_llamavision.multi_modal import LlamaVisionMultiModal

__all__ = ["LlamaVision", "LlamaVisionMultiModal"]
