"""Streams with an owner: what :meth:`LlamaVisionClient.stream` and ``astream`` return.

A stream starts on its first ``next()`` (nothing is sent before), and whatever it holds (the
HTTP response, the connection, a concurrency slot of the client's governor) is released when
it ends, fails, is closed (``close()``, ``with``), or is dropped and garbage-collected, as
httpx's responses and the openai SDK's streams are. A stream dropped before it started holds
nothing.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Generator, Iterator
from types import TracebackType

from llamavision.messages import StreamDelta


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
