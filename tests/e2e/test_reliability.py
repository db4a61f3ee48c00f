"""What real services and real users do that nobody planned for, over real sockets.

Silent empty answers, Cloudflare's other image transport, cancelled and abandoned streams, and
many threads on a fresh client.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
import warnings
from pathlib import Path

import httpx
import pytest

from llamavision import LlamaVisionClient, Message, Tool
from llamavision.emulator import Emulator, EmulatorProcess, Reply

SAMPLES = Path(__file__).resolve().parents[2] / "examples" / "images"
RED = SAMPLES / "red-square.png"


def client(provider: str = "aigateway", **kwargs: object) -> LlamaVisionClient:
    return LlamaVisionClient(provider, accept_license=True, max_retries=0, **kwargs)  # type: ignore[arg-type]


def empty_answer_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    said = (r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    return [m for m in said if "empty answer" in m]


# --------------------------------------------------------------------------- silent empties


@pytest.mark.parametrize("provider", ["aigateway", "cloudflare"])
@pytest.mark.parametrize("mode", ["chat", "stream"])
def test_an_empty_answer_to_an_image_is_one_warning(
    provider: str, mode: str, emulator: Emulator, caplog: pytest.LogCaptureFixture
) -> None:
    emulator.script(Reply(text=""), Reply(text=""))
    caplog.set_level(logging.WARNING, logger="llamavision")
    with client(provider) as c:
        caplog.clear()
        image = [Message.user("What is it?", image=RED)]
        if mode == "chat":
            result = c.chat(image)
        else:
            *_, result = c.stream(image)
        (said,) = empty_answer_warnings(caplog)
        assert provider in said and str(result.request_id) in said
        caplog.clear()
        c.chat("Say nothing.")  # an empty answer to text alone is an answer
        assert empty_answer_warnings(caplog) == []


def test_an_answer_with_only_a_tool_call_is_not_empty(
    emulator: Emulator, caplog: pytest.LogCaptureFixture
) -> None:
    emulator.script(Reply(tool_calls=[("lookup", {})]), Reply(tool_calls=[("lookup", {})]))
    caplog.set_level(logging.WARNING, logger="llamavision")
    with client() as c:
        image = [Message.user("What is it?", image=RED)]
        c.chat(image, tools=[Tool("lookup")])
        list(c.stream(image, tools=[Tool("lookup")]))
    assert empty_answer_warnings(caplog) == []


def test_cloudflare_can_send_the_image_in_its_top_level_field(emulator: Emulator) -> None:
    with client("cloudflare", image_transport="image") as c:
        text = c.chat([Message.user("What is it?", image=RED)]).text
    body = emulator.requests[-1].body
    assert isinstance(body["image"], str) and not body["image"].startswith("data:")
    assert body["messages"] == [{"role": "user", "content": "What is it?"}]
    assert "640x480 PNG image, mostly white and red" in text


# --------------------------------------------------------------------------- cancellation


def test_cancelled_and_abandoned_streams_release_their_connections() -> None:
    """200 async streams cancelled mid-way and 200 sync streams dropped, then a fresh call.

    With a leak, the pool (10 connections) would be exhausted by the eleventh stream, which
    would wait for a connection until its pool timeout (one second) and fail.
    """
    timeout = httpx.Timeout(30.0, pool=1.0)
    limits = httpx.Limits(max_connections=10)
    with EmulatorProcess() as server:
        env = server.env()
        options = {"api_key": env["AIGATEWAY_API_KEY"], "base_url": env["AIGATEWAY_BASE_URL"]}

        async def cancel_streams(c: LlamaVisionClient) -> None:
            async def consume(first: asyncio.Event) -> None:
                async for _ in c.astream("Describe a long story."):
                    first.set()
                    await asyncio.Event().wait()  # the caller stops reading

            for _ in range(200):
                first = asyncio.Event()
                task = asyncio.create_task(consume(first))
                reading = asyncio.create_task(first.wait())
                await asyncio.wait({task, reading}, return_when=asyncio.FIRST_COMPLETED)
                reading.cancel()
                if task.done():
                    task.result()  # the stream failed to open: say why
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
            await asyncio.sleep(0)  # let finalizers of abandoned generators run
            assert (await c.achat("Still there?", params=None)).text
            assert c.endpoints[0].governor.stats.rate_limited == 0

        c = LlamaVisionClient(
            http_async_client=httpx.AsyncClient(timeout=timeout, limits=limits), **options
        )
        asyncio.run(cancel_streams(c))
        assert c.endpoints[0].governor.in_flight == 0  # every stream gave its slot back

        with LlamaVisionClient(
            http_client=httpx.Client(timeout=timeout, limits=limits), **options
        ) as s:
            for _ in range(200):
                stream = s.stream("Describe a long story.")
                next(stream)
                del stream  # abandoned mid-way
            assert s.chat("Still there?").text
            assert s.endpoints[0].governor.in_flight == 0


def test_many_threads_on_a_fresh_client_share_one_connection_pool(
    emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    made: list[httpx.Client] = []
    real = httpx.Client

    class Counted(real):  # type: ignore[misc,valid-type]
        def __init__(self, *args: object, **kwargs: object) -> None:
            made.append(self)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(httpx, "Client", Counted)
    c = client()
    start = threading.Barrier(16)
    answers: list[str] = []

    def call() -> None:
        start.wait()  # all threads reach the fresh client at the same moment
        answers.append(c.chat("hi").text)

    threads = [threading.Thread(target=call) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(answers) == 16 and len(made) == 1
    c.close()


def test_each_event_loops_pool_is_closed_before_that_loop_ends(emulator: Emulator) -> None:
    """``asyncio.run`` three times on one client: each run's connections are closed by it.

    A pool left behind when its loop ends can only be dropped for the garbage collector,
    which says so with a ``ResourceWarning`` per unclosed connection.
    """
    c = client()
    gc.collect()  # what earlier tests left behind is theirs, not this client's
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always", ResourceWarning)
        for _ in range(3):
            assert asyncio.run(c.achat("hi")).text
        asyncio.run(c.aclose())
        gc.collect()
    assert [str(w.message) for w in seen if issubclass(w.category, ResourceWarning)] == []
