"""A loopback HTTP server for the benchmarks: precomputed replies, no per-request work.

It runs in its own process, so its CPU never counts against the client being measured.
Routes: ``/{scenario}/v1/chat/completions`` (OpenAI format) and
``/{scenario}/client/v4/accounts/{account}/ai/run/{model}`` (Workers AI format). The reply is
streamed when the request body asks for ``"stream": true``.
"""

from __future__ import annotations

import asyncio
import json
import sys

MODEL = "meta/llama-3.2-11b-vision-instruct"
USAGE = {"prompt_tokens": 20, "completion_tokens": 2000, "total_tokens": 2020}


def _oa_chunk(delta: dict[str, object], finish: str | None = None) -> str:
    return json.dumps(
        {
            "id": "chatcmpl-bench",
            "object": "chat.completion.chunk",
            "created": 1_700_000_000,
            "model": MODEL,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
    )


def _events(items: list[str]) -> bytes:
    return "".join(f"data: {e}\n\n" for e in [*items, "[DONE]"]).encode()


def openai_stream(chunks: int, tool_fragments: int = 0) -> bytes:
    """Build an OpenAI-format stream of ``chunks`` text pieces, or one tool call in fragments."""
    items = [_oa_chunk({"role": "assistant", "content": ""})]
    items += [_oa_chunk({"content": " tok"}) for _ in range(chunks)]
    if tool_fragments:
        items.append(
            _oa_chunk(
                {
                    "tool_calls": [
                        {
                            "index": 0,
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "lookup", "arguments": ""},
                        }
                    ]
                }
            )
        )
        args = json.dumps({"q": "x" * (tool_fragments * 4 - 10)})
        step = -(-len(args) // tool_fragments)
        items += [
            _oa_chunk({"tool_calls": [{"index": 0, "function": {"arguments": args[i : i + step]}}]})
            for i in range(0, len(args), step)
        ]
    items.append(_oa_chunk({}, "tool_calls" if tool_fragments else "stop"))
    items.append(
        json.dumps(
            {
                "id": "chatcmpl-bench",
                "object": "chat.completion.chunk",
                "created": 1_700_000_000,
                "model": MODEL,
                "choices": [],
                "usage": USAGE,
            }
        )
    )
    return _events(items)


def cloudflare_stream(chunks: int) -> bytes:
    """Build a Workers AI stream, in the shape seen in the wild (``response`` + ``p`` padding)."""
    items = [json.dumps({"response": " tok", "p": "abcdefgh"}) for _ in range(chunks)]
    items.append(json.dumps({"response": "", "usage": USAGE}))
    return _events(items)


def openai_reply() -> bytes:
    """Build a short non-streamed chat completion."""
    return json.dumps(
        {
            "id": "chatcmpl-bench",
            "object": "chat.completion",
            "created": 1_700_000_000,
            "model": MODEL,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "Hello there."},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 20, "completion_tokens": 3, "total_tokens": 23},
        }
    ).encode()


def cloudflare_reply() -> bytes:
    """Build a short non-streamed Workers AI reply."""
    return json.dumps(
        {
            "result": {
                "response": "Hello there.",
                "tool_calls": [],
                "usage": {"prompt_tokens": 20, "completion_tokens": 3, "total_tokens": 23},
            },
            "success": True,
            "errors": [],
            "messages": [],
        }
    ).encode()


SCENARIOS = {"short": 5, "s1000": 1000, "s2000": 2000, "s5000": 5000, "s50000": 50_000}


def build() -> dict[tuple[str, str, bool], bytes]:
    """Precompute every reply: (scenario, format, streamed) -> body."""
    bodies: dict[tuple[str, str, bool], bytes] = {}
    for name, n in SCENARIOS.items():
        bodies[(name, "openai", True)] = openai_stream(n)
        bodies[(name, "cloudflare", True)] = cloudflare_stream(n)
        bodies[(name, "openai", False)] = openai_reply()
        bodies[(name, "cloudflare", False)] = cloudflare_reply()
    bodies[("tool500", "openai", True)] = openai_stream(0, tool_fragments=500)
    return bodies


async def serve(port: int) -> None:
    """Serve until killed; print the port once listening."""
    bodies = build()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                path = lines[0].split(" ")[1]
                length = next(
                    (
                        int(line.split(":", 1)[1])
                        for line in lines
                        if line.lower().startswith("content-length:")
                    ),
                    0,
                )
                body = await reader.readexactly(length)
                scenario = path.split("/")[1]
                fmt = "openai" if path.endswith("/chat/completions") else "cloudflare"
                streamed = bool(json.loads(body or b"{}").get("stream"))
                payload = bodies[(scenario, fmt, streamed)]
                ctype = b"text/event-stream" if streamed else b"application/json"
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: "
                    + ctype
                    + b"\r\ncontent-length: "
                    + str(len(payload)).encode()
                    + b"\r\nx-request-id: bench\r\n\r\n"
                    + payload
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=512)
    print(server.sockets[0].getsockname()[1], flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(serve(int(sys.argv[1]) if len(sys.argv) > 1 else 0))
