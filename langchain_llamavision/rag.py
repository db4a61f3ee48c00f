"""Image RAG over captions with LangChain: WordLlama embeddings and an on-disk Qdrant store.

Needs the ``rag`` extra (``pip install 'llamavision[rag]'``); see :mod:`llamavision.rag`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.messages import HumanMessage

from langchain_llamavision.chat_models import local_image_block
from langchain_llamavision.document_loaders import CaptionLoader
from llamavision import rag
from llamavision.captions_file import is_uri
from llamavision.errors import missing_extra


class WordLlamaEmbeddings(Embeddings):
    """WordLlama text embeddings (256 dimensions), offline, from its packaged weights.

    A static embedding model: fast on a CPU, no download, no key. Good enough to find a
    caption by what it names (colours, objects, places); a provider's embedding model (Workers
    AI's ``@cf/baai/bge-*`` through ``CloudflareWorkersAIEmbeddings``) finds paraphrases better.

    Instantiate:
        .. code-block:: python

            from langchain_llamavision import WordLlamaEmbeddings

            embeddings = WordLlamaEmbeddings()
            vector = embeddings.embed_query("a red square")

    """

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """Embed documents (unit-length vectors)."""
        return rag.embed(texts)

    def embed_query(self, text: str) -> list[float]:
        """Embed a query (unit-length vector)."""
        return rag.embed([text])[0]


def caption_store(
    captions: str | Path,
    path: str | Path,
    embedding: Embeddings | None = None,
    collection: str = rag.COLLECTION,
    client: Any = None,
) -> Any:
    """Open the on-disk caption index at ``path`` and add the captions it does not hold yet.

    Built from :class:`CaptionLoader` documents (the output of ``llamavision caption``), one
    point per image path, keyed by the image's ``sha256`` and path: run it again after
    captioning more images and only the new captions are embedded. A caption's document keeps
    ``image_path`` in its metadata, so what the retriever finds is the image to show the model.

    Args:
        captions: the captions file (or what ``caption_dataset`` wrote).
        path: the index's folder (created if missing).
        embedding: the embeddings (default :class:`WordLlamaEmbeddings`); keep the same for
            an index's life (the collection is made for their dimension).
        collection: the collection's name.
        client: an open ``QdrantClient`` to use instead of opening ``path`` (Qdrant's local
            mode lets one client at a time open a folder).

    Returns:
        A ``langchain_qdrant.QdrantVectorStore``: ``.as_retriever()`` for a chain.

    Example:
        .. code-block:: python

            from langchain_llamavision import caption_store

            store = caption_store("captions.jsonl", "image-index")
            docs = store.as_retriever(search_kwargs={"k": 1}).invoke("the blue one")

    """
    try:
        from langchain_qdrant import QdrantVectorStore
    except ImportError as exc:
        raise missing_extra("rag", "caption_store", exc) from None
    embedding = embedding or WordLlamaEmbeddings()
    client = client or rag.local_qdrant(path)
    adding = rag.not_held(client, collection, CaptionLoader(captions).lazy_load())
    rag.ensure_collection(client, collection, len(embedding.embed_query("dimension")))
    store = QdrantVectorStore(  # checked above, without embedding a probe document
        client=client, collection_name=collection, embedding=embedding,
        validate_collection_config=False,
    )  # fmt: skip
    if adding:
        store.add_documents(list(adding.values()), ids=list(adding))
    return store


def image_question(question: str, documents: list[Document]) -> list[HumanMessage]:
    """Return the message that asks ``question`` about the retrieved images, captions as context.

    One human message: a text block with each document's caption and the question, then one
    standard image block per document (:func:`local_image_block` for a path, a URL block for
    a URI). The model is trained for one image per conversation: with several documents, the
    chat model's ``multi_image`` policy decides (``"latest"``, ``"grid"``; by default several
    images are refused with a clear error). The step between a retriever and the chat model:

    Example:
        .. code-block:: python

            from langchain_core.runnables import RunnableLambda, RunnablePassthrough

            chain = (
                {"documents": store.as_retriever(search_kwargs={"k": 1}),
                 "question": RunnablePassthrough()}
                | RunnableLambda(lambda x: image_question(x["question"], x["documents"]))
                | ChatLlamaVision()
            )

    """
    context = "\n\n".join(
        f"Image {number} caption: {doc.page_content}" for number, doc in enumerate(documents, 1)
    )
    blocks: list[dict[str, Any]] = [{"type": "text", "text": f"{context}\n\nQuestion: {question}"}]
    for doc in documents:
        where = str(doc.metadata["image_path"])
        blocks.append(
            {"type": "image", "url": where} if is_uri(where) else local_image_block(where)
        )
    return [HumanMessage(content_blocks=blocks)]  # type: ignore[arg-type]
