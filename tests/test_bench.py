"""The benchmark commands run end to end on tiny workloads (numbers are not checked)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_quick(script: str, out: Path) -> str:
    """Run a bench command with --quick; return the results file it wrote."""
    done = subprocess.run(
        [sys.executable, script, "--quick", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return out.read_text()


def test_bench_runs_and_writes_the_table(tmp_path: Path) -> None:
    table = run_quick("bench/run.py", tmp_path / "results.md")
    for section in (
        "2,000-chunk stream",
        "non-streamed call",
        "Long stream",
        "500 argument",
        "async calls",
        "12-megapixel",
    ):
        assert section in table
    assert "ChatLlamaVision, aigateway" in table and "OpenAILike" in table


def test_caption_bench_runs_and_writes_its_section(tmp_path: Path) -> None:
    out = tmp_path / "results.md"
    out.write_text("# Benchmark results\n\n<!-- client: start -->\nkept\n<!-- client: end -->\n")
    table = run_quick("bench/captions.py", out)
    assert "kept" in table  # the other command's section is left alone
    for section in (
        "Throughput and memory",
        "Against a rate limit",
        "Client CPU per image",
        "One machine and Ray",
    ):
        assert section in table
