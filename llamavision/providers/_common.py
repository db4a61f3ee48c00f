"""Small helpers shared by the provider codecs: decoding, typed access, text and counts.

Replies are read defensively: whatever a server sends, a codec returns well-typed values or
raises :class:`~llamavision.errors.MalformedResponseError`, never a bare ``KeyError`` or
``TypeError``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from llamavision.errors import MalformedResponseError
from llamavision.messages import Usage

_decode = json.JSONDecoder().decode  # skips json.loads' per-call argument handling


def load_event(data: str, provider: str) -> dict[str, Any]:
    """Decode one stream event's data, which must be a JSON object."""
    try:
        event = _decode(data)
    except (json.JSONDecodeError, RecursionError) as exc:
        why = exc.msg if isinstance(exc, json.JSONDecodeError) else "nested too deeply"
        raise MalformedResponseError(
            f"{provider} sent a stream event that is not valid JSON ({why}): {clip(data)}",
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
    try:
        text = value if isinstance(value, str) else json.dumps(value, default=str)
    except (ValueError, RecursionError):
        text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def decode_error_body(content: bytes) -> Any:
    """Decode an error reply: its JSON, or its text when it is not JSON (an HTML page...)."""
    try:
        return json.loads(content)
    except (ValueError, RecursionError):
        return content.decode("utf-8", "replace")


def malformed(provider: str, what: str, value: Any) -> MalformedResponseError:
    """Build the error for a reply part of the wrong shape, quoting it."""
    return MalformedResponseError(
        f"{provider} sent {what}: {clip(value)}. The reply cannot be read; if this repeats, "
        "the server is not speaking the provider's format (check base_url).",
        provider=provider,
    )


def as_mapping(value: Any, provider: str, what: str) -> Mapping[str, Any]:
    """Return ``value`` if it is a JSON object, else raise :class:`MalformedResponseError`."""
    if isinstance(value, Mapping):
        return value
    raise malformed(provider, f"{what} that is not an object", value)


def as_list(value: Any, provider: str, what: str) -> list[Any]:
    """Return ``value`` as a list (``None`` is empty), else raise."""
    if value is None:
        return []
    if isinstance(value, list):
        return value
    raise malformed(provider, f"{what} that is not a list", value)


def as_text(value: Any, provider: str, what: str) -> str:
    """Return the text of a value where the wire should carry text.

    ``None`` is no text; a number or boolean is its JSON text (some gateways send numeric
    tokens as JSON numbers); a list or object is a malformed reply.
    """
    if value.__class__ is str:
        return value
    if value is None:
        return ""
    if isinstance(value, (str, bool, int, float)):
        return value if isinstance(value, str) else json.dumps(value)
    raise malformed(provider, f"{what} that is not text", value)


def as_json_text(value: Any) -> str:
    """Return tool-call arguments as JSON text: a string as is, anything else encoded."""
    if value.__class__ is str:
        return value
    if value is None:
        return ""
    try:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    except (TypeError, ValueError, RecursionError):
        return str(value)


def as_count(value: Any) -> int | None:
    """Return a token count: a non-negative whole number, or ``None`` when it is not one."""
    if value.__class__ is int:
        return value if value >= 0 else None
    if isinstance(value, float) and math.isfinite(value) and value >= 0 and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.isascii() and value.isdigit():
        return int(value)
    return None


def parse_usage(usage: Any) -> Usage | None:
    """Read an OpenAI-style usage object; extra keys and unreadable counts are ignored.

    Usage is metadata: a count of the wrong type is treated as absent rather than losing the
    answer it came with.
    """
    if not isinstance(usage, Mapping):
        return None
    prompt = as_count(usage.get("prompt_tokens"))
    completion = as_count(usage.get("completion_tokens"))
    if prompt is None and completion is None:
        return None
    prompt, completion = prompt or 0, completion or 0
    total = as_count(usage.get("total_tokens"))
    return Usage(prompt, completion, total if total is not None else prompt + completion)
