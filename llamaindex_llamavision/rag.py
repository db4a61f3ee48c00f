"""Image RAG over captions with LlamaIndex: embeddings and an on-disk Qdrant index.

Embeddings: WordLlama's offline (:class:`WordLlamaEmbedding`), Workers AI's with your
Cloudflare keys (:class:`WorkersAIEmbedding`); :func:`caption_embedding` picks one.

Needs the ``rag`` extra (``pip install 'llamavision[rag]'``); see :mod:`llamavision.rag`.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from llama_index.core import VectorStoreIndex
from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.bridge.pydantic import Field, PrivateAttr, SecretStr
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import ImageNode, MediaResource, NodeWithScore, QueryBundle

from llamaindex_llamavision.readers import CaptionReader
from llamavision import rag
from llamavision.captions_file import is_uri
from llamavision.embeddings import WorkersAIEmbedder
from llamavision.errors import missing_extra
from llamavision.providers import workers_ai


class WordLlamaEmbedding(BaseEmbedding):
    """WordLlama text embeddings (256 dimensions), offline, from its packaged weights.

    A static embedding model: fast on a CPU, no download, no key. Good enough to find a
    caption by what it names (colours, objects, places); a provider's embedding model
    (:class:`WorkersAIEmbedding`) finds paraphrases better.

    Examples:
        ```python
        from llamaindex_llamavision import WordLlamaEmbedding

        embed_model = WordLlamaEmbedding()
        vector = embed_model.get_query_embedding("a red square")
        ```

    """

    model_name: str = Field(default="wordllama-l2-supercat-256")

    @property
    def dimensions(self) -> int:
        """How many numbers each embedding has."""
        return rag.WORDLLAMA_DIMENSIONS

    @classmethod
    def class_name(cls) -> str:
        """Return the class name."""
        return "WordLlamaEmbedding"

    def _get_query_embedding(self, query: str) -> list[float]:
        return rag.embed([query])[0]

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return rag.embed([query])[0]

    def _get_text_embedding(self, text: str) -> list[float]:
        return rag.embed([text])[0]

    def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        return rag.embed(texts)


class WorkersAIEmbedding(BaseEmbedding):
    """Cloudflare Workers AI text embeddings (``@cf/baai/bge-*``), with retries and typed errors.

    The same credentials and variables as ``LlamaVision(provider="cloudflare")``
    (``CLOUDFLARE_ACCOUNT_ID``, ``CLOUDFLARE_API_TOKEN``, ``CLOUDFLARE_BASE_URL``,
    ``CLOUDFLARE_GATEWAY_ID``); texts go in batches of up to 100, a rate-limited batch is
    retried after its ``Retry-After``, and a failure raises llamavision's typed errors with
    the token redacted. The bundled emulator serves these models too.

    Args:
        model_name: ``"@cf/baai/bge-base-en-v1.5"`` (768 dimensions, the default),
            ``"@cf/baai/bge-small-en-v1.5"`` (384) or ``"@cf/baai/bge-large-en-v1.5"`` (1024).
        api_key: the Workers AI token (default ``CLOUDFLARE_API_TOKEN``).
        account_id: the account (default ``CLOUDFLARE_ACCOUNT_ID``).
        base_url: the ``.../ai/run`` base URL (default ``CLOUDFLARE_BASE_URL``, else Cloudflare's).
        timeout: seconds per request.
        max_retries: retries of a failed batch.

    Examples:
        ```python
        from llamaindex_llamavision import WorkersAIEmbedding

        embed_model = WorkersAIEmbedding()
        vector = embed_model.get_query_embedding("the red one")
        ```

    """

    model_name: str = Field(default=workers_ai.DEFAULT_EMBEDDING_MODEL)
    embed_batch_size: int = Field(default=workers_ai.MAX_EMBEDDING_BATCH, gt=0, le=100)
    api_key: SecretStr | None = Field(default=None, exclude=True)
    account_id: str | None = None
    base_url: str | None = None
    timeout: float = 60.0
    max_retries: int = 2
    _embedder: WorkersAIEmbedder = PrivateAttr()

    def model_post_init(self, context: Any, /) -> None:
        """Configure the client now: a missing key or an unknown model fails here."""
        self._embedder = WorkersAIEmbedder(
            self.model_name,
            api_key=self.api_key,
            account_id=self.account_id,
            base_url=self.base_url,
            timeout=self.timeout,
            max_retries=self.max_retries,
            batch_size=self.embed_batch_size,
        )

    @property
    def dimensions(self) -> int:
        """How many numbers each embedding has."""
        return self._embedder.dimensions

    @classmethod
    def class_name(cls) -> str:
        """Return the class name."""
        return "WorkersAIEmbedding"

    def _get_query_embedding(self, query: str) -> list[float]:
        return self._embedder.embed([query])[0]

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return (await self._embedder.aembed([query]))[0]

    def _get_text_embedding(self, text: str) -> list[float]:
        return self._embedder.embed([text])[0]

    async def _aget_text_embedding(self, text: str) -> list[float]:
        return (await self._embedder.aembed([text]))[0]

    def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        return self._embedder.embed(texts)

    async def _aget_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        return await self._embedder.aembed(texts)


def caption_embedding() -> BaseEmbedding:
    """Return the embed model for a caption index, by the rule the LLM follows for keys.

    :class:`WorkersAIEmbedding` when your Cloudflare credentials are in the environment
    (``CLOUDFLARE_ACCOUNT_ID`` and ``CLOUDFLARE_API_TOKEN``, not the bundled emulator's),
    else :class:`WordLlamaEmbedding`, offline. An index keeps the embeddings it was built
    with: give each its own folder (the notebooks name the folder after the class).
    """
    return WorkersAIEmbedding() if rag.use_workers_ai() else WordLlamaEmbedding()


class CaptionImages(BaseNodePostprocessor):
    """Add the image of each retrieved caption, so that a multimodal engine shows it the model.

    A caption index holds text nodes (the prompt's context) with ``image_path`` in their
    metadata; multimodal query engines send only image nodes as images. This postprocessor
    keeps every caption and adds, after them, an ``ImageNode`` per caption's image (same
    score), for ``RetrieverQueryEngine.from_args(..., multimodal=True)`` with
    :class:`~llamaindex_llamavision.LlamaVision` or ``SimpleMultiModalQueryEngine`` with
    :class:`~llamaindex_llamavision.LlamaVisionMultiModal`.

    Examples:
        ```python
        from llama_index.core.query_engine import RetrieverQueryEngine

        engine = RetrieverQueryEngine.from_args(
            index.as_retriever(similarity_top_k=1), llm=LlamaVision(), multimodal=True,
            node_postprocessors=[CaptionImages()],
        )
        ```

    """

    @classmethod
    def class_name(cls) -> str:
        """Return the class name."""
        return "CaptionImages"

    def _postprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        images = []
        for found in nodes:
            where = found.node.metadata.get("image_path")
            if isinstance(found.node, ImageNode) or not isinstance(where, str):
                continue
            resource = MediaResource(**({"url": where} if is_uri(where) else {"path": Path(where)}))
            image = ImageNode(image_resource=resource, metadata={"image_path": where})
            images.append(NodeWithScore(node=image, score=found.score))
        return [*nodes, *images]


def caption_index(
    captions: str | Path,
    path: str | Path,
    embed_model: BaseEmbedding | None = None,
    collection: str = rag.COLLECTION,
    client: Any = None,
) -> VectorStoreIndex:
    """Open the on-disk caption index at ``path`` and add the captions it does not hold yet.

    Built from :class:`CaptionReader` text documents (the output of ``llamavision caption``),
    one node per image path, keyed by the image's ``sha256`` and path: run it again after
    captioning more images and only the new captions are embedded. A node keeps
    ``image_path`` in its metadata; :class:`CaptionImages` turns it into the image for a
    multimodal query engine.

    Args:
        captions: the captions file (or what ``caption_dataset`` wrote).
        path: the index's folder (created if missing).
        embed_model: the embeddings (default :class:`WordLlamaEmbedding`); keep the same for
            an index's life.
        collection: the collection's name.
        client: an open ``QdrantClient`` to use instead of opening ``path`` (Qdrant's local
            mode lets one client at a time open a folder).

    Returns:
        A ``VectorStoreIndex`` over a ``QdrantVectorStore``.

    Examples:
        ```python
        from llamaindex_llamavision import caption_index

        index = caption_index("captions.jsonl", "image-index")
        nodes = index.as_retriever(similarity_top_k=1).retrieve("the blue one")
        ```

    """
    try:
        from llama_index.vector_stores.qdrant import QdrantVectorStore
    except ImportError as exc:
        raise missing_extra("rag", "caption_index", exc) from None
    embed_model = embed_model or WordLlamaEmbedding()
    client = client or rag.local_qdrant(path)
    size = rag.dimensions(embed_model, lambda: embed_model.get_query_embedding("dimension"))
    rag.check_dimensions(client, collection, size)
    documents = CaptionReader(documents="text").lazy_load_data(captions)
    adding = rag.not_held(client, collection, documents)
    for point, doc in adding.items():
        doc.id_ = point  # the node's id is the Qdrant point's
    store = QdrantVectorStore(client=client, collection_name=collection)
    index = VectorStoreIndex.from_vector_store(store, embed_model=embed_model)
    if adding:
        with warnings.catch_warnings():  # about a payload index it makes, harmless locally
            warnings.filterwarnings("ignore", "Payload indexes have no effect", UserWarning)
            index.insert_nodes(list(adding.values()))  # a caption is one node: no splitting
    return index
