"""``CaptionReader``: the captions of ``llamavision caption`` as LlamaIndex image documents."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from llama_index.core.readers.base import BaseReader
from llama_index.core.schema import Document, ImageDocument

from llamavision.captions import CaptionRecords


class CaptionReader(BaseReader):
    """Read the captions file written by ``llamavision caption`` as image documents.

    Each captioned image is an ``ImageDocument`` with the caption as its text and the image's
    path, ready for ``MultiModalVectorStoreIndex.from_documents`` (which embeds both). The
    rest of the record (``sha256``, ``provider``, ``model``, tokens, cost) is metadata, kept
    out of the embedded and LLM text. Rows without a caption (error rows) are skipped and
    counted in :attr:`skipped`.

    Examples:
        ```python
        from llama_index.core.indices import MultiModalVectorStoreIndex
        from llamaindex_llamavision import CaptionReader

        documents = CaptionReader().load_data("captions.jsonl")
        index = MultiModalVectorStoreIndex.from_documents(documents)
        ```

    """

    skipped: int = 0

    def lazy_load_data(self, file: str | Path, **load_kwargs: Any) -> Iterable[Document]:
        """Yield one image document per captioned image, reading the file line by line.

        Raises:
            FileNotFoundError: the captions file does not exist.

        """
        records = CaptionRecords(file)
        for caption, metadata in records:
            keys = list(metadata)
            yield ImageDocument(
                text=caption,
                image_path=metadata.get("image_path"),
                metadata=metadata,
                excluded_embed_metadata_keys=keys,
                excluded_llm_metadata_keys=keys,
            )
        self.skipped = records.skipped

    def load_data(self, file: str | Path, **load_kwargs: Any) -> list[Document]:
        """Read every captioned image of ``file`` (see :meth:`lazy_load_data`)."""
        return list(self.lazy_load_data(file, **load_kwargs))
