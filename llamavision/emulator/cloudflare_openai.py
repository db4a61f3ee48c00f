"""The emulator's Workers AI OpenAI-compatible route: ``/ai/v1/chat/completions``, ``/embeddings``.

PROVIDERS.md section 5: OpenAI chat completions in and out (the model in the body with its
``@cf/...`` name), Cloudflare's account, token, license gate, rate limits and error envelope
(``{"success": false, "errors": [...]}``), as the native route has them. It is what the
OpenAI SDKs (``base_url=.../accounts/{id}/ai/v1``) and LiteLLM's ``cloudflare/`` provider call.
``/ai/v1/embeddings`` takes OpenAI's embeddings body (``model``: a ``@cf/baai/bge-*`` name,
``input``, ``encoding_format`` ``float`` or ``base64``) and answers with OpenAI's list of
embeddings, the native route's vectors.
"""

from __future__ import annotations

import base64
import json
import re
import struct
from collections.abc import Mapping
from typing import Any

from llamavision.emulator import aigateway, cloudflare
from llamavision.emulator.wire import Answer, EmulatorError, Response, State
from llamavision.providers import workers_ai

NAME = cloudflare.NAME  # the same provider: one account, one rate limit, the same faults
ROUTE = re.compile(r"^/client/v4/accounts/([^/]+)/ai/v1/(chat/completions|embeddings)$")

error_response = cloudflare.error_response
rate_limit_error = cloudflare.rate_limit_error
quota_error = cloudflare.quota_error
auth_error = cloudflare.auth_error
too_large = cloudflare.too_large


def matches(path: str) -> bool:
    """Return whether this route serves ``path``."""
    return ROUTE.match(path) is not None


def account(path: str, headers: Mapping[str, str]) -> str:
    """Return the caller: Workers AI limits rates per account, whichever route is used."""
    match = ROUTE.match(path)
    return match.group(1) if match else ""


def handle(emulator: State, path: str, headers: dict[str, str], raw: bytes) -> Response:
    """Serve one chat completion, with Workers AI's license gate.

    As on the native route, a request whose only message is the user's ``agree`` accepts
    Meta's license for the account.
    """
    if not emulator.check_key(NAME, headers):
        raise auth_error()
    account_id = account(path, headers)
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise EmulatorError(400, f"Invalid JSON body: {exc}", 5006) from exc
    if path.endswith("/embeddings"):
        return _embeddings(emulator, body)
    unknown = EmulatorError(
        400, f"No such model {body.get('model') if isinstance(body, dict) else None}", 5007
    )
    received = aigateway.parse(
        path, headers, body, provider=NAME, model=workers_ai.DEFAULT_MODEL, unknown_model=unknown
    )
    ray = cloudflare.ray_headers()
    texts = [m["text"] for m in received.messages]
    if texts == ["agree"] and received.messages[0]["role"] == "user" and not received.images:
        emulator.agreed_accounts.add(account_id)
        thanks = Answer(cloudflare.THANKS, [], "stop", 1, len(cloudflare.THANKS.split()))
        return aigateway.render(received, thanks, ray)
    if emulator.license_gate and account_id not in emulator.agreed_accounts:
        raise EmulatorError(403, cloudflare.LICENSE_MESSAGE, workers_ai.LICENSE_ERROR_CODE)
    emulator.record(received)
    return aigateway.render(received, emulator.answer(received), ray)


def _embeddings(emulator: State, body: Any) -> Response:
    """Serve OpenAI's embeddings request with a bge model's vectors (as ``/ai/run/`` makes them)."""
    model = body.get("model") if isinstance(body, dict) else None
    if model not in workers_ai.EMBEDDING_MODELS:
        raise EmulatorError(400, f"No such model {model}", 5007)
    encoding = body.get("encoding_format", "float")
    if encoding not in ("float", "base64"):
        raise EmulatorError(400, "'encoding_format' must be 'float' or 'base64'", 5006)
    vectors = cloudflare.embed(emulator, str(model), body, "input")  # checks the input
    texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
    data = []
    for index, vector in enumerate(vectors):
        packed = struct.pack(f"<{len(vector)}f", *vector)  # OpenAI's base64: float32, LE
        value = base64.b64encode(packed).decode() if encoding == "base64" else vector
        data.append({"object": "embedding", "index": index, "embedding": value})
    tokens = sum(len(text.split()) for text in texts)
    usage = {"prompt_tokens": tokens, "total_tokens": tokens}
    reply = {"object": "list", "data": data, "model": model, "usage": usage}
    return Response(body=reply, headers=cloudflare.ray_headers(), answered=True)
