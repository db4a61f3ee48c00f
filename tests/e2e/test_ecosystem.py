"""Custom headers and Cloudflare AI Gateway (the Cloudflare product), over real sockets."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from langchain_core.messages import HumanMessage
from llama_index.core.llms import ChatMessage

from langchain_llamavision import ChatLlamaVision
from llamaindex_llamavision import LlamaVision, LlamaVisionMultiModal
from llamavision import (
    AuthenticationError,
    ConfigurationError,
    LlamaVisionClient,
    Message,
    StreamAccumulator,
)
from llamavision.emulator import Emulator

TEAM = {"X-Team": "vision-rag"}


def received_headers(emulator: Emulator) -> list[dict[str, str]]:
    return [r.headers for r in emulator.requests]


# --------------------------------------------------------------------------- headers


@pytest.mark.parametrize("provider", ["aigateway", "cloudflare"])
def test_default_and_per_call_headers_reach_every_route(provider: str, emulator: Emulator) -> None:
    with LlamaVisionClient(provider, accept_license=True, default_headers=TEAM) as c:
        c.chat("one", extra_headers={"X-Trace": "abc"})
        list(c.stream("two"))
        asyncio.run(c.achat("three"))
    if provider == "cloudflare":
        with LlamaVisionClient(provider, gateway_id="gw", default_headers=TEAM) as c:
            c.chat("through the gateway")
    assert all(h["x-team"] == "vision-rag" for h in received_headers(emulator))
    assert received_headers(emulator)[0]["x-trace"] == "abc"
    assert "x-trace" not in received_headers(emulator)[1]


def test_the_framework_classes_send_them_too(emulator: Emulator) -> None:
    ChatLlamaVision(default_headers=TEAM).invoke("hi", extra_headers={"X-Trace": "lc"})
    LlamaVision(default_headers=TEAM).chat(
        [ChatMessage(content="hi")], extra_headers={"X-Trace": "li"}
    )
    LlamaVisionMultiModal(default_headers=TEAM).complete("hi", image_documents=[])
    sent = received_headers(emulator)
    assert [h.get("x-trace") for h in sent] == ["lc", "li", None]
    assert all(h["x-team"] == "vision-rag" for h in sent)
    assert "X-Trace" not in json.dumps([r.body for r in emulator.requests])  # not in the body


@pytest.mark.parametrize("header", ["Authorization", "cf-aig-authorization"])
def test_a_header_never_replaces_the_credential_silently(header: str, emulator: Emulator) -> None:
    with pytest.raises(ConfigurationError, match="would replace a credential"):
        LlamaVisionClient(default_headers={header: "Bearer other"})
    with pytest.raises(ConfigurationError, match="would replace a credential"):
        LlamaVisionClient().chat("hi", extra_headers={header: "Bearer other"})
    assert not emulator.requests


# --------------------------------------------------------------------------- Cloudflare AI Gateway


def gateway_client(**kwargs: Any) -> LlamaVisionClient:
    options = {"gateway_id": "my-gateway", "accept_license": True, **kwargs}
    return LlamaVisionClient("cloudflare", **options)


def test_gateway_calls_carry_the_cf_aig_headers(emulator: Emulator) -> None:
    emulator.gateway_token = "gw-secret"
    with gateway_client(
        gateway_token="gw-secret",
        gateway_cache_ttl=600,
        gateway_cache_key="caption-42",
        gateway_metadata={"team": "rag", "batch": 7},
    ) as c:
        result = c.chat("hi")
    received = emulator.requests[-1]
    assert received.path.startswith("/v1/emulator-account/my-gateway/workers-ai/@cf/meta/")
    headers = received.headers
    assert headers["cf-aig-authorization"] == "[accepted]"  # the emulator keeps no credential
    assert headers["authorization"] == "[accepted]"  # the Workers AI token, still
    assert (headers["cf-aig-cache-ttl"], headers["cf-aig-cache-key"]) == ("600", "caption-42")
    assert json.loads(headers["cf-aig-metadata"]) == {"team": "rag", "batch": 7}
    gateway = result.metadata["cloudflare_ai_gateway"]
    assert gateway["cache_status"] == "MISS" and len(gateway["log_id"]) == 32


@pytest.mark.parametrize("mode", ["chat", "stream", "achat"])
def test_a_repeated_call_is_a_cache_hit_that_costs_nothing(mode: str, emulator: Emulator) -> None:
    def ask(c: LlamaVisionClient) -> Any:
        if mode == "chat":
            return c.chat("Describe a red square.")
        if mode == "achat":
            return asyncio.run(c.achat("Describe a red square."))
        acc = StreamAccumulator()
        for delta in c.stream("Describe a red square."):
            acc.add(delta)
        return acc.result()

    with gateway_client(gateway_cache_ttl=3600) as c:
        first, second = ask(c), ask(c)
    assert first.metadata["cloudflare_ai_gateway"]["cache_status"] == "MISS" and first.cost > 0
    assert second.metadata["cloudflare_ai_gateway"]["cache_status"] == "HIT"
    assert second.cost == 0.0 and second.text == first.text
    assert emulator.counters["received"] == 1  # the model answered once
    with gateway_client(gateway_cache_ttl=3600, gateway_skip_cache=True) as c:
        assert ask(c).metadata["cloudflare_ai_gateway"]["cache_status"] == "MISS"


def test_frameworks_report_the_gateway_in_their_metadata(emulator: Emulator) -> None:
    llm = ChatLlamaVision(provider="cloudflare", accept_license=True, gateway_id="gw",
                          gateway_cache_ttl=60)  # fmt: skip
    llm.invoke("hi")
    reply = llm.invoke("hi")
    assert reply.response_metadata["cloudflare_ai_gateway"]["cache_status"] == "HIT"
    assert reply.response_metadata["cost"] == 0.0
    li = LlamaVision(provider="cloudflare", accept_license=True, gateway_id="gw",
                     gateway_cache_ttl=60)  # fmt: skip
    answer = li.chat([ChatMessage(content="hi")])
    assert answer.additional_kwargs["cloudflare_ai_gateway"]["cache_status"] == "HIT"


def test_the_gateway_comes_from_the_environment_like_pydantic_ai(
    emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    emulator.gateway_token = "gw-secret"
    monkeypatch.setenv("CLOUDFLARE_GATEWAY_ID", "env-gateway")
    monkeypatch.setenv("CLOUDFLARE_AI_GATEWAY_AUTH", "gw-secret")
    with LlamaVisionClient("cloudflare", accept_license=True) as c:
        assert c.chat("hi").text
        assert "gw-secret" not in repr(c) + repr(c.endpoints)
    assert "/env-gateway/workers-ai/" in emulator.requests[-1].path
    ChatLlamaVision(provider="aigateway").invoke("hi")  # the other provider ignores it


def test_a_wrong_gateway_token_is_an_authentication_error_that_says_which(
    emulator: Emulator,
) -> None:
    emulator.gateway_token = "the-right-one"
    c = gateway_client(gateway_token="a-wrong-one", max_retries=0)
    with pytest.raises(AuthenticationError, match="CLOUDFLARE_AI_GATEWAY_AUTH") as caught:
        c.chat("hi")
    assert "a-wrong-one" not in str(caught.value)


def test_gateway_settings_are_checked(emulator: Emulator) -> None:
    with pytest.raises(ConfigurationError, match="routes provider='cloudflare'"):
        LlamaVisionClient("aigateway", gateway_id="gw")
    with pytest.raises(ConfigurationError, match="set gateway_id"):
        LlamaVisionClient("cloudflare", gateway_cache_ttl=60)
    with pytest.raises(ConfigurationError, match="routes provider='cloudflare'"):
        ChatLlamaVision(provider="aigateway", gateway_id="gw")


def test_langchain_messages_through_the_gateway_keep_images(emulator: Emulator) -> None:
    import base64
    from pathlib import Path

    data = (
        Path(__file__).resolve().parents[2] / "examples" / "images" / "red-square.png"
    ).read_bytes()
    image = {"type": "image", "base64": base64.b64encode(data).decode(), "mime_type": "image/png"}
    llm = ChatLlamaVision(provider="cloudflare", accept_license=True, gateway_id="gw")
    reply = llm.invoke([HumanMessage(content=[{"type": "text", "text": "What?"}, image])])
    assert "640x480 PNG" in reply.text
    assert Message  # the core's message type is what the adapters translate to


def test_the_license_handshake_stays_out_of_the_gateway_cache(emulator: Emulator) -> None:
    with gateway_client(gateway_cache_ttl=600, gateway_cache_key="one-key") as c:
        assert "Thank you" not in c.chat("hi").text  # 'agree' was not cached under the key
