"""Captioning at scale on one machine, against the emulator over real sockets.

Bounded memory, one shared answer to rate limits for every caller of a client, and a stop on
account-level errors that keeps what is done and resumes.
"""

from __future__ import annotations

import asyncio
import io
import math
import random
import tracemalloc
from pathlib import Path

import httpx
import pytest
from PIL import Image as PILImage

from llamavision import (
    InsufficientCreditsError,
    LlamaVisionClient,
    NothingCaptionedError,
    QuotaExceededError,
    RateLimitError,
)
from llamavision.captions import CaptionSummary, caption_images, estimate_cost, load_captions
from llamavision.cli import main
from llamavision.emulator import Emulator, EmulatorProcess, EmulatorServer, Fault
from llamavision.messages import Price, Usage

PROVIDERS = ["aigateway", "cloudflare"]


def make_images(folder: Path, count: int, size: tuple[int, int] = (64, 48)) -> list[Path]:
    folder.mkdir(exist_ok=True)
    rng = random.Random(count)
    paths = []
    for i in range(count):
        path = folder / f"img-{i:04d}.jpg"
        noise = rng.randbytes(size[0] * size[1] * 3)
        PILImage.frombytes("RGB", size, noise).save(path, quality=90)
        paths.append(path)
    return paths


def client(provider: str = "aigateway", **kwargs: object) -> LlamaVisionClient:
    return LlamaVisionClient(provider, accept_license=True, retry_backoff=0.01, **kwargs)  # type: ignore[arg-type]


def run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


# --------------------------------------------------------------------------- memory


def peak_bytes(paths: list[Path], out: Path, env: dict[str, str]) -> int:
    """Peak of the memory Python allocates while captioning ``paths``."""

    async def run() -> None:
        c = LlamaVisionClient(api_key=env["AIGATEWAY_API_KEY"], base_url=env["AIGATEWAY_BASE_URL"])
        async with c:
            summary = await caption_images(paths, out, c, concurrency=4)
        assert summary.captioned == len(paths)

    tracemalloc.start()
    try:
        asyncio.run(run())
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_memory_stays_bounded_whatever_the_number_of_images(tmp_path: Path) -> None:
    paths = make_images(tmp_path / "images", 240, size=(640, 480))
    file_size = sum(p.stat().st_size for p in paths) / len(paths)
    with EmulatorProcess() as server:  # its own process: only the client is measured
        peak_bytes(paths[:8], tmp_path / "warm-up.jsonl", server.env())
        few = peak_bytes(paths[:40], tmp_path / "few.jsonl", server.env())
        many = peak_bytes(paths, tmp_path / "many.jsonl", server.env())
    # Holding every image would add 200 files' worth; in flight are about 4 (with copies).
    assert many - few < 40 * file_size, (few, many, file_size)


# --------------------------------------------------------------------------- shared pause


@pytest.mark.parametrize("provider", PROVIDERS)
def test_one_429_pauses_every_caption_worker(
    provider: str, emulator: Emulator, tmp_path: Path
) -> None:
    paths = make_images(tmp_path / "images", 6)
    emulator.license_gate = False
    # The provider refuses everything for one second after its first 429 and says so.
    emulator.fail(Fault("status", status=429, retry_after="1", lasting=1.0))

    async def run() -> None:
        async with client(provider, max_concurrency=1) as c:
            summary = await caption_images(paths, tmp_path / "c.jsonl", c, concurrency=6)
        assert summary.captioned == 6 and not summary.failures
        assert summary.rate_limited == 1 and summary.rate_wait >= 0.9

    asyncio.run(run())
    assert emulator.counters["requests"] == len(paths) + 1  # nobody sent into the window


def test_one_429_pauses_threads_of_one_client(emulator: Emulator) -> None:
    from concurrent.futures import ThreadPoolExecutor

    emulator.fail(Fault("status", status=429, retry_after="1", lasting=1.0))
    with client(max_concurrency=1) as c, ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda i: c.chat(f"question {i}").text, range(4)))
    assert all(results) and emulator.counters["requests"] == 5
    assert c.rate_stats.rate_limited == 1


# --------------------------------------------------------------------------- account-level stop


@pytest.mark.parametrize(
    ("provider", "error"),
    [("cloudflare", QuotaExceededError), ("aigateway", InsufficientCreditsError)],
)
def test_a_used_up_quota_stops_the_run_and_a_rerun_resumes(
    provider: str, error: type, emulator: Emulator, tmp_path: Path
) -> None:
    paths = make_images(tmp_path / "images", 8)
    out = tmp_path / "c.jsonl"
    emulator.fail(Fault("quota", lasting=math.inf))
    code, _, err = run_cli(
        "caption", str(tmp_path / "images"), "--out", str(out), "--provider", provider,
        "--accept-license", "--concurrency", "2",
    )  # fmt: skip
    assert code == 1
    assert "stopped:" in err and "run the same command again" in err
    assert "daily reset" in err if provider == "cloudflare" else "Add credits" in err
    assert emulator.counters["requests"] <= 2  # nothing sent after the first answer
    assert load_captions(out) == []

    async def direct() -> type:
        async with client(provider) as c:
            summary = await caption_images(paths, tmp_path / "d.jsonl", c, concurrency=2)
        return type(summary.stopped)

    assert asyncio.run(direct()) is error

    emulator.reset()  # the quota is back
    code, _, err = run_cli(
        "caption", str(tmp_path / "images"), "--out", str(out), "--provider", provider,
        "--accept-license",
    )  # fmt: skip
    assert code == 0 and "8 captioned" in err
    assert len(load_captions(out)) == 8


def test_per_image_errors_stay_per_image(emulator: Emulator, tmp_path: Path) -> None:
    paths = make_images(tmp_path / "images", 3)
    (tmp_path / "images" / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    emulator.fail(Fault("status", status=400, message="image rejected"))
    code, _, err = run_cli("caption", str(tmp_path / "images"), "--out", str(tmp_path / "c"))
    assert code == 3 and "2 captioned" in err and "2 failed" in err
    assert len(paths) == 3


def test_a_run_that_captioned_nothing_says_why_and_a_rerun_costs_nothing(
    emulator: Emulator, tmp_path: Path
) -> None:
    paths = make_images(tmp_path / "images", 3)
    out = tmp_path / "c.jsonl"

    async def run() -> CaptionSummary:
        async with client(max_retries=0) as c:
            return await caption_images(paths, out, c)

    emulator.fail(*[Fault("status", status=400, message="image rejected")] * 3)
    failed = asyncio.run(run())
    assert "0 captioned, 0 already done, 3 failed" in failed.describe()
    assert "failed: img-0000.jpg: " in failed.describe() and "image rejected" in failed.describe()
    with pytest.raises(NothingCaptionedError, match=r"all 3 failed.*image rejected.*run again"):
        failed.check()
    done = asyncio.run(run())  # the provider takes them now
    done.check()
    assert done.captioned == 3 and "$0.000" in done.describe()
    again = asyncio.run(run())
    again.check()  # nothing failed, nothing sent: not an error
    assert (again.skipped, again.requests, again.cost) == (3, 0, 0.0)
    estimate = estimate_cost(out, images=100)
    records = [r for r in load_captions(out) if r.get("caption")]  # without the failures
    prompt = round(100 * sum(r["prompt_tokens"] for r in records) / 3)
    completion = round(100 * sum(r["completion_tokens"] for r in records) / 3)
    usage = Usage(prompt, completion, prompt + completion)
    assert estimate == pytest.approx(
        {"aigateway": Price(0.049, 0.680).cost(usage), "cloudflare": Price(0.24, 0.24).cost(usage)}
    )  # the published prices (PROVIDERS.md)


# --------------------------------------------------------------------------- emulator limit


@pytest.mark.parametrize(
    ("provider", "code"), [("aigateway", "rate_limit_error"), ("cloudflare", 3021)]
)
def test_emulator_rate_limit_answers_with_the_providers_own_429(
    provider: str, code: object, emulator: Emulator, emulator_server: EmulatorServer
) -> None:
    emulator.rate_limit, emulator.rate_burst = 60, 2  # one a second, two at once
    emulator.license_gate = False
    with client(provider, max_retries=0) as c:
        c.chat("one"), c.chat("two")
        with pytest.raises(RateLimitError) as caught:
            c.chat("three")
    assert caught.value.code == code and caught.value.retry_after == 1.0
    assert emulator.counters == {"requests": 3, "received": 2, "rate_limited": 1, "embedded": 0}
    other = httpx.post(  # another key has its own bucket
        emulator_server.aigateway_base_url + "/chat/completions",
        headers={"Authorization": "Bearer someone-else"},
        json={},
    )
    assert other.status_code == 401


def test_a_client_rate_limit_paces_a_run_from_the_start(emulator: Emulator, tmp_path: Path) -> None:
    paths = make_images(tmp_path / "images", 21)
    emulator.rate_limit, emulator.rate_burst = 2400, 4  # room for a burst of four only

    async def run() -> None:
        async with client(rate_limit=600) as c:  # ten a second, evenly
            summary = await caption_images(paths, tmp_path / "c.jsonl", c, concurrency=8)
        assert summary.captioned == 21 and summary.rate_limited == 0
        assert summary.seconds >= 2.0 and summary.paced > 0  # 20 intervals of 0.1 s
        assert summary.rate_wait == 0  # pacing is planned, not a rate-limit wait

    asyncio.run(run())
    assert emulator.counters["rate_limited"] == 0
