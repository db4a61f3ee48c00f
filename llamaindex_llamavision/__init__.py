"""LlamaIndex integration of llamavision.

``LlamaVision``, ``LlamaVisionMultiModal`` and ``CaptionReader``.
"""

from __future__ import annotations

from llamaindex_llamavision.base import LlamaVision
from llamaindex_llamavision.multi_modal import LlamaVisionMultiModal
from llamaindex_llamavision.readers import CaptionReader

__all__ = ["CaptionReader", "LlamaVision", "LlamaVisionMultiModal"]
