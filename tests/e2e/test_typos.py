"""A mistyped keyword is an error naming the closest parameter, on every class and per call."""

from __future__ import annotations

from typing import Any

import pytest
from llama_index.core.llms import ChatMessage

from langchain_llamavision import ChatLlamaVision
from llamaindex_llamavision import LlamaVision, LlamaVisionMultiModal
from llamavision import ConfigurationError, LlamaVisionClient
from llamavision.emulator import Emulator


@pytest.mark.parametrize(
    ("make", "typo", "closest"),
    [
        (LlamaVisionClient, {"temprature": 0.2}, "temperature"),  # said to go to chat()
        (ChatLlamaVision, {"max_token": 50}, "max_tokens"),
        (LlamaVision, {"temprature": 0.2}, "temperature"),
        (LlamaVisionMultiModal, {"max_retrys": 1}, "max_retries"),
    ],
)
def test_a_typo_at_construction_names_the_closest(
    emulator: Emulator, make: Any, typo: dict[str, Any], closest: str
) -> None:
    with pytest.raises(ConfigurationError, match=f"Did you mean '{closest}'"):
        make(**typo)


def test_a_typo_per_call_names_the_closest_and_sends_nothing(emulator: Emulator) -> None:
    with pytest.raises(ConfigurationError, match="Did you mean 'max_tokens'"):
        ChatLlamaVision().invoke("hi", max_token=5)
    with pytest.raises(ConfigurationError, match="Did you mean 'temperature'"):
        LlamaVision().chat([ChatMessage(role="user", content="hi")], temprature=0.2)
    with pytest.raises(ConfigurationError, match="Did you mean 'temperature'"):
        LlamaVisionClient().chat("hi", temprature=0.2)
    assert emulator.counters["received"] == 0


def test_provider_specific_fields_go_through_the_documented_field(emulator: Emulator) -> None:
    ChatLlamaVision(model_kwargs={"logprobs": True}).invoke("hi", extra_body={"user": "u1"})
    body = emulator.requests[-1].body
    assert body["logprobs"] is True and body["user"] == "u1"
    LlamaVision(additional_kwargs={"logprobs": True}).complete("hi")
    assert emulator.requests[-1].body["logprobs"] is True
