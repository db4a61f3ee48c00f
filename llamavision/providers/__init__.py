"""One codec module per wire format; see :data:`PROVIDERS` for the names users pass."""

from __future__ import annotations

from llamavision.providers import openai_compat, workers_ai
from llamavision.providers.codec import Codec, StreamParser

PROVIDERS: dict[str, Codec] = {
    openai_compat.NAME: openai_compat,
    workers_ai.NAME: workers_ai,
}

__all__ = ["PROVIDERS", "Codec", "StreamParser", "openai_compat", "workers_ai"]
