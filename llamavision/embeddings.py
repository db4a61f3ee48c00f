"""Text embeddings from Workers AI's ``@cf/baai/bge-*`` models, for image RAG with keys.

:class:`WorkersAIEmbedder` sends texts in batches to the native ``/ai/run/`` route, with the
chat client's plumbing: the same credentials and variables (``CLOUDFLARE_ACCOUNT_ID``,
``CLOUDFLARE_API_TOKEN``, ``CLOUDFLARE_BASE_URL``, ``CLOUDFLARE_GATEWAY_ID``), retries with
``Retry-After`` under a rate governor, typed errors with the token redacted, and a timeout.
The wire format lives in :mod:`llamavision.providers.workers_ai`. The framework adapters
(``langchain_llamavision.WorkersAIEmbeddings``, ``llamaindex_llamavision.WorkersAIEmbedding``)
only translate types.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

import httpx
from pydantic import SecretStr

from llamavision.endpoint import Endpoint, Redactor, asend, gateway_from, make_endpoint, send
from llamavision.errors import LlamaVisionError, MalformedResponseError
from llamavision.loops import LoopBoundClient
from llamavision.providers import workers_ai
from llamavision.ratelimit import RateGovernor
from llamavision.retry import RetryPolicy

logger = logging.getLogger("llamavision")


class WorkersAIEmbedder:
    """Workers AI text embeddings (``@cf/baai/bge-base-en-v1.5``, 768 dimensions, by default).

    Args:
        model: one of ``workers_ai.EMBEDDING_MODELS`` (bge small 384, base 768, large 1024).
        api_key: the Workers AI token (default: ``CLOUDFLARE_API_TOKEN``).
        account_id: the account (default: ``CLOUDFLARE_ACCOUNT_ID``).
        base_url: the ``.../ai/run`` base URL (default: ``CLOUDFLARE_BASE_URL``, else
            Cloudflare's); through Cloudflare AI Gateway when ``CLOUDFLARE_GATEWAY_ID`` is set.
        timeout: seconds per request.
        max_retries: retries of one batch after its first attempt (429, 5xx, connection).
        batch_size: texts per request (at most 100, the route's limit).

    Raises:
        ConfigurationError: an unknown model, a missing credential or account id.

    Example:
        .. code-block:: python

            from llamavision.embeddings import WorkersAIEmbedder

            embedder = WorkersAIEmbedder()
            vectors = embedder.embed(["a red square", "a sunset over the sea"])

    """

    def __init__(
        self,
        model: str = workers_ai.DEFAULT_EMBEDDING_MODEL,
        *,
        api_key: str | SecretStr | None = None,
        account_id: str | None = None,
        base_url: str | None = None,
        timeout: float = 60.0,
        max_retries: int = 2,
        batch_size: int = workers_ai.MAX_EMBEDDING_BATCH,
    ) -> None:
        self.dimensions = workers_ai.embedding_dimensions(model)
        self.batch_size = max(1, min(batch_size, workers_ai.MAX_EMBEDDING_BATCH))
        self.retry = RetryPolicy(max_retries=max_retries)
        self.endpoint: Endpoint = make_endpoint(
            workers_ai.NAME,
            api_key=api_key,
            account_id=account_id,
            base_url=base_url,
            model=model,
            governor=RateGovernor(max_pause=self.retry.max_wait),
            gateway=gateway_from([workers_ai.NAME], None, None),
        )
        self.timeout = timeout
        self._redactor = Redactor([self.endpoint])
        self._http: httpx.Client | None = None
        self._ahttp = LoopBoundClient(lambda: httpx.AsyncClient(timeout=self.timeout))
        self._lock = threading.Lock()

    @property
    def model(self) -> str:
        """The embedding model's Workers AI name."""
        return self.endpoint.model

    def __repr__(self) -> str:
        return f"WorkersAIEmbedder(model={self.model!r}, base_url={self.endpoint.base_url!r})"

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """Embed ``texts``, in order, in batches of ``batch_size``.

        Raises:
            LlamaVisionError: the typed error of a batch that failed after its retries
                (``RateLimitError``, ``AuthenticationError``, ``MalformedResponseError``...).

        """
        vectors: list[list[float]] = []
        for batch in self._batches(texts):
            vectors.extend(self._retrying(batch))
        return vectors

    async def aembed(self, texts: Sequence[str]) -> list[list[float]]:
        """Async form of :meth:`embed`."""
        vectors: list[list[float]] = []
        for batch in self._batches(texts):
            vectors.extend(await self._aretrying(batch))
        return vectors

    def close(self) -> None:
        """Close the connections of :meth:`embed` (:meth:`aembed`'s close with their loop)."""
        if self._http is not None:
            self._http.close()
            self._http = None

    def _batches(self, texts: Sequence[str]) -> list[list[str]]:
        items = [texts] if isinstance(texts, str) else list(texts)
        return [items[i : i + self.batch_size] for i in range(0, len(items), self.batch_size)]

    def _retrying(self, batch: list[str]) -> list[list[float]]:
        ep, attempt = self.endpoint, 0
        while True:
            ticket = ep.governor.acquire()
            try:
                vectors = self._once(batch)
            except LlamaVisionError as error:
                ticket.release(error)
                delay = self._delay(error, attempt)
            except BaseException as exc:
                ticket.release(exc)
                raise
            else:
                ticket.release()
                return vectors
            time.sleep(delay)
            attempt += 1

    async def _aretrying(self, batch: list[str]) -> list[list[float]]:
        ep, attempt = self.endpoint, 0
        while True:
            ticket = await ep.governor.aacquire()
            try:
                vectors = await self._aonce(batch)
            except LlamaVisionError as error:
                ticket.release(error)
                delay = self._delay(error, attempt)
            except BaseException as exc:
                ticket.release(exc)
                raise
            else:
                ticket.release()
                return vectors
            await asyncio.sleep(delay)
            attempt += 1

    def _delay(self, error: LlamaVisionError, attempt: int) -> float:
        """Return the wait before retrying after ``error``, or raise it (redacted)."""
        delay = self.retry.retry_delay(error, attempt)
        if delay is None:
            raise self._redactor.redact(error) from None
        logger.info(
            "%s embeddings failed (%s); retry %d/%d",
            *(self.endpoint.provider, type(error).__name__, attempt + 1, self.retry.max_retries),
        )
        return delay

    def _client(self) -> httpx.Client:
        if self._http is None:
            with self._lock:
                if self._http is None:
                    self._http = httpx.Client(timeout=self.timeout)
        return self._http

    def _once(self, batch: list[str]) -> list[list[float]]:
        ep = self.endpoint
        path, body = workers_ai.embedding_payload(ep.model, batch)
        response = send(
            lambda: self._client().post(ep.base_url + path, json=body, headers=ep.headers()), ep
        )
        return self._parse(response, len(batch))

    async def _aonce(self, batch: list[str]) -> list[list[float]]:
        ep = self.endpoint
        path, body = workers_ai.embedding_payload(ep.model, batch)
        http = await self._ahttp.get()
        response = await asend(http.post(ep.base_url + path, json=body, headers=ep.headers()), ep)
        return self._parse(response, len(batch))

    def _parse(self, response: httpx.Response, count: int) -> list[list[float]]:
        ep = self.endpoint
        if response.status_code >= 400:
            raise ep.status_error(response)
        try:
            body: Any = response.json()
        except ValueError:
            raise MalformedResponseError(
                f"{ep.provider} answered an embedding run with a body that is not JSON: "
                f"{response.text[:200]!r}. Check base_url.",
                provider=ep.provider,
                status_code=response.status_code,
            ) from None
        return workers_ai.parse_embeddings(body, count=count, dimensions=self.dimensions)
