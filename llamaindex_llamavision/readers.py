"""``CaptionReader``: the captions of ``llamavision caption`` as LlamaIndex image documents."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from llama_index.core.readers.base import BaseReader
from llama_index.core.schema import Document, ImageDocument, MediaResource

from llamavision.captions import CaptionRecords
from llamavision.captions_file import is_uri


class CaptionReader(BaseReader):
    """Read the captions file written by ``llamavision caption`` as image documents.

    Each captioned image is an ``ImageDocument`` with the caption as its text and the image's
    path, ready for ``MultiModalVectorStoreIndex.from_documents`` (which embeds both). The
    rest of the record (``sha256``, ``provider``, ``model``, tokens, cost) is metadata, kept
    out of the embedded and LLM text. ``image_path`` is resolved against the captions file's
    folder; a URI (``s3://``, ``https://``) becomes ``image_url``. An image that cannot be
    found gives a text ``Document`` with the stored path in its metadata, counted in
    :attr:`missing` (one warning per load). Rows without a caption (error rows) are skipped and
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
    missing: int = 0

    def lazy_load_data(self, file: str | Path, **load_kwargs: Any) -> Iterable[Document]:
        """Yield one image document per captioned image, reading the file line by line.

        Raises:
            FileNotFoundError: the captions file does not exist.

        """
        records = CaptionRecords(file)
        for caption, metadata, image in records:
            keys = list(metadata)
            hidden = {"excluded_embed_metadata_keys": keys, "excluded_llm_metadata_keys": keys}
            if image is None:  # moved or deleted: the caption is still worth indexing
                yield Document(text=caption, metadata=metadata, **hidden)
                continue
            # ImageDocument(image_url=...) would download the image now, and image_path=...
            # decode it: the resource is given as it is, to be read when it is used.
            where = {"url": image} if is_uri(image) else {"path": Path(image)}
            resource = MediaResource(**where)
            yield ImageDocument(text=caption, image_resource=resource, metadata=metadata, **hidden)
        self.skipped, self.missing = records.skipped, records.missing

    def load_data(self, file: str | Path, **load_kwargs: Any) -> list[Document]:
        """Read every captioned image of ``file`` (see :meth:`lazy_load_data`)."""
        return list(self.lazy_load_data(file, **load_kwargs))
