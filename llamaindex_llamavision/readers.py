"""``CaptionReader``: the captions of ``llamavision caption`` as LlamaIndex image documents."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

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

    def __init__(self, documents: Literal["image", "text", "both"] = "image") -> None:
        """Make a reader.

        Args:
            documents: what to yield per captioned image. ``"image"``: an ``ImageDocument``
                with the caption as text (embedded both ways by a multimodal index).
                ``"text"``: a text ``Document``, the caption, with the image's current path
                (or URI) as ``image_path`` in the metadata, for a text index. ``"both"``: that
                text document and an ``ImageDocument`` without text, for a
                ``MultiModalVectorStoreIndex`` whose query engines should give the model the
                captions as context (LlamaIndex leaves image nodes out of the context, so
                with ``"image"`` the prompt's context is empty).

        """
        if documents not in ("image", "text", "both"):
            raise ValueError(f"documents must be 'image', 'text' or 'both', not {documents!r}")
        self.documents = documents

    def lazy_load_data(self, file: str | Path, **load_kwargs: Any) -> Iterable[Document]:
        """Yield one image document per captioned image, reading the file line by line.

        Raises:
            FileNotFoundError: the captions file does not exist.

        """
        records = CaptionRecords(file)
        for caption, metadata, image in records:
            keys = list(metadata)
            hidden = {"excluded_embed_metadata_keys": keys, "excluded_llm_metadata_keys": keys}
            if image is None or self.documents != "image":  # a moved image's too: worth it
                found = {} if image is None else {"image_path": image}
                yield Document(text=caption, metadata={**metadata, **found}, **hidden)
            if image is None or self.documents == "text":
                continue
            # ImageDocument(image_url=...) would download the image now, and image_path=...
            # decode it: the resource is given as it is, to be read when it is used.
            where = {"url": image} if is_uri(image) else {"path": Path(image)}
            resource = MediaResource(**where)
            if self.documents == "image":
                yield ImageDocument(
                    text=caption, image_resource=resource, metadata=metadata, **hidden
                )
                continue
            # No text, so not in the text store; the index drops a node whose embed content
            # is empty, so that content is its path (it is embedded as an image all the same).
            shown = {
                **hidden,
                "excluded_embed_metadata_keys": [k for k in keys if k != "image_path"],
            }
            yield ImageDocument(text="", image_resource=resource, metadata=metadata, **shown)
        self.skipped, self.missing = records.skipped, records.missing

    def load_data(self, file: str | Path, **load_kwargs: Any) -> list[Document]:
        """Read every captioned image of ``file`` (see :meth:`lazy_load_data`)."""
        return list(self.lazy_load_data(file, **load_kwargs))
