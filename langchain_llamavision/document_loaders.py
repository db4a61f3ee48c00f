"""``CaptionLoader``: the captions of ``llamavision caption`` as LangChain documents."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from langchain_core.document_loaders import BaseLoader
from langchain_core.documents import Document

from llamavision.captions import CaptionRecords


class CaptionLoader(BaseLoader):
    """Load the captions file written by ``llamavision caption`` for image RAG.

    Each captioned image is a ``Document`` whose ``page_content`` is the caption and whose
    metadata holds ``image_path``, ``sha256``, ``provider``, ``model`` and the rest of the
    record, so a retriever over captions finds the image to show the model: ``image_path``
    is where the image is now (an absolute path, resolved against the captions file's folder,
    or a URI). An image that cannot be found keeps the stored path and is counted in
    :attr:`missing` (one warning per load). Rows without a caption (error rows) are skipped
    and counted in :attr:`skipped`.

    Setup:
        Caption a folder first: ``llamavision caption photos/ --out captions.jsonl``.

    Instantiate:
        .. code-block:: python

            from langchain_llamavision import CaptionLoader

            loader = CaptionLoader("captions.jsonl")

    Lazy load:
        .. code-block:: python

            for doc in loader.lazy_load():
                print(doc.metadata["image_path"], doc.page_content[:60])

    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.skipped = 0
        self.missing = 0

    def lazy_load(self) -> Iterator[Document]:
        """Yield one document per captioned image, reading the file line by line.

        Raises:
            FileNotFoundError: the captions file does not exist.

        """
        records = CaptionRecords(self.path)
        for caption, metadata, image in records:
            yield Document(
                page_content=caption,
                metadata={**metadata, "image_path": image or metadata.get("image_path")},
            )
        self.skipped, self.missing = records.skipped, records.missing
