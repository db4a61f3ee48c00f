"""Streams with an owner: what :meth:`LlamaVisionClient.stream` and ``astream`` return.

A stream starts on its first ``next()`` (nothing is sent before), and whatever it holds (the
HTTP response, the connection, a concurrency slot of the client's governor) is released when
it ends, fails, is closed (``close()``, ``with``), or is dropped and garbage-collected, as
httpx's responses and the openai SDK's streams are. A stream dropped before it started holds
nothing.

Below them, the readers: :class:`StreamReader` and :class:`AsyncStreamReader` read one opened
HTTP response as server-sent events, feed the provider codec's parser, and settle the
request's concurrency slot when the stream is over.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Generator, Iterator
from types import TracebackType

import httpx

from llamavision import tracing
from llamavision.endpoint import Endpoint, Redactor, unlink, warn_if_empty
from llamavision.errors import APIConnectionError, LlamaVisionError, StreamInterruptedError
from llamavision.messages import ChatRequest, StreamDelta
from llamavision.ratelimit import Releasable


class ChatStream(Iterator[StreamDelta]):
    """A streamed answer: iterate it for its deltas; close it (or use ``with``) to stop early.

    Example:
        .. code-block:: python

            with client.stream("Describe it") as deltas:
                for delta in deltas:
                    print(delta.text, end="")

    """

    __slots__ = ("_deltas",)

    def __init__(self, deltas: Generator[StreamDelta, None, None]) -> None:
        self._deltas = deltas

    def __iter__(self) -> ChatStream:
        return self

    def __next__(self) -> StreamDelta:
        return next(self._deltas)

    def close(self) -> None:
        """Stop the stream and release its connection and concurrency slot (idempotent)."""
        self._deltas.close()

    def __enter__(self) -> ChatStream:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __del__(self) -> None:
        self._deltas.close()  # a dropped stream gives back what it holds at once


class AsyncChatStream(AsyncIterator[StreamDelta]):
    """Async form of :class:`ChatStream`: ``async for``, ``aclose()``, ``async with``."""

    __slots__ = ("_deltas",)

    def __init__(self, deltas: AsyncGenerator[StreamDelta, None]) -> None:
        self._deltas = deltas

    def __aiter__(self) -> AsyncChatStream:
        return self

    async def __anext__(self) -> StreamDelta:
        return await self._deltas.__anext__()

    async def aclose(self) -> None:
        """Stop the stream and release its connection and concurrency slot (idempotent)."""
        await self._deltas.aclose()

    async def __aenter__(self) -> AsyncChatStream:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


# The SSE readers below are the hottest loop of a stream, so the line handling is written
# out in both rather than called per line. Only ``data:`` fields matter to these providers;
# ``event:``, ``id:``, ``retry:`` and comments are ignored, as the SSE specification allows.


def sse_data(lines: Iterator[str]) -> Iterator[str]:
    """Yield the data of each server-sent event, from httpx's decoded lines."""
    data: list[str] = []
    for line in lines:
        if line.startswith("data:"):
            data.append(line[6:] if line.startswith(" ", 5) else line[5:])
        elif not line and data:
            yield data[0] if len(data) == 1 else "\n".join(data)
            data.clear()
    if data:
        yield "\n".join(data)


async def asse_data(lines: AsyncIterator[str]) -> AsyncIterator[str]:
    """Async form of :func:`sse_data`."""
    data: list[str] = []
    async for line in lines:
        if line.startswith("data:"):
            data.append(line[6:] if line.startswith(" ", 5) else line[5:])
        elif not line and data:
            yield data[0] if len(data) == 1 else "\n".join(data)
            data.clear()
    if data:
        yield "\n".join(data)


_UNFINISHED = RuntimeError("the stream was not read to the end")


class _StreamState:
    """State of one opened stream, shared by the sync and async readers."""

    def __init__(
        self,
        ep: Endpoint,
        prepared: ChatRequest,
        response: httpx.Response,
        max_tokens: int | None,
        ticket: Releasable,
        redactor: Redactor,
    ) -> None:
        self.ep = ep
        self.redactor = redactor
        self.prepared = prepared
        self.response = response
        self.ticket = ticket
        self.parser = ep.codec.stream_parser(max_tokens=max_tokens)
        self.pending: list[StreamDelta] = []
        self.pieces: list[str] = []
        self.done = False
        self.call = tracing.NOT_TRACED

    def status_error(self) -> LlamaVisionError:
        return self.ep.status_error(self.response)

    def on_data(self, data: str) -> list[StreamDelta]:
        deltas = self.parser.feed(data)
        if self.parser.ended:
            self.done = True
            return [*deltas, self.final()]
        return deltas

    def on_end(self) -> list[StreamDelta]:
        """Handle the end of the body before its end marker: fine after a finish reason."""
        if self.parser.complete:
            self.done = True
            return [self.final()]
        raise APIConnectionError(
            f"{self.ep.provider} closed the stream before it was complete (no end marker).",
            provider=self.ep.provider,
        )

    def final(self) -> StreamDelta:
        delta = self.parser.finish()
        self.ep.finish(delta, self.response.headers)
        self.call.end(delta, self.ep.provider, self.ep.base_url)
        if not self.pieces and delta.finish_reason != "tool_calls":
            warn_if_empty(self.ep, self.prepared, delta.request_id, self.redactor)
        return delta

    def settle(self) -> None:
        """Give the request's slot back: a success only if the stream was read to the end."""
        self.ticket.release(None if self.done else _UNFINISHED)
        self.call.fail(_UNFINISHED)  # no-op when the last chunk already ended the span

    def interrupted(self, exc: BaseException) -> StreamInterruptedError:
        text = "".join(self.pieces)
        return StreamInterruptedError(
            f"The {self.ep.provider} stream broke after {len(text)} characters ({exc}). "
            "The text received so far is in .partial_text; ask again to get the rest.",
            partial_text=text,
            provider=self.ep.provider,
            request_id=self.response.headers.get(self.ep.codec.REQUEST_ID_HEADER),
        )


class StreamReader(_StreamState):
    """A stream whose first delta has arrived (so that everything before it can be retried)."""

    def start(self) -> None:
        """Read up to the first delta; raise the typed error of an error reply."""
        try:
            if self.response.status_code >= 400:
                self.response.read()
                raise self.status_error()
            self.events = sse_data(self.response.iter_lines())
            while not self.pending:
                self.pending = self._next()
        except BaseException:
            self.response.close()
            raise

    def _next(self) -> list[StreamDelta]:
        try:
            event = next(self.events, None)
        except httpx.TransportError as exc:
            raise self.ep.connection_error(exc) from exc
        if event is None:
            return self.on_end()
        return self.on_data(event)

    def deltas(self) -> Generator[StreamDelta, None, None]:
        """Yield every delta; closing this generator releases the response and the slot."""
        pieces = self.pieces
        try:
            while True:
                for delta in self.pending:
                    if delta.text:
                        pieces.append(delta.text)
                    yield delta
                if self.done:
                    return
                try:
                    self.pending = self._next()
                except LlamaVisionError as exc:
                    error = self.redactor.redact(self.interrupted(exc))
                    self.call.fail(error)
                    raise error from self.redactor.safe_cause(exc)
        finally:
            self.response.close()
            unlink(self.response)
            self.settle()


class AsyncStreamReader(_StreamState):
    """Async twin of :class:`StreamReader`."""

    async def start(self) -> None:
        """Async form of :meth:`StreamReader.start`."""
        try:
            if self.response.status_code >= 400:
                await self.response.aread()
                raise self.status_error()
            self.events = asse_data(self.response.aiter_lines())
            while not self.pending:
                self.pending = await self._next()
        except BaseException:
            await self.response.aclose()
            raise

    async def _next(self) -> list[StreamDelta]:
        try:
            event = await anext(self.events, None)
        except httpx.TransportError as exc:
            raise self.ep.connection_error(exc) from exc
        if event is None:
            return self.on_end()
        return self.on_data(event)

    async def deltas(self) -> AsyncGenerator[StreamDelta, None]:
        """Async form of :meth:`StreamReader.deltas`."""
        pieces = self.pieces
        try:
            while True:
                for delta in self.pending:
                    if delta.text:
                        pieces.append(delta.text)
                    yield delta
                if self.done:
                    return
                try:
                    self.pending = await self._next()
                except LlamaVisionError as exc:
                    error = self.redactor.redact(self.interrupted(exc))
                    self.call.fail(error)
                    raise error from self.redactor.safe_cause(exc)
        finally:
            await self.response.aclose()
            unlink(self.response)
            self.settle()
