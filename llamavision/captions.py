"""Caption many images concurrently into a resumable JSONL file, ready for image RAG.

Each finished caption is appended and flushed at once, keyed by the SHA-256 of the image's
bytes, so an interrupted run loses nothing and a re-run only does what is left. Each line is
``{"image_path", "sha256", "caption", "provider", "model", "prompt_tokens",
"completion_tokens", "cost_usd"}``: ``caption`` is the text to index, the rest is metadata.
"""

from __future__ import annotations

import asyncio
import glob
import hashlib
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llamavision.client import LlamaVisionClient
from llamavision.errors import LlamaVisionError
from llamavision.messages import Message

DEFAULT_PROMPT = (
    "Write one detailed paragraph describing this image for a search index: the main "
    "subjects, colours, setting, any text, and the overall scene."
)
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif"}


@dataclass
class CaptionSummary:
    """What a captioning run did."""

    captioned: int = 0
    skipped: int = 0
    failures: dict[str, str] = field(default_factory=dict)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    seconds: float = 0.0
    interrupted: bool = False

    @property
    def total(self) -> int:
        """Images considered: captioned now, already done, or failed."""
        return self.captioned + self.skipped + len(self.failures)


def find_images(pattern: str | Path) -> list[Path]:
    """List the images of a folder (by extension), or the files a glob pattern matches."""
    path = Path(pattern)
    if path.is_dir():
        files = (p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    else:
        files = (Path(p) for p in glob.glob(str(pattern), recursive=True))
    return sorted(p for p in files if p.is_file())


def load_captions(out: str | Path) -> list[dict[str, Any]]:
    """Read a captions JSONL file (a missing file is empty; a torn last line is ignored)."""
    path = Path(out)
    if not path.exists():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut by a hard kill: that image is simply captioned again
    return records


async def caption_images(
    images: Iterable[str | Path],
    out: str | Path,
    client: LlamaVisionClient,
    *,
    prompt: str = DEFAULT_PROMPT,
    concurrency: int = 4,
    max_tokens: int = 300,
    on_progress: Callable[[CaptionSummary, int], None] | None = None,
) -> CaptionSummary:
    """Caption images concurrently, appending one JSON line per finished image.

    Images whose bytes were already captioned in ``out`` are skipped. A failing image is
    recorded in the summary with its reason and does not stop the run.

    Args:
        images: image paths.
        out: the JSONL file to append to (created if missing).
        client: the client to use (its retries absorb rate limits).
        prompt: the instruction sent with each image.
        concurrency: requests in flight at once.
        max_tokens: the longest caption, in tokens.
        on_progress: called after each image with the summary so far and the number to do.

    Returns:
        The run's :class:`CaptionSummary`.

    """
    started = time.monotonic()
    summary = CaptionSummary()
    done = {r.get("sha256") for r in load_captions(out)}
    todo: list[tuple[Path, bytes, str]] = []
    for path in map(Path, images):
        try:
            data = path.read_bytes()
        except OSError as exc:
            summary.failures[str(path)] = f"cannot read: {exc.strerror or exc}"
            continue
        digest = hashlib.sha256(data).hexdigest()
        if digest in done:
            summary.skipped += 1
        else:
            done.add(digest)  # a duplicate file in the same run is captioned once
            todo.append((path, data, digest))
    gate = asyncio.Semaphore(max(1, concurrency))

    with Path(out).open("a", encoding="utf-8") as sink:

        async def one(path: Path, data: bytes, digest: str) -> None:
            async with gate:
                try:
                    result = await client.achat(
                        [Message.user(prompt, image=data)], max_tokens=max_tokens
                    )
                except LlamaVisionError as exc:
                    summary.failures[str(path)] = exc.message
                else:
                    usage = result.usage
                    record = {
                        "image_path": str(path),
                        "sha256": digest,
                        "caption": result.text.strip(),
                        "provider": result.provider,
                        "model": result.model,
                        "prompt_tokens": usage.prompt_tokens if usage else None,
                        "completion_tokens": usage.completion_tokens if usage else None,
                        "cost_usd": result.cost,
                    }
                    sink.write(json.dumps(record, ensure_ascii=False) + "\n")
                    sink.flush()
                    summary.captioned += 1
                    if usage:
                        summary.prompt_tokens += usage.prompt_tokens
                        summary.completion_tokens += usage.completion_tokens
                    summary.cost += result.cost or 0.0
                summary.seconds = time.monotonic() - started
                if on_progress is not None:
                    on_progress(summary, len(todo))

        try:
            await asyncio.gather(*(one(*item) for item in todo))
        except asyncio.CancelledError:
            summary.interrupted = True
    summary.seconds = time.monotonic() - started
    return summary
