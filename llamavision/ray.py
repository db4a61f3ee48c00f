"""Captioning beyond one machine: llamavision as a Ray Data stage.

.. code-block:: python

    import ray
    from llamavision.ray import caption_dataset

    ray.init()  # with CLOUDFLARE_ACCOUNT_ID and CLOUDFLARE_API_TOKEN set here
    images = ray.data.read_binary_files("s3://bucket/photos/", include_paths=True)
    captions = caption_dataset(images, provider="cloudflare", rate_limit=300)
    captions.write_parquet("s3://bucket/captions/")

A pool of :class:`Captioner` actors each owns one client and keeps several requests in
flight (async inside the actor). Actors are I/O-bound, so each claims a fraction of a CPU and
leaves the rest to Ray's read tasks. All actors of a job share one rate limit: a small
:class:`SharedRateLimit` actor holds the governor (token bucket, ``Retry-After`` pause,
adaptive concurrency) that one client holds on one machine. Credentials set where the job is
started travel pickled with the actors (as ``SecretStr``), never in Ray's ``runtime_env``,
which its dashboard and state API show to anyone who can open them.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from PIL import Image as PILImage
from pydantic import SecretStr

from llamavision.captions import (
    DEFAULT_PROMPT,
    CaptionSummary,
    append_failure,
    append_record,
    caption_record,
    captioned_digests,
    error_record,
)
from llamavision.captions_file import CaptionsWriter, stored_path
from llamavision.client import LlamaVisionClient
from llamavision.errors import ConfigurationError, LlamaVisionError, missing_extra
from llamavision.messages import Message
from llamavision.providers import PROVIDERS
from llamavision.ratelimit import Outcome, RateGovernor, RateStats, Ticket

try:
    import numpy as np
    import ray
except ImportError as exc:
    raise missing_extra("ray", "llamavision.ray", exc) from None

FIELDS = (
    "image_path",
    "sha256",
    "caption",
    "provider",
    "model",
    "finish_reason",
    "prompt_tokens",
    "completion_tokens",
    "cost_usd",
    "error",
)
"""The columns of a captions dataset: the JSONL record of ``llamavision caption``, plus
``error`` (``None`` when the image was captioned)."""


class SharedRateLimit:
    """One :class:`~llamavision.ratelimit.RateGovernor` for every actor of a job.

    Runs as an async Ray actor (create it with :func:`shared_rate_limit`): ``acquire`` waits
    inside it, for as long as the governor says, while other calls proceed; it answers with
    a ticket number that ``release`` settles.
    """

    def __init__(self, rate_limit: float | None = None, max_concurrency: int | None = None) -> None:
        self.governor = RateGovernor(rate_limit=rate_limit, max_concurrency=max_concurrency)
        self.tickets: dict[int, Ticket] = {}
        self.numbers = itertools.count()

    async def acquire(self) -> int:
        """Wait until a request may be sent; return its ticket number."""
        ticket = await self.governor.aacquire()
        number = next(self.numbers)
        self.tickets[number] = ticket
        return number

    def release(self, number: int, outcome: Outcome) -> None:
        """Settle a ticket with what happened to its request."""
        ticket = self.tickets.pop(number, None)
        if ticket is not None:
            ticket.settle(outcome)

    def stats(self) -> RateStats:
        """Return what rate limiting has cost the job so far."""
        return self.governor.stats


def shared_rate_limit(rate_limit: float | None = None, max_concurrency: int | None = None) -> Any:
    """Start a :class:`SharedRateLimit` actor (no CPU claimed) and return its handle.

    Pass it as ``rate_limiter`` to several :func:`caption_dataset` calls that must share one
    provider account's limit.
    """
    actor = ray.remote(num_cpus=0)(SharedRateLimit)
    return actor.remote(rate_limit=rate_limit, max_concurrency=max_concurrency)


class RemoteTicket:
    """A ticket of the shared governor, as a client in an actor holds it."""

    __slots__ = ("_actor", "_number", "_released")

    def __init__(self, actor: Any, number: int) -> None:
        self._actor = actor
        self._number = number
        self._released = False

    def release(self, error: BaseException | None = None) -> None:
        """Settle the ticket (once) with the request's outcome; does not wait."""
        if not self._released:
            self._released = True
            self._actor.release.remote(self._number, Outcome.of(error))


class RemoteGovernor:
    """The client-side face of a :class:`SharedRateLimit` actor (what a client needs)."""

    def __init__(self, actor: Any) -> None:
        self.actor = actor

    def acquire(self) -> RemoteTicket:
        """Wait (blocking) for the shared governor; return the ticket."""
        return RemoteTicket(self.actor, ray.get(self.actor.acquire.remote()))

    async def aacquire(self) -> RemoteTicket:
        """Wait for the shared governor without blocking the actor's event loop."""
        return RemoteTicket(self.actor, await self.actor.acquire.remote())

    @property
    def stats(self) -> RateStats:
        """What rate limiting has cost the job so far."""
        stats: RateStats = ray.get(self.actor.stats.remote())
        return stats


def _rows(batch: Mapping[str, Any]) -> Iterator[tuple[str | None, Any]]:
    """Yield ``(path, image)`` from a batch of ``read_binary_files`` or ``read_images``."""
    paths = batch.get("path")
    if "bytes" in batch:
        images = batch["bytes"]
    elif "image" in batch:
        images = batch["image"]
    else:
        raise ConfigurationError(
            "Captioner needs a 'bytes' column (ray.data.read_binary_files) or an 'image' "
            f"column (ray.data.read_images); this batch has {sorted(batch)}."
        )
    for i, image in enumerate(images):
        yield (None if paths is None else str(paths[i])), image


def _image_and_digest(image: Any) -> tuple[Any, str]:
    """Return what to send and the resume key: the file's bytes, or decoded pixels."""
    if isinstance(image, (bytes, bytearray, memoryview)):
        data = bytes(image)
        return data, hashlib.sha256(data).hexdigest()
    pixels = np.ascontiguousarray(image)
    digest = hashlib.sha256(repr(pixels.shape).encode() + pixels.tobytes()).hexdigest()
    return PILImage.fromarray(pixels), digest


class Captioner:
    """Caption a batch of images: the callable class for ``Dataset.map_batches``.

    Takes batches with ``bytes`` (and ``path``) columns, as
    ``read_binary_files(..., include_paths=True)`` gives them, or an ``image`` column of
    arrays, as ``read_images`` gives them; returns the columns of :data:`FIELDS`. A bad image
    is a row with its ``error``, not a crashed job; an account-level error (quota,
    credentials, licence, unknown model) raises, which stops the job.

    Args:
        provider: ``"aigateway"`` or ``"cloudflare"``; credentials come from the actor's
            environment.
        prompt: the instruction sent with each image.
        max_tokens: the longest caption, in tokens.
        concurrency: requests in flight at once in this actor.
        rate_limiter: a :class:`SharedRateLimit` actor shared by the job's actors.
        credentials: environment variables (credentials, account, base URLs) to set in the
            actor's process before its client is made, as ``SecretStr`` values: they travel
            pickled with the actor, which Ray's dashboard and state API do not display.
        **client_options: more :class:`~llamavision.LlamaVisionClient` options
            (``model``, ``accept_license``, ``max_retries``...), no credentials.

    """

    def __init__(
        self,
        *,
        provider: str = "aigateway",
        prompt: str = DEFAULT_PROMPT,
        max_tokens: int = 300,
        concurrency: int = 8,
        rate_limiter: Any = None,
        credentials: Mapping[str, SecretStr] | None = None,
        **client_options: Any,
    ) -> None:
        for name, value in (credentials or {}).items():
            os.environ[name] = value.get_secret_value()  # this actor's own process only
        governor = None if rate_limiter is None else RemoteGovernor(rate_limiter)
        self.client = LlamaVisionClient(provider, governor=governor, **client_options)
        self.prompt = prompt
        self.max_tokens = max_tokens
        self.concurrency = concurrency

    async def __call__(self, batch: Mapping[str, Any]) -> dict[str, list[Any]]:
        """Caption every image of the batch, ``concurrency`` at a time."""
        gate = asyncio.Semaphore(self.concurrency)

        async def one(path: str | None, image: Any) -> dict[str, Any]:
            async with gate:
                return await self._caption(path, image)

        records = await asyncio.gather(*(one(path, image) for path, image in _rows(batch)))
        return {name: [record.get(name) for record in records] for name in FIELDS}

    async def _caption(self, path: str | None, image: Any) -> dict[str, Any]:
        try:
            source, digest = await asyncio.to_thread(_image_and_digest, image)
        except (TypeError, ValueError) as exc:
            return {"image_path": path, "error": f"cannot read the image: {exc}"}
        try:
            result = await self.client.achat(
                [Message.user(self.prompt, image=source)], max_tokens=self.max_tokens
            )
        except LlamaVisionError as exc:
            if exc.account_level:
                raise
            return {"image_path": path, "sha256": digest, "error": exc.message}
        return {**caption_record(path or "", digest, result), "error": None}


def credential_env(providers: Sequence[str]) -> dict[str, SecretStr]:
    """Return the variables of this environment that configure ``providers``, for actors.

    Each provider's credential, account id and base URL, and the Cloudflare AI Gateway's
    id, token and base URL, when set, as ``SecretStr``: :class:`Captioner` sets them in its
    own process. They never go into Ray's ``runtime_env``, which the dashboard shows.
    """
    names: list[str | None] = []
    for provider in providers:
        codec = PROVIDERS[provider]
        names += [codec.KEY_ENV, codec.ACCOUNT_ENV, codec.BASE_URL_ENV, codec.GATEWAY_ENV]
        names += [codec.GATEWAY_TOKEN_ENV, codec.GATEWAY_BASE_URL_ENV]
    return {n: SecretStr(os.environ[n]) for n in names if n is not None and os.environ.get(n)}


def caption_dataset(
    ds: ray.data.Dataset,
    *,
    provider: str = "aigateway",
    prompt: str = DEFAULT_PROMPT,
    max_tokens: int = 300,
    actors: int = 2,
    concurrency: int = 8,
    rate_limit: float | None = None,
    batch_size: int = 16,
    num_cpus: float = 0.25,
    rate_limiter: Any = None,
    **client_options: Any,
) -> ray.data.Dataset:
    """Caption a dataset of images: ``read_binary_files`` / ``read_images`` in, captions out.

    Args:
        ds: a dataset with ``bytes`` and ``path`` columns, or an ``image`` column.
        provider: ``"aigateway"`` or ``"cloudflare"``.
        prompt: the instruction sent with each image.
        max_tokens: the longest caption, in tokens.
        actors: size of the actor pool.
        concurrency: requests in flight per actor.
        rate_limit: requests per minute for the whole job (all actors together).
        batch_size: images per batch handed to an actor.
        num_cpus: CPUs each actor claims; a fraction, as actors mostly wait on the network.
        rate_limiter: a :class:`SharedRateLimit` actor to use (default: a new one).
        **client_options: more :class:`~llamavision.LlamaVisionClient` options (``model``,
            ``accept_license``, ``max_retries``, ``fallback_providers``...). Credentials set
            in this process's environment (see :func:`credential_env`) reach the actors
            pickled with them, where Ray's dashboard, state API and logs do not show them;
            on a cluster, the worker nodes' own environment works too.

    Returns:
        A lazy dataset with the columns of :data:`FIELDS`, one row per image.

    """
    if rate_limiter is None:
        rate_limiter = shared_rate_limit(rate_limit)
    return ds.map_batches(
        Captioner,
        fn_constructor_kwargs={
            "provider": provider,
            "prompt": prompt,
            "max_tokens": max_tokens,
            "concurrency": concurrency,
            "rate_limiter": rate_limiter,
            "credentials": credential_env(
                [provider, *client_options.get("fallback_providers", ())]
            ),
            **client_options,
        },
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_cpus=num_cpus,
        batch_size=batch_size,
        batch_format="numpy",
    )


def file_digest(path: Path) -> str:
    """Return the SHA-256 of a file, read in chunks (the resume key of a caption record)."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def find_llamavision_error(exc: BaseException) -> LlamaVisionError | None:
    """Return the :class:`LlamaVisionError` behind a Ray error, if there is one."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, LlamaVisionError):
            return current
        seen.add(id(current))
        cause = getattr(current, "cause", None)
        current = cause if isinstance(cause, BaseException) else current.__cause__
    return None


def caption_files(
    paths: Sequence[str | Path],
    out: str | Path,
    *,
    provider: str = "aigateway",
    prompt: str = DEFAULT_PROMPT,
    max_tokens: int = 300,
    actors: int = 2,
    concurrency: int = 4,
    rate_limit: float | None = None,
    address: str | None = None,
    on_progress: Callable[[CaptionSummary, int], None] | None = None,
    **client_options: Any,
) -> CaptionSummary:
    """Caption image files on Ray into a JSONL file, as ``llamavision caption --ray`` does.

    The same job and output as :func:`llamavision.captions.caption_images`: images whose
    bytes are already in ``out`` are filtered out here, before anything is scheduled; the
    rest is read and captioned by Ray Data (:func:`caption_dataset`), and each record is
    appended as it streams back, so an interrupted run loses nothing finished. An
    account-level error stops the job and is reported in the summary's ``stopped``.

    Args:
        paths: image files, reachable from every Ray node (local disk for a local Ray).
        out: the JSONL file to append to.
        provider: ``"aigateway"`` or ``"cloudflare"``.
        prompt: the instruction sent with each image.
        max_tokens: the longest caption, in tokens.
        actors: size of the actor pool.
        concurrency: requests in flight per actor.
        rate_limit: requests per minute for the whole job.
        address: the Ray cluster to use; ``None`` connects to the running one, or starts
            a local Ray.
        on_progress: called after each image with the summary so far and the total.
        **client_options: more client options (``accept_license``, ``max_retries``...).

    """
    started = time.monotonic()
    summary = CaptionSummary()
    with CaptionsWriter(out) as sink:  # one writer: a second run on ``out`` fails here
        return _caption_files_into(
            sink, paths, out, summary, started, provider=provider, prompt=prompt,
            max_tokens=max_tokens, actors=actors, concurrency=concurrency,
            rate_limit=rate_limit, address=address, on_progress=on_progress,
            **client_options,
        )  # fmt: skip


def _caption_files_into(
    sink: CaptionsWriter,
    paths: Sequence[str | Path],
    out: str | Path,
    summary: CaptionSummary,
    started: float,
    *,
    provider: str,
    prompt: str,
    max_tokens: int,
    actors: int,
    concurrency: int,
    rate_limit: float | None,
    address: str | None,
    on_progress: Callable[[CaptionSummary, int], None] | None,
    **client_options: Any,
) -> CaptionSummary:
    done = captioned_digests(out)
    originals: dict[str, str] = {}
    for item in paths:
        try:
            digest = file_digest(Path(item))
        except OSError as exc:
            why = f"cannot read: {exc.strerror or exc}"
            append_failure(sink, error_record(item, None, why, out), summary, str(item))
            continue
        if digest in done:
            summary.skipped += 1
        else:
            done.add(digest)  # the same bytes twice in one run are captioned once
            originals[os.path.abspath(item)] = str(item)

    def progress() -> None:
        summary.seconds = time.monotonic() - started
        if on_progress is not None:
            on_progress(summary, len(paths))

    progress()
    if not originals:
        return summary
    started_ray = not ray.is_initialized()
    if started_ray:
        ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # the caller shows its own progress
    context.raise_original_map_exception = True  # an account-level error arrives typed
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    limiter = shared_rate_limit(rate_limit)
    images = ray.data.read_binary_files(list(originals), include_paths=True)
    captions = caption_dataset(
        images,
        provider=provider,
        prompt=prompt,
        max_tokens=max_tokens,
        actors=actors,
        concurrency=concurrency,
        rate_limiter=limiter,
        **client_options,
    )
    try:
        for batch in captions.iter_batches(batch_format="pyarrow", batch_size=None):
            for row in batch.to_pylist():  # type: ignore[union-attr]
                path = originals.get(os.path.abspath(row["image_path"]), row["image_path"])
                why = row.pop("error")
                if why is not None:
                    append_failure(sink, error_record(path, row["sha256"], why, out), summary, path)
                else:
                    row["image_path"] = stored_path(path, out)
                    append_record(sink, row, summary)
                progress()
    except KeyboardInterrupt:
        summary.interrupted = True
    except Exception as exc:
        error = find_llamavision_error(exc)
        if error is None or not error.account_level:
            raise
        summary.stopped = error
    finally:
        stats: RateStats = ray.get(limiter.stats.remote())
        summary.rate_limited, summary.rate_wait = stats.rate_limited, stats.waited
        if started_ray:
            ray.shutdown()
    progress()
    return summary
