"""Cloudflare's numeric Workers AI error codes, with what to do about each.

Both codecs read them: Workers AI's native route returns them in ``errors[].code``, and
Cloudflare's OpenAI-compatible route (which the ``aigateway`` codec can be pointed at) puts
them at the start of the message. Kept apart so that neither codec imports the other for it.
"""

from __future__ import annotations

from llamavision.errors import (
    QUOTA_HINT,
    STATUS_ERRORS,
    BadRequestError,
    ErrorKind,
    NotFoundError,
    PermissionDeniedError,
    QuotaExceededError,
    RateLimitError,
    ServiceUnavailableError,
)

_RETRY_LATER = "Try again later or set fallback_providers."
_ACCESS = "This account may not use the model {model}: check the model id or ask for access."
_LORA = "Check the lora parameter (this model takes no LoRA adapters, or the adapter is broken)."
ERROR_CODES: dict[int, ErrorKind] = {
    # Cloudflare's documented Workers AI errors (developers.cloudflare.com/workers-ai/platform/
    # errors), with what to do. 3021 is the per-minute limit, seen in the wild (cloudflare/ai
    # issue 657); 4006 is the daily allocation as Cloudflare's OpenAI-compatible route says it.
    5007: (NotFoundError, "Check the model id ({model}): Workers AI has no such model."),
    3042: (NotFoundError, "Check the model id ({model}): it is not a valid Workers AI model."),
    5004: (BadRequestError, "The image data was rejected: send a JPEG, PNG, WebP or GIF."),
    3003: (BadRequestError, STATUS_ERRORS[400][1]),
    3039: (BadRequestError, _LORA),
    5005: (BadRequestError, _LORA),
    5019: (BadRequestError, "Check base_url: this route or API version is deprecated."),
    5018: (PermissionDeniedError, _ACCESS),
    3041: (PermissionDeniedError, _ACCESS),
    3023: (PermissionDeniedError, "The account is blocked from Workers AI: contact Cloudflare."),
    3006: STATUS_ERRORS[413],
    3007: (ServiceUnavailableError, f"The request timed out at Workers AI. {_RETRY_LATER}"),
    3008: (ServiceUnavailableError, f"Workers AI aborted the request. {_RETRY_LATER}"),
    3036: (QuotaExceededError, QUOTA_HINT),
    4006: (QuotaExceededError, QUOTA_HINT),
    3040: (ServiceUnavailableError, f"Workers AI is out of capacity. {_RETRY_LATER}"),
    3021: (RateLimitError, STATUS_ERRORS[429][1]),
}
