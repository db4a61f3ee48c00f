"""Helpers shared by the end-to-end tests."""

from __future__ import annotations

import base64
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

SAMPLE = Path(__file__).resolve().parents[2] / "examples" / "images" / "red-square.png"
SAMPLE_DATA_URL = "data:image/png;base64," + base64.b64encode(SAMPLE.read_bytes()).decode()
"""The red-square sample as a ``data:`` URL, as OpenAI-style clients send images."""
SAMPLES = SAMPLE.parent


def copy_samples(destination: Path) -> Path:
    """Copy the sample images, without what a notebook run leaves beside them; return it."""
    shutil.copytree(SAMPLES, destination, ignore=shutil.ignore_patterns("captions-*", "index-*"))
    return destination


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
"""An OpenAI-style tool, for the clients that drive the emulator's OpenAI-compatible routes."""


def dead_port() -> int:
    """Return a loopback port with nothing listening: every connection is refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def assert_copies_share_one_caption(records: list[dict[str, Any]], names: set[str]) -> None:
    """Check that the paths ``names`` (one photo's copies) share one paid caption."""
    same = [r for r in records if Path(r["image_path"]).name in names]
    assert {Path(r["image_path"]).name for r in same} == names
    (original,) = [r for r in same if "copy_of" not in r]
    assert original["cost_usd"] > 0
    for copy in same:
        if copy is not original:
            assert copy["caption"] == original["caption"]
            assert copy["sha256"] == original["sha256"]
            assert copy["copy_of"] == original["image_path"] and copy["cost_usd"] == 0.0


def start_caption_run(*args: str) -> subprocess.Popen[str]:
    """Start ``llamavision caption ARGS`` in its own process, stderr piped, as at a terminal.

    SIGINT is restored to its default, as Ctrl+C at a terminal finds it: a suite started in
    the background (``... &``) would pass on an ignored SIGINT, and the run would rightly
    carry on.
    """
    return subprocess.Popen(
        [sys.executable, "-m", "llamavision.cli", "caption", *args],
        env=os.environ.copy(),
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


@contextmanager
def notebook_session() -> Iterator[None]:
    """A reader's session for ``use_emulator_unless_configured``, without any provider keys.

    Restores afterwards what it changes: the environment, and the emulator the function
    started and the variables it set (later tests, and notebooks, inherit them otherwise).
    """
    from llamavision.emulator import server as module

    saved = dict(os.environ)
    for name in list(os.environ):
        if name.startswith(("AIGATEWAY_", "CLOUDFLARE_")):
            del os.environ[name]
    try:
        yield
    finally:
        if module._SHARED is not None:
            module._SHARED.stop()
        module._SHARED = None
        module._OWNED.clear()
        os.environ.clear()
        os.environ.update(saved)
