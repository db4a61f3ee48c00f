"""Captioning at scale: throughput, peak memory and rate limits of ``llamavision caption``.

Run from the repository root: ``python bench/captions.py`` (``--quick`` for a smoke run).
Images are generated (photo-like 12-megapixel JPEGs of about 1.6 MB, distinct bytes each) in
a temporary folder, never committed. The emulator runs in its own process
(``llamavision emulator --port 0``) and so does each ``llamavision caption`` run, whose peak
RSS is read from ``wait4``. Results go to the "captions" section of ``bench/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from report import RESULTS, machine, write_section

from llamavision.emulator import EmulatorProcess

SIZE = (4000, 3000)
BASES = 12  # distinct pictures; every file is one of them with its own trailing bytes
LATENCY = 2.0  # seconds: about what a caption from the real model takes


@dataclass
class Run:
    """One ``llamavision caption`` process."""

    images: int
    seconds: float
    peak_rss_mb: float
    summary: dict[str, Any]

    @property
    def per_second(self) -> float:
        return self.summary["captioned"] / self.seconds


def make_bases(folder: Path, count: int, size: tuple[int, int] = SIZE) -> list[bytes]:
    """Photo-like JPEGs (blurred noise over gradients), about 1.6 MB at 12 MP; made once."""
    from PIL import Image, ImageFilter

    folder.mkdir(parents=True, exist_ok=True)
    bases = []
    for i in range(count):
        path = folder / f"base-{size[0]}x{size[1]}-{i}.jpg"
        if not path.exists():
            noise = Image.effect_noise(size, 45).filter(ImageFilter.GaussianBlur(1.2))
            gradient = Image.linear_gradient("L").resize(size).rotate(i * 30)
            picture = Image.merge(
                "RGB", (noise, gradient, noise.transpose(Image.Transpose.FLIP_TOP_BOTTOM))
            )
            buffer = io.BytesIO()
            picture.save(buffer, "JPEG", quality=85)
            path.write_bytes(buffer.getvalue())
        bases.append(path.read_bytes())
    return bases


def make_collection(folder: Path, count: int, bases: list[bytes]) -> None:
    """Write ``count`` distinct JPEG files (bytes after the end-of-image marker differ)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        path = folder / f"img-{i:05d}.jpg"
        if not path.exists():
            path.write_bytes(bases[i % len(bases)] + f"bench-{i}".encode())


def caption(pattern: str, env: dict[str, str], *extra: str) -> Run:
    """Run ``llamavision caption`` in its own process; return its time, peak RSS, summary."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "captions.jsonl"
        args = [sys.executable, "-m", "llamavision.cli", "caption", pattern, "--out", str(out)]
        args += ["--concurrency", "16", "--json", *extra]
        started = time.perf_counter()
        process = subprocess.Popen(
            args,
            env={**os.environ, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert process.stdout is not None
        output = process.stdout.read()
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        if process.returncode != 0:
            raise RuntimeError(f"caption failed ({process.returncode}): {output[-2000:]}")
        summary = json.loads(output)
        records = [json.loads(line) for line in out.read_text().splitlines()]
        unique = {r["sha256"] for r in records}
        if not (len(records) == len(unique) == summary["captioned"]):
            raise RuntimeError("an image was captioned twice or a record is missing")
    return Run(summary["captioned"], seconds, usage.ru_maxrss / 1024, summary)


def cpu_per_image(bases: list[bytes], folder: Path, rounds: int) -> tuple[float, float]:
    """Median CPU ms per image: ours from file to request body, and Pillow's own floor."""
    from PIL import Image

    from llamavision.captions import DEFAULT_PROMPT, read_image
    from llamavision.images import resolve_image
    from llamavision.messages import ChatRequest, Message
    from llamavision.providers import openai_compat

    paths = [folder / f"img-{i:05d}.jpg" for i in range(len(bases))]

    def ours(path: Path) -> None:
        data, _ = read_image(path)  # read once, hash
        image = resolve_image(data)  # sniff, decode (draft), downscale, encode
        message = Message.user(DEFAULT_PROMPT, image=image)
        _, body = openai_compat.build_payload(ChatRequest((message,), "m"))
        json.dumps(body).encode()  # what httpx sends

    def floor(path: Path) -> None:
        with Image.open(path) as picture:  # Pillow's decode-resize-encode of the same file
            picture.thumbnail((1120, 1120))
            picture.save(io.BytesIO(), "JPEG", quality=85)

    samples: dict[str, list[float]] = {"ours": [], "floor": []}
    for fn in (ours, floor):  # warm-up
        fn(paths[0])
    for _ in range(rounds):
        for name, fn in (("floor", floor), ("ours", ours)):
            started = time.process_time()
            for path in paths:
                fn(path)
            samples[name].append((time.process_time() - started) / len(paths) * 1e3)
    return statistics.median(samples["ours"]), statistics.median(samples["floor"])


def main(argv: list[str] | None = None) -> int:
    """Run the captioning workloads and write their section of RESULTS.md."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny workloads (a smoke test)")
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--workdir", help="where to generate images (default: a temp folder)")
    parser.add_argument("--rate", type=float, default=600, help="emulator limit R, per minute")
    args = parser.parse_args(argv)
    small, large = (20, 60) if args.quick else (500, 5000)
    ray_actors = (1,) if args.quick else (1, 2, 4)
    latencies = (0.2,) if args.quick else (0.0, LATENCY)
    rate = 1200 if args.quick else args.rate
    work = Path(args.workdir or tempfile.mkdtemp(prefix="llamavision-bench-"))
    started = time.perf_counter()
    try:
        print("generating images...", flush=True)
        size = (800, 600) if args.quick else SIZE
        bases = make_bases(Path(__file__).resolve().parent / ".cache" / "bases", BASES, size)
        make_collection(work, large, bases)
        every = str(work / "img-*.jpg")
        first = str(work / ("img-000[0-1]?.jpg" if args.quick else "img-00[0-4]??.jpg"))
        rated_glob = str(work / ("img-000[0-3]?.jpg" if args.quick else "img-00???.jpg"))
        ray_glob = str(work / ("img-000[0-1]?.jpg" if args.quick else "img-00[0-2]??.jpg"))

        print("CPU per image...", flush=True)
        ours_ms, floor_ms = cpu_per_image(bases, work, 1 if args.quick else 5)

        runs: dict[str, Run] = {}
        with EmulatorProcess() as emulator:
            for name, pattern in ((f"{small:,} images", first), (f"{large:,} images", every)):
                print(f"unlimited, {name}...", flush=True)
                runs[name] = caption(pattern, emulator.env())
        for label, extra in (
            ("no client limit", ()),
            ("--rate-limit R", ("--rate-limit", f"{rate:g}")),
        ):
            with EmulatorProcess(rate_limit=rate) as emulator:
                print(f"rate-limited, {label}...", flush=True)
                runs[label] = caption(rated_glob, emulator.env(), *extra)
        if not args.quick:
            with EmulatorProcess(rate_limit=rate) as emulator:
                print(f"rate-limited, {large:,} images...", flush=True)
                runs["large, limited"] = caption(every, emulator.env())
        for latency in latencies:
            with EmulatorProcess(latency=latency) as emulator:
                print(f"one machine, answers after {latency:g} s...", flush=True)
                runs[f"one {latency}"] = caption(ray_glob, emulator.env())
                for actors in ray_actors:
                    print(f"on Ray, {actors} actors, answers after {latency:g} s...", flush=True)
                    runs[f"ray {actors} {latency}"] = caption(
                        ray_glob,
                        emulator.env(),
                        "--ray",
                        "--ray-actors",
                        str(actors),
                        "--concurrency",
                        "4",
                    )
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)

    lines = [
        "## Captioning at scale",
        "",
        f"Machine: {machine()}.  ",
        f"Run: `python bench/captions.py{' --quick' if args.quick else ''}` on "
        f"{time.strftime('%Y-%m-%d')}, {time.perf_counter() - started:.0f} s. Images: "
        f"generated {size[0]}x{size[1]} photo-like JPEGs, "
        f"{statistics.mean(len(b) for b in bases) / 1e6:.1f} MB each, distinct bytes. "
        "`llamavision caption --concurrency 16` and the emulator each run in their own "
        "process; peak RSS is the caption process's (`wait4`).",
        "",
        "### 1. Throughput and memory (emulator without rate limit)",
        "",
        "| images | images/s | peak RSS MB | × the smaller run |",
        "|---:|---:|---:|---:|",
    ]
    base_rss = runs[f"{small:,} images"].peak_rss_mb
    for name in (f"{small:,} images", f"{large:,} images"):
        run = runs[name]
        lines.append(
            f"| {run.images:,} | {run.per_second:.1f} | {run.peak_rss_mb:.0f} | "
            f"{run.peak_rss_mb / base_rss:.2f} |"
        )
    lines += [
        "",
        f"Target: peak RSS at {large:,} images at most 1.2× that at {small:,}.",
        "",
        f"### 2. Against a rate limit: the emulator allows R = {rate:g} requests per minute",
        "",
        "The emulator's bucket holds five seconds of requests when rested, and that first "
        "burst is part of the achieved rate.",
        "",
        "| run | images | seconds | achieved / R | requests answered 429 | share 429 | "
        "Retry-After pauses s | pacing s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label in ("no client limit", "--rate-limit R", "large, limited"):
        run = runs.get(label)
        if run is None:
            continue
        limited = run.summary["rate_limited"]
        sent = run.summary["captioned"] + limited
        lines.append(
            f"| {label} | {run.images:,} | {run.seconds:.0f} | "
            f"{run.per_second * 60 / rate:.2f} | {limited} | {limited / sent:.1%} | "
            f"{run.summary['rate_limit_wait_seconds']:.0f} | "
            f"{run.summary['paced_seconds']:.0f} |"
        )
    lines += [
        "",
        "Targets: at least 0.9 R achieved, at most 5 % of requests answered 429.",
        "",
        "### 3. Client CPU per image, file to request body",
        "",
        "| path | ms CPU / image | × floor |",
        "|---|---:|---:|",
        f"| Pillow: open, `thumbnail(1120)`, JPEG (floor) | {floor_ms:.1f} | 1.00 |",
        f"| llamavision: read + SHA-256, `resolve_image`, payload, JSON | {ours_ms:.1f} | "
        f"{ours_ms / floor_ms:.2f} |",
        "",
        "Target: at most 1.2× the floor. Median over rounds of the "
        f"{len(bases)} distinct pictures.",
        "",
        f"### 4. One machine and Ray: {runs[f'one {latencies[0]}'].images:,} images on this "
        "machine",
        "",
        "A local Ray (all cores) started by each run: `llamavision caption --ray "
        "--ray-actors N`, each actor claiming a quarter of a CPU with four requests in "
        "flight. Seconds include starting Ray and its actors, and hashing on the driver. "
        "The emulator (`--latency`) answers at once, or after the seconds a caption from "
        "the real model takes.",
        "",
        "| run | requests in flight | "
        + " | ".join(f"answers after {t:g} s: seconds | images/s" for t in latencies)
        + " |",
        "|---|---:|" + "---:|---:|" * len(latencies),
        "| one machine, `--concurrency 16` | 16 | "
        + " | ".join(
            f"{runs[f'one {t}'].seconds:.0f} | {runs[f'one {t}'].per_second:.1f}" for t in latencies
        )
        + " |",
        *(
            f"| Ray, {n} actor{'s' if n > 1 else ''} | {4 * n} | "
            + " | ".join(
                f"{runs[f'ray {n} {t}'].seconds:.0f} | {runs[f'ray {n} {t}'].per_second:.1f}"
                for t in latencies
            )
            + " |"
            for n in ray_actors
        ),
    ]
    write_section("captions", "\n".join(lines), Path(args.out))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
