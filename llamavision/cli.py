"""The ``llamavision`` command: ``ask``, ``caption`` and ``emulator``.

With no credentials for the chosen provider, ``ask`` and ``caption`` start the bundled
emulator in the background and say so: the answers are then synthetic.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TextIO

from llamavision.captions import DEFAULT_PROMPT, CaptionSummary, caption_images, find_images
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
        args.provider, accept_license=args.accept_license, max_retries=args.max_retries
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
    """A one-line progress bar with rate and ETA on a terminal (silent otherwise)."""

    def __init__(self, stream: TextIO, width: int = 28) -> None:
        self.stream = stream
        self.width = width
        self.enabled = stream.isatty()
        self.latest = CaptionSummary()

    def __call__(self, summary: CaptionSummary, todo: int) -> None:
        """Redraw after one more image."""
        self.latest = summary
        if not self.enabled or not todo:
            return
        finished = summary.captioned + len(summary.failures) - self._preexisting
        rate = finished / summary.seconds if summary.seconds else 0.0
        eta = (todo - finished) / rate if rate else 0.0
        filled = int(self.width * finished / todo)
        self.stream.write(
            f"\r[{'#' * filled}{'-' * (self.width - filled)}] {finished}/{todo} "
            f"{rate:.1f} img/s ETA {eta:.0f}s "
        )
        self.stream.flush()

    _preexisting = 0  # failures found before any request (unreadable files)


def _report(summary: CaptionSummary, out_path: str, err: TextIO, newline: bool) -> None:
    state = "interrupted" if summary.interrupted else "done"
    print(
        f"{chr(10) if newline else ''}{state}: {summary.captioned} captioned, "
        f"{summary.skipped} already done, "
        f"{len(summary.failures)} failed in {summary.seconds:.1f}s; "
        f"{summary.prompt_tokens + summary.completion_tokens:,} tokens, ${summary.cost:.6f}. "
        f"Captions in {out_path}.",
        file=err,
    )
    for path, why in summary.failures.items():
        print(f"  failed: {path}: {why}", file=err)
    if summary.interrupted:
        print("Run the same command again to caption the rest.", file=err)


def _caption(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    images = find_images(args.images)
    if not images:
        print(f"llamavision: no images found in {args.images}", file=err)
        return 2
    progress = Progress(err)
    with _client(args) as client:
        try:
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
    _report(summary, args.out, err, progress.enabled)
    if summary.interrupted:
        return 130
    return 1 if summary.failures and not summary.captioned and not summary.skipped else 0


def _emulator(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from llamavision.emulator import DEFAULT_ACCOUNT_ID, DEFAULT_AIGATEWAY_KEY, serve
    from llamavision.emulator.app import DEFAULT_CLOUDFLARE_TOKEN

    url = f"http://{args.host}:{args.port}"
    print(
        "Point clients at the emulator with:\n"
        f"  export AIGATEWAY_BASE_URL={url}/v1 AIGATEWAY_API_KEY={DEFAULT_AIGATEWAY_KEY}\n"
        f"  export CLOUDFLARE_BASE_URL='{url}/client/v4/accounts/{{account_id}}/ai/run' "
        f"CLOUDFLARE_ACCOUNT_ID={DEFAULT_ACCOUNT_ID} "
        f"CLOUDFLARE_API_TOKEN={DEFAULT_CLOUDFLARE_TOKEN}",
        file=err,
    )
    serve(args.port, args.host, license_gate=not args.no_license_gate)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser of the ``llamavision`` command."""
    parser = argparse.ArgumentParser(
        prog="llamavision",
        description="Llama 3.2 11B Vision on AI Gateway or Cloudflare Workers AI.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--provider", choices=sorted(PROVIDERS), default="aigateway")
        p.add_argument(
            "--accept-license",
            action="store_true",
            help="on Cloudflare, accept Meta's Llama 3.2 license if not yet done",
        )
        p.add_argument("--max-tokens", type=int, default=300)
        p.add_argument("--max-retries", type=int, default=4)

    ask = sub.add_parser("ask", help="ask a question about one image (streams the answer)")
    ask.add_argument("image", help="path, http(s) URL or data URL")
    ask.add_argument("question")
    ask.add_argument(
        "--json",
        action="store_true",
        help="print a JSON result with usage and cost instead of streaming",
    )
    common(ask)

    cap = sub.add_parser("caption", help="caption a folder or glob of images into JSONL")
    cap.add_argument("images", help="a folder, or a glob such as 'photos/**/*.jpg'")
    cap.add_argument("--out", default="captions.jsonl")
    cap.add_argument("--concurrency", type=int, default=4)
    cap.add_argument("--prompt", default=DEFAULT_PROMPT)
    common(cap)

    emu = sub.add_parser("emulator", help="serve the provider emulator in the foreground")
    emu.add_argument("--port", type=int, default=8799)
    emu.add_argument("--host", default="127.0.0.1")
    emu.add_argument(
        "--no-license-gate",
        action="store_true",
        help="do not emulate Cloudflare's license acceptance",
    )
    return parser


def main(
    argv: Sequence[str] | None = None, out: TextIO | None = None, err: TextIO | None = None
) -> int:
    """Run the command line; return the exit status."""
    out, err = out or sys.stdout, err or sys.stderr
    args = build_parser().parse_args(argv)
    if args.command == "emulator":
        return _emulator(args, out, err)
    handler = _ask if args.command == "ask" else _caption
    try:
        with provider_environment(args.provider, err):
            return handler(args, out, err)
    except LicenseAgreementRequiredError as exc:
        print(f"llamavision: {exc}\n(On the command line: add --accept-license.)", file=err)
        return 1
    except LlamaVisionError as exc:
        print(f"llamavision: {exc}", file=err)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
