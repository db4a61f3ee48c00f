"""llamavision: Llama 3.2 11B Vision on AI Gateway and Cloudflare Workers AI.

The framework-free core: a neutral message model, image handling, one codec per provider wire
format and an httpx client. LangChain and LlamaIndex integrations live in
``langchain_llamavision`` and ``llamaindex_llamavision``.
"""

from __future__ import annotations

from llamavision._version import __version__
from llamavision.client import LlamaVisionClient
from llamavision.errors import (
    APIConnectionError,
    APIStatusError,
    AuthenticationError,
    BadRequestError,
    ConfigurationError,
    ImageError,
    InsufficientCreditsError,
    LicenseAgreementRequiredError,
    LlamaVisionError,
    MalformedResponseError,
    MissingExtraError,
    NotFoundError,
    NothingCaptionedError,
    PermissionDeniedError,
    ProviderOutageError,
    QuotaExceededError,
    RateLimitError,
    RequestTooLargeError,
    ServerError,
    ServiceUnavailableError,
    StreamInterruptedError,
    UnsupportedParameterWarning,
)
from llamavision.images import ImageOptions, RemoteImage, ResolvedImage, resolve_image
from llamavision.messages import (
    ChatRequest,
    ChatResult,
    GenerationParams,
    Image,
    InvalidToolCall,
    Message,
    Price,
    StreamAccumulator,
    StreamDelta,
    Text,
    Tool,
    ToolCall,
    ToolCallChunk,
    ToolResult,
    Usage,
)
from llamavision.streams import AsyncChatStream, ChatStream

__all__ = [
    "APIConnectionError",
    "APIStatusError",
    "AsyncChatStream",
    "AuthenticationError",
    "BadRequestError",
    "ChatRequest",
    "ChatResult",
    "ChatStream",
    "ConfigurationError",
    "GenerationParams",
    "Image",
    "ImageError",
    "ImageOptions",
    "InsufficientCreditsError",
    "InvalidToolCall",
    "LicenseAgreementRequiredError",
    "LlamaVisionClient",
    "LlamaVisionError",
    "MalformedResponseError",
    "Message",
    "MissingExtraError",
    "NotFoundError",
    "NothingCaptionedError",
    "PermissionDeniedError",
    "Price",
    "ProviderOutageError",
    "QuotaExceededError",
    "RateLimitError",
    "RemoteImage",
    "RequestTooLargeError",
    "ResolvedImage",
    "ServerError",
    "ServiceUnavailableError",
    "StreamAccumulator",
    "StreamDelta",
    "StreamInterruptedError",
    "Text",
    "Tool",
    "ToolCall",
    "ToolCallChunk",
    "ToolResult",
    "UnsupportedParameterWarning",
    "Usage",
    "__version__",
    "resolve_image",
]
