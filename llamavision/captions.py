"""Caption many images concurrently into a resumable JSONL file, ready for image RAG.

Images stream through a fixed number of workers: a file is read (once) only when a worker takes
it, so memory holds about ``concurrency`` images whatever the size of the collection. Each
finished caption is appended and flushed at once, keyed by the SHA-256 of the image's bytes, so
an interrupted run loses nothing and a re-run only does what is left. Each line is
``{"image_path", "sha256", "caption", "provider", "model", "finish_reason", "prompt_tokens",
"completion_tokens", "cost_usd"}``: ``caption`` is the text to index, the rest is metadata.

Rate limits are the client's business (its governor pauses every worker on a 429 and paces
them); an error that every later image would meet too (quota, credentials, licence, unknown
model) stops the run at once, keeping what is done.
"""

from __future__ import annotations

import asyncio
import glob
import hashlib
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sized
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llamavision.captions_file import (
    CaptionsWriter,
    iter_captions,
    resolve_image_path,
    stored_path,
)
from llamavision.client import LlamaVisionClient
from llamavision.errors import ImageError, LlamaVisionError
from llamavision.images import ImageOptions, read_file
from llamavision.messages import ChatResult, Message

logger = logging.getLogger("llamavision")

DEFAULT_PROMPT = (
    "Write one detailed paragraph describing this image for a search index: the main "
    "subjects, colours, setting, any text, and the overall scene."
)
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif"}


@dataclass
class CaptionSummary:
    """What a captioning run did.

    Attributes:
        captioned: images captioned by this run.
        skipped: images already in the output (same bytes), not sent again.
        failures: image path -> why it failed (unreadable, rejected...).
        prompt_tokens: input tokens used by this run.
        completion_tokens: output tokens used by this run.
        cost: USD spent by this run, from the client's prices.
        seconds: wall-clock duration.
        rate_limited: requests answered HTTP 429 (each was retried).
        rate_wait: seconds during which requests were held back for rate limits.
        interrupted: the run was interrupted (Ctrl+C); run it again to finish.
        stopped: the account-level error that ended the run early, if any.

    """

    captioned: int = 0
    skipped: int = 0
    failures: dict[str, str] = field(default_factory=dict)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    seconds: float = 0.0
    rate_limited: int = 0
    rate_wait: float = 0.0
    interrupted: bool = False
    stopped: LlamaVisionError | None = None

    @property
    def total(self) -> int:
        """Images considered: captioned now, already done, or failed."""
        return self.captioned + self.skipped + len(self.failures)

    def as_dict(self) -> dict[str, Any]:
        """Return the summary as plain JSON-ready data."""
        return {
            "captioned": self.captioned,
            "skipped": self.skipped,
            "failed": len(self.failures),
            "failures": dict(self.failures),
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cost_usd": self.cost,
            "seconds": self.seconds,
            "rate_limited": self.rate_limited,
            "rate_wait_seconds": self.rate_wait,
            "interrupted": self.interrupted,
            "stopped": None if self.stopped is None else str(self.stopped),
        }


def find_images(
    pattern: str | Path,
    *,
    recursive: bool = False,
    follow_symlinks: bool = False,
    on_skip: Callable[[Path, str], None] | None = None,
) -> list[Path]:
    """List the images (by extension) of a folder, or among the files a glob pattern matches.

    A folder is read without its sub-folders unless ``recursive`` is set (a glob says for
    itself, with ``**``). Only image files are listed (:data:`IMAGE_SUFFIXES`), whichever
    way they were chosen. A symbolic link that leads out of the folder (or out of the
    pattern's fixed leading folders) is skipped, and reported to ``on_skip`` with the reason,
    unless ``follow_symlinks`` is set: a shared folder must not send files from elsewhere.
    """
    path = Path(pattern)
    if path.is_dir():
        base = path
        files: Iterable[Path] = path.rglob("*") if recursive else path.iterdir()
    else:
        base = Path(*(_fixed_parts(str(pattern)) or ["."]))
        files = (Path(p) for p in glob.glob(str(pattern), recursive=True))
    root = base.resolve()
    found = []
    images = (p for p in files if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    for file in sorted(images):
        if file.is_symlink() and not follow_symlinks and not file.resolve().is_relative_to(root):
            if on_skip is not None:
                on_skip(file, f"a symbolic link out of {base}")
            continue
        found.append(file)
    return found


def _fixed_parts(pattern: str) -> list[str]:
    """Return the leading path parts of a glob pattern that hold no wildcard."""
    parts = []
    for part in Path(pattern).parts[:-1]:
        if glob.has_magic(part):
            break
        parts.append(part)
    return parts


def captioned_digests(out: str | Path) -> set[str]:
    """Return the SHA-256 of every image captioned in ``out`` (error rows are tried again)."""
    return {
        r["sha256"]
        for r in iter_captions(out)
        if isinstance(r.get("sha256"), str) and not r.get("error")
    }


def load_captions(out: str | Path) -> list[dict[str, Any]]:
    """Read every record of a captions JSONL file (see :func:`iter_captions`)."""
    return list(iter_captions(out))


class CaptionRecords:
    """The usable records of a captions file, for document loaders.

    Yields ``(caption, metadata, image)``: the metadata is the rest of the record, without
    empty values (vector stores refuse them); ``image`` is where the image is now (a URI, or
    an existing file, found as :func:`~llamavision.captions_file.resolve_image_path` says), or
    ``None`` when it cannot be found. Such records are counted in :attr:`missing`, and one
    warning per pass names how many. Records without a caption (error rows) are skipped and
    counted in :attr:`skipped`.

    Raises:
        FileNotFoundError: when iterated, if the file does not exist.

    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.skipped = 0
        self.missing = 0

    def __iter__(self) -> Iterator[tuple[str, dict[str, Any], str | None]]:
        if not self.path.is_file():
            raise FileNotFoundError(
                f"No captions file at {self.path}: write one with "
                f"'llamavision caption IMAGES --out {self.path}'."
            )
        self.skipped = self.missing = 0
        for record in iter_captions(self.path):
            caption = record.get("caption")
            if record.get("error") or not isinstance(caption, str) or not caption.strip():
                self.skipped += 1
                continue
            metadata = {
                k: v for k, v in record.items() if k not in ("caption", "error") and v is not None
            }
            stored = metadata.get("image_path")
            image = resolve_image_path(stored, self.path) if isinstance(stored, str) else None
            if image is None:
                self.missing += 1
            yield caption, metadata, image
        if self.missing:
            logger.warning(
                "%d image(s) of %s could not be found (moved or deleted): their captions are "
                "loaded as text only. image_path is relative to the captions file's folder.",
                self.missing,
                self.path,
            )


def read_image(path: Path, limit: int | None = None) -> tuple[bytes, str]:
    """Read a file once: its bytes and their SHA-256 (the resume key).

    A file over ``limit`` bytes (default: ``ImageOptions().max_input_bytes``) is refused by
    its size, unread.

    Raises:
        ImageError: the file is over the limit.
        OSError: it cannot be read.

    """
    data = read_file(path, ImageOptions().max_input_bytes if limit is None else limit)
    return data, hashlib.sha256(data).hexdigest()


def caption_record(
    path: str | Path, digest: str, result: ChatResult, out: str | Path | None = None
) -> dict[str, Any]:
    """Build the JSONL record of one captioned image.

    With ``out`` (the captions file), ``image_path`` is stored as that file keeps it (see
    :func:`~llamavision.captions_file.stored_path`); without, as given.
    """
    usage = result.usage
    return {
        "image_path": str(path) if out is None else stored_path(path, out),
        "sha256": digest,
        "caption": result.text.strip(),
        "provider": result.provider,
        "model": result.model,
        "finish_reason": result.finish_reason,
        "prompt_tokens": usage.prompt_tokens if usage else None,
        "completion_tokens": usage.completion_tokens if usage else None,
        "cost_usd": result.cost,
    }


def error_record(path: str | Path, digest: str | None, why: str, out: str | Path) -> dict[str, Any]:
    """Build the JSONL record of an image that failed: a re-run tries it again."""
    return {"image_path": stored_path(path, out), "sha256": digest, "error": why}


def append_failure(
    sink: CaptionsWriter, record: dict[str, Any], summary: CaptionSummary, shown: str
) -> None:
    """Append an error row (flushed) and count it in the summary under ``shown``."""
    sink.write(record)
    summary.failures[shown] = record["error"]


def append_record(sink: CaptionsWriter, record: dict[str, Any], summary: CaptionSummary) -> None:
    """Append one caption record to the output (flushed: nothing finished is lost) and count it."""
    sink.write(record)
    summary.captioned += 1
    summary.prompt_tokens += record["prompt_tokens"] or 0
    summary.completion_tokens += record["completion_tokens"] or 0
    summary.cost += record["cost_usd"] or 0.0


class _Stop(Exception):
    """Raised by a worker to end the run on an account-level error."""


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
    recorded in the summary with its reason and does not stop the run; an account-level
    error (see :attr:`~llamavision.LlamaVisionError.account_level`) does: the summary's
    ``stopped`` says why, and running again after the fix resumes.

    Args:
        images: image paths; any iterable, read lazily (a generator works).
        out: the JSONL file to append to (created if missing).
        client: the client to use; its governor shares rate limits among the workers.
        prompt: the instruction sent with each image.
        concurrency: workers, hence images in memory and requests in flight at most.
        max_tokens: the longest caption, in tokens.
        on_progress: called after each image with the summary so far and the number of
            images in total (0 when ``images`` has no length).

    Returns:
        The run's :class:`CaptionSummary`.

    """
    started = time.monotonic()
    summary = CaptionSummary()
    before = client.rate_stats
    total = len(images) if isinstance(images, Sized) else 0
    paths = iter(images)
    limit = client.image_options.max_input_bytes

    def progress() -> None:
        summary.seconds = time.monotonic() - started
        stats = client.rate_stats
        summary.rate_limited = stats.rate_limited - before.rate_limited
        summary.rate_wait = stats.waited - before.waited
        if on_progress is not None:
            on_progress(summary, total)

    with CaptionsWriter(out) as sink:  # one writer: a second run on ``out`` fails here
        done = captioned_digests(out)

        def failed(path: Path, digest: str | None, why: str) -> None:
            append_failure(sink, error_record(path, digest, why, out), summary, str(path))

        async def caption(path: Path, data: bytes, digest: str) -> None:
            try:
                result = await client.achat(
                    [Message.user(prompt, image=data)], max_tokens=max_tokens
                )
            except LlamaVisionError as exc:
                if exc.account_level:
                    summary.stopped = exc
                    raise _Stop from exc
                failed(path, digest, exc.message)
                return
            append_record(sink, caption_record(path, digest, result, out), summary)

        async def worker() -> None:
            for item in paths:  # one shared iterator: each image goes to one worker
                path = Path(item)
                try:
                    data, digest = await asyncio.to_thread(read_image, path, limit)
                except OSError as exc:
                    failed(path, None, f"cannot read: {exc.strerror or exc}")
                except ImageError as exc:
                    failed(path, None, exc.message)
                else:
                    if digest in done:
                        summary.skipped += 1
                    else:
                        done.add(digest)  # a duplicate file in the same run is captioned once
                        await caption(path, data, digest)
                    del data
                progress()

        tasks = [asyncio.ensure_future(worker()) for _ in range(max(1, concurrency))]
        try:
            finished, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in finished:
                if not task.cancelled() and isinstance(task.exception(), _Stop):
                    break
            else:
                for task in finished:
                    task.result()  # an unexpected error: raise it
        except asyncio.CancelledError:
            summary.interrupted = True
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    progress()
    return summary
