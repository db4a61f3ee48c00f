"""Async HTTP clients bound to event loops, each closed before its loop ends.

An ``httpx.AsyncClient``'s connections belong to the event loop that opened them. A client
used from several loops (``asyncio.run`` twice, notebook cells, a worker's own loop) needs a
pool per loop, and each pool closed while its loop can still close sockets: once
``asyncio.run`` has closed a loop, its transports can only be dropped for the garbage
collector (with a ``ResourceWarning``). :class:`LoopBoundClient` closes each pool from an
async generator that ``asyncio.run`` (and any loop's ``shutdown_asyncgens``) finalizes before
closing the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Callable

import httpx


class LoopBoundClient:
    """One ``httpx.AsyncClient`` per event loop, made on demand and closed with its loop.

    Args:
        make: makes a fresh client (called once per loop).
        given: a client supplied by the caller: used on every loop as it is, never closed.

    """

    def __init__(
        self, make: Callable[[], httpx.AsyncClient], given: httpx.AsyncClient | None = None
    ) -> None:
        self._make = make
        self._given = given
        self._client: httpx.AsyncClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._guard: AsyncGenerator[None, None] | None = None

    async def get(self) -> httpx.AsyncClient:
        """Return the client for the running loop (the old loop's pool is closed first)."""
        if self._given is not None:
            return self._given
        loop = asyncio.get_running_loop()
        if self._client is not None and self._loop is loop:
            return self._client
        old, old_loop = self._client, self._loop
        client = self._client = self._make()
        self._loop = loop
        if old is not None:
            await _close_elsewhere(old, old_loop)
        self._guard = _closed_at_loop_end(client)
        await self._guard.__anext__()
        return client

    async def aclose(self) -> None:
        """Close the pool this object made, if any (a given client stays open)."""
        client, guard, loop = self._client, self._guard, self._loop
        self._client = self._guard = self._loop = None
        if client is None:
            return
        if guard is not None and loop is asyncio.get_running_loop():
            await guard.aclose()  # its ``finally`` closes the client
        else:
            await _close_elsewhere(client, loop)


async def _closed_at_loop_end(client: httpx.AsyncClient) -> AsyncGenerator[None, None]:
    try:
        yield
    finally:
        await client.aclose()


async def _close_elsewhere(
    client: httpx.AsyncClient, loop: asyncio.AbstractEventLoop | None
) -> None:
    """Close a client made on another loop, as far as that loop allows."""
    if loop is not None and loop.is_running():  # a loop alive in another thread
        asyncio.run_coroutine_threadsafe(client.aclose(), loop)
        return
    with contextlib.suppress(Exception):  # a finished loop: what is left, the collector closes
        await client.aclose()
