"""What image RAG over captions needs, for both frameworks: offline embeddings and an on-disk index.

The ``rag`` extra (``pip install 'llamavision[rag]'``) brings two things that run in-process
and offline:

- **WordLlama** (``wordllama``), a static embedding model whose 256-dimension weights and
  tokenizer ship inside its PyPI wheel (19 MB). Its own ``WordLlama.load()`` looks for the
  tokenizer under ``tokenizer/`` while the wheel has ``tokenizers/``, so it tries to download;
  :func:`wordllama_model` loads the packaged files and never downloads.
- **Qdrant's local mode** (``qdrant-client``): a vector index in a folder, no server, with
  maintained integrations in LangChain (``langchain-qdrant``) and LlamaIndex
  (``llama-index-vector-stores-qdrant``), filters on payload fields, and the same API as a
  Qdrant server when a collection outgrows one machine.

Each image path's caption is one point, whose id (:func:`point_id`) comes from the image's
``sha256`` and path: adding the captions of new images to an existing index embeds only
those (:func:`not_held`). The framework adapters (``langchain_llamavision.caption_store``,
``llamaindex_llamavision.caption_index``) only translate types.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import logging
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from llamavision.errors import ConfigurationError, missing_extra

T = TypeVar("T")
COLLECTION = "captions"
"""The collection the caption indexes use unless told otherwise."""
WORDLLAMA_DIMENSIONS = 256
_OPEN: dict[Path, Any] = {}  # folder -> the client that has it open
_NAMESPACE = uuid.UUID("6f1c1b0e-3f4e-4d8a-9a51-2f2d0c8f7a11")  # llamavision's point ids


@functools.lru_cache(maxsize=1)
def wordllama_model() -> Any:
    """Return the WordLlama model of the installed ``wordllama`` wheel (loaded once).

    Raises:
        MissingExtraError: ``wordllama`` is not installed.
        FileNotFoundError: the wheel has no packaged weights (never downloads instead).

    """
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        import wordllama  # type: ignore[import-untyped]
    except ImportError as exc:
        raise missing_extra("rag", "WordLlama embeddings", exc) from None
    finally:  # its import calls logging.basicConfig(level=INFO): every library's INFO lines
        root.handlers[:], root.level = handlers, level  # would show (httpx's, per request)
    packaged = Path(wordllama.__file__).parent  # holds weights/ and tokenizers/
    return wordllama.WordLlama.load(
        cache_dir=packaged, dim=WORDLLAMA_DIMENSIONS, disable_download=True
    )


def use_workers_ai() -> bool:
    """Return whether to embed captions with Workers AI: your Cloudflare credentials are set.

    ``CLOUDFLARE_ACCOUNT_ID`` and ``CLOUDFLARE_API_TOKEN`` in the environment, set by you
    (not by :func:`~llamavision.emulator.use_emulator_unless_configured` for the bundled
    emulator). The rule the notebooks' embeddings follow, as their chat model does: with
    keys, the provider's model (``@cf/baai/bge-base-en-v1.5``, through
    :class:`~llamavision.embeddings.WorkersAIEmbedder`); without, WordLlama, offline.
    """
    from llamavision.emulator.server import configured_by_user

    return configured_by_user("cloudflare")


def embed(texts: Sequence[str]) -> list[list[float]]:
    """Embed ``texts`` with WordLlama (unit-length vectors, for cosine similarity)."""
    if not texts:
        return []
    vectors = wordllama_model().embed(list(texts), norm=True)
    return [[float(x) for x in row] for row in vectors]


def point_id(metadata: Mapping[str, Any]) -> str:
    """Return the index id of a caption document: the same for the same bytes and path.

    From the document's metadata, its ``sha256`` and ``image_path``.
    """
    sha256, image_path = metadata.get("sha256", ""), metadata.get("image_path", "")
    return str(uuid.uuid5(_NAMESPACE, f"{sha256}\0{image_path}"))


def local_qdrant(path: str | Path) -> Any:
    """Return this process's Qdrant client of the index in the folder ``path`` (made if new).

    Qdrant's local mode lets one client at a time open a folder, so a folder opened before
    (a notebook cell run again) gives the same client, unless it was closed since.

    Raises:
        MissingExtraError: ``qdrant-client`` is not installed.

    """
    try:
        from qdrant_client import QdrantClient
    except ImportError as exc:
        raise missing_extra("rag", "An on-disk caption index", exc) from None
    folder = Path(path).resolve()
    client = _OPEN.get(folder)
    if client is not None:
        try:
            client.get_collections()
            return client
        except Exception:  # closed: open it again
            del _OPEN[folder]
    folder.mkdir(parents=True, exist_ok=True)
    client = _OPEN[folder] = QdrantClient(path=str(folder))
    return client


@atexit.register
def _close_all() -> None:
    """Close the open indexes before the interpreter goes (their own finaliser fails then)."""
    for client in _OPEN.values():
        with contextlib.suppress(Exception):
            client.close()
    _OPEN.clear()


def ensure_collection(client: Any, collection: str, dimensions: int) -> None:
    """Create ``collection`` (cosine distance) unless it exists; see :func:`check_dimensions`."""
    from qdrant_client.models import Distance, VectorParams

    if not client.collection_exists(collection):
        client.create_collection(
            collection, vectors_config=VectorParams(size=dimensions, distance=Distance.COSINE)
        )
    else:
        check_dimensions(client, collection, dimensions)


def check_dimensions(client: Any, collection: str, dimensions: int) -> None:
    """Check that ``collection``, if it exists, holds vectors of ``dimensions`` numbers.

    Raises:
        ConfigurationError: it was made for embeddings of another dimension (other
            embeddings than these), with what to do.

    """
    if not client.collection_exists(collection):
        return
    vectors = client.get_collection(collection).config.params.vectors
    sizes = {v.size for v in vectors.values()} if isinstance(vectors, dict) else {vectors.size}
    if dimensions not in sizes:
        raise ConfigurationError(
            f"The index's collection {collection!r} holds {min(sizes)}-dimension vectors, and "
            f"these embeddings make {dimensions}: use the embeddings it was built with, or a "
            "new folder (or collection) for these."
        )


def dimensions(embeddings: Any, probe: Callable[[], Sequence[float]]) -> int:
    """Return how many numbers ``embeddings`` make: their ``dimensions``, else ``len(probe())``."""
    known = getattr(embeddings, "dimensions", None)
    return known if isinstance(known, int) else len(probe())


def not_held(client: Any, collection: str, documents: Iterable[T]) -> dict[str, T]:
    """Return, by :func:`point_id`, the caption documents ``collection`` does not hold yet.

    ``documents`` are the frameworks' own (anything with a ``metadata`` mapping); one per id.
    All of them when the collection does not exist yet.
    """
    wanted = {point_id(doc.metadata): doc for doc in documents}  # type: ignore[attr-defined]
    if not wanted or not client.collection_exists(collection):
        return wanted
    held = client.retrieve(collection, list(wanted), with_payload=False, with_vectors=False)
    for point in held:
        wanted.pop(str(point.id), None)
    return wanted
