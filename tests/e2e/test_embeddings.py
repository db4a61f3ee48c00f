"""Workers AI embeddings (``@cf/baai/bge-*``) against the emulator's ``/ai/run/`` route.

The core :class:`WorkersAIEmbedder` (batches, retries, typed errors, no key in sight), its
LangChain and LlamaIndex adapters, langchain-cloudflare's own class on the same route (the
emulator speaks the documented format, not just ours), and which embeddings the notebooks
pick: Workers AI's with the user's Cloudflare keys, WordLlama's without.
"""

from __future__ import annotations

import asyncio
import io
import math
import os

import pytest
from langchain_cloudflare.embeddings import CloudflareWorkersAIEmbeddings

from langchain_llamavision import (
    WordLlamaEmbeddings,
    WorkersAIEmbeddings,
    caption_embeddings,
)
from llamaindex_llamavision import WordLlamaEmbedding, WorkersAIEmbedding, caption_embedding
from llamavision.embeddings import WorkersAIEmbedder
from llamavision.emulator import DEFAULT_CLOUDFLARE_TOKEN, Emulator, Fault
from llamavision.emulator.server import use_emulator_unless_configured
from llamavision.errors import (
    AuthenticationError,
    ConfigurationError,
    MalformedResponseError,
    RateLimitError,
)
from tests.e2e.support import notebook_session

TEXTS = ["a red square on white", "a blue circle", "a sunset over the sea"]


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True)) / math.hypot(*a) / math.hypot(*b)


def test_vectors_come_back_in_order_in_batches_of_100(emulator: Emulator) -> None:
    embedder = WorkersAIEmbedder()
    texts = [f"caption number {n}" for n in range(150)]
    vectors = embedder.embed(texts)
    assert len(vectors) == 150 and {len(v) for v in vectors} == {768}
    assert emulator.counters["requests"] == 2  # 100 + 50
    assert vectors[123] == embedder.embed([texts[123]])[0]
    assert embedder.embed([]) == [] and emulator.counters["requests"] == 3


@pytest.mark.parametrize(
    ("model", "size"),
    [("@cf/baai/bge-small-en-v1.5", 384), ("@cf/baai/bge-large-en-v1.5", 1024)],
)
def test_each_model_has_its_size(emulator: Emulator, model: str, size: int) -> None:
    embedder = WorkersAIEmbedder(model)
    assert embedder.dimensions == size
    assert [len(v) for v in embedder.embed(TEXTS)] == [size] * 3


def test_a_rate_limited_batch_is_retried_after_retry_after(emulator: Emulator) -> None:
    emulator.fail(Fault("status", status=429, retry_after="0", provider="cloudflare"))
    assert len(WorkersAIEmbedder().embed(TEXTS)) == 3
    assert emulator.counters["requests"] == 2 and emulator.counters["embedded"] == 3


def test_async_retries_the_same(emulator: Emulator) -> None:
    emulator.fail(Fault("status", status=503, provider="cloudflare"))
    embedder = WorkersAIEmbedder(max_retries=1)
    vectors = asyncio.run(embedder.aembed(TEXTS))
    assert vectors == WorkersAIEmbedder().embed(TEXTS)
    assert emulator.counters["requests"] == 3


def test_failures_are_typed_and_never_show_the_token(emulator: Emulator) -> None:
    secret = "cf-token-that-must-not-leak"
    with pytest.raises(AuthenticationError) as refused:
        WorkersAIEmbedder(api_key=secret).embed(TEXTS)
    assert secret not in str(refused.value) and secret not in repr(refused.value)
    assert "CLOUDFLARE_ACCOUNT_ID" in str(refused.value)  # says what to check
    emulator.fail(Fault("status", status=429, retry_after="0", lasting=math.inf))
    with pytest.raises(RateLimitError):
        WorkersAIEmbedder(max_retries=1).embed(TEXTS)
    emulator.reset()
    emulator.fail(Fault("bad_body", provider="cloudflare"))
    with pytest.raises(MalformedResponseError, match="embedding reply"):
        WorkersAIEmbedder(max_retries=0).embed(TEXTS)


def test_configuration_errors_come_at_construction(
    emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ConfigurationError, match=r"bge-small-en-v1\.5"):
        WorkersAIEmbeddings(model="@cf/baai/bge-m3")
    monkeypatch.delenv("CLOUDFLARE_API_TOKEN")
    with pytest.raises(ConfigurationError, match="CLOUDFLARE_API_TOKEN"):
        WorkersAIEmbedding()


def test_langchain_and_llamaindex_adapters(emulator: Emulator) -> None:
    expected = WorkersAIEmbedder().embed(TEXTS)
    lc = WorkersAIEmbeddings(api_key=DEFAULT_CLOUDFLARE_TOKEN)
    assert lc.embed_documents(TEXTS) == expected and lc.embed_query(TEXTS[1]) == expected[1]
    assert asyncio.run(lc.aembed_documents(TEXTS)) == expected
    assert asyncio.run(lc.aembed_query(TEXTS[2])) == expected[2]
    li = WorkersAIEmbedding(api_key=DEFAULT_CLOUDFLARE_TOKEN)
    assert li.get_text_embedding_batch(TEXTS) == expected
    assert li.get_query_embedding(TEXTS[0]) == expected[0]
    assert asyncio.run(li.aget_text_embedding_batch(TEXTS)) == expected
    for shown in (repr(lc), repr(li), li.to_json(), str(lc.model_dump())):
        assert DEFAULT_CLOUDFLARE_TOKEN not in shown
    assert cosine(expected[0], lc.embed_query("the red square")) > cosine(
        expected[1], lc.embed_query("the red square")
    )


def test_langchain_cloudflares_own_class_reads_the_same_route(emulator: Emulator) -> None:
    # langchain-cloudflare builds its URL as {api_base_url}/{account_id}/ai/run/{model}
    base = os.environ["CLOUDFLARE_BASE_URL"].split("/client/v4/accounts/")[0]
    theirs = CloudflareWorkersAIEmbeddings(
        account_id=os.environ["CLOUDFLARE_ACCOUNT_ID"],
        api_token=os.environ["CLOUDFLARE_API_TOKEN"],
        model_name="@cf/baai/bge-small-en-v1.5",
        api_base_url=f"{base}/client/v4/accounts",
    )
    ours = WorkersAIEmbedder("@cf/baai/bge-small-en-v1.5").embed(TEXTS)
    assert theirs.embed_documents(TEXTS) == ours
    assert theirs.embed_query(TEXTS[0]) == ours[0]


def test_notebooks_pick_workers_ai_only_with_the_users_keys() -> None:
    with notebook_session():
        assert isinstance(caption_embeddings(), WordLlamaEmbeddings)  # no keys: offline
        assert isinstance(caption_embedding(), WordLlamaEmbedding)
        assert use_emulator_unless_configured("cloudflare", stream=io.StringIO())
        assert os.environ.get("CLOUDFLARE_API_TOKEN")  # set for the emulator's chat model
        assert isinstance(caption_embeddings(), WordLlamaEmbeddings)  # still offline
        assert isinstance(caption_embedding(), WordLlamaEmbedding)
        os.environ["CLOUDFLARE_ACCOUNT_ID"] = "the-users-account"  # a real user's now
        os.environ["CLOUDFLARE_API_TOKEN"] = "the-users-own-token"
        assert isinstance(caption_embeddings(), WorkersAIEmbeddings)
        assert isinstance(caption_embedding(), WorkersAIEmbedding)
