"""A deterministic, download-free multimodal embedding for the tests of multimodal indexes.

Images are embedded by their colours, text by the colour words it names, in the same
three-dimensional space, so "the blue one" finds the blue image. It is a stand-in for CLIP
where no model weights can be downloaded, not a retrieval model.
"""

from __future__ import annotations

from typing import Any, ClassVar

from llama_index.core.embeddings import MultiModalEmbedding
from PIL import Image, ImageStat


class ColourEmbedding(MultiModalEmbedding):
    """Embed images by mean colour (minus the grey part) and text by its colour words."""

    WORDS: ClassVar[dict[str, tuple[float, float, float]]] = {
        "red": (1.0, 0.1, 0.1),
        "blue": (0.1, 0.2, 1.0),
        "orange": (1.0, 0.55, 0.2),
        "purple": (0.6, 0.2, 0.7),
        "sunset": (0.8, 0.4, 0.4),
        "green": (0.1, 1.0, 0.2),
    }

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(model_name="colour", **kwargs)

    @classmethod
    def class_name(cls) -> str:
        """Return the class name."""
        return "ColourEmbedding"

    def _text(self, text: str) -> list[float]:
        vec = [0.01, 0.01, 0.01]
        for word, rgb in self.WORDS.items():
            if word in text.lower():
                vec = [v + c for v, c in zip(vec, rgb, strict=True)]
        return vec

    def _get_image_embedding(self, img_file_path: Any) -> list[float]:
        with Image.open(img_file_path) as img:
            mean = ImageStat.Stat(img.convert("RGB")).mean
        low = min(mean)  # drop the grey/white part so the dominant hue decides
        return [max(0.01, (m - low) / 255) for m in mean]

    async def _aget_image_embedding(self, img_file_path: Any) -> list[float]:
        return self._get_image_embedding(img_file_path)

    def _get_query_embedding(self, query: str) -> list[float]:
        return self._text(query)

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return self._text(query)

    def _get_text_embedding(self, text: str) -> list[float]:
        return self._text(text)
