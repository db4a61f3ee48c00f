"""The emulator's AI Gateway route: OpenAI Chat Completions, as PROVIDERS.md describes it."""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping
from typing import Any

from llamavision.emulator.wire import (
    Answer,
    EmulatorError,
    Received,
    Response,
    State,
)
from llamavision.providers import openai_compat

NAME = "aigateway"
PATH = "/v1/chat/completions"


def client_env(url: str, key: str) -> dict[str, str]:
    """Return the variables that point the client's provider at an emulator at ``url``."""
    return {openai_compat.KEY_ENV: key, openai_compat.BASE_URL_ENV: f"{url}/v1"}


ROLES = {"system", "user", "assistant", "tool"}
_ids = itertools.count(1)
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "insufficient_credits",
    404: "not_found",
    405: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    502: "bad_gateway",
    503: "service_unavailable",
    504: "gateway_timeout",
}


def matches(path: str) -> bool:
    """Return whether this route serves ``path``."""
    return path == PATH


def error_response(error: EmulatorError) -> Response:
    """Render an error in OpenAI's ``{"error": {...}}`` envelope."""
    kind = _ERROR_TYPES.get(error.status, "server_error")
    return Response(
        error.status,
        {
            "error": {
                "message": error.message,
                "type": kind,
                "param": None,
                "code": error.code or kind,
            }
        },
        {"x-request-id": f"req_{next(_ids)}"},
    )


def account(path: str, headers: Mapping[str, str]) -> str:
    """Return the caller: AI Gateway limits rates per API key."""
    return headers.get("authorization", "")


def rate_limit_error(per_minute: float) -> EmulatorError:
    """Return AI Gateway's answer to a request beyond the key's rate limit."""
    return EmulatorError(
        429, f"Rate limit reached: {per_minute:g} requests per minute.", "rate_limit_error"
    )


def quota_error() -> EmulatorError:
    """Return AI Gateway's answer once the account's credits are used up."""
    return EmulatorError(
        402, "Insufficient credits: add credits to continue.", "insufficient_credits"
    )


def auth_error() -> EmulatorError:
    """Return the answer to a request without the accepted key."""
    return EmulatorError(401, "Invalid or missing API key.", "invalid_api_key")


def too_large(limit: int) -> EmulatorError:
    """Return the answer to a request body over ``limit`` bytes."""
    return EmulatorError(413, f"Request body too large (over {limit} bytes).", "request_too_large")


def _bad(message: str) -> EmulatorError:
    return EmulatorError(400, message, "invalid_request_error")


def parse(
    path: str,
    headers: dict[str, str],
    body: Any,
    *,
    provider: str = NAME,
    model: str = openai_compat.DEFAULT_MODEL,
    unknown_model: EmulatorError | None = None,
) -> Received:
    """Validate a chat completion request and return what it asks.

    Other OpenAI-compatible routes (Workers AI's ``/ai/v1/``) pass their provider, model id
    and unknown-model error.
    """
    if not isinstance(body, dict):
        raise _bad("The request body must be a JSON object.")
    if body.get("model") != model:
        raise unknown_model or EmulatorError(
            404, f"The model {body.get('model')!r} does not exist.", "model_not_found"
        )
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _bad("'messages' must be a non-empty array.")
    seen: list[dict[str, Any]] = []
    images: list[str] = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise _bad(f"messages[{i}].role must be one of {sorted(ROLES)}.")
        content = m.get("content")
        text = ""
        if isinstance(content, str):
            text = content
        elif isinstance(content, list):
            for j, part in enumerate(content):
                if not isinstance(part, dict):
                    raise _bad(f"messages[{i}].content[{j}] must be an object.")
                if part.get("type") == "text" and isinstance(part.get("text"), str):
                    text += part["text"]
                elif part.get("type") == "image_url":
                    url = (part.get("image_url") or {}).get("url")
                    if not isinstance(url, str) or not url.startswith(
                        ("https://", "http://", "data:image/")
                    ):
                        raise _bad(
                            f"messages[{i}].content[{j}].image_url.url must be an "
                            "http(s) URL or a data:image/ URL."
                        )
                    images.append(url)
                else:
                    raise _bad(f"messages[{i}].content[{j}] has an unknown type.")
        elif content is None and m["role"] == "assistant" and m.get("tool_calls"):
            pass
        else:
            raise _bad(f"messages[{i}].content must be a string or an array of parts.")
        if m["role"] == "tool" and not isinstance(m.get("tool_call_id"), str):
            raise _bad(f"messages[{i}].tool_call_id is required for tool messages.")
        for call in m.get("tool_calls") or ():
            try:
                json.loads(call["function"]["arguments"])
            except (KeyError, TypeError, ValueError) as exc:
                raise _bad(f"messages[{i}].tool_calls must carry JSON string arguments.") from exc
        seen.append({"role": m["role"], "text": text, "tool_call_id": m.get("tool_call_id")})
    names = {c["id"]: c["function"]["name"] for m in messages for c in m.get("tool_calls") or ()}
    for m in seen:
        m["name"] = names.get(m.pop("tool_call_id"))
    max_tokens = body.get("max_tokens")
    if max_tokens is not None and not (
        isinstance(max_tokens, int) and 0 < max_tokens <= openai_compat.MAX_OUTPUT_TOKENS
    ):
        raise _bad(f"max_tokens must be between 1 and {openai_compat.MAX_OUTPUT_TOKENS}.")
    temperature = body.get("temperature")
    if temperature is not None and not 0 <= temperature <= 2:
        raise _bad("temperature must be between 0 and 2.")
    tools = []
    for t in body.get("tools") or ():
        fn = t.get("function") if isinstance(t, dict) and t.get("type") == "function" else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise _bad("tools[] must be {'type': 'function', 'function': {'name', ...}}.")
        tools.append(fn)
    choice = body.get("tool_choice")
    if (
        choice is not None
        and choice not in ("auto", "none", "required")
        and not (
            isinstance(choice, dict)
            and any(t["name"] == (choice.get("function") or {}).get("name") for t in tools)
        )
    ):
        raise _bad("tool_choice must be 'auto', 'none', 'required' or name an offered tool.")
    if "stream_options" in body and not body.get("stream"):
        raise _bad("stream_options is only allowed when stream is true.")
    return Received(
        provider=provider,
        path=path,
        body=body,
        messages=seen,
        images=images,
        tools=tools,
        tool_choice=choice,
        response_format=body.get("response_format"),
        max_tokens=max_tokens,
        stream=bool(body.get("stream")),
        headers=headers,
    )


def handle(emulator: State, path: str, headers: dict[str, str], raw: bytes) -> Response:
    """Serve one chat completion request."""
    if not emulator.check_key(NAME, headers):
        raise auth_error()
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise _bad(f"The request body is not valid JSON: {exc}") from exc
    received = parse(path, headers, body)
    emulator.record(received)
    return render(received, emulator.answer(received), {"x-request-id": f"req_{next(_ids)}"})


def render(received: Received, answer: Answer, headers: dict[str, str]) -> Response:
    """Render an answer as an OpenAI chat completion, or its SSE chunks when streamed."""
    completion_id = f"chatcmpl-emu{next(_ids)}"
    if not received.stream:
        return Response(body=_completion(completion_id, answer), headers=headers, answered=True)
    include_usage = bool((received.body.get("stream_options") or {}).get("include_usage"))
    events = _stream(completion_id, answer, include_usage)
    return Response(events=events, headers=headers, answered=True)


def _usage(answer: Answer) -> dict[str, int]:
    return {
        "prompt_tokens": answer.prompt_tokens,
        "completion_tokens": answer.completion_tokens,
        "total_tokens": answer.prompt_tokens + answer.completion_tokens,
    }


def _calls(answer: Answer) -> list[dict[str, Any]]:
    return [
        {
            "id": f"call_emu{next(_ids)}",
            "type": "function",
            "function": {"name": name, "arguments": json.dumps(args)},
        }
        for name, args in answer.tool_calls
    ]


def _completion(completion_id: str, answer: Answer) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": answer.text or None}
    if answer.tool_calls:
        message["tool_calls"] = _calls(answer)
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": openai_compat.DEFAULT_MODEL,
        "choices": [{"index": 0, "message": message, "finish_reason": answer.finish_reason}],
        "usage": _usage(answer),
    }


def _stream(completion_id: str, answer: Answer, include_usage: bool) -> list[str]:
    def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
        return json.dumps(
            {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": 1_700_000_000,
                "model": openai_compat.DEFAULT_MODEL,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
        )

    events = [chunk({"role": "assistant", "content": ""})]
    events += [chunk({"content": piece}) for piece in answer.pieces()]
    for index, call in enumerate(_calls(answer)):
        arguments = call["function"]["arguments"]
        events.append(
            chunk(
                {
                    "tool_calls": [
                        {
                            "index": index,
                            "id": call["id"],
                            "type": "function",
                            "function": {"name": call["function"]["name"], "arguments": ""},
                        }
                    ]
                }
            )
        )
        events += [
            chunk(
                {"tool_calls": [{"index": index, "function": {"arguments": arguments[i : i + 8]}}]}
            )
            for i in range(0, len(arguments), 8)
        ]
    events.append(chunk({}, answer.finish_reason))
    if include_usage:
        events.append(
            json.dumps(
                {
                    "id": completion_id,
                    "object": "chat.completion.chunk",
                    "created": 1_700_000_000,
                    "model": openai_compat.DEFAULT_MODEL,
                    "choices": [],
                    "usage": _usage(answer),
                }
            )
        )
    events.append("[DONE]")
    return events
