"""One codec module per wire format; see :data:`PROVIDERS` for the names users pass."""

from __future__ import annotations

from llamavision.messages import Usage
from llamavision.providers import openai_compat, workers_ai
from llamavision.providers.codec import Codec, StreamParser

PROVIDERS: dict[str, Codec] = {
    openai_compat.NAME: openai_compat,
    workers_ai.NAME: workers_ai,
}


def cost_on_each_provider(prompt_tokens: int, completion_tokens: int) -> dict[str, float]:
    """Return what these tokens cost on each provider, in USD, at its published price."""
    usage = Usage(prompt_tokens, completion_tokens, prompt_tokens + completion_tokens)
    return {name: codec.PRICE.cost(usage) for name, codec in PROVIDERS.items()}


__all__ = [
    "PROVIDERS",
    "Codec",
    "StreamParser",
    "cost_on_each_provider",
    "openai_compat",
    "workers_ai",
]
