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
import contextlib
import hashlib
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from PIL import Image as PILImage
from pydantic import SecretStr

from llamavision.captions import (
    DEFAULT_CONCURRENCY,
    DEFAULT_PROMPT,
    CaptionSummary,
    Ledger,
    caption_record,
)
from llamavision.captions_file import CaptionsWriter, stored_path
from llamavision.client import LlamaVisionClient
from llamavision.errors import ConfigurationError, LlamaVisionError, missing_extra
from llamavision.messages import Message
from llamavision.providers import PROVIDERS
from llamavision.ratelimit import CircuitBreaker, Outcome, RateGovernor, RateStats, Ticket

try:
    import numpy as np
    import ray
except ImportError as exc:
    raise missing_extra("ray", "llamavision.ray", exc) from None

logger = logging.getLogger("llamavision")
_RAY_AUTH_LOGGER = "ray._private.authentication.authentication_token_setup"

NOT_SENT = "not sent: the job was stopping"
"""The ``error`` of the rows of images a stopping job did not start (never written)."""

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

    def __init__(
        self,
        rate_limit: float | None = None,
        max_concurrency: int | None = None,
        outage_after: int | None = None,
        outage_limit: float = 300.0,
    ) -> None:
        self.governor = RateGovernor(
            rate_limit=rate_limit,
            max_concurrency=max_concurrency,
            breaker=CircuitBreaker.optional(outage_after, outage_limit),
        )
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


class ResultChannel:
    """Where the actors of one job hand each finished caption to the driver, as it finishes.

    Runs as an async Ray actor (made by :func:`caption_files`). An actor calls :meth:`begin`
    before it sends an image (``False`` once the driver is stopping: the image is left for the
    next run) and :meth:`finish` with its record when the answer is in. The driver takes
    records as they come (:meth:`take`); on Ctrl+C it calls :meth:`stop`, so that no new
    image starts, then :meth:`drain`, so that the requests in flight, which are paid for,
    finish and are written. Ray Data hands rows on in blocks (tens of rows at a time): too late
    for progress, and lost on an interrupt. This channel is row by row.
    """

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []  # from number ``self.base`` on
        self.base = 0
        self.in_flight = 0
        self.stopping = False
        self.closed = False
        self.changed = asyncio.Condition()

    async def begin(self) -> bool:
        """Say an image is about to be sent; ``False``: the job is stopping, do not send it."""
        if self.stopping:
            return False
        self.in_flight += 1
        return True

    async def finish(self, record: dict[str, Any] | None) -> None:
        """Hand over the record of a begun image (``None`` when it ended without one)."""
        async with self.changed:
            self.in_flight -= 1
            if record is not None:
                self.records.append(record)
            self.changed.notify_all()

    async def close(self) -> None:
        """Say the dataset is done (or failed): :meth:`take` returns what is left."""
        async with self.changed:
            self.closed = True
            self.changed.notify_all()

    def _since(self, start: int) -> list[dict[str, Any]]:
        """Return the records from number ``start`` on, forgetting those before (written)."""
        del self.records[: max(0, start - self.base)]
        self.base = max(self.base, start)
        return list(self.records)

    async def take(self, start: int) -> tuple[list[dict[str, Any]], bool]:
        """Wait for records from number ``start`` on; return them and whether that is all.

        The driver passes how many it has written, so a call it gave up on (Ctrl+C while
        waiting) loses nothing: the next call asks again from the same number.
        """
        async with self.changed:
            await self.changed.wait_for(
                lambda: self.base + len(self.records) > start or self.closed
            )
            records = self._since(start)
            return records, self.closed

    async def stop(self) -> int:
        """Start no more images; return how many requests are in flight."""
        self.stopping = True
        return self.in_flight

    async def drain(self, start: int) -> list[dict[str, Any]]:
        """After :meth:`stop`, wait for the requests in flight; return records from ``start``."""
        async with self.changed:
            await self.changed.wait_for(lambda: self.in_flight <= 0 or self.closed)
            return self._since(start)


def shared_rate_limit(
    rate_limit: float | None = None,
    max_concurrency: int | None = None,
    outage_after: int | None = None,
    outage_limit: float = 300.0,
) -> Any:
    """Start a :class:`SharedRateLimit` actor (no CPU claimed) and return its handle.

    Pass it as ``rate_limiter`` to several :func:`caption_dataset` calls that must share one
    provider account's limit (and one circuit breaker: ``outage_after``, ``outage_limit`` as
    in :class:`~llamavision.LlamaVisionClient`).
    """
    actor = ray.remote(num_cpus=0, max_restarts=0)(SharedRateLimit)
    return actor.remote(rate_limit, max_concurrency, outage_after, outage_limit)


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
        try:
            return RemoteTicket(self.actor, ray.get(self.actor.acquire.remote()))
        except ray.exceptions.RayTaskError as exc:
            raise _cause(exc) from None

    async def aacquire(self) -> RemoteTicket:
        """Wait for the shared governor without blocking the actor's event loop."""
        try:
            return RemoteTicket(self.actor, await self.actor.acquire.remote())
        except ray.exceptions.RayTaskError as exc:
            raise _cause(exc) from None

    @property
    def stats(self) -> RateStats:
        """What rate limiting has cost the job so far."""
        stats: RateStats = ray.get(self.actor.stats.remote())
        return stats


def _cause(exc: ray.exceptions.RayTaskError) -> BaseException:
    """Return the error an actor raised (such as the breaker's ``ProviderOutageError``)."""
    return find_llamavision_error(exc) or exc


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
        results: a :class:`ResultChannel` actor that gets each record as it is finished
            (and says when to stop starting images).
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
        concurrency: int = DEFAULT_CONCURRENCY,
        rate_limiter: Any = None,
        results: Any = None,
        credentials: Mapping[str, SecretStr] | None = None,
        **client_options: Any,
    ) -> None:
        for name, value in (credentials or {}).items():
            os.environ[name] = value.get_secret_value()  # this actor's own process only
        governor = None if rate_limiter is None else RemoteGovernor(rate_limiter)
        self.client = LlamaVisionClient(provider, governor=governor, **client_options)
        self.prompt = prompt
        self.max_tokens = max_tokens
        self.gate = asyncio.Semaphore(concurrency)  # for the actor: Ray runs batches at once
        self.results = results

    async def __call__(self, batch: Mapping[str, Any]) -> dict[str, list[Any]]:
        """Caption every image of the batch; ``concurrency`` at a time in this actor."""

        async def one(path: str | None, image: Any) -> dict[str, Any] | None:
            async with self.gate:
                if self.results is None:
                    return await self._caption(path, image)
                if not await self.results.begin.remote():  # the job is stopping
                    return {"image_path": path, "error": NOT_SENT}  # left for the next run
                record = None
                try:
                    record = await self._caption(path, image)
                    return record
                finally:
                    await self.results.finish.remote(record)

        done = await asyncio.gather(*(one(path, image) for path, image in _rows(batch)))
        records = [record for record in done if record is not None]
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
                if self.results is not None:  # no actor of the job starts another image
                    await self.results.stop.remote()
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
    concurrency: int = DEFAULT_CONCURRENCY,
    rate_limit: float | None = None,
    outage_after: int | None = None,
    outage_limit: float = 300.0,
    batch_size: int = 16,
    num_cpus: float = 0.25,
    rate_limiter: Any = None,
    results: Any = None,
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
        outage_after: stop sending after this many connection errors or 5xx answers in a
            row, for the whole job, and probe until the provider is back (see
            :class:`~llamavision.LlamaVisionClient`); ``None``: no circuit breaker.
        outage_limit: seconds to probe before the job fails with
            :class:`~llamavision.ProviderOutageError`.
        batch_size: images per batch handed to an actor.
        num_cpus: CPUs each actor claims; a fraction, as actors mostly wait on the network.
        rate_limiter: a :class:`SharedRateLimit` actor to use (default: a new one, with
            ``rate_limit`` and the breaker).
        results: a :class:`ResultChannel` actor that gets each record as it finishes.
        **client_options: more :class:`~llamavision.LlamaVisionClient` options (``model``,
            ``accept_license``, ``max_retries``, ``fallback_providers``...). Credentials set
            in this process's environment (see :func:`credential_env`) reach the actors
            pickled with them, where Ray's dashboard, state API and logs do not show them;
            on a cluster, the worker nodes' own environment works too.

    Returns:
        A lazy dataset with the columns of :data:`FIELDS`, one row per image.

    """
    if rate_limiter is None:
        rate_limiter = shared_rate_limit(rate_limit, None, outage_after, outage_limit)
    return ds.map_batches(
        Captioner,
        fn_constructor_kwargs={
            "provider": provider,
            "prompt": prompt,
            "max_tokens": max_tokens,
            "concurrency": concurrency,
            "rate_limiter": rate_limiter,
            "results": results,
            "outage_after": outage_after,  # for fallback providers: the primary's is shared
            "outage_limit": outage_limit,
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
    concurrency: int = DEFAULT_CONCURRENCY,
    rate_limit: float | None = None,
    outage_after: int | None = None,
    outage_limit: float = 300.0,
    address: str | None = None,
    on_progress: Callable[[CaptionSummary, int], None] | None = None,
    say: Callable[[str], None] | None = None,
    **client_options: Any,
) -> CaptionSummary:
    """Caption image files on Ray into a JSONL file, as ``llamavision caption --ray`` does.

    The same job and output as :func:`llamavision.captions.caption_images`: paths that have
    their record are filtered out here, and duplicates of captioned bytes get a copy, before
    anything is scheduled; the rest is read and captioned by Ray Data
    (:func:`caption_dataset`). Each record reaches this process as soon as its answer is in
    (a :class:`ResultChannel`) and is appended at once. On Ctrl+C (or SIGTERM, as the
    command line handles it), no new image is started and the requests in flight, already
    paid for, are waited for and written; a second Ctrl+C quits at once. An account-level
    error, or the breaker giving up, stops the job and is reported in the summary's
    ``stopped``.

    Args:
        paths: image files, reachable from every Ray node (local disk for a local Ray).
        out: the JSONL file to append to.
        provider: ``"aigateway"`` or ``"cloudflare"``.
        prompt: the instruction sent with each image.
        max_tokens: the longest caption, in tokens.
        actors: size of the actor pool.
        concurrency: requests in flight per actor.
        rate_limit: requests per minute for the whole job.
        outage_after: the job's circuit breaker (see :func:`caption_dataset`).
        outage_limit: seconds the breaker probes before the job stops.
        address: the Ray cluster to use; ``None`` connects to the running one, or starts
            a local Ray.
        on_progress: called after each image with the summary so far and the total.
        say: called with a line for the user (e.g. that the run is stopping).
        **client_options: more client options (``accept_license``, ``max_retries``...).

    """
    started = time.monotonic()
    summary = CaptionSummary()
    with CaptionsWriter(out) as sink:  # one writer: a second run on ``out`` fails here
        job = _FilesJob(Ledger(sink, summary), paths, started, on_progress, say or _quiet)
        return job.run(
            provider=provider, prompt=prompt, max_tokens=max_tokens, actors=actors,
            concurrency=concurrency, rate_limit=rate_limit, outage_after=outage_after,
            outage_limit=outage_limit, address=address, **client_options,
        )  # fmt: skip


def _quiet(line: str) -> None:
    logger.info(line)


class _FilesJob:
    """One run of :func:`caption_files`: what to schedule, and the records coming back."""

    def __init__(
        self,
        ledger: Ledger,
        paths: Sequence[str | Path],
        started: float,
        on_progress: Callable[[CaptionSummary, int], None] | None,
        say: Callable[[str], None],
    ) -> None:
        self.ledger = ledger
        self.summary = ledger.summary
        self.total = len(paths)
        self.started = started
        self.on_progress = on_progress
        self.say = say
        self.originals: dict[str, str] = {}  # absolute path -> path as given, one per digest
        self.copies: dict[str, list[str]] = {}  # digest -> other paths holding those bytes
        first: dict[str, str] = {}
        for item in paths:
            try:
                digest = file_digest(Path(item))
            except OSError as exc:
                ledger.fail(item, None, f"cannot read: {exc.strerror or exc}")
                continue
            if ledger.settle(item, digest):
                continue
            if digest in first:  # the same bytes twice in one run are captioned once
                self.copies.setdefault(digest, []).append(str(item))
            else:
                first[digest] = str(item)
                self.originals[os.path.abspath(item)] = str(item)

    def progress(self) -> None:
        self.summary.seconds = time.monotonic() - self.started
        if self.on_progress is not None:
            self.on_progress(self.summary, self.total)

    def write(self, row: dict[str, Any]) -> None:
        """Append the record of one finished image, and of the paths sharing its bytes."""
        path = self.originals.get(os.path.abspath(row["image_path"]), row["image_path"])
        digest = row.get("sha256")
        why = row.pop("error", None)
        if why is None and isinstance(digest, str) and self.ledger.has_record(path, digest):
            return  # written already (a Ctrl+C between writing it and counting it)
        if why is not None:
            self.ledger.fail(path, digest, why)
        else:
            row["image_path"] = stored_path(path, self.ledger.out)
            self.ledger.caption(row)
        if isinstance(digest, str):
            for other in self.copies.pop(digest, []):
                if why is None:
                    self.ledger.copy(other, digest)
                else:
                    self.ledger.fail(other, digest, why)
        self.progress()

    def run(
        self, *, address: str | None, rate_limit: float | None, outage_after: int | None,
        outage_limit: float, **options: Any,
    ) -> CaptionSummary:  # fmt: skip
        self.progress()
        if not self.originals:
            return self.summary
        started_ray = not ray.is_initialized()
        if started_ray:
            # A local Ray turns token authentication on (good) and logs a warning saying so.
            logging.getLogger(_RAY_AUTH_LOGGER).setLevel(logging.ERROR)
            ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING)
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # the caller shows its own progress
        context.raise_original_map_exception = True  # an account-level error arrives typed
        logging.getLogger("ray.data").setLevel(logging.ERROR)
        limiter = shared_rate_limit(rate_limit, None, outage_after, outage_limit)
        channel: Any = ray.remote(num_cpus=0, max_restarts=0)(ResultChannel).remote()
        images = ray.data.read_binary_files(list(self.originals), include_paths=True)
        captions = caption_dataset(
            images, rate_limiter=limiter, results=channel, outage_after=outage_after,
            outage_limit=outage_limit, **options,
        )  # fmt: skip
        failure: list[BaseException] = []
        stopping = threading.Event()

        def drive() -> None:  # runs the dataset; the records come through the channel
            try:
                for _ in captions.iter_batches(batch_size=None):
                    if stopping.is_set():
                        break  # closing the iterator stops the dataset's execution
            except BaseException as exc:  # handed to the driver's thread
                failure.append(exc)
            finally:
                with contextlib.suppress(Exception):
                    channel.close.remote()

        runner = threading.Thread(target=drive, name="llamavision-ray-job", daemon=True)
        runner.start()
        written = 0
        try:
            finished = False
            while not finished:
                records, finished = ray.get(channel.take.remote(written))
                for record in records:
                    self.write(record)
                    written += 1
            if failure:
                raise failure[0]
        except KeyboardInterrupt:
            self.summary.interrupted = True
            self._finish_in_flight(channel, written)
        except Exception as exc:
            error = find_llamavision_error(exc)
            if error is None or not error.account_level:
                raise
            self.summary.stopped = error
            self._finish_in_flight(channel, written, quietly=True)
        finally:
            self.summary.count_rates(ray.get(limiter.stats.remote()))
            stopping.set()  # the images not started come back at once as NOT_SENT rows
            runner.join(timeout=60)  # before Ray goes: the dataset must not outlive it
            if started_ray:
                ray.shutdown()
        self.progress()
        return self.summary

    def _finish_in_flight(self, channel: Any, written: int, quietly: bool = False) -> None:
        """On a stop: start nothing more, and write what the requests in flight bring."""
        try:
            in_flight = ray.get(channel.stop.remote())
            if in_flight and not quietly:
                self.say(
                    f"Stopping: waiting for the {in_flight} request(s) in flight, already paid "
                    "for, to write their captions (Ctrl+C again to quit at once)."
                )
            for record in ray.get(channel.drain.remote(written)):
                self.write(record)
        except KeyboardInterrupt:
            self.say("Quitting at once: the answers of the requests in flight are lost.")
