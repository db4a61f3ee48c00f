"""The interface every provider codec module offers, checked by mypy.

A codec is a module of pure functions, no I/O: it turns a :class:`ChatRequest` into a request
body, and reply bodies, stream events and error replies into core types. Adding a provider
means adding one module that satisfies :class:`Codec` (and one emulator route).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from pydantic import SecretStr

from llamavision.errors import ConfigurationError, LlamaVisionError
from llamavision.messages import ChatRequest, ChatResult, Price, StreamDelta


@dataclass(frozen=True)
class CloudflareGateway:
    """Cloudflare AI Gateway (the Cloudflare product) in front of Workers AI.

    Not to be confused with the AI Gateway *provider* (``provider="aigateway"``): this routes
    the ``cloudflare`` provider through ``gateway.ai.cloudflare.com`` for caching, logs and
    spend limits.

    Attributes:
        gateway_id: the gateway's name in the Cloudflare dashboard.
        token: the token of an authenticated gateway (sent as ``cf-aig-authorization``).
        cache_ttl: seconds an identical request is answered from the gateway's cache.
        skip_cache: bypass the cache for these requests.
        cache_key: a cache key of your own instead of the request's hash. It applies to
            every request of the client: for one request, pass it in ``extra_headers``.
        metadata: tags for the gateway's logs (a flat dict of str, int, float or bool).

    """

    gateway_id: str
    token: SecretStr | None = field(default=None, repr=False)
    cache_ttl: int | None = None
    skip_cache: bool = False
    cache_key: str | None = None
    metadata: Mapping[str, str | int | float | bool] | None = None

    def __post_init__(self) -> None:
        for name, value in (self.metadata or {}).items():
            flat = isinstance(value, (str, bool, int)) or (
                isinstance(value, float) and math.isfinite(value)
            )
            if not isinstance(name, str) or not flat:
                raise ConfigurationError(
                    f"gateway_metadata[{name!r}] must be a string, a finite number or a boolean "
                    "(Cloudflare AI Gateway takes a flat JSON object of tags)."
                )


class StreamParser(Protocol):
    """Parses the ``data:`` payloads of one stream, in order (state lives across events)."""

    @property
    def complete(self) -> bool:
        """Whether the stream announced its end before its end marker (a finish reason)."""

    @property
    def ended(self) -> bool:
        """Whether the end marker (``data: [DONE]``) has been fed."""

    def feed(self, data: str) -> list[StreamDelta]:
        """Parse one event's data into deltas; raise a ``LlamaVisionError`` on garbage."""

    def finish(self) -> StreamDelta:
        """Return the closing delta: finish reason and usage."""


class Codec(Protocol):
    """What the client needs from a provider module (``openai_compat``, ``workers_ai``).

    The upper-case members are the module's constants (read-only here, so that a module's
    plain assignments satisfy them).
    """

    @property
    def NAME(self) -> str:
        """The provider's name, as users pass it."""

    @property
    def DEFAULT_BASE_URL(self) -> str:
        """The public endpoint (``{account_id}`` is filled in)."""

    @property
    def DEFAULT_MODEL(self) -> str:
        """The provider's id of Llama 3.2 11B Vision."""

    @property
    def KEY_ENV(self) -> str:
        """The environment variable holding the credential."""

    @property
    def ACCOUNT_ENV(self) -> str | None:
        """The environment variable holding the account id, if the URL needs one."""

    @property
    def CONTEXT_WINDOW(self) -> int:
        """The model's context window, in tokens."""

    @property
    def MAX_OUTPUT_TOKENS(self) -> int:
        """The most output tokens; also sent when the caller sets no limit."""

    @property
    def PRICE(self) -> Price:
        """USD per million input and output tokens."""

    @property
    def FETCHES_IMAGE_URLS(self) -> bool:
        """Whether the provider fetches http(s) image URLs itself."""

    @property
    def REQUEST_ID_HEADER(self) -> str:
        """The response header carrying the provider's request id."""

    @property
    def GATEWAY_BASE_URL(self) -> str | None:
        """The Cloudflare AI Gateway endpoint for this provider, if it can be routed so."""

    @property
    def BASE_URL_ENV(self) -> str:
        """The environment variable that overrides the endpoint."""

    @property
    def GATEWAY_ENV(self) -> str | None:
        """The environment variable naming the Cloudflare AI Gateway (gateway providers)."""

    @property
    def GATEWAY_TOKEN_ENV(self) -> str | None:
        """The environment variable holding an authenticated gateway's token."""

    @property
    def GATEWAY_BASE_URL_ENV(self) -> str | None:
        """The environment variable that overrides the gateway endpoint."""

    @property
    def JSON_MODE(self) -> bool:
        """Whether the provider takes ``response_format`` (JSON object and JSON schema)."""

    @property
    def EMPTY_ANSWER_HINT(self) -> str:
        """What to add to the warning about an empty answer to an image (may be empty)."""

    @property
    def UNSUPPORTED_PARAMS(self) -> tuple[str, ...]:
        """Fields of ``GenerationParams`` the provider does not take (left out of the body)."""

    @property
    def CREDENTIAL_HEADERS(self) -> tuple[str, ...]:
        """Lower-case names of the headers that carry credentials (no user header may)."""

    def auth_headers(self, key: str) -> dict[str, str]:
        """Return the headers that carry the credential ``key``."""

    def max_tokens(self, request: ChatRequest) -> int:
        """Return the output limit sent with ``request`` (the caller's, else the model's)."""

    def build_payload(
        self, request: ChatRequest, *, image_field: bool = False
    ) -> tuple[str, dict[str, Any]]:
        """Return the path (relative to the base URL) and the JSON body of a request.

        ``image_field`` sends the image in the provider's separate image field, where it has
        one (Workers AI's top-level ``image``), instead of inside the message content.
        """

    def parse_result(self, body: Any, *, max_tokens: int | None = None) -> ChatResult:
        """Parse a complete reply; ``max_tokens`` is the limit that was sent."""

    def stream_parser(self, *, max_tokens: int | None = None) -> StreamParser:
        """Return a parser for one stream; ``max_tokens`` is the limit that was sent."""

    def error_from(
        self,
        status: int,
        headers: Mapping[str, str],
        content: bytes,
        *,
        model: str | None = None,
        credential: str | None = None,
    ) -> LlamaVisionError:
        """Map an HTTP error reply to a typed exception.

        ``model`` is named in hints, and ``credential`` (what the client was given: an
        argument, or the environment variable) in hints about the key.
        """

    def license_agreement(self, model: str) -> tuple[str, dict[str, Any]] | None:
        """Return the request that accepts the model's license, if the provider has one."""

    def gateway_headers(self, gateway: CloudflareGateway, *, cache: bool = True) -> dict[str, str]:
        """Return the request headers that configure a Cloudflare AI Gateway.

        With ``cache=False`` (internal requests, such as a license acceptance) the request
        bypasses the gateway's cache whatever the settings say.
        """

    def response_metadata(self, headers: Mapping[str, str]) -> dict[str, Any]:
        """Return what the response headers say beyond the body (e.g. a gateway cache hit)."""

    def served_from_cache(self, headers: Mapping[str, str]) -> bool:
        """Return whether the answer came from a cache (and so cost nothing)."""
