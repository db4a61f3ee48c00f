"""The neutral conversation model that both framework adapters translate to and from.

Plain slotted dataclasses: cheap to build per token, no validation on the hot path.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

Role = Literal["system", "user", "assistant", "tool"]
FinishReason = Literal["stop", "length", "tool_calls", "content_filter", "error"]


@dataclass(frozen=True, slots=True)
class Text:
    """A piece of text in a message."""

    text: str


@dataclass(frozen=True, slots=True)
class Image:
    """An image in a message.

    ``source`` is anything :func:`llamavision.images.resolve_image` accepts: a path, bytes, a
    binary file object, a PIL image, an http(s) URL, a data URL, or an already
    :class:`~llamavision.images.ResolvedImage` / :class:`~llamavision.images.RemoteImage`.
    """

    source: Any


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A call of a tool by the assistant; ``arguments`` is the decoded JSON object."""

    id: str
    name: str
    arguments: dict[str, Any]

    def arguments_json(self) -> str:
        """Return the arguments as a compact JSON string."""
        return json.dumps(self.arguments, separators=(",", ":"), ensure_ascii=False)


@dataclass(frozen=True, slots=True)
class ToolResult:
    """The result of a tool call, sent back to the model in a ``tool`` message."""

    tool_call_id: str
    content: str
    name: str | None = None


@dataclass(frozen=True, slots=True)
class InvalidToolCall:
    """A tool call whose arguments could not be decoded; ``arguments`` is the raw text."""

    id: str
    name: str
    arguments: str
    error: str


Part = Text | Image | ToolCall | ToolResult


@dataclass(frozen=True, slots=True)
class Message:
    """One turn of a conversation: a role and its parts."""

    role: Role
    parts: tuple[Part, ...]

    @classmethod
    def system(cls, text: str) -> Message:
        """Build a system message."""
        return cls("system", (Text(text),))

    @classmethod
    def user(cls, text: str = "", *, image: Any = None, images: Iterable[Any] = ()) -> Message:
        """Build a user message from text and, optionally, one or more images."""
        parts: list[Part] = [Image(src) for src in ([image] if image is not None else [])]
        parts.extend(Image(src) for src in images)
        if text:
            parts.append(Text(text))
        return cls("user", tuple(parts))

    @classmethod
    def assistant(cls, text: str = "", tool_calls: Iterable[ToolCall] = ()) -> Message:
        """Build an assistant message, with the tool calls it made if any."""
        parts: list[Part] = [Text(text)] if text else []
        parts.extend(tool_calls)
        return cls("assistant", tuple(parts))

    @classmethod
    def tool(cls, tool_call_id: str, content: str, name: str | None = None) -> Message:
        """Build a tool message carrying the result of one tool call."""
        return cls("tool", (ToolResult(tool_call_id, content, name),))

    @property
    def text(self) -> str:
        """All text parts joined together."""
        return "".join(p.text for p in self.parts if isinstance(p, Text))

    @property
    def images(self) -> list[Image]:
        """The image parts of this message."""
        return [p for p in self.parts if isinstance(p, Image)]

    @property
    def tool_calls(self) -> list[ToolCall]:
        """The tool calls of this (assistant) message."""
        return [p for p in self.parts if isinstance(p, ToolCall)]


@dataclass(frozen=True, slots=True)
class Tool:
    """A tool the model may call, described by a JSON schema of its parameters."""

    name: str
    description: str = ""
    parameters: Mapping[str, Any] = field(
        default_factory=lambda: {"type": "object", "properties": {}}
    )

    @classmethod
    def from_openai(cls, spec: Mapping[str, Any]) -> Tool:
        """Build a tool from an OpenAI-style definition, as the frameworks' converters give.

        Accepts ``{"type": "function", "function": {...}}`` or the bare function object.
        """
        fn = spec.get("function", spec)
        return cls(
            name=fn["name"],
            description=fn.get("description") or "",
            parameters=fn.get("parameters") or {"type": "object", "properties": {}},
        )


ToolChoice = Literal["auto", "none", "required"] | str
"""``"auto"``, ``"none"``, ``"required"``, or the name of the one tool that must be called."""


def normalize_tool_choice(choice: Any, tools: Sequence[Tool]) -> ToolChoice | None:
    """Map the frameworks' tool-choice spellings onto ours.

    ``"any"`` and ``True`` mean "call some tool" (``"required"``, as ``ChatOpenAI`` maps
    them); a dict names a tool the OpenAI way; a plain string is ``"auto"``, ``"none"``,
    ``"required"`` or a tool name.

    Raises:
        ValueError: the choice is of no known form, or names a tool that is not bound.

    """
    if choice is None or choice is False:
        return None
    if choice is True or choice == "any":
        return "required"
    if isinstance(choice, Mapping):
        name = (choice.get("function") or {}).get("name") or choice.get("name")
        if not name:
            raise ValueError(f"Unrecognised tool_choice {dict(choice)!r}.")
        choice = str(name)
    if not isinstance(choice, str):
        raise ValueError(f"Unrecognised tool_choice {choice!r}.")
    if choice not in ("auto", "none", "required") and choice not in {t.name for t in tools}:
        known = ", ".join(repr(t.name) for t in tools) or "none"
        raise ValueError(
            f"tool_choice names {choice!r}, which is not a bound tool (bound: {known})."
        )
    return choice


@dataclass(frozen=True, slots=True)
class GenerationParams:
    """Sampling and output controls; ``None`` means "the provider's default".

    ``response_format`` is ``"json_object"`` for JSON mode, or a JSON schema (a dict with
    ``name`` and ``schema``, as OpenAI's ``json_schema`` takes it) for schema-constrained output.
    ``extra`` is sent to the provider as is, for parameters this library does not know.
    """

    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    max_tokens: int | None = None
    stop: tuple[str, ...] | None = None
    seed: int | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    repetition_penalty: float | None = None
    response_format: Literal["json_object"] | Mapping[str, Any] | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """Everything a provider codec needs to build one request body."""

    messages: tuple[Message, ...]
    model: str
    params: GenerationParams = field(default_factory=GenerationParams)
    tools: tuple[Tool, ...] = ()
    tool_choice: ToolChoice | None = None
    stream: bool = False
    headers: Mapping[str, str] = field(default_factory=dict)
    """HTTP headers for this call only (the client sends them; codecs ignore them)."""


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts of one call."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


@dataclass(frozen=True, slots=True)
class Price:
    """USD per million input and output tokens."""

    input_per_million: float
    output_per_million: float

    def cost(self, usage: Usage) -> float:
        """Return the cost of ``usage`` in USD."""
        return (
            usage.prompt_tokens * self.input_per_million
            + usage.completion_tokens * self.output_per_million
        ) / 1e6


@dataclass(slots=True)
class ChatResult:
    """A complete answer.

    ``cost`` is in USD, computed from the client's price table; ``raw`` is the provider's reply.
    ``invalid_tool_calls`` holds calls whose arguments were not a JSON object, kept verbatim.
    ``metadata`` holds what the response headers said beyond the body (a Cloudflare AI
    Gateway cache status and log id, for instance).
    """

    text: str
    tool_calls: list[ToolCall] = field(default_factory=list)
    invalid_tool_calls: list[InvalidToolCall] = field(default_factory=list)
    finish_reason: FinishReason | None = None
    usage: Usage | None = None
    cost: float | None = None
    provider: str | None = None
    model: str | None = None
    request_id: str | None = None
    raw: Any = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_message(self) -> Message:
        """Return this answer as an assistant message, ready to append to the conversation."""
        return Message.assistant(self.text, self.tool_calls)


@dataclass(slots=True)  # not frozen: built per streamed fragment, so __init__ must be cheap
class ToolCallChunk:
    """A fragment of a streamed tool call.

    The first fragment of call ``index`` carries ``id`` and ``name``; the ``arguments``
    fragments of the same index concatenate to the call's JSON arguments.
    """

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


@dataclass(slots=True)
class StreamDelta:
    """One step of a streamed answer.

    Text and tool-call fragments as they arrive; the last delta of a stream carries the
    finish reason, usage, cost and metadata instead.
    """

    text: str = ""
    tool_call_chunks: tuple[ToolCallChunk, ...] = ()
    finish_reason: FinishReason | None = None
    usage: Usage | None = None
    cost: float | None = None
    provider: str | None = None
    model: str | None = None
    request_id: str | None = None
    metadata: dict[str, Any] | None = None


def result_metadata(result: ChatResult | StreamDelta | StreamAccumulator) -> dict[str, Any]:
    """Return what frameworks report about an answer, besides its token counts.

    Provider, model, finish reason, request id and cost, from a result, a stream's final
    delta, or an accumulator.
    """
    return {
        "provider": result.provider,
        "model_name": result.model,
        "finish_reason": result.finish_reason,
        "request_id": result.request_id,
        "cost": result.cost,
        **(result.metadata or {}),
    }


def make_tool_call(
    call_id: str, name: str, arguments: str | Mapping[str, Any] | None
) -> ToolCall | InvalidToolCall:
    """Build a tool call from decoded or JSON-string arguments (empty means ``{}``).

    Arguments that are not a JSON object give an :class:`InvalidToolCall` that keeps them
    verbatim with the reason, rather than an exception that would lose the whole answer.
    """
    if isinstance(arguments, Mapping):
        return ToolCall(call_id, name, dict(arguments))
    raw = arguments or ""
    if not raw.strip():
        return ToolCall(call_id, name, {})
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        return InvalidToolCall(call_id, name, raw, f"arguments are not valid JSON: {exc.msg}")
    if not isinstance(value, dict):
        return InvalidToolCall(call_id, name, raw, "arguments are not a JSON object")
    return ToolCall(call_id, name, value)


def split_tool_calls(
    calls: Iterable[ToolCall | InvalidToolCall],
) -> tuple[list[ToolCall], list[InvalidToolCall]]:
    """Separate valid tool calls from invalid ones, keeping their order."""
    valid: list[ToolCall] = []
    invalid: list[InvalidToolCall] = []
    for call in calls:
        (valid if isinstance(call, ToolCall) else invalid).append(call)  # type: ignore[arg-type]
    return valid, invalid


class StreamAccumulator:
    """Folds stream deltas into a :class:`ChatResult` (text joined, tool calls assembled).

    Text is kept as a list of pieces and joined once, so accumulation stays linear.
    """

    __slots__ = (
        "_calls",
        "_pieces",
        "cost",
        "finish_reason",
        "metadata",
        "model",
        "provider",
        "request_id",
        "usage",
    )

    def __init__(self) -> None:
        self._pieces: list[str] = []
        self._calls: dict[int, list[Any]] = {}
        self.finish_reason: FinishReason | None = None
        self.usage: Usage | None = None
        self.cost: float | None = None
        self.provider: str | None = None
        self.model: str | None = None
        self.request_id: str | None = None
        self.metadata: dict[str, Any] = {}

    def add(self, delta: StreamDelta) -> None:
        """Take in one delta."""
        if delta.text:
            self._pieces.append(delta.text)
        for chunk in delta.tool_call_chunks:
            call = self._calls.get(chunk.index)
            if call is None:
                self._calls[chunk.index] = [chunk.id, chunk.name, [chunk.arguments]]
            else:
                call[0] = call[0] or chunk.id
                call[1] = call[1] or chunk.name
                call[2].append(chunk.arguments)
        if delta.finish_reason is not None:
            self.finish_reason = delta.finish_reason
        if delta.usage is not None:
            self.usage, self.cost = delta.usage, delta.cost
        self.provider = delta.provider or self.provider
        self.model = delta.model or self.model
        self.request_id = delta.request_id or self.request_id
        if delta.metadata:
            self.metadata.update(delta.metadata)

    @property
    def text(self) -> str:
        """The text received so far."""
        return "".join(self._pieces)

    def tool_calls_so_far(self) -> list[ToolCallChunk]:
        """Return each tool call received so far, its arguments as they stand (maybe cut).

        What a framework shows while a call streams in, e.g. to parse partial JSON into a
        partial structured object.
        """
        return [
            ToolCallChunk(index, call_id or f"call_{index}", name or "", "".join(fragments))
            for index, (call_id, name, fragments) in sorted(self._calls.items())
        ]

    def result(self) -> ChatResult:
        """Return everything received so far as a :class:`ChatResult`.

        Tool calls whose arguments did not assemble into a JSON object, or that never got a
        name, are returned in ``invalid_tool_calls``.
        """
        calls, invalid = split_tool_calls(
            make_tool_call(call_id or f"call_{index}", name, "".join(fragments))
            if name
            else InvalidToolCall(
                call_id or f"call_{index}", "", "".join(fragments), "the tool call has no name"
            )
            for index, (call_id, name, fragments) in sorted(self._calls.items())
        )
        return ChatResult(
            text=self.text,
            tool_calls=calls,
            invalid_tool_calls=invalid,
            finish_reason=self.finish_reason,
            usage=self.usage,
            cost=self.cost,
            provider=self.provider,
            model=self.model,
            request_id=self.request_id,
            metadata=dict(self.metadata),
        )
