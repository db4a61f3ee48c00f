"""Image RAG over captions with LangChain: embeddings and an on-disk Qdrant store.

Embeddings: WordLlama's offline (:class:`WordLlamaEmbeddings`), Workers AI's with your
Cloudflare keys (:class:`WorkersAIEmbeddings`); :func:`caption_embeddings` picks one.

Needs the ``rag`` extra (``pip install 'llamavision[rag]'``); see :mod:`llamavision.rag`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.messages import HumanMessage
from pydantic import BaseModel, ConfigDict, PrivateAttr, SecretStr

from langchain_llamavision.chat_models import local_image_block
from langchain_llamavision.document_loaders import CaptionLoader
from llamavision import rag
from llamavision.captions_file import is_uri
from llamavision.embeddings import WorkersAIEmbedder
from llamavision.errors import missing_extra
from llamavision.providers import workers_ai


class WordLlamaEmbeddings(Embeddings):
    """WordLlama text embeddings (256 dimensions), offline, from its packaged weights.

    A static embedding model: fast on a CPU, no download, no key. Good enough to find a
    caption by what it names (colours, objects, places); a provider's embedding model
    (:class:`WorkersAIEmbeddings`) finds paraphrases better.

    Instantiate:
        .. code-block:: python

            from langchain_llamavision import WordLlamaEmbeddings

            embeddings = WordLlamaEmbeddings()
            vector = embeddings.embed_query("a red square")

    """

    dimensions = rag.WORDLLAMA_DIMENSIONS

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """Embed documents (unit-length vectors)."""
        return rag.embed(texts)

    def embed_query(self, text: str) -> list[float]:
        """Embed a query (unit-length vector)."""
        return rag.embed([text])[0]


class WorkersAIEmbeddings(BaseModel, Embeddings):
    """Cloudflare Workers AI text embeddings (``@cf/baai/bge-*``), with retries and typed errors.

    The same credentials and variables as ``ChatLlamaVision(provider="cloudflare")``
    (``CLOUDFLARE_ACCOUNT_ID``, ``CLOUDFLARE_API_TOKEN``, ``CLOUDFLARE_BASE_URL``,
    ``CLOUDFLARE_GATEWAY_ID``); texts go in batches of up to 100, a rate-limited batch is
    retried after its ``Retry-After``, and a failure raises llamavision's typed errors with
    the token redacted. The bundled emulator serves these models too.

    Setup:
        .. code-block:: bash

            pip install 'llamavision[rag]'
            export CLOUDFLARE_ACCOUNT_ID="..." CLOUDFLARE_API_TOKEN="..."

    Key init args:
        model: ``"@cf/baai/bge-base-en-v1.5"`` (768 dimensions, the default),
            ``"@cf/baai/bge-small-en-v1.5"`` (384) or ``"@cf/baai/bge-large-en-v1.5"`` (1024).
        api_key: the Workers AI token (default ``CLOUDFLARE_API_TOKEN``).
        account_id: the account (default ``CLOUDFLARE_ACCOUNT_ID``).
        base_url: the ``.../ai/run`` base URL (default ``CLOUDFLARE_BASE_URL``, else Cloudflare's).
        timeout: seconds per request. max_retries: retries of a failed batch.

    Instantiate:
        .. code-block:: python

            from langchain_llamavision import WorkersAIEmbeddings

            embeddings = WorkersAIEmbeddings()
            vectors = embeddings.embed_documents(["a red square", "a sunset over the sea"])
            vector = embeddings.embed_query("the red one")

    """

    model: str = workers_ai.DEFAULT_EMBEDDING_MODEL
    api_key: SecretStr | None = None
    account_id: str | None = None
    base_url: str | None = None
    timeout: float = 60.0
    max_retries: int = 2

    model_config = ConfigDict(extra="forbid")
    _embedder: WorkersAIEmbedder = PrivateAttr()

    def model_post_init(self, context: Any, /) -> None:
        """Configure the client now: a missing key or an unknown model fails here."""
        self._embedder = WorkersAIEmbedder(
            self.model,
            api_key=self.api_key,
            account_id=self.account_id,
            base_url=self.base_url,
            timeout=self.timeout,
            max_retries=self.max_retries,
        )

    @property
    def dimensions(self) -> int:
        """How many numbers each embedding has."""
        return self._embedder.dimensions

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """Embed documents."""
        return self._embedder.embed(texts)

    def embed_query(self, text: str) -> list[float]:
        """Embed a query."""
        return self._embedder.embed([text])[0]

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        """Embed documents (async)."""
        return await self._embedder.aembed(texts)

    async def aembed_query(self, text: str) -> list[float]:
        """Embed a query (async)."""
        return (await self._embedder.aembed([text]))[0]


def caption_embeddings() -> Embeddings:
    """Return the embeddings for a caption index, by the rule the chat model follows for keys.

    :class:`WorkersAIEmbeddings` when your Cloudflare credentials are in the environment
    (``CLOUDFLARE_ACCOUNT_ID`` and ``CLOUDFLARE_API_TOKEN``, not the bundled emulator's),
    else :class:`WordLlamaEmbeddings`, offline. An index keeps the embeddings it was built
    with: give each its own folder (the notebooks name the folder after the class).
    """
    return WorkersAIEmbeddings() if rag.use_workers_ai() else WordLlamaEmbeddings()


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
    size = rag.dimensions(embedding, lambda: embedding.embed_query("dimension"))
    rag.ensure_collection(client, collection, size)
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
