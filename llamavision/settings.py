"""Options shared by the LangChain and LlamaIndex classes, declared once.

Both frameworks' model classes are pydantic models, so they inherit these fields and use
:meth:`LlamaVisionSettings.build_client` and :meth:`LlamaVisionSettings.generation_params`
instead of repeating them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator

from llamavision.client import LlamaVisionClient
from llamavision.endpoint import is_mask
from llamavision.errors import unknown_parameter
from llamavision.images import ImageOptions
from llamavision.messages import GenerationParams, Message, Tool, normalize_tool_choice
from llamavision.providers import PROVIDERS

_PARAM_FIELDS = frozenset(f.name for f in dataclasses.fields(GenerationParams))


class LlamaVisionSettings(BaseModel):
    """Provider, credentials, transport and sampling options of a llamavision model."""

    SECRET_FIELDS: ClassVar[frozenset[str]] = frozenset(
        {"api_key", "gateway_token", "default_headers"}
    )
    """Fields a serialised model leaves out (rebuilt, it reads them from the environment)."""

    provider: str = "aigateway"
    """``"aigateway"`` (OpenAI-compatible) or ``"cloudflare"`` (Workers AI native route):
    a name of :data:`llamavision.providers.PROVIDERS`."""
    api_key: SecretStr | None = None
    """Defaults to ``AIGATEWAY_API_KEY`` or ``CLOUDFLARE_API_TOKEN``."""
    account_id: str | None = None
    """Cloudflare account id; defaults to ``CLOUDFLARE_ACCOUNT_ID``."""
    base_url: str | None = None
    """Override the endpoint (any OpenAI-compatible server, or a Cloudflare AI Gateway URL)."""
    timeout: float | None = None
    """Seconds per request (default 60)."""
    max_retries: int = 2
    """Retries of 429, 5xx and connection errors, with backoff and ``Retry-After``."""
    max_concurrency: int | None = None
    """Most requests in flight at once from this model, across threads and tasks (``batch``,
    ``abatch``, agents); halved on a rate-limit answer, grown back by one per success."""
    rate_limit: float | None = None
    """Requests per minute to stay under (e.g. 300 on Workers AI); ``None`` learns the limit
    from 429 answers. A 429's ``Retry-After`` pauses every call of this model either way."""
    fallback_providers: list[str] = Field(default_factory=list)
    """Providers to fail over to when one fails with a retryable error."""
    accept_license: bool = False
    """On Cloudflare, accept Meta's Llama 3.2 license once if the account has not."""
    multi_image: Literal["error", "latest", "grid"] = "error"
    """Several images in one conversation: refuse, keep the latest, or compose a grid."""
    image_transport: Literal["image_url", "image"] = "image_url"
    """On Cloudflare: the image as an ``image_url`` message part, or the top-level ``image``."""
    image_options: ImageOptions | None = None
    """How images are prepared and downloaded (``ImageOptions(allow_private_urls=True)`` to
    let downloads reach a private network)."""
    temperature: float | None = None
    max_tokens: int | None = None
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    repetition_penalty: float | None = None
    stop: list[str] | None = None
    default_headers: dict[str, SecretStr] | None = None
    """HTTP headers sent with every request (``Authorization`` is refused: use ``api_key``);
    per call, pass ``extra_headers``. Their values are kept as secrets (they often are:
    ``CF-Access-Client-Secret``), hidden from reprs, dumps and tracing callbacks."""
    gateway_id: str | None = None
    """Route ``provider="cloudflare"`` through Cloudflare AI Gateway (the Cloudflare product,
    not the AI Gateway provider); defaults to ``CLOUDFLARE_GATEWAY_ID``."""
    gateway_token: SecretStr | None = None
    """Token of an authenticated Cloudflare AI Gateway; defaults to
    ``CLOUDFLARE_AI_GATEWAY_AUTH``."""
    gateway_cache_ttl: int | None = None
    """Seconds Cloudflare AI Gateway answers an identical request from its cache (free)."""
    gateway_skip_cache: bool = False
    """Bypass Cloudflare AI Gateway's cache."""
    gateway_cache_key: str | None = None
    """A Cloudflare AI Gateway cache key of your own."""
    gateway_metadata: dict[str, str | int | float | bool] | None = None
    """Tags for Cloudflare AI Gateway's logs."""
    trace_content: bool = False
    """Record prompts and answers in OpenTelemetry spans (images only as their type)."""
    tracer_provider: Any = Field(default=None, exclude=True)
    """An OpenTelemetry tracer provider; by default the application's global one."""
    http_client: Any = Field(default=None, exclude=True)
    """An ``httpx.Client`` to use for sync calls."""
    http_async_client: Any = Field(default=None, exclude=True)
    """An ``httpx.AsyncClient`` to use for async calls."""

    @model_validator(mode="before")
    @classmethod
    def _known_fields(cls, values: Any) -> Any:
        """Refuse a keyword no field takes (a typo would otherwise be dropped silently)."""
        if isinstance(values, Mapping):
            known = set(cls.model_fields) | {"class_name"}  # LlamaIndex's dumps carry it
            known |= {f.alias for f in cls.model_fields.values() if f.alias}
            for name in values:
                if isinstance(name, str) and name not in known:
                    extra = next(
                        (f for f in ("model_kwargs", "additional_kwargs") if f in known), None
                    )
                    hint = f"Provider-specific body fields go in {extra}={{...}}." if extra else ""
                    raise unknown_parameter(name, known, cls.__name__, hint)
        return values

    @field_validator("api_key", "gateway_token", mode="before")
    @classmethod
    def _not_a_mask(cls, value: Any) -> Any:
        """Read a masked credential (``"**********"``, from a dump) as not given.

        The environment supplies it again, and the mask is never sent.
        """
        text = value.get_secret_value() if isinstance(value, SecretStr) else value
        return None if isinstance(text, str) and is_mask(text) else value

    @field_validator("provider", "fallback_providers")
    @classmethod
    def _known_providers(cls, value: Any) -> Any:
        for name in [value] if isinstance(value, str) else value:
            if name not in PROVIDERS:
                known = ", ".join(map(repr, PROVIDERS))
                raise ValueError(f"unknown provider {name!r}: use one of {known}")
        return value

    def build_client(self, model: str | None) -> LlamaVisionClient:
        """Create the core client these settings describe.

        ``api_key`` is then set to the credential in use (read from the environment if it
        was not given).

        Raises:
            ConfigurationError: a credential or account id is missing.

        """
        client = LlamaVisionClient(
            self.provider,
            api_key=self.api_key,
            account_id=self.account_id,
            base_url=self.base_url,
            model=model,
            timeout=60.0 if self.timeout is None else self.timeout,
            max_retries=self.max_retries,
            max_concurrency=self.max_concurrency,
            rate_limit=self.rate_limit,
            fallback_providers=self.fallback_providers,
            accept_license=self.accept_license,
            multi_image=self.multi_image,
            image_transport=self.image_transport,
            image_options=self.image_options,
            default_headers=None
            if self.default_headers is None
            else {k: v.get_secret_value() for k, v in self.default_headers.items()},
            gateway_id=self.gateway_id,
            gateway_token=self.gateway_token,
            gateway_cache_ttl=self.gateway_cache_ttl,
            gateway_skip_cache=self.gateway_skip_cache,
            gateway_cache_key=self.gateway_cache_key,
            gateway_metadata=self.gateway_metadata,
            tracer_provider=self.tracer_provider,
            trace_content=self.trace_content,
            http_client=self.http_client,
            http_async_client=self.http_async_client,
        )
        self.api_key = client.endpoints[0].api_key
        return client

    def request_args(
        self,
        messages: list[Message],
        *,
        tools: Sequence[Mapping[str, Any]] | None = None,
        tool_choice: Any = None,
        extra: Mapping[str, Any] | None = None,
        **overrides: Any,
    ) -> dict[str, Any]:
        """Build the keyword arguments of :meth:`LlamaVisionClient.chat` for one call.

        Args:
            messages: the conversation, already translated.
            tools: OpenAI-style tool definitions, as the frameworks' converters give them.
            tool_choice: any framework spelling (see :func:`normalize_tool_choice`).
            extra: body parameters sent as they are.
            **overrides: per-call sampling parameters (see :meth:`generation_params`), and
                ``extra_headers`` (HTTP headers for this call).

        """
        core_tools = tuple(Tool.from_openai(t) for t in tools or ())
        headers = overrides.pop("extra_headers", None)
        return {
            "messages": messages,
            "tools": core_tools,
            "tool_choice": normalize_tool_choice(tool_choice, core_tools),
            "params": self.generation_params(extra=extra, **overrides),
            "extra_headers": headers,
        }

    def generation_params(self, **overrides: Any) -> GenerationParams:
        """Return the sampling parameters, with per-call overrides.

        Overrides named like a :class:`GenerationParams` field replace it; ``extra_body``
        (a dict) is sent to the provider as is, with ``extra``.

        Raises:
            ConfigurationError: a keyword is none of these (it names the closest).

        """
        values: dict[str, Any] = {
            name: getattr(self, name) for name in _PARAM_FIELDS if name in type(self).model_fields
        }
        extra = dict(overrides.pop("extra", None) or {})
        extra.update(overrides.pop("extra_body", None) or {})
        for key, value in overrides.items():
            if key not in _PARAM_FIELDS:
                raise unknown_parameter(
                    key,
                    [*_PARAM_FIELDS, "extra_body", "extra_headers"],
                    "This call",
                    "Provider-specific body fields go in extra_body={...}.",
                )
            values[key] = value
        if values.get("stop") == []:
            values["stop"] = None
        return GenerationParams(**values, extra=extra)
