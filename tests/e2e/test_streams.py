"""Every stream has an owner: dropped, closed or half-read, it gives back its slot.

At ``max_concurrency=1`` one leaked slot makes every later call wait forever, so each test
ends with calls that must go through. (The final call runs in a thread joined with a bound
that only a leak reaches: a hang fails the test instead of stopping the suite.)
"""

from __future__ import annotations

import asyncio
import gc
import threading

from llamavision import AsyncChatStream, ChatStream, LlamaVisionClient
from llamavision.emulator import Emulator


def client() -> LlamaVisionClient:
    return LlamaVisionClient(max_concurrency=1, max_retries=0)


def goes_through(c: LlamaVisionClient) -> bool:
    answers: list[str] = []
    thread = threading.Thread(target=lambda: answers.append(c.chat("hi").text), daemon=True)
    thread.start()
    thread.join(120)
    return bool(answers)


def test_a_sync_stream_sends_nothing_before_its_first_next(emulator: Emulator) -> None:
    c = client()
    stream = c.stream("Tell me a story")
    assert isinstance(stream, ChatStream) and emulator.counters["requests"] == 0
    assert next(stream).text
    stream.close()
    assert emulator.counters["requests"] == 1


def test_dropped_unstarted_and_half_read_sync_streams_give_back_their_slot(
    emulator: Emulator,
) -> None:
    c = client()
    for _ in range(3):
        unstarted = c.stream("hi")
        del unstarted
        half = c.stream("Tell me a long story about the sea")
        next(half)
        del half
        gc.collect()
    assert goes_through(c)
    with c.stream("Tell me a story") as deltas:  # closed by the with block, half-read
        next(deltas)
    assert goes_through(c)
    closed = c.stream("Tell me a story")
    next(closed)
    closed.close()
    closed.close()  # idempotent
    assert goes_through(c)


def test_dropped_unstarted_and_half_read_async_streams_give_back_their_slot(
    emulator: Emulator,
) -> None:
    c = client()

    async def run() -> None:
        for _ in range(3):
            unstarted = c.astream("hi")
            assert isinstance(unstarted, AsyncChatStream)
            del unstarted
            half = c.astream("Tell me a long story about the sea")
            await anext(half)
            await half.aclose()
        async with c.astream("Tell me a story") as deltas:
            await anext(deltas)
        assert (await c.achat("hi")).text

    asyncio.run(run())
    assert emulator.counters["requests"] == 5  # the unstarted ones sent nothing
    assert goes_through(c)
