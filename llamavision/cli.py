"""The ``llamavision`` command: ``ask``, ``caption`` and ``emulator``.

With no credentials for the chosen provider, ``ask`` and ``caption`` start the bundled
emulator in the background and say so: the answers are then synthetic.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

from llamavision.captions import (
    DEFAULT_CONCURRENCY,
    DEFAULT_PROMPT,
    CaptionSummary,
    caption_images,
    find_images,
)
from llamavision.client import LlamaVisionClient
from llamavision.errors import LicenseAgreementRequiredError, LlamaVisionError
from llamavision.messages import Message, StreamAccumulator
from llamavision.providers import PROVIDERS


@contextmanager
def provider_environment(provider: str, err: TextIO) -> Iterator[None]:
    """Use the real provider when its credentials are set, else the bundled emulator."""
    from llamavision.emulator import start_unless_configured

    server = start_unless_configured(provider, err)
    if server is None:
        yield
        return
    with server, server.patched_env():
        yield


def _client(args: argparse.Namespace) -> LlamaVisionClient:
    return LlamaVisionClient(
        args.provider,
        accept_license=args.accept_license,
        max_retries=args.max_retries,
        max_concurrency=getattr(args, "concurrency", None),
        rate_limit=getattr(args, "rate_limit", None),
        outage_after=getattr(args, "outage_after", None),
        outage_limit=getattr(args, "outage_limit", 300.0),
        timeout=args.timeout,
    )


def _ask(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    messages = [Message.user(args.question, image=args.image)]
    started = time.monotonic()
    with _client(args) as client:
        if args.json:
            result = client.chat(messages, max_tokens=args.max_tokens)
        else:
            acc = StreamAccumulator()
            for delta in client.stream(messages, max_tokens=args.max_tokens):
                acc.add(delta)
                if delta.text:
                    out.write(delta.text)
                    out.flush()
            out.write("\n")
            result = acc.result()
    if args.json:
        usage = result.usage
        payload: dict[str, Any] = {
            "text": result.text,
            "provider": result.provider,
            "model": result.model,
            "finish_reason": result.finish_reason,
            "usage": None
            if usage is None
            else {
                "prompt_tokens": usage.prompt_tokens,
                "completion_tokens": usage.completion_tokens,
                "total_tokens": usage.total_tokens,
            },
            "cost_usd": result.cost,
            "request_id": result.request_id,
        }
        out.write(json.dumps(payload, indent=2) + "\n")
    else:
        tokens = result.usage.total_tokens if result.usage else 0
        print(
            f"[{result.provider} · {tokens:,} tokens · ${result.cost or 0:.6f} · "
            f"{time.monotonic() - started:.1f}s]",
            file=err,
        )
    return 0


class Progress:
    """Progress of a caption run: a tqdm bar on a terminal, plain lines otherwise.

    Without a terminal (cron, nohup, a container log), one line every ``every`` seconds says
    what is done, failed, the rate, the ETA and the 429s, so that a log shows the run moving.
    While already-captioned files are being checked, the rate is files checked per second;
    once images are sent, images captioned per second, counted from the first answer (not
    from start-up, which on Ray takes a while).
    """

    def __init__(self, stream: TextIO, every: float = 30.0) -> None:
        self.stream = stream
        self.every = every
        self.enabled = stream.isatty()
        self.latest = CaptionSummary()
        self._bar: Any = None
        self._last_line = -math.inf
        self._reported = -1
        self._first: tuple[float, int] | None = None  # (seconds, sent) at the first answer

    def __call__(self, summary: CaptionSummary, total: int) -> None:
        """Report after one more image."""
        self.latest = summary
        if not total:
            return
        sent = summary.captioned + len(summary.failures)
        finished = sent + summary.skipped + summary.copied
        if self._first is None and sent:
            self._first = (summary.seconds, sent)
        if self.enabled:
            self._draw(summary, finished, total)
            return
        now = time.monotonic()
        due = now - self._last_line >= self.every or finished == total
        if due and finished != self._reported:
            self._last_line, self._reported = now, finished
            print(f"progress: {self.line(summary, finished, total)}", file=self.stream, flush=True)

    def line(self, summary: CaptionSummary, finished: int, total: int) -> str:
        """Return the plain progress line."""
        sent = summary.captioned + len(summary.failures)
        counts = (
            f"{finished}/{total} ({summary.captioned} captioned, {summary.skipped} already done, "
            f"{summary.copied} copied, {len(summary.failures)} failed)"
        )
        if not sent:
            checked = summary.skipped + summary.copied
            checking = checked / summary.seconds if summary.seconds else 0.0
            return f"{counts}, {checking:.0f} files checked/s"
        rate = self.rate(summary)
        eta = "--" if rate is None else f"{(total - finished) / rate:.0f}s"
        speed = "--" if rate is None else f"{rate:.2f}"
        return f"{counts}, {speed} img/s, ETA {eta}, {summary.rate_limited} answered 429"

    def rate(self, summary: CaptionSummary) -> float | None:
        """Images answered per second since the first answer; ``None`` before the second."""
        sent = summary.captioned + len(summary.failures)
        if self._first is None or sent <= self._first[1]:
            return None
        elapsed = summary.seconds - self._first[0]
        return (sent - self._first[1]) / elapsed if elapsed > 0 else None

    def _draw(self, summary: CaptionSummary, finished: int, total: int) -> None:
        from tqdm import tqdm  # type: ignore[import-untyped]

        if self._bar is None:
            self._bar = tqdm(
                total=total, file=self.stream, unit="img", dynamic_ncols=True, smoothing=0.1
            )
        bar = self._bar
        sent = summary.captioned + len(summary.failures)
        bar.set_description("captioning" if sent else "checking", refresh=False)
        bar.set_postfix_str(
            f"{len(summary.failures)} failed, {summary.rate_limited} answered 429", refresh=False
        )
        bar.update(finished - bar.n)

    def close(self) -> None:
        """End the bar (the summary follows on a line of its own)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _report(summary: CaptionSummary, out_path: str, err: TextIO) -> None:
    state = "stopped" if summary.stopped else "interrupted" if summary.interrupted else "done"
    waits = [f"{summary.rate_limited} answered 429"]
    if summary.rate_wait:
        waits.append(f"{summary.rate_wait:.1f}s paused by Retry-After")
    if summary.paced:
        waits.append(f"{summary.paced:.1f}s pacing")
    if summary.outage_wait:
        waits.append(f"{summary.outage_wait:.1f}s waiting out an outage")
    print(
        f"{state}: {summary.counts()} in {summary.seconds:.1f}s; {summary.requests} requests, "
        f"{summary.prompt_tokens + summary.completion_tokens:,} tokens, ${summary.cost:.6f}; "
        f"{', '.join(waits)}. Captions in {out_path}.",
        file=err,
    )
    for path, why in summary.failures.items():
        print(f"  failed: {printable(path)}: {printable(why)}", file=err)
    if summary.stopped is not None:
        print(
            "Stopped early, as every later image would fail the same way: "
            f"{for_the_command_line(summary.stopped)}\n"
            "Fix that, then run the same command again: finished captions are kept and only "
            "the rest is done.",
            file=err,
        )
    elif summary.interrupted:
        print("Run the same command again to caption the rest.", file=err)


def for_the_command_line(error: LlamaVisionError) -> str:
    """Return an error's message, naming the command line's flag for a client option."""
    text = str(error)
    if isinstance(error, LicenseAgreementRequiredError):
        text = text.replace("Pass accept_license=True to the client", "Add --accept-license")
    return text


def printable(text: str) -> str:
    """Return ``text`` safe for a terminal: control characters and undecodable bytes escaped."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


EXIT_CODES = """exit status:
  0    every image captioned, or already done
  1    stopped: an error every image would meet (credentials, quota, licence), or bad input
  2    no images found
  3    finished, with images that failed (listed; the next run tries them again)
  1 also when the provider stayed down (see --outage-after): finished captions are kept
  130  interrupted (Ctrl+C); 143: terminated (SIGTERM). Finished captions are kept."""


class _Terminated(KeyboardInterrupt):
    """SIGTERM, handled as Ctrl+C is: finished captions kept, the summary printed."""


@contextmanager
def _sigterm_as_interrupt() -> Iterator[list[bool]]:
    """Handle SIGTERM (what schedulers and Kubernetes send) as an interruption."""
    terminated: list[bool] = []
    if threading.current_thread() is not threading.main_thread():
        yield terminated
        return

    def on_term(signum: int, frame: Any) -> None:
        terminated.append(True)
        if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
            raise _Terminated
        signal.raise_signal(signal.SIGINT)  # the event loop stops as on Ctrl+C

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        yield terminated
    finally:
        signal.signal(signal.SIGTERM, previous)


def _caption(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    skipped: list[str] = []
    images = find_images(
        args.images,
        recursive=args.recursive,
        follow_symlinks=args.follow_symlinks,
        on_skip=lambda path, why: skipped.append(f"  skipped: {printable(str(path))}: {why}"),
    )
    for line in skipped:
        print(f"{line} (--follow-symlinks to include it)", file=err)
    if not images:
        hint = "" if args.recursive else " (--recursive to look into sub-folders)"
        print(f"llamavision: no images found in {printable(args.images)}{hint}", file=err)
        return 2
    try:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        print(f"llamavision: cannot create the folder of --out {args.out}: {exc}", file=err)
        return 1
    progress = Progress(err, every=args.progress_every)
    say = _say(progress, err)
    with _sigterm_as_interrupt() as terminated:
        try:
            if args.ray:
                summary = _caption_on_ray(args, images, progress, say)
            else:
                with _client(args) as client:
                    summary = asyncio.run(
                        caption_images(
                            images,
                            args.out,
                            client,
                            prompt=args.prompt,
                            concurrency=args.concurrency,
                            max_tokens=args.max_tokens,
                            on_progress=progress,
                        )
                    )
        except KeyboardInterrupt:
            summary = progress.latest
            summary.interrupted = True
    progress.close()
    _report(summary, args.out, err)
    if args.json:
        out.write(json.dumps(summary.as_dict(), indent=2) + "\n")
    if summary.interrupted:
        return 143 if terminated else 130
    if summary.stopped is not None:
        return 1
    return 3 if summary.failures else 0


def _say(progress: Progress, err: TextIO) -> Callable[[str], None]:
    """Print a line for the user, clear of the progress bar."""

    def say(line: str) -> None:
        if progress._bar is not None:
            progress._bar.write(line, file=err)
        else:
            print(line, file=err, flush=True)

    return say


def _caption_on_ray(
    args: argparse.Namespace, images: list[Path], progress: Progress, say: Callable[[str], None]
) -> CaptionSummary:
    from llamavision.ray import caption_files  # without Ray: a MissingExtraError naming it

    where = args.ray_address or "a local Ray"
    say(f"Captioning on Ray ({where}) with {args.ray_actors} actors.")
    return caption_files(
        images,
        args.out,
        provider=args.provider,
        prompt=args.prompt,
        max_tokens=args.max_tokens,
        actors=args.ray_actors,
        concurrency=args.concurrency,
        rate_limit=args.rate_limit,
        outage_after=args.outage_after,
        outage_limit=args.outage_limit,
        address=args.ray_address,
        on_progress=progress,
        say=say,
        accept_license=args.accept_license,
        max_retries=args.max_retries,
        timeout=args.timeout,
    )


def _emulator(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from llamavision.emulator import serve

    if args.rate_limit:
        print(f"Each account may send {args.rate_limit:g} requests per minute.", file=err)
    with contextlib.ExitStack() as stack:
        log = None
        if args.log == "-":
            log = err
        elif args.log is not None:
            try:
                log = stack.enter_context(open(args.log, "a", encoding="utf-8"))
            except OSError as exc:
                print(f"llamavision emulator: cannot write the log {args.log}: {exc}", file=err)
                return 1
        serve(
            args.port,
            args.host,
            license_gate=not args.no_license_gate,
            rate_limit=args.rate_limit,
            latency=args.latency,
            announce=err,
            request_log=log,
            log_format=args.log_format,
            control=True if args.control else None,
        )
    return 0


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser of the ``llamavision`` command."""
    parser = argparse.ArgumentParser(
        prog="llamavision",
        description="Llama 3.2 11B Vision on AI Gateway or Cloudflare Workers AI.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--provider",
            choices=sorted(PROVIDERS),
            default="aigateway",
            help="who serves the model (default aigateway); without its credentials in the "
            "environment, the bundled emulator answers",
        )
        p.add_argument(
            "--accept-license",
            action="store_true",
            help="on Cloudflare, accept Meta's Llama 3.2 license if not yet done",
        )
        p.add_argument(
            "--max-tokens", type=int, default=300, help="the longest answer, in tokens (300)"
        )
        p.add_argument(
            "--timeout",
            type=_positive,
            default=60.0,
            metavar="SECONDS",
            help="seconds allowed per request (default 60)",
        )
        p.add_argument(
            "--max-retries",
            type=int,
            default=4,
            help="retries of a request after a 429, a 5xx or a connection error (default 4)",
        )

    ask = sub.add_parser("ask", help="ask a question about one image (streams the answer)")
    ask.add_argument("image", help="path, http(s) URL or data URL")
    ask.add_argument("question")
    ask.add_argument(
        "--json",
        action="store_true",
        help="print a JSON result with usage and cost instead of streaming",
    )
    common(ask)

    cap = sub.add_parser(
        "caption",
        help="caption a folder or glob of images into JSONL",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cap.add_argument("images", help="a folder, or a glob such as 'photos/**/*.jpg'")
    cap.add_argument(
        "--out",
        default="captions.jsonl",
        help="the captions file (JSON lines; created with its folder; a rerun resumes it)",
    )
    cap.add_argument(
        "--recursive",
        action="store_true",
        help="also caption the images in sub-folders of a folder (a glob says it with **)",
    )
    cap.add_argument(
        "--progress-every",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="without a terminal, print a progress line this often (default 30)",
    )
    cap.add_argument(
        "--concurrency",
        type=int,
        default=DEFAULT_CONCURRENCY,
        help=f"images in flight at once (default {DEFAULT_CONCURRENCY}, per actor with --ray; "
        "lowered on 429 answers)",
    )
    cap.add_argument(
        "--outage-after",
        type=int,
        default=5,
        metavar="N",
        help="after N connection errors or 5xx answers in a row, the provider is down: send "
        "nothing but a probe now and then until it is back (default 5)",
    )
    cap.add_argument(
        "--outage-limit",
        type=_positive,
        default=300.0,
        metavar="SECONDS",
        help="stop the run (exit 1, captions kept) when the provider is still down after "
        "this long (default 300)",
    )
    cap.add_argument(
        "--rate-limit",
        type=_positive,
        metavar="N",
        help="stay under N requests per minute (e.g. 300, Workers AI's published limit); "
        "by default the limit is learned from 429 answers",
    )
    cap.add_argument(
        "--prompt", default=DEFAULT_PROMPT, help="the instruction sent with each image"
    )
    cap.add_argument(
        "--follow-symlinks",
        action="store_true",
        help="also caption symbolic links that lead out of the folder (skipped by default)",
    )
    cap.add_argument("--json", action="store_true", help="also print the summary as JSON on stdout")
    cap.add_argument(
        "--ray",
        action="store_true",
        help="run on Ray Data: the cluster at --ray-address, or a local Ray",
    )
    cap.add_argument("--ray-address", help="a Ray cluster, e.g. ray://head:10001 or auto")
    cap.add_argument("--ray-actors", type=int, default=2, help="captioning actors (default 2)")
    common(cap)

    emu = sub.add_parser("emulator", help="serve the provider emulator in the foreground")
    emu.add_argument("--port", type=int, default=8799, help="0 picks a free port")
    emu.add_argument(
        "--host",
        default="127.0.0.1",
        help="the interface to listen on (default 127.0.0.1: this machine only)",
    )
    emu.add_argument(
        "--no-license-gate",
        action="store_true",
        help="do not emulate Cloudflare's license acceptance",
    )
    emu.add_argument(
        "--rate-limit",
        type=_positive,
        metavar="N",
        help="allow each account N requests per minute; beyond, the provider's own 429",
    )
    emu.add_argument(
        "--latency",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="take this long to start each answer, as the real model would (default 0)",
    )
    emu.add_argument(
        "--log",
        nargs="?",
        const="-",
        metavar="FILE",
        help="write a line per request (time, method, path, provider, status, latency, why a "
        "429) to FILE, or to stderr without one",
    )
    emu.add_argument(
        "--control",
        action="store_true",
        help="serve the control API (/_emulator/...) even on a host other than loopback, "
        "where it is off by default",
    )
    emu.add_argument(
        "--log-format",
        choices=["text", "json"],
        default="text",
        help="text lines, or JSON lines to count with jq and friends (default text)",
    )
    return parser


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, not {text}")
    return value


def main(
    argv: Sequence[str] | None = None, out: TextIO | None = None, err: TextIO | None = None
) -> int:
    """Run the command line; return the exit status."""
    out, err = out or sys.stdout, err or sys.stderr
    args = build_parser().parse_args(argv)
    if args.command == "emulator":
        try:
            return _emulator(args, out, err)
        except LlamaVisionError as exc:  # e.g. the port is in use
            print(f"llamavision emulator: {exc}", file=err)
            return 1
    handler = _ask if args.command == "ask" else _caption
    try:
        with provider_environment(args.provider, err):
            return handler(args, out, err)
    except LlamaVisionError as exc:
        print(f"llamavision: {for_the_command_line(exc)}", file=err)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
