"""Caption many images concurrently into a resumable JSONL file, ready for image RAG.

Images stream through a fixed number of workers: a file is read (once) only when a worker takes
it, so memory holds about ``concurrency`` images whatever the size of the collection. Each
finished caption is appended and flushed at once, keyed by the SHA-256 of the image's bytes, so
an interrupted run loses nothing and a re-run only does what is left. Each line is
``{"image_path", "sha256", "caption", "provider", "model", "finish_reason", "prompt_tokens",
"completion_tokens", "cost_usd"}``: ``caption`` is the text to index, the rest is metadata.

Duplicate bytes are captioned once: every other path holding them gets a record of its own
that copies the caption (``copy_of`` names the captioned path; ``cost_usd`` is 0), so that
each path is a document of the index, as loaders and vector stores expect.

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
    iter_captions_at,
    read_at,
    resolve_image_path,
    stored_path,
)
from llamavision.client import LlamaVisionClient
from llamavision.errors import ImageError, LlamaVisionError, NothingCaptionedError, missing_extra
from llamavision.images import ImageOptions, read_file
from llamavision.messages import ChatResult, Message
from llamavision.providers import cost_on_each_provider
from llamavision.ratelimit import RateStats

logger = logging.getLogger("llamavision")

DEFAULT_PROMPT = (
    "Write one detailed paragraph describing this image for a search index: the main "
    "subjects, colours, setting, any text, and the overall scene."
)
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif"}
DEFAULT_CONCURRENCY = 8
"""Images in flight at once, by default: in a run on one machine, and per actor on Ray. The
client's governor lowers it on 429 answers; ``--rate-limit`` paces it."""


@dataclass
class CaptionSummary:
    """What a captioning run did.

    Attributes:
        captioned: images captioned by this run.
        skipped: images already in the output (same bytes, same path), not sent again.
        copied: images whose bytes were captioned under another path: their record copies
            that caption, with no request.
        failures: image path -> why it failed (unreadable, rejected...).
        prompt_tokens: input tokens used by this run.
        completion_tokens: output tokens used by this run.
        cost: USD spent by this run, from the client's prices.
        seconds: wall-clock duration.
        requests: requests sent to the provider (retries included).
        rate_limited: requests answered HTTP 429 (each was retried).
        rate_wait: seconds during which requests were held back by a provider's
            ``Retry-After``.
        paced: seconds during which requests were held back to keep a pace (``rate_limit``,
            or the one learned from 429 answers): time planned, not lost.
        outage_wait: seconds during which requests were held back because the provider
            seemed down (the circuit breaker was open).
        interrupted: the run was interrupted (Ctrl+C); run it again to finish.
        stopped: the account-level error that ended the run early, if any.

    """

    captioned: int = 0
    skipped: int = 0
    copied: int = 0
    failures: dict[str, str] = field(default_factory=dict)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    seconds: float = 0.0
    requests: int = 0
    rate_limited: int = 0
    rate_wait: float = 0.0
    paced: float = 0.0
    outage_wait: float = 0.0
    interrupted: bool = False
    stopped: LlamaVisionError | None = None

    @property
    def total(self) -> int:
        """Images considered: captioned now, already done, copied, or failed."""
        return self.captioned + self.skipped + self.copied + len(self.failures)

    def count_rates(self, stats: RateStats, before: RateStats | None = None) -> None:
        """Take the rate-limiting figures from a governor's stats (minus ``before``)."""
        before = before or RateStats()
        self.requests = stats.requests - before.requests
        self.rate_limited = stats.rate_limited - before.rate_limited
        self.rate_wait = stats.paused - before.paused
        self.paced = stats.paced - before.paced
        self.outage_wait = stats.outage - before.outage

    def counts(self) -> str:
        """Return the images' counts in words: captioned, already done, copied (if any), failed."""
        copied = f"{self.copied} copied (same bytes as a captioned image), " if self.copied else ""
        return (
            f"{self.captioned} captioned, {self.skipped} already done, {copied}"
            f"{len(self.failures)} failed"
        )

    def describe(self) -> str:
        """Return what the run did, for people: counts and cost, then one line per failure.

        Without timings, so that a notebook's committed output does not change from run to run.
        """
        lines = [
            f"{self.counts()}; {self.requests} requests, "
            f"{self.prompt_tokens + self.completion_tokens:,} tokens, ${self.cost:.6f}"
        ]
        lines += [f"  failed: {Path(path).name}: {why}" for path, why in self.failures.items()]
        return "\n".join(lines)

    def check(self) -> None:
        """Raise when the run got nowhere (for notebooks and scripts that go on with the captions).

        Raises:
            LlamaVisionError: the account-level error that stopped the run (its message says
                what to fix).
            NothingCaptionedError: images failed and none is captioned, by this run or
                before; the message gives the first reason.

        """
        if self.stopped is not None:
            raise self.stopped
        if self.failures and not (self.captioned or self.skipped or self.copied):
            path, why = next(iter(self.failures.items()))
            raise NothingCaptionedError(
                f"No image was captioned: all {len(self.failures)} failed, the first "
                f"({Path(path).name}) with: {why} Fix that and run again; nothing is lost."
            )

    def as_dict(self) -> dict[str, Any]:
        """Return the summary as plain JSON-ready data."""
        return {
            "captioned": self.captioned,
            "skipped": self.skipped,
            "copied": self.copied,
            "failed": len(self.failures),
            "failures": dict(self.failures),
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cost_usd": self.cost,
            "seconds": self.seconds,
            "requests": self.requests,
            "rate_limited": self.rate_limited,
            "rate_limit_wait_seconds": self.rate_wait,
            "paced_seconds": self.paced,
            "outage_wait_seconds": self.outage_wait,
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


def load_captions(out: str | Path) -> list[dict[str, Any]]:
    """Read every record of a captions JSONL file (see :func:`iter_captions`)."""
    return list(iter_captions(out))


def estimate_cost(captions: str | Path, images: int = 100) -> dict[str, float]:
    """Return what captioning ``images`` images would cost on each provider, in USD.

    From the mean tokens per image of the captions file's records (copies, which cost
    nothing, left out) at each provider's published price. The tokens of a file the emulator
    wrote are its stand-in counts, not the real model's: run this again on the file of a
    real run (a few of your images) for a real estimate.

    Raises:
        ValueError: the file has no captioned record to go by.

    """
    records = CaptionRecords(captions)
    counted = [meta for _, meta, _ in records if not meta.get("copy_of")]
    if not counted:
        raise ValueError(f"{captions} has no captioned image to estimate from.")
    prompt = sum(m.get("prompt_tokens") or 0 for m in counted) / len(counted)
    completion = sum(m.get("completion_tokens") or 0 for m in counted) / len(counted)
    return cost_on_each_provider(round(images * prompt), round(images * completion))


class CaptionRecords:
    """The usable records of a captions file, for document loaders.

    ``path`` is the JSONL file of ``llamavision caption``, or what a
    :func:`llamavision.ray.caption_dataset` pipeline wrote: a Parquet file, or the folder of
    Parquet or JSON-lines files that Ray Data's ``write_parquet`` / ``write_json`` make
    (Parquet needs ``pyarrow``, which the ``ray`` extra brings).

    Yields ``(caption, metadata, image)``: the metadata is the rest of the record, without
    empty values (vector stores refuse them); ``image`` is where the image is now (a URI, or
    an existing file, found as :func:`~llamavision.captions_file.resolve_image_path` says), or
    ``None`` when it cannot be found. Such records are counted in :attr:`missing`, and one
    warning per pass names how many. Records without a caption (error rows) are skipped and
    counted in :attr:`skipped`.

    Raises:
        FileNotFoundError: when iterated, if the file (or folder) does not exist.

    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.skipped = 0
        self.missing = 0

    def _records(self) -> Iterator[tuple[dict[str, Any], Path]]:
        """Yield each record with the file it came from."""
        if self.path.is_dir():
            files = sorted(p for p in self.path.iterdir() if p.suffix in DATASET_SUFFIXES)
        elif self.path.is_file():
            files = [self.path]
        else:
            raise FileNotFoundError(
                f"No captions file at {self.path}: write one with "
                f"'llamavision caption IMAGES --out {self.path}'."
            )
        for file in files:
            if file.suffix == ".parquet":
                for record in _parquet_records(file):
                    yield record, file
            else:
                for record in iter_captions(file):
                    yield record, file

    def __iter__(self) -> Iterator[tuple[str, dict[str, Any], str | None]]:
        self.skipped = self.missing = 0
        for record, file in self._records():
            caption = record.get("caption")
            if record.get("error") or not isinstance(caption, str) or not caption.strip():
                self.skipped += 1
                continue
            metadata = {
                k: v for k, v in record.items() if k not in ("caption", "error") and v is not None
            }
            stored = metadata.get("image_path")
            image = resolve_image_path(stored, file) if isinstance(stored, str) else None
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


DATASET_SUFFIXES = (".jsonl", ".json", ".parquet")
"""The files of a captions folder that :class:`CaptionRecords` reads."""


def _parquet_records(file: Path) -> Iterator[dict[str, Any]]:
    """Yield the rows of a Parquet file, a batch at a time."""
    try:
        import pyarrow.parquet as pq  # type: ignore[import-untyped]
    except ImportError as exc:
        raise missing_extra("ray", f"Reading captions from Parquet ({file})", exc) from None
    for batch in pq.ParquetFile(file).iter_batches(batch_size=1024):
        yield from batch.to_pylist()


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


class Ledger:
    """The captions file of one run, what it already holds, and the run's summary.

    Knows, for each image, whether its path already has a record (skip it), whether its bytes
    were captioned under another path (copy that caption, :meth:`copy`), or neither (caption
    it). Holds the byte offset of each caption record, not the caption, so that memory stays
    small for millions of records.

    Args:
        sink: the open writer of the captions file.
        summary: the summary to count into.

    """

    def __init__(self, sink: CaptionsWriter, summary: CaptionSummary) -> None:
        self.sink = sink
        self.out = sink.path
        self.summary = summary
        self.captions: dict[str, int] = {}  # sha256 -> offset of its first caption record
        self.recorded: set[int] = set()  # hash((image_path, sha256)) of every caption record
        for offset, record in iter_captions_at(self.out):
            digest, stored = record.get("sha256"), record.get("image_path")
            if isinstance(digest, str) and not record.get("error"):
                self.captions.setdefault(digest, offset)
                self.recorded.add(hash((stored, digest)))

    def has_record(self, path: str | Path, digest: str) -> bool:
        """Whether ``path`` has a caption record for these bytes already."""
        return hash((stored_path(path, self.out), digest)) in self.recorded

    def settle(self, path: str | Path, digest: str) -> bool:
        """Settle an image without a request if the file allows; return whether it did.

        Its path has a record of these bytes: counted as skipped. Its bytes were captioned
        under another path: a copy of that caption is recorded (:meth:`copy`).
        """
        if self.has_record(path, digest):
            self.summary.skipped += 1
            return True
        if self.is_captioned(digest):
            self.copy(path, digest)
            return True
        return False

    def is_captioned(self, digest: str) -> bool:
        """Whether these bytes have a caption in the file, under any path."""
        return digest in self.captions

    def _append(self, record: dict[str, Any]) -> None:
        offset = self.sink.write(record)
        digest = record["sha256"]
        self.captions.setdefault(digest, offset)
        self.recorded.add(hash((record["image_path"], digest)))

    def caption(self, record: dict[str, Any]) -> None:
        """Append a caption record (flushed: nothing finished is lost) and count it."""
        self._append(record)
        summary = self.summary
        summary.captioned += 1
        summary.prompt_tokens += record["prompt_tokens"] or 0
        summary.completion_tokens += record["completion_tokens"] or 0
        summary.cost += record["cost_usd"] or 0.0

    def copy(self, path: str | Path, digest: str) -> None:
        """Give ``path`` a record that copies the caption of the same bytes under another path."""
        original = read_at(self.out, self.captions[digest])
        self._append(
            {
                **original,
                "image_path": stored_path(path, self.out),
                "prompt_tokens": 0,
                "completion_tokens": 0,
                "cost_usd": 0.0,
                "copy_of": original.get("copy_of") or original["image_path"],
            }
        )
        self.summary.copied += 1

    def fail(self, path: str | Path, digest: str | None, why: str) -> None:
        """Append an error row (a re-run tries the image again) and count it."""
        self.sink.write(error_record(path, digest, why, self.out))
        self.summary.failures[str(path)] = why


class _Stop(Exception):
    """Raised by a worker to end the run on an account-level error."""


async def caption_images(
    images: Iterable[str | Path],
    out: str | Path,
    client: LlamaVisionClient,
    *,
    prompt: str = DEFAULT_PROMPT,
    concurrency: int = DEFAULT_CONCURRENCY,
    max_tokens: int = 300,
    on_progress: Callable[[CaptionSummary, int], None] | None = None,
) -> CaptionSummary:
    """Caption images concurrently, appending one JSON line per finished image.

    An image whose path already has a record of the same bytes is skipped; one whose bytes
    were captioned under another path gets a record copying that caption (no request). A
    failing image is recorded in the summary with its reason and does not stop the run; an
    account-level error (see :attr:`~llamavision.LlamaVisionError.account_level`) does: the
    summary's ``stopped`` says why, and running again after the fix resumes. So does a
    provider that stays down, when the client has a circuit breaker (``outage_after``).

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
        summary.count_rates(client.rate_stats, before)
        if on_progress is not None:
            on_progress(summary, total)

    with CaptionsWriter(out) as sink:  # one writer: a second run on ``out`` fails here
        ledger = Ledger(sink, summary)
        pending: dict[str, asyncio.Event] = {}  # bytes being captioned by another worker
        errors: dict[str, str] = {}  # why bytes failed in this run

        async def caption(path: Path, data: bytes, digest: str) -> None:
            try:
                result = await client.achat(
                    [Message.user(prompt, image=data)], max_tokens=max_tokens
                )
            except LlamaVisionError as exc:
                if exc.account_level:
                    summary.stopped = exc
                    raise _Stop from exc
                errors[digest] = exc.message
                ledger.fail(path, digest, exc.message)
                return
            ledger.caption(caption_record(path, digest, result, out))

        async def one(path: Path) -> None:
            try:
                data, digest = await asyncio.to_thread(read_image, path, limit)
            except OSError as exc:
                ledger.fail(path, None, f"cannot read: {exc.strerror or exc}")
                return
            except ImageError as exc:
                ledger.fail(path, None, exc.message)
                return
            if digest in pending:  # the same bytes, being captioned under another path
                await pending[digest].wait()
            if ledger.settle(path, digest):
                return
            if digest in errors:
                ledger.fail(path, digest, errors[digest])
                return
            pending[digest] = asyncio.Event()
            try:
                await caption(path, data, digest)
            finally:
                pending.pop(digest).set()

        async def worker() -> None:
            for item in paths:  # one shared iterator: each image goes to one worker
                await one(Path(item))
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
