"""The emulator's Cloudflare Workers AI route: ``/ai/run/``, as PROVIDERS.md describes it."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import itertools
import json
import re
import time
import uuid
from collections.abc import Mapping
from typing import Any

from llamavision.emulator.wire import (
    DEFAULT_ACCOUNT_ID,
    Answer,
    EmulatorError,
    Received,
    Response,
    State,
)
from llamavision.providers import workers_ai

NAME = "cloudflare"
ROUTE = re.compile(r"^/client/v4/accounts/([^/]+)/ai/run/(.+)$")


def client_env(url: str, key: str) -> dict[str, str]:
    """Return the variables that point the client's provider at an emulator at ``url``."""
    return {
        workers_ai.KEY_ENV: key,
        workers_ai.ACCOUNT_ENV: DEFAULT_ACCOUNT_ID,
        workers_ai.BASE_URL_ENV: f"{url}/client/v4/accounts/{{account_id}}/ai/run",
        workers_ai.GATEWAY_BASE_URL_ENV: f"{url}/v1/{{account_id}}/{{gateway_id}}/workers-ai",
    }


GATEWAY_ROUTE = re.compile(r"^/v1/([^/]+)/([^/]+)/workers-ai/(.+)$")  # Cloudflare AI Gateway
ROLES = {"system", "user", "assistant", "tool"}
LICENSE_MESSAGE = (
    "Prior to using this model, you must submit the prompt 'agree' to agree to the Meta "
    "Llama 3.2 Community License and Acceptable Use Policy."
)
THANKS = (
    "Thank you for agreeing to the Meta Llama 3.2 Community License. You may now use the model."
)
DEFAULT_MAX_TOKENS = 256  # Workers AI's documented default for this model
_ids = itertools.count(1)
_CODES = {
    400: 5006,
    401: 10000,
    403: 10000,
    404: 5007,
    405: 7001,
    408: 3007,
    413: 3006,
    429: 3021,
    500: 3043,
    502: 3040,
    503: 3040,
    504: 3046,
}


def ray_headers() -> dict[str, str]:
    """Return the ``cf-ray`` header of one answer (Cloudflare's request id)."""
    return {"cf-ray": f"emu{next(_ids):08x}-LHR"}


def matches(path: str) -> bool:
    """Return whether this route serves ``path`` (directly, or through Cloudflare AI Gateway)."""
    return ROUTE.match(path) is not None or GATEWAY_ROUTE.match(path) is not None


def error_response(error: EmulatorError) -> Response:
    """Render an error in Cloudflare's ``{"success": false, "errors": [...]}`` envelope."""
    return Response(
        error.status,
        {
            "result": None,
            "success": False,
            "errors": [
                {"code": error.code or _CODES.get(error.status, 3043), "message": error.message}
            ],
            "messages": [],
        },
        ray_headers(),
    )


def account(path: str, headers: Mapping[str, str]) -> str:
    """Return the caller: Workers AI limits rates per account."""
    match = ROUTE.match(path) or GATEWAY_ROUTE.match(path)
    return match.group(1) if match else ""


def rate_limit_error(per_minute: float) -> EmulatorError:
    """Return Workers AI's answer beyond the per-minute limit (code 3021, seen in the wild)."""
    return EmulatorError(429, "rate limiting: inference request per min rate reached", 3021)


def quota_error() -> EmulatorError:
    """Return Workers AI's answer once the daily free allocation is used up (3036)."""
    return EmulatorError(
        429,
        "You have used up your daily free allocation of 10,000 neurons. Please upgrade to "
        "Cloudflare's Workers Paid plan if you would like to continue usage.",
        3036,
    )


def auth_error() -> EmulatorError:
    """Return the answer to a request without the accepted token."""
    return EmulatorError(401, "Authentication error", 10000)


def too_large(limit: int) -> EmulatorError:
    """Return the answer to a request body over ``limit`` bytes (Workers AI 3006)."""
    return EmulatorError(413, f"Request is too large (over {limit} bytes)", 3006)


def _bad(message: str) -> EmulatorError:
    return EmulatorError(400, message, 5006)


def _image(value: Any) -> str:
    if isinstance(value, list):
        if not all(isinstance(b, int) and 0 <= b < 256 for b in value):
            raise _bad("'image' must be an array of bytes (0-255) or a base64 string.")
        return base64.b64encode(bytes(value)).decode()
    if isinstance(value, str):
        return value
    raise _bad("'image' must be an array of bytes (0-255) or a base64 string.")


def parse(path: str, headers: dict[str, str], body: Any) -> Received:
    """Validate a Workers AI request (prompt or messages shape) and return what it asks."""
    if not isinstance(body, dict):
        raise _bad("Type mismatch of '/', 'object' not in 'string'")
    images: list[str] = []
    seen: list[dict[str, Any]] = []
    if "messages" in body:
        messages = body["messages"]
        if not isinstance(messages, list) or not messages:
            raise _bad("required properties at '/messages' are 'role, content'")
        names: dict[str, str] = {}
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or m.get("role") not in ROLES:
                raise _bad(f"Type mismatch of '/messages/{i}/role'")
            content, text = m.get("content"), ""
            if isinstance(content, str):
                text = content
            elif isinstance(content, list):
                for j, part in enumerate(content):
                    if isinstance(part, dict) and part.get("type") == "text":
                        text += str(part.get("text", ""))
                    elif isinstance(part, dict) and part.get("type") == "image_url":
                        url = (part.get("image_url") or {}).get("url", "")
                        if not isinstance(url, str) or not url.startswith("data:image/"):
                            raise _bad(
                                f"'/messages/{i}/content/{j}/image_url/url' must be a "
                                "data URL: remote image URLs are not fetched."
                            )
                        images.append(url)
                    else:
                        raise _bad(f"Type mismatch of '/messages/{i}/content/{j}'")
            else:
                raise _bad(f"Type mismatch of '/messages/{i}/content'")
            for call in m.get("tool_calls") or ():
                names[str(call.get("id"))] = call.get("name", "")
            name = m.get("name") or names.get(str(m.get("tool_call_id")))
            seen.append({"role": m["role"], "text": text, "name": name})
    elif isinstance(body.get("prompt"), str):
        seen.append({"role": "user", "text": body["prompt"]})
    else:
        raise _bad("required properties at '/' are 'prompt' | 'messages'")
    if "image" in body:
        images.append(_image(body["image"]))
    if len(images) > 1:
        raise _bad("This model accepts one image per request.")
    temperature = body.get("temperature")
    if temperature is not None and not 0 <= temperature <= 5:
        raise _bad("'/temperature' must be between 0 and 5")
    top_k = body.get("top_k")
    if top_k is not None and not 1 <= top_k <= 50:
        raise _bad("'/top_k' must be between 1 and 50")
    tools = []
    for t in body.get("tools") or ():
        fn = t.get("function") if isinstance(t, dict) and "function" in t else t
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise _bad("'/tools' items need a name, description and parameters")
        tools.append(fn)
    return Received(
        provider=NAME,
        path=path,
        body=body,
        messages=seen,
        images=images,
        tools=tools,
        response_format=body.get("response_format"),
        max_tokens=body.get("max_tokens", DEFAULT_MAX_TOKENS),
        stream=bool(body.get("stream")),
        headers=headers,
    )


def handle(emulator: State, path: str, headers: dict[str, str], raw: bytes) -> Response:
    """Serve one request, directly or through Cloudflare AI Gateway."""
    direct = ROUTE.match(path)
    if direct is not None:
        account, model = direct.groups()
        return _run(emulator, account, model, path, headers, raw)
    account, gateway, model = GATEWAY_ROUTE.match(path).groups()  # type: ignore[union-attr]
    token = emulator.gateway_token
    if token is not None and headers.get("cf-aig-authorization") != f"Bearer {token}":
        raise EmulatorError(401, "Unauthorized: this gateway needs a valid cf-aig-authorization")
    ttl = headers.get("cf-aig-cache-ttl")
    key = (
        headers.get("cf-aig-cache-key")
        or hashlib.sha256(f"{account}/{gateway}/{model}".encode() + raw).hexdigest()
    )
    use_cache = ttl is not None and ttl.isdigit() and headers.get("cf-aig-skip-cache") != "true"
    cached = emulator.gateway_cache.get(key) if use_cache else None
    if cached is not None and cached[0] > time.monotonic():
        response, status = _copy(cached[1]), "HIT"
    else:
        response, status = _run(emulator, account, model, path, headers, raw), "MISS"
        if use_cache and response.status == 200 and ttl is not None:
            emulator.gateway_cache[key] = (time.monotonic() + int(ttl), _copy(response))
    response.headers.update(
        {
            "cf-aig-cache-status": status,
            "cf-aig-log-id": uuid.uuid4().hex,
            "cf-aig-event-id": uuid.uuid4().hex,
        }
    )
    return response


def _copy(response: Response) -> Response:
    """Copy a response (faults alter what they are given; the cache keeps its own)."""
    events = None if response.events is None else list(response.events)
    return dataclasses.replace(response, headers=dict(response.headers), events=events)


def _run(
    emulator: State, account: str, model: str, path: str, headers: dict[str, str], raw: bytes
) -> Response:
    """Serve one Workers AI run, with the license gate."""
    if not emulator.check_key(NAME, headers):
        raise auth_error()
    if model != workers_ai.DEFAULT_MODEL and model not in workers_ai.EMBEDDING_MODELS:
        raise EmulatorError(400, f"No such model {model}", 5007)
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise _bad(f"Invalid JSON body: {exc}") from exc
    if model in workers_ai.EMBEDDING_MODELS:
        return _embeddings(emulator, model, body)
    ray = ray_headers()
    if isinstance(body, dict) and body.get("prompt") == "agree" and "messages" not in body:
        emulator.agreed_accounts.add(account)
        return Response(body=_envelope({"response": THANKS}), headers=ray)
    if emulator.license_gate and account not in emulator.agreed_accounts:
        raise EmulatorError(403, LICENSE_MESSAGE, workers_ai.LICENSE_ERROR_CODE)
    received = parse(path, headers, body)
    emulator.record(received)
    answer = emulator.answer(received)
    if not received.stream:
        return Response(body=_envelope(_result(answer)), headers=ray, answered=True)
    shape = emulator.cloudflare_stream_shape
    events = _choices_stream(answer) if shape == "choices" else _response_stream(answer)
    return Response(events=events, headers=ray, answered=True)


def _embeddings(emulator: State, model: str, body: Any) -> Response:
    """Serve a bge embedding run: ``{"text": str | [str]}`` -> ``{"shape", "data", "pooling"}``."""
    pooling = body.get("pooling", "mean") if isinstance(body, dict) else None
    if pooling not in ("mean", "cls"):
        raise _bad("'/pooling' must be 'mean' or 'cls'")
    vectors = embed(emulator, model, body, "text")
    result = {"shape": [len(vectors), len(vectors[0])], "data": vectors, "pooling": pooling}
    return Response(body=_envelope(result), headers=ray_headers(), answered=True)


def embed(emulator: State, model: str, body: Any, field: str) -> list[list[float]]:
    """Check the texts of an embedding request (``body[field]``) and return their vectors.

    The vectors are :func:`hashed_embedding`'s: texts that share words are near, like a real
    model's for captions that name the same colours and things (not its numbers).
    """
    texts = body.get(field) if isinstance(body, dict) else None
    texts = [texts] if isinstance(texts, str) else texts
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        raise _bad(f"required properties at '/' are '{field}' (a string or an array of strings)")
    limit = workers_ai.MAX_EMBEDDING_BATCH
    if not 1 <= len(texts) <= limit:
        raise _bad(f"'/{field}' must hold 1 to {limit} items")
    dimensions = workers_ai.EMBEDDING_MODELS[model][0]
    emulator.count_embedded(len(texts))
    return [hashed_embedding(text, dimensions) for text in texts]


def hashed_embedding(text: str, dimensions: int) -> list[float]:
    """Return a unit vector of ``text``'s words, each hashed to a dimension (deterministic)."""
    vector = [0.0] * dimensions
    for word in re.findall(r"[a-z0-9]+", text.lower()) or [""]:
        digest = hashlib.blake2b(word.encode(), digest_size=8).digest()
        index = int.from_bytes(digest[:4], "little") % dimensions
        vector[index] += 1.0 if digest[4] & 1 else -1.0
    norm = sum(x * x for x in vector) ** 0.5
    if not norm:  # the words' signs cancelled out
        vector[0], norm = 1.0, 1.0
    return [round(x / norm, 6) for x in vector]


def _envelope(result: dict[str, Any]) -> dict[str, Any]:
    return {"result": result, "success": True, "errors": [], "messages": []}


def _usage(answer: Answer) -> dict[str, Any]:
    return {
        "prompt_tokens": answer.prompt_tokens,
        "completion_tokens": answer.completion_tokens,
        "total_tokens": answer.prompt_tokens + answer.completion_tokens,
    }


def _result(answer: Answer) -> dict[str, Any]:
    return {
        "response": answer.text,
        "tool_calls": [{"name": n, "arguments": a} for n, a in answer.tool_calls],
        "usage": _usage(answer),
    }


def _padding(i: int) -> str:
    return "abcdefghijklmnopqrstuvwxyz0123456789"[: 6 + i % 24]


def _response_stream(answer: Answer) -> list[str]:
    """Render the shape seen in the wild: ``response`` pieces with ``p`` padding, then usage."""
    events = [
        json.dumps({"response": piece, **({"tool_calls": []} if i == 0 else {}), "p": _padding(i)})
        for i, piece in enumerate(answer.pieces())
    ]
    if answer.tool_calls:
        events.append(
            json.dumps(
                {
                    "response": "",
                    "tool_calls": [{"name": n, "arguments": a} for n, a in answer.tool_calls],
                    "p": _padding(3),
                }
            )
        )
    events.append(json.dumps({"tool_calls": [], "p": _padding(len(events))}))
    events.append(json.dumps({"response": "", "usage": _usage(answer)}))
    events.append("[DONE]")
    return events


def _choices_stream(answer: Answer) -> list[str]:
    """Render newer models' shape: OpenAI-style chunks, incremental usage, then the total."""
    events = [
        json.dumps(
            {
                "id": "chatcmpl-cf",
                "object": "chat.completion.chunk",
                "created": 1_700_000_000,
                "model": workers_ai.DEFAULT_MODEL,
                "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}],
                "usage": {
                    "prompt_tokens": answer.prompt_tokens,
                    "completion_tokens": 1,
                    "total_tokens": answer.prompt_tokens + 1,
                },
            }
        )
        for piece in answer.pieces()
    ]
    events.append(json.dumps({"response": "", "usage": _usage(answer)}))
    events.append("[DONE]")
    return events
