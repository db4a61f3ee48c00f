"""Every documented provider error maps to the right type, retry policy and advice.

The Workers AI rows are Cloudflare's error table as PROVIDERS.md lists it (code, HTTP
status); the OpenAI-shaped rows are the same conditions in ``{"error": {...}}`` envelopes.
"""

from __future__ import annotations

import json

import pytest

from llamavision import (
    AuthenticationError,
    BadRequestError,
    InsufficientCreditsError,
    LicenseAgreementRequiredError,
    NotFoundError,
    PermissionDeniedError,
    QuotaExceededError,
    RateLimitError,
    RequestTooLargeError,
    ServerError,
    ServiceUnavailableError,
)
from llamavision.errors import APIStatusError, LlamaVisionError
from llamavision.providers import openai_compat as oa
from llamavision.providers import workers_ai as cf

MODEL = "@cf/meta/llama-3.2-11b-vision-instruct"

# code, HTTP status, error type, retried, account-level, words the advice must contain
WORKERS_AI = [
    (5007, 400, NotFoundError, False, True, MODEL),
    (5004, 400, BadRequestError, False, False, "image"),
    (3003, 400, BadRequestError, False, False, "Check the request"),
    (3039, 400, BadRequestError, False, False, "lora"),
    (5016, 403, LicenseAgreementRequiredError, False, True, "accept_license=True"),
    (5018, 403, PermissionDeniedError, False, True, MODEL),
    (3023, 403, PermissionDeniedError, False, True, "blocked"),
    (3041, 403, PermissionDeniedError, False, True, MODEL),
    (5019, 405, BadRequestError, False, False, "deprecated"),
    (5005, 405, BadRequestError, False, False, "lora"),
    (3042, 404, NotFoundError, False, True, MODEL),
    (3006, 413, RequestTooLargeError, False, False, "smaller image"),
    (3007, 408, ServiceUnavailableError, True, False, "timed out"),
    (3008, 408, ServiceUnavailableError, True, False, "aborted"),
    (3036, 429, QuotaExceededError, False, True, "daily reset"),
    (3040, 429, ServiceUnavailableError, True, False, "out of capacity"),
    (3021, 429, RateLimitError, True, False, "rate_limit"),
    (10000, 401, AuthenticationError, False, True, "CLOUDFLARE_API_TOKEN"),
]


def cf_error(status: int, code: int, message: str = "as documented") -> LlamaVisionError:
    body = {"result": None, "success": False, "errors": [{"code": code, "message": message}]}
    return cf.error_from(status, {"cf-ray": "r1"}, json.dumps(body).encode(), model=MODEL)


@pytest.mark.parametrize(
    ("code", "status", "cls", "retried", "account", "says"),
    WORKERS_AI,
    ids=[str(row[0]) for row in WORKERS_AI],
)
def test_workers_ai_error_codes(
    code: int, status: int, cls: type, retried: bool, account: bool, says: str
) -> None:
    error = cf_error(status, code)
    assert type(error) is cls
    assert (error.retryable, error.account_level) == (retried, account)
    assert says.lower() in error.message.lower()
    assert (error.code, error.status_code, error.request_id) == (code, status, "r1")


def test_the_two_429s_of_workers_ai_have_opposite_answers() -> None:
    quota = cf_error(429, 3036, "You have used up your daily free allocation of 10,000 neurons.")
    capacity = cf_error(429, 3040, "No more data centers to forward the request to")
    assert isinstance(quota, RateLimitError) and not quota.retryable  # except RateLimitError
    assert capacity.retryable and not capacity.account_level


def openai_error(status: int, error: dict[str, object], **headers: str) -> LlamaVisionError:
    return oa.error_from(status, headers, json.dumps({"error": error}).encode(), model="m-1")


QUOTA_4006 = {
    "message": "4006: you have used up your daily free allocation of 10,000 neurons, please "
    "upgrade to Cloudflare's Workers Paid plan if you would like to continue usage.",
    "code": "internal_error",
}
OPENAI_SHAPED = [
    (429, QUOTA_4006, QuotaExceededError, False, True),
    (500, QUOTA_4006, QuotaExceededError, False, True),  # whatever status it came with
    (
        429,
        {"message": "3040: Capacity temporarily exceeded", "code": "internal_error"},
        ServiceUnavailableError,
        True,
        False,
    ),
    (
        429,
        {"message": "You exceeded your current quota", "code": "insufficient_quota"},
        QuotaExceededError,
        False,
        True,
    ),
    (
        402,
        {"message": "no credits", "type": "insufficient_credits"},
        InsufficientCreditsError,
        False,
        True,
    ),
    (401, {"message": "bad key", "type": "authentication_error"}, AuthenticationError, False, True),
    (404, {"message": "no model", "type": "not_found"}, NotFoundError, False, True),
    (408, {"message": "timeout"}, ServiceUnavailableError, True, False),
    (413, {"message": "too large"}, RequestTooLargeError, False, False),
    (429, {"message": "slow down", "type": "rate_limit_error"}, RateLimitError, True, False),
    (500, {"message": "oops", "type": "server_error"}, ServerError, True, False),
    (503, {"message": "busy", "type": "service_unavailable"}, ServiceUnavailableError, True, False),
]


@pytest.mark.parametrize(("status", "error", "cls", "retried", "account"), OPENAI_SHAPED)
def test_openai_shaped_envelopes_of_the_same_conditions(
    status: int, error: dict[str, object], cls: type, retried: bool, account: bool
) -> None:
    mapped = openai_error(status, error)
    assert type(mapped) is cls
    assert (mapped.retryable, mapped.account_level) == (retried, account)


def test_not_found_names_the_model_and_retry_after_is_kept_on_any_status() -> None:
    assert "m-1" in openai_error(404, {"message": "nope"}).message
    busy = openai_error(503, {"message": "busy"}, **{"retry-after": "7"})
    assert isinstance(busy, APIStatusError) and busy.retry_after == 7.0


def test_an_error_body_of_the_wrong_shape_still_maps_by_status() -> None:
    weird = cf.error_from(429, {}, b'{"errors": "not a list"}')
    assert type(weird) is RateLimitError
    weird = cf.error_from(503, {}, b'{"errors": [{"code": "x", "message": 5}]}')
    assert type(weird) is ServiceUnavailableError
    assert type(oa.error_from(400, {}, b'{"error": ["odd"]}')) is BadRequestError
