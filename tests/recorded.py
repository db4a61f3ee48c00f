"""Streams as real OpenAI-compatible servers send them, served through ``httpx.MockTransport``.

``LLAMA_CPP_PYTHON_TOOL_STREAM`` follows llama-cpp-python's server, which repeats the call's id,
type and name (and a legacy ``function_call``) in every fragment; ``LLAMA_SERVER_TOOL_STREAM``
is llama.cpp's own server, captured from ``shared/realserver.sh`` (id and name only first).
``NUMERIC_TOKEN_STREAM`` is a gateway that sends numeric tokens as JSON numbers (PROVIDERS.md 3).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx

TOOL_ID = "call__0_get_weather_cmpl-7"
ARGUMENT_PIECES = ['{"city', '": "', "Oslo", '"}']


def _chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-7",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "local",
        "choices": [{"index": 0, "finish_reason": finish, "logprobs": None, "delta": delta}],
    }


def _fragment(piece: str, *, repeat: bool, first: bool) -> dict[str, Any]:
    call: dict[str, Any] = {"index": 0, "function": {"arguments": piece}}
    if repeat or first:
        call.update(id=TOOL_ID, type="function")
        call["function"]["name"] = "get_weather"
    delta: dict[str, Any] = {"tool_calls": [call]}
    if repeat:
        delta.update(role=None, content=None)
        delta["function_call"] = {"name": "get_weather", "arguments": piece}
    return _chunk(delta)


def _tool_stream(repeat: bool) -> list[dict[str, Any]]:
    head = {"role": "assistant", "content": None}
    if repeat:
        head.update(function_call=None, tool_calls=None)
    return [
        _chunk(head),
        *(_fragment(p, repeat=repeat, first=i == 0) for i, p in enumerate(ARGUMENT_PIECES)),
        _chunk({} if not repeat else {"role": None, "content": None}, "tool_calls"),
    ]


LLAMA_CPP_PYTHON_TOOL_STREAM = _tool_stream(repeat=True)
LLAMA_SERVER_TOOL_STREAM = _tool_stream(repeat=False)
NUMERIC_TOKEN_STREAM = [
    _chunk({"role": "assistant", "content": ""}),
    _chunk({"content": "The answer is "}),
    _chunk({"content": 42}),
    _chunk({"content": " and "}),
    _chunk({"content": 0}),
    _chunk({"content": "."}, "stop"),
]


def sse_body(events: list[dict[str, Any]]) -> bytes:
    """Frame events as a server-sent event stream ending in ``[DONE]``."""
    frames = [f"data: {json.dumps(e)}\n\n" for e in events] + ["data: [DONE]\n\n"]
    return "".join(frames).encode()


class Chunks(httpx.SyncByteStream):
    """A response body delivered in the given pieces."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks

    def __iter__(self) -> Iterator[bytes]:
        yield from self.chunks


def serving(chunks: list[bytes]) -> dict[str, Any]:
    """Return client options whose sync transport answers every request with ``chunks``."""

    def reply(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200, stream=Chunks(chunks), headers={"content-type": "text/event-stream"}
        )

    return {
        "api_key": "sk-local",
        "max_retries": 0,
        "http_client": httpx.Client(transport=httpx.MockTransport(reply)),
    }


def http_clients(events: list[dict[str, Any]]) -> dict[str, Any]:
    """Return client options whose transports (sync and async) answer with ``events``."""
    body = sse_body(events)

    def reply(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=body, headers={"content-type": "text/event-stream"})

    return {
        **serving([body]),
        "base_url": "http://local.test/v1",
        "http_async_client": httpx.AsyncClient(transport=httpx.MockTransport(reply)),
    }
