"""One codec module per wire format; see :data:`PROVIDERS` for the names users pass."""

from __future__ import annotations

from types import ModuleType

from llamavision.providers import openai_compat, workers_ai

PROVIDERS: dict[str, ModuleType] = {
    openai_compat.NAME: openai_compat,
    workers_ai.NAME: workers_ai,
}

__all__ = ["PROVIDERS", "openai_compat", "workers_ai"]
