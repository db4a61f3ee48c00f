"""Client-side cost of llamavision against the clients users would pick instead.

Run from the repository root: ``python bench/run.py`` (``--quick`` for a tiny smoke run).
Every client talks to the same loopback server (``bench/server.py``, its own process), and
what is measured is the client process's CPU time (``time.process_time``), after warm-up,
as the median over repeats. Results go to ``bench/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import statistics
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import httpx
from report import RESULTS, Row, machine, table, write_section

ROOT = Path(__file__).resolve().parent
MODEL_CF = "@cf/meta/llama-3.2-11b-vision-instruct"
MODEL_OA = "meta/llama-3.2-11b-vision-instruct"
KEY = "bench-key"
ACCOUNT = "acc"


@dataclass
class Config:
    """How much work each measurement does."""

    repeats: int = 5
    calls: int = 200
    streams: int = 5
    long_chunks: int = 50_000
    async_calls: int = 500
    concurrency: int = 50
    image_runs: int = 3
    long_repeats: int = 3
    fresh_processes: bool = True  # each async sample in a process of its own


def measure(
    fn: Callable[[], Any], n: int, repeats: int, *, warm_up: bool = True
) -> tuple[float, float]:
    """Return the median (CPU seconds, wall seconds) of ``n`` calls of ``fn``.

    ``warm_up`` calls ``fn`` once first (imports, connection, caches): pass ``False`` when
    the caller just did.
    """
    if warm_up:
        fn()
    cpu, wall = [], []
    for _ in range(repeats):
        c0, w0 = time.process_time(), time.perf_counter()
        for _ in range(n):
            fn()
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - w0)
    return statistics.median(cpu), statistics.median(wall)


# --------------------------------------------------------------------------- clients


class Clients:
    """Every client under test, configured once against the bench server."""

    def __init__(self, url: str) -> None:
        self.url = url

    def oa_base(self, scenario: str) -> str:
        return f"{self.url}/{scenario}/v1"

    def cf_base(self, scenario: str) -> str:
        return f"{self.url}/{scenario}/client/v4/accounts/{ACCOUNT}/ai/run"

    # ---- floor: raw httpx + json

    def floor_stream(self, scenario: str, fmt: str) -> Callable[[], int]:
        http = httpx.Client()
        if fmt == "openai":
            url = self.oa_base(scenario) + "/chat/completions"
            body: dict[str, Any] = {
                "model": MODEL_OA,
                "messages": [{"role": "user", "content": "hi"}],
                "stream": True,
                "stream_options": {"include_usage": True},
            }
        else:
            url = f"{self.cf_base(scenario)}/{MODEL_CF}"
            body = {"messages": [{"role": "user", "content": "hi"}], "stream": True}
        headers = {"Authorization": f"Bearer {KEY}"}

        def run() -> int:
            n = 0
            calls: dict[int, list[str]] = {}
            with http.stream("POST", url, json=body, headers=headers) as r:
                for line in r.iter_lines():
                    if not line.startswith("data: "):
                        continue
                    data = line[6:]
                    if data == "[DONE]":
                        break
                    event = json.loads(data)
                    if fmt == "openai":
                        if event["choices"]:
                            delta = event["choices"][0]["delta"]
                            for tc in delta.get("tool_calls") or ():
                                calls.setdefault(tc["index"], []).append(
                                    tc["function"].get("arguments") or ""
                                )
                            n += bool(delta.get("content") or delta.get("tool_calls"))
                    else:
                        n += bool(event.get("response"))
            for parts in calls.values():
                json.loads("".join(parts))
            return n

        return run

    def floor_first_chunk(self, scenario: str) -> Callable[[], Any]:
        """Open an OpenAI-format stream and return an iterator of its decoded events."""
        http = httpx.Client()
        url = self.oa_base(scenario) + "/chat/completions"
        body = {"model": MODEL_OA, "messages": [{"role": "user", "content": "hi"}], "stream": True}

        def events() -> Any:
            with http.stream(
                "POST", url, json=body, headers={"Authorization": f"Bearer {KEY}"}
            ) as r:
                for line in r.iter_lines():
                    if line.startswith("data: ") and line != "data: [DONE]":
                        event = json.loads(line[6:])
                        if event["choices"] and event["choices"][0]["delta"].get("content"):
                            yield event

        return events

    def floor_call(self, fmt: str) -> Callable[[], str]:
        http = httpx.Client()
        headers = {"Authorization": f"Bearer {KEY}"}
        if fmt == "openai":
            url = self.oa_base("short") + "/chat/completions"
            body: dict[str, Any] = {
                "model": MODEL_OA,
                "messages": [{"role": "user", "content": "hi"}],
            }
            return lambda: http.post(url, json=body, headers=headers).json()["choices"][0][
                "message"
            ]["content"]
        url = f"{self.cf_base('short')}/{MODEL_CF}"
        body = {"messages": [{"role": "user", "content": "hi"}]}
        return lambda: http.post(url, json=body, headers=headers).json()["result"]["response"]

    # ---- openai SDK

    def openai_stream(self, scenario: str) -> Callable[[], int]:
        from openai import OpenAI

        client = OpenAI(base_url=self.oa_base(scenario), api_key=KEY)

        def run() -> int:
            n = 0
            for chunk in client.chat.completions.create(
                model=MODEL_OA,
                messages=[{"role": "user", "content": "hi"}],
                stream=True,
                stream_options={"include_usage": True},
            ):
                n += bool(
                    chunk.choices
                    and (chunk.choices[0].delta.content or chunk.choices[0].delta.tool_calls)
                )
            return n

        return run

    def openai_call(self) -> Callable[[], Any]:
        from openai import OpenAI

        client = OpenAI(base_url=self.oa_base("short"), api_key=KEY)
        return lambda: (
            client.chat.completions.create(
                model=MODEL_OA, messages=[{"role": "user", "content": "hi"}]
            )
            .choices[0]
            .message.content
        )

    # ---- llamavision core

    def core(self, scenario: str, fmt: str) -> Any:
        from llamavision import LlamaVisionClient

        provider = "aigateway" if fmt == "openai" else "cloudflare"
        base = self.oa_base(scenario) if fmt == "openai" else self.cf_base(scenario)
        return LlamaVisionClient(provider, api_key=KEY, account_id=ACCOUNT, base_url=base)

    def core_stream(self, scenario: str, fmt: str) -> Callable[[], int]:
        client = self.core(scenario, fmt)

        def run() -> int:
            return sum(1 for d in client.stream("hi") if d.text or d.tool_call_chunks)

        return run

    # ---- LangChain

    def chat_llamavision(self, scenario: str, fmt: str) -> Any:
        from langchain_llamavision import ChatLlamaVision

        provider = "aigateway" if fmt == "openai" else "cloudflare"
        base = self.oa_base(scenario) if fmt == "openai" else self.cf_base(scenario)
        return ChatLlamaVision(provider=provider, api_key=KEY, account_id=ACCOUNT, base_url=base)

    def chat_openai(self, scenario: str) -> Any:
        from langchain_openai import ChatOpenAI

        return ChatOpenAI(
            base_url=self.oa_base(scenario), api_key=KEY, model=MODEL_OA, stream_usage=True
        )

    def chat_cloudflare(self, scenario: str) -> Any:
        from langchain_cloudflare import ChatCloudflareWorkersAI

        return ChatCloudflareWorkersAI(
            base_url=f"{self.url}/{scenario}/client/v4/",
            account_id=ACCOUNT,
            api_token=KEY,
            model=MODEL_CF,
        )

    # ---- LlamaIndex

    def llamavision_li(self, scenario: str, fmt: str) -> Any:
        from llamaindex_llamavision import LlamaVision

        provider = "aigateway" if fmt == "openai" else "cloudflare"
        base = self.oa_base(scenario) if fmt == "openai" else self.cf_base(scenario)
        return LlamaVision(provider=provider, api_key=KEY, account_id=ACCOUNT, base_url=base)

    def openai_like(self, scenario: str) -> Any:
        from llama_index.llms.openai_like import OpenAILike

        return OpenAILike(
            api_base=self.oa_base(scenario),
            api_key=KEY,
            model=MODEL_OA,
            is_chat_model=True,
            is_function_calling_model=True,
        )


def lc_stream(llm: Any) -> Callable[[], int]:
    """Stream through a LangChain chat model, counting chunks with content."""
    return lambda: sum(1 for c in llm.stream("hi") if c.content or c.tool_call_chunks)


def li_stream(llm: Any) -> Callable[[], int]:
    """Stream through a LlamaIndex LLM, counting responses with a delta."""
    from llama_index.core.llms import ChatMessage

    messages = [ChatMessage(role="user", content="hi")]
    return lambda: sum(1 for r in llm.stream_chat(messages) if r.delta)


def li_call(llm: Any) -> Callable[[], Any]:
    """One LlamaIndex chat call."""
    from llama_index.core.llms import ChatMessage

    messages = [ChatMessage(role="user", content="hi")]
    return lambda: llm.chat(messages)


# --------------------------------------------------------------------------- workloads


def stream_clients(c: Clients, scenario: str) -> list[tuple[str, Callable[[], int]]]:
    """Every streaming client for one scenario, both wire formats."""
    return [
        ("raw httpx + json (floor), OpenAI format", c.floor_stream(scenario, "openai")),
        ("raw httpx + json (floor), Workers AI format", c.floor_stream(scenario, "cloudflare")),
        ("openai SDK", c.openai_stream(scenario)),
        ("llamavision core, aigateway", c.core_stream(scenario, "openai")),
        ("llamavision core, cloudflare", c.core_stream(scenario, "cloudflare")),
        ("ChatOpenAI", lc_stream(c.chat_openai(scenario))),
        ("ChatCloudflareWorkersAI", lc_stream(c.chat_cloudflare(scenario))),
        ("ChatLlamaVision, aigateway", lc_stream(c.chat_llamavision(scenario, "openai"))),
        ("ChatLlamaVision, cloudflare", lc_stream(c.chat_llamavision(scenario, "cloudflare"))),
        ("OpenAILike", li_stream(c.openai_like(scenario))),
        ("LlamaVision, aigateway", li_stream(c.llamavision_li(scenario, "openai"))),
        ("LlamaVision, cloudflare", li_stream(c.llamavision_li(scenario, "cloudflare"))),
    ]


def per_chunk(c: Clients, cfg: Config, scenario: str, chunks: int) -> list[Row]:
    """CPU per streamed chunk and time to first token, for every client."""
    rows = []
    for name, fn in stream_clients(c, scenario):
        got = fn()  # the warm-up, counting the chunks
        cpu, wall = measure(fn, cfg.streams, cfg.repeats, warm_up=False)
        rows.append(
            Row(
                name,
                cpu / cfg.streams / chunks * 1e6,
                "µs CPU/chunk",
                {"chunks seen": got, "wall ms/stream": wall / cfg.streams * 1e3},
            )
        )
    return rows


def ttft(c: Clients, scenario: str, repeats: int) -> dict[str, float]:
    """Median time to first token, in ms, for the stream clients that expose an iterator."""
    from llama_index.core.llms import ChatMessage

    li_messages = [ChatMessage(role="user", content="hi")]
    core_oa, core_cf = c.core(scenario, "openai"), c.core(scenario, "cloudflare")
    lc_ours, lc_openai = c.chat_llamavision(scenario, "openai"), c.chat_openai(scenario)
    li_ours, li_openai = c.llamavision_li(scenario, "openai"), c.openai_like(scenario)
    floor = c.floor_first_chunk(scenario)
    openers: dict[str, Callable[[], Any]] = {
        "raw httpx + json (floor), OpenAI format": floor,
        "llamavision core, aigateway": lambda: core_oa.stream("hi"),
        "llamavision core, cloudflare": lambda: core_cf.stream("hi"),
        "ChatLlamaVision, aigateway": lambda: lc_ours.stream("hi"),
        "ChatOpenAI": lambda: lc_openai.stream("hi"),
        "LlamaVision, aigateway": lambda: li_ours.stream_chat(li_messages),
        "OpenAILike": lambda: li_openai.stream_chat(li_messages),
    }
    out = {}
    for name, open_stream in openers.items():
        times = []
        for _ in range(repeats + 1):
            start = time.perf_counter()
            it = iter(open_stream())
            next(it)
            times.append((time.perf_counter() - start) * 1e3)
            for _ in it:
                pass
        out[name] = statistics.median(times[1:])
    return out


def per_call(c: Clients, cfg: Config) -> list[Row]:
    """CPU per non-streamed short call."""
    clients: list[tuple[str, Callable[[], Any]]] = [
        ("raw httpx + json (floor), OpenAI format", c.floor_call("openai")),
        ("raw httpx + json (floor), Workers AI format", c.floor_call("cloudflare")),
        ("openai SDK", c.openai_call()),
        ("llamavision core, aigateway", lambda cl=c.core("short", "openai"): cl.chat("hi")),
        ("llamavision core, cloudflare", lambda cl=c.core("short", "cloudflare"): cl.chat("hi")),
        ("ChatOpenAI", lambda m=c.chat_openai("short"): m.invoke("hi")),
        ("ChatCloudflareWorkersAI", lambda m=c.chat_cloudflare("short"): m.invoke("hi")),
        (
            "ChatLlamaVision, aigateway",
            lambda m=c.chat_llamavision("short", "openai"): m.invoke("hi"),
        ),
        (
            "ChatLlamaVision, cloudflare",
            lambda m=c.chat_llamavision("short", "cloudflare"): m.invoke("hi"),
        ),
        ("OpenAILike", li_call(c.openai_like("short"))),
        ("LlamaVision, aigateway", li_call(c.llamavision_li("short", "openai"))),
        ("LlamaVision, cloudflare", li_call(c.llamavision_li("short", "cloudflare"))),
    ]
    rows = []
    for name, fn in clients:
        cpu, wall = measure(fn, cfg.calls, cfg.repeats)
        rows.append(
            Row(
                name, cpu / cfg.calls * 1e6, "µs CPU/call", {"wall µs/call": wall / cfg.calls * 1e6}
            )
        )
    return rows


def long_stream(c: Clients, cfg: Config) -> list[Row]:
    """Per-chunk CPU at 1,000 chunks and at the long length; Python memory peak."""
    long_name = f"s{cfg.long_chunks}"
    rows = []
    makers: list[tuple[str, Callable[[str], Callable[[], int]]]] = [
        ("raw httpx + json (floor)", lambda s: c.floor_stream(s, "openai")),
        ("llamavision core, aigateway", lambda s: c.core_stream(s, "openai")),
        ("llamavision core, cloudflare", lambda s: c.core_stream(s, "cloudflare")),
        ("ChatOpenAI", lambda s: lc_stream(c.chat_openai(s))),
        ("ChatLlamaVision, aigateway", lambda s: lc_stream(c.chat_llamavision(s, "openai"))),
        ("OpenAILike", lambda s: li_stream(c.openai_like(s))),
        ("LlamaVision, aigateway", lambda s: li_stream(c.llamavision_li(s, "openai"))),
    ]
    for name, make in makers:
        short_fn, long_fn = make("s1000"), make(long_name)
        short_cpu, _ = measure(short_fn, 3, cfg.repeats)
        long_cpu, _ = measure(long_fn, 1, cfg.long_repeats)
        tracemalloc.start()
        long_fn()
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        at_short = short_cpu / 3 / 1000 * 1e6
        at_long = long_cpu / cfg.long_chunks * 1e6
        rows.append(
            Row(
                name,
                at_long / at_short,
                "ratio long/1k",
                {
                    "µs/chunk at 1k": at_short,
                    f"µs/chunk at {cfg.long_chunks}": at_long,
                    "Python peak MB": peak / 1e6,
                },
            )
        )
    return rows


def tool_fragments(c: Clients, cfg: Config) -> list[Row]:
    """Measure a streamed tool call whose arguments arrive in 500 fragments."""
    from llamavision import StreamAccumulator

    core = c.core("tool500", "openai")

    def core_run() -> int:
        acc = StreamAccumulator()
        for d in core.stream("hi"):
            acc.add(d)
        return len(acc.result().tool_calls)

    def lc_merge(llm: Any) -> Callable[[], int]:
        def run() -> int:
            merged = None
            for chunk in llm.stream("hi"):
                merged = chunk if merged is None else merged + chunk
            return len(merged.tool_calls) if merged is not None else 0

        return run

    clients: list[tuple[str, Callable[[], int]]] = [
        ("raw httpx + json (floor)", c.floor_stream("tool500", "openai")),
        ("openai SDK", c.openai_stream("tool500")),
        ("llamavision core (assembled)", core_run),
        ("ChatOpenAI (chunks merged)", lc_merge(c.chat_openai("tool500"))),
        ("ChatLlamaVision (chunks merged)", lc_merge(c.chat_llamavision("tool500", "openai"))),
        ("OpenAILike", li_stream(c.openai_like("tool500"))),
        ("LlamaVision", li_stream(c.llamavision_li("tool500", "openai"))),
    ]
    rows = []
    for name, fn in clients:
        cpu, _ = measure(fn, cfg.streams, cfg.repeats)
        rows.append(Row(name, cpu / cfg.streams * 1e3, "ms CPU/stream"))
    return rows


def async_makers(c: Clients) -> dict[str, Callable[[], Callable[..., Any]]]:
    """Return the async clients, each made fresh by its factory."""
    from llama_index.core.llms import ChatMessage
    from openai import AsyncOpenAI

    li_messages = [ChatMessage(role="user", content="hi")]

    def floor() -> Callable[[], Any]:
        url = c.oa_base("short") + "/chat/completions"
        body = {"model": MODEL_OA, "messages": [{"role": "user", "content": "hi"}]}
        state: dict[str, httpx.AsyncClient] = {}

        async def call() -> Any:
            if "c" not in state:
                state["c"] = httpx.AsyncClient()  # httpx defaults, as the core client uses
            r = await state["c"].post(url, json=body, headers={"Authorization": f"Bearer {KEY}"})
            return r.json()["choices"][0]["message"]["content"]

        return call

    def sdk() -> Callable[[], Any]:
        state: dict[str, Any] = {}

        async def call() -> Any:
            if "c" not in state:
                state["c"] = AsyncOpenAI(base_url=c.oa_base("short"), api_key=KEY)
            return await state["c"].chat.completions.create(
                model=MODEL_OA, messages=[{"role": "user", "content": "hi"}]
            )

        return call

    makers: list[tuple[str, Callable[[], Callable[..., Any]]]] = [
        ("raw httpx + json (floor)", floor),
        ("openai SDK", sdk),
        ("llamavision core, aigateway", lambda: c.core("short", "openai").achat),
        ("llamavision core, cloudflare", lambda: c.core("short", "cloudflare").achat),
        ("ChatOpenAI", lambda: lambda m=c.chat_openai("short"): m.ainvoke("hi")),
        (
            "ChatLlamaVision, aigateway",
            lambda: lambda m=c.chat_llamavision("short", "openai"): m.ainvoke("hi"),
        ),
        ("OpenAILike", lambda: lambda m=c.openai_like("short"): m.achat(li_messages)),
        (
            "LlamaVision, aigateway",
            lambda: lambda m=c.llamavision_li("short", "openai"): m.achat(li_messages),
        ),
    ]

    return dict(makers)


def async_sample(url: str, name: str, calls: int, concurrency: int) -> tuple[float, float]:
    """Run one throughput sample of one client (in the current, fresh process)."""

    async def run() -> tuple[float, float]:
        fn = async_makers(Clients(url))[name]()
        gate = asyncio.Semaphore(concurrency)

        async def one(f: Callable[..., Any]) -> None:
            async with gate:
                await (f("hi") if getattr(f, "__name__", "") == "achat" else f())

        await asyncio.gather(*(one(fn) for _ in range(concurrency)))  # warm-up
        c0, w0 = time.process_time(), time.perf_counter()
        await asyncio.gather(*(one(fn) for _ in range(calls)))
        sample = time.process_time() - c0, time.perf_counter() - w0
        # Let clients that close themselves when collected (the openai SDK's) do it on
        # this loop, not on the next sample's.
        del fn
        gc.collect()
        await asyncio.gather(*(asyncio.all_tasks() - {asyncio.current_task()}))
        return sample

    return asyncio.run(run())


def async_throughput(c: Clients, cfg: Config) -> list[Row]:
    """``async_calls`` non-streamed calls at ``concurrency``: calls/s and CPU per call.

    Each sample runs in a fresh process, as a user's program would, so that no client is
    measured inside a heap shaped by the others; rounds interleave the clients so that the
    shared machine's drifts hit all of them alike.
    """
    names = list(async_makers(c))
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in names}
    for _ in range(cfg.repeats):
        for name in names:
            if not cfg.fresh_processes:  # a smoke run: the same measurement, in this process
                samples[name].append(async_sample(c.url, name, cfg.async_calls, cfg.concurrency))
                continue
            out = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--async-sample",
                    name,
                    "--url",
                    c.url,
                    "--calls",
                    str(cfg.async_calls),
                    "--concurrency",
                    str(cfg.concurrency),
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            cpu, wall = map(float, out.stdout.split()[-2:])
            samples[name].append((cpu, wall))
    rows = []
    for name, got in samples.items():
        cpu = statistics.median(s[0] for s in got)
        wall = statistics.median(s[1] for s in got)
        rows.append(
            Row(
                name,
                cfg.async_calls / wall,
                "calls/s",
                {"µs CPU/call": cpu / cfg.async_calls * 1e6},
            )
        )
    return rows


IMAGE_FLOOR = """
import base64, io, sys
from PIL import Image
img = Image.open(sys.argv[1])
img = img.resize((1120, 840))
out = io.BytesIO()
img.save(out, format="JPEG", quality=85)
body = base64.b64encode(out.getvalue())
"""
IMAGE_OURS = """
import sys
from llamavision.images import resolve_image
body = resolve_image(sys.argv[1]).data_url()
"""
IMAGE_WRAPPER = """
import sys, time
import base64, io
from PIL import Image
import llamavision.images

def hwm():  # peak RSS of this address space (ru_maxrss would include the forking parent's)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024

base = hwm()
t0 = time.perf_counter()
exec(sys.argv[2])
elapsed = time.perf_counter() - t0
print(elapsed, hwm() - base)
"""


def image_path() -> Path:
    """Return a 12-megapixel photo-like JPEG (4000x3000), made once."""
    path = ROOT / ".cache" / "photo-12mp.jpg"
    if not path.exists():
        from PIL import Image, ImageFilter

        path.parent.mkdir(exist_ok=True)
        noise = Image.effect_noise((4000, 3000), 60).filter(ImageFilter.GaussianBlur(2))
        gradient = Image.linear_gradient("L").resize((4000, 3000))
        Image.merge(
            "RGB", (noise, gradient, noise.transpose(Image.Transpose.FLIP_LEFT_RIGHT))
        ).save(path, quality=92)
    return path


def image_pipeline(cfg: Config) -> list[Row]:
    """File to request body for one 12 MP JPEG: time and peak memory, in fresh processes."""
    path = image_path()
    rows = []
    for name, code in (
        ("Pillow open + resize + JPEG + base64 (floor)", IMAGE_FLOOR),
        ("llamavision resolve_image + data URL", IMAGE_OURS),
    ):
        samples = []
        for _ in range(cfg.image_runs):
            out = subprocess.run(
                [sys.executable, "-c", IMAGE_WRAPPER, str(path), code],
                capture_output=True,
                text=True,
                check=True,
            )
            elapsed, peak = map(float, out.stdout.split())
            samples.append((elapsed, peak))
        rows.append(
            Row(
                name,
                statistics.median(s[0] for s in samples) * 1e3,
                "ms",
                {
                    "peak RSS growth MB": statistics.median(s[1] for s in samples) / 1e6,
                    "decoded image MB": 4000 * 3000 * 3 / 1e6,
                },
            )
        )
    return rows


# --------------------------------------------------------------------------- report


def versions() -> str:
    """Versions of the packages compared."""
    names = [
        "httpx",
        "openai",
        "langchain-core",
        "langchain-openai",
        "langchain-cloudflare",
        "llama-index-core",
        "llama-index-llms-openai-like",
        "Pillow",
    ]
    found = []
    for name in names:
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            found.append(f"{name} (not installed)")
    return ", ".join(found)


def main(argv: list[str] | None = None) -> int:
    """Run every workload and write the results table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny workloads (a smoke test)")
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--async-sample", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--calls", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--concurrency", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.async_sample:  # a worker of async_throughput
        cpu, wall = async_sample(args.url, args.async_sample, args.calls, args.concurrency)
        print(cpu, wall)
        return 0
    cfg = (
        Config(
            repeats=1,
            calls=5,
            streams=1,
            long_chunks=2_000,
            async_calls=20,
            concurrency=5,
            image_runs=1,
            long_repeats=1,
            fresh_processes=False,
        )
        if args.quick
        else Config()
    )
    server = subprocess.Popen(
        [sys.executable, str(ROOT / "server.py")], stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None
        url = f"http://127.0.0.1:{server.stdout.readline().strip()}"
        c = Clients(url)
        started = time.perf_counter()
        sections = []
        print("per streamed chunk (2,000 chunks)...", flush=True)
        rows = per_chunk(c, cfg, "s2000", 2000)
        first = ttft(c, "s2000", cfg.repeats)
        for r in rows:
            if r.client in first:
                r.extra["first token ms"] = first[r.client]
        sections.append(
            table(
                "1. A 2,000-chunk stream: client CPU per chunk",
                rows,
                "raw httpx + json (floor), OpenAI format",
                "Ratios are to the OpenAI-format floor. First token: wall time "
                "from the call to the first text chunk on a warm client, server "
                "time included (the same for all).",
            )
        )
        print("per call...", flush=True)
        sections.append(
            table(
                "2. A short non-streamed call: client CPU per call",
                per_call(c, cfg),
                "raw httpx + json (floor), OpenAI format",
            )
        )
        print("long stream...", flush=True)
        sections.append(
            table(
                f"3. Long stream: per-chunk CPU at {cfg.long_chunks:,} chunks over that at 1,000",
                long_stream(c, cfg),
                None,
                "1.00 means flat. Python peak: tracemalloc over one long stream. LangChain's "
                "`stream()` keeps every chunk to merge them for its end-of-run callbacks, so "
                "its rows grow with the reply, ours and ChatOpenAI's alike.",
            )
        )
        print("tool-call fragments...", flush=True)
        sections.append(
            table(
                "4. A streamed tool call in 500 argument fragments",
                tool_fragments(c, cfg),
                "raw httpx + json (floor)",
            )
        )
        print("async throughput...", flush=True)
        sections.append(
            table(
                f"5. {cfg.async_calls} async calls at concurrency {cfg.concurrency}",
                async_throughput(c, cfg),
                "raw httpx + json (floor)",
                "Higher calls/s is better.",
            )
        )
        print("image...", flush=True)
        sections.append(
            table(
                "6. One 12-megapixel JPEG, file to request body",
                image_pipeline(cfg),
                "Pillow open + resize",
            )
        )
    finally:
        server.kill()
    report = "\n".join(
        [
            "## Client overhead",
            "",
            f"Machine: {machine()}.  ",
            f"Packages: {versions()}.  ",
            f"Run: `python bench/run.py{' --quick' if args.quick else ''}` on "
            f"{time.strftime('%Y-%m-%d')}, {time.perf_counter() - started:.0f} s. "
            "CPU is the client process's `time.process_time()`, median of repeats after a "
            "warm-up; the server runs in its own process.",
            "",
            *sections,
        ]
    )
    write_section("client", report, Path(args.out))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
