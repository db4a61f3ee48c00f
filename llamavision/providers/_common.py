"""Small helpers shared by the provider codecs."""

from __future__ import annotations

import json
import warnings
from typing import Any

from llamavision.errors import MalformedResponseError, UnsupportedParameterWarning
from llamavision.messages import GenerationParams


def drop_unsupported(provider: str, params: GenerationParams, names: tuple[str, ...]) -> None:
    """Warn once per call about parameters set by the user that ``provider`` does not accept."""
    dropped = [n for n in names if getattr(params, n) not in (None, ())]
    if dropped:
        warnings.warn(
            f"{provider} does not support {', '.join(dropped)}; "
            f"{'it was' if len(dropped) == 1 else 'they were'} not sent.",
            UnsupportedParameterWarning,
            stacklevel=4,
        )


_decode = json.JSONDecoder().decode  # skips json.loads' per-call argument handling


def load_event(data: str, provider: str) -> dict[str, Any]:
    """Decode one stream event's data, which must be a JSON object."""
    try:
        event = _decode(data)
    except json.JSONDecodeError as exc:
        raise MalformedResponseError(
            f"{provider} sent a stream event that is not valid JSON ({exc.msg}): {clip(data)}",
            provider=provider,
        ) from exc
    if not isinstance(event, dict):
        raise MalformedResponseError(
            f"{provider} sent a stream event that is not an object: {clip(data)}",
            provider=provider,
        )
    return event


def clip(value: Any, limit: int = 300) -> str:
    """Return ``value`` as text short enough for an error message."""
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= limit else text[:limit] + "..."


def decode_error_body(content: bytes) -> Any:
    """Decode an error reply: its JSON, or its text when it is not JSON (an HTML page...)."""
    try:
        return json.loads(content)
    except ValueError:
        return content.decode("utf-8", "replace")
