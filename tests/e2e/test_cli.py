"""The ``llamavision`` command line, against the emulator (in-process and as a subprocess)."""

from __future__ import annotations

import io
import json
import shutil
import signal
import time
from pathlib import Path

import pytest
from PIL import Image as PILImage

from llamavision import LlamaVisionClient
from llamavision.captions import caption_images, find_images, load_captions
from llamavision.cli import build_parser, main
from llamavision.emulator import Emulator, EmulatorProcess, Fault, Reply
from tests.e2e.support import (
    assert_copies_share_one_caption,
    copy_samples,
    dead_port,
    start_caption_run,
)

SAMPLES = Path(__file__).resolve().parents[2] / "examples" / "images"


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return copy_samples(tmp_path / "images")


def test_ask_streams_the_answer_from_the_configured_provider(emulator: Emulator) -> None:
    code, out, err = run("ask", str(SAMPLES / "red-square.png"), "What shape is this?")
    assert code == 0
    assert "640x480 PNG image, mostly white and red" in out and "What shape is this?" in out
    assert "[aigateway ·" in err and "tokens" in err and "bundled emulator" not in err


def test_ask_json_has_usage_and_cost(emulator: Emulator) -> None:
    code, out, _ = run(
        "ask",
        str(SAMPLES / "sunset.jpg"),
        "Describe",
        "--json",
        "--provider",
        "cloudflare",
        "--accept-license",
    )
    assert code == 0
    payload = json.loads(out)
    assert payload["provider"] == "cloudflare" and payload["usage"]["total_tokens"] > 0
    assert payload["cost_usd"] > 0 and "900x600 JPEG" in payload["text"]


def test_ask_without_credentials_uses_the_bundled_emulator_and_says_so(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("AIGATEWAY_API_KEY", "AIGATEWAY_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    code, out, err = run("ask", str(SAMPLES / "red-square.png"), "What is it?")
    assert code == 0 and "synthetic answer" in out
    assert "bundled emulator" in err and "answers are synthetic" in err
    assert "Set AIGATEWAY_API_KEY" in err


def test_errors_are_reported_with_what_to_do(emulator: Emulator, tmp_path: Path) -> None:
    code, _, err = run("ask", str(SAMPLES / "red-square.png"), "hi", "--provider", "cloudflare")
    assert code == 1 and "Add --accept-license" in err and "accept_license=True" not in err
    out = str(tmp_path / "c.jsonl")
    code, _, err = run("caption", str(SAMPLES), "--out", out, "--provider", "cloudflare")
    assert code == 1 and "Add --accept-license" in err and "accept_license=True" not in err
    code, _, err = run("ask", "missing.png", "hi")
    assert code == 1 and "Cannot read image file" in err


def test_caption_writes_jsonl_ready_for_rag_and_skips_bad_images(
    emulator: Emulator, folder: Path, tmp_path: Path
) -> None:
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    out = tmp_path / "captions.jsonl"
    code, _, err = run("caption", str(folder), "--out", str(out), "--concurrency", "3")
    assert code == 3  # finished, with a failed image
    records = [r for r in load_captions(out) if not r.get("error")]
    assert sorted(Path(r["image_path"]).name for r in records) == [
        "blue-circle.jpg",
        "green-triangle.webp",
        "red-square.png",
        "sunset.jpg",
    ]
    for record in records:
        assert record["caption"] and len(record["sha256"]) == 64 and record["cost_usd"] > 0
    assert "4 captioned" in err and "1 failed" in err and "broken.jpg" in err
    assert "cannot be decoded" in err
    (error,) = [r for r in load_captions(out) if r.get("error")]  # recorded, as on Ray
    assert Path(error["image_path"]).name == "broken.jpg" and "cannot be decoded" in error["error"]

    code, _, err = run("caption", str(folder), "--out", str(out))
    assert code == 3 and "0 captioned, 4 already done, 1 failed" in err  # tried again
    assert len([r for r in load_captions(out) if not r.get("error")]) == 4


def test_caption_rides_out_rate_limits(emulator: Emulator, folder: Path, tmp_path: Path) -> None:
    emulator.fail(*[Fault("status", status=429, retry_after="0")] * 3)
    out = tmp_path / "c.jsonl"
    code, _, err = run("caption", str(folder), "--out", str(out), "--concurrency", "4")
    assert code == 0 and "4 captioned" in err and "0 failed" in err


def test_caption_glob(emulator: Emulator, tmp_path: Path) -> None:
    out = tmp_path / "c.jsonl"
    code, _, err = run("caption", str(SAMPLES / "*.jpg"), "--out", str(out))
    assert code == 0 and "2 captioned" in err


@pytest.mark.parametrize(
    ("stop", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"]
)
def test_interrupted_caption_resumes_without_redoing_or_losing_work(
    emulator: Emulator, folder: Path, tmp_path: Path, stop: signal.Signals, status: int
) -> None:
    for i in range(6):
        PILImage.new("RGB", (50, 50), (i * 40, 0, 0)).save(folder / f"extra-{i}.png")
    total = len(find_images(folder))
    release = emulator.hold(after=2)  # the third request waits until the test says so
    out = tmp_path / "captions.jsonl"
    proc = start_caption_run(str(folder), "--out", str(out), "--concurrency", "1")
    try:
        # With one worker, two captions are written before the third request is sent.
        assert emulator.wait_for_requests(3), "the caption run never sent its third request"
        proc.send_signal(stop)  # SIGTERM: what schedulers and Kubernetes send
        _, err = proc.communicate(timeout=60)
    finally:
        release.set()
        proc.kill()
    assert proc.returncode == status, err
    assert "interrupted" in err and "Run the same command again" in err
    first = load_captions(out)
    assert len(first) == 2

    emulator.reset()
    code, _, err = run("caption", str(folder), "--out", str(out))
    assert code == 0
    final = load_captions(out)
    assert len(final) == total
    assert len({r["sha256"] for r in final}) == total  # nothing captioned twice
    assert len(emulator.requests) == total - len(first)  # nothing redone
    assert f"{len(first)} already done" in err


def test_emulator_command_serves_both_providers_at_the_latency_asked() -> None:
    import httpx

    # `llamavision emulator --port 0 --latency 0.5`, ready when it says so
    with EmulatorProcess(latency=0.5) as server:
        started = time.perf_counter()
        reply = httpx.post(
            f"{server.url}/v1/chat/completions",
            headers={"Authorization": "Bearer emulator-key"},
            json={
                "model": "meta/llama-3.2-11b-vision-instruct",
                "messages": [{"role": "user", "content": "hi"}],
            },
        )
        assert time.perf_counter() - started >= 0.5  # a lower bound: no race under load
        assert reply.status_code == 200
        assert "synthetic" in reply.json()["choices"][0]["message"]["content"]
        cf = httpx.post(
            f"{server.url}/client/v4/accounts/a/ai/run/@cf/meta/llama-3.2-11b-vision-instruct",
            headers={"Authorization": "Bearer emulator-token"},
            json={"prompt": "agree"},
        )
        assert cf.status_code == 200 and "Thank you" in cf.json()["result"]["response"]


def test_scripted_reply_reaches_the_terminal(emulator: Emulator) -> None:
    emulator.script(Reply(text="A red square on white."))
    code, out, _ = run("ask", str(SAMPLES / "red-square.png"), "What is it?")
    assert code == 0 and out.strip() == "A red square on white."


def test_progress_lines_reach_a_log_without_a_terminal(
    emulator: Emulator, folder: Path, tmp_path: Path
) -> None:
    out = tmp_path / "c.jsonl"
    code, _, err = run("caption", str(folder), "--out", str(out), "--progress-every", "0")
    lines = [line for line in err.splitlines() if line.startswith("progress: ")]
    assert code == 0 and len(lines) == 4, err  # one per image here; every 30 s by default
    assert lines[-1].startswith("progress: 4/4 (4 captioned, 0 already done, 0 copied, 0 failed)")
    assert "img/s, ETA" in lines[-1] and "answered 429" in lines[-1]
    assert "ETA --" in lines[0]  # no rate from one answer (on Ray, start-up would skew it)

    code, _, err = run("caption", str(folder), "--out", str(out), "--progress-every", "0")
    lines = [line for line in err.splitlines() if line.startswith("progress: ")]
    assert code == 0 and lines[-1].startswith("progress: 4/4 (0 captioned, 4 already done")
    assert lines[-1].endswith("files checked/s")  # checking done files: how fast that goes


def test_one_file_selection_and_an_output_folder_made(
    emulator: Emulator, folder: Path, tmp_path: Path
) -> None:
    (folder / "sub").mkdir()
    PILImage.new("RGB", (40, 40), (0, 90, 0)).save(folder / "sub" / "green.png")
    (folder / "readme.txt").write_text("not an image")
    out = tmp_path / "new" / "folder" / "c.jsonl"
    code, _, err = run("caption", str(folder), "--out", str(out))
    assert code == 0 and "4 captioned" in err  # the folder's own images; no readme.txt
    code, _, err = run("caption", str(folder), "--out", str(out), "--recursive")
    assert code == 0 and "1 captioned, 4 already done" in err  # sub/green.png too now
    assert "green.png" in {Path(r["image_path"]).name for r in load_captions(out)}
    assert not [r for r in load_captions(out) if r["image_path"].endswith(".txt")]
    glob_code, _, err = run("caption", str(folder / "*"), "--out", str(tmp_path / "g.jsonl"))
    assert glob_code == 0 and "4 captioned" in err  # a glob matching readme.txt sends no text


def test_help_documents_the_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["caption", "--help"])
    help_text = capsys.readouterr().out
    assert "exit status" in help_text and "143" in help_text and "--recursive" in help_text


def test_every_flag_has_help() -> None:
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    for name, command in commands.items():
        for action in command._actions:
            if action.option_strings and action.dest != "help":
                assert action.help, f"llamavision {name} {action.option_strings[0]} has no help"


def test_a_provider_that_stays_down_stops_the_run(
    emulator: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for i in range(40):
        PILImage.new("RGB", (20, 20), (i * 6, 0, 0)).save(tmp_path / f"{i:02d}.png")
    monkeypatch.setenv("AIGATEWAY_BASE_URL", f"http://127.0.0.1:{dead_port()}/v1")
    code, out, err = run(
        "caption", str(tmp_path), "--out", str(tmp_path / "c.jsonl"), "--json",
        "--max-retries", "0", "--outage-after", "3", "--outage-limit", "1",
    )  # fmt: skip
    summary = json.loads(out)
    assert code == 1 and "it seems down" in err and summary["stopped"], err
    assert summary["requests"] < 20  # probes, not a request for each of the 40 images
    assert summary["outage_wait_seconds"] > 0


async def test_a_run_waits_out_a_short_outage(emulator: Emulator, folder: Path) -> None:
    emulator.fail(*[Fault("status", status=502)] * 4)  # two to open the breaker, two probes
    client = LlamaVisionClient(
        max_retries=6, retry_backoff=0.01, outage_after=2, outage_limit=5.0
    )  # probes every 0.5 s, for 5 s at most
    async with client:
        summary = await caption_images(sorted(folder.iterdir()), folder / "c.jsonl", client,
                                       concurrency=1)  # fmt: skip
    assert summary.captioned == 4 and summary.stopped is None, summary.failures
    assert summary.outage_wait > 0.9  # two probe intervals
    assert summary.requests == 4 + 4  # four answers, four failures


def test_duplicate_photos_each_keep_a_record(emulator: Emulator, folder: Path) -> None:
    out = folder.parent / "c.jsonl"
    shutil.copy(folder / "sunset.jpg", folder / "sunset-copy.jpg")
    code, _, err = run("caption", str(folder), "--out", str(out), "--concurrency", "4")
    assert code == 0 and "4 captioned" in err and "1 copied" in err, err
    assert emulator.counters["received"] == 4  # the same bytes are captioned once
    (folder / "more").mkdir()
    shutil.copy(folder / "sunset.jpg", folder / "more" / "sunset-again.jpg")
    emulator.reset()
    code, _, err = run("caption", str(folder), "--out", str(out), "--recursive")
    assert "0 captioned, 5 already done, 1 copied" in err and emulator.counters["requests"] == 0
    records = [r for r in load_captions(out) if not r.get("error")]
    names = {"sunset.jpg", "sunset-copy.jpg", "sunset-again.jpg"}
    assert_copies_share_one_caption(records, names)


class Terminal(io.StringIO):
    """Standard error as a terminal shows it."""

    def isatty(self) -> bool:
        return True


def test_a_terminal_gets_a_progress_bar(emulator: Emulator, folder: Path, tmp_path: Path) -> None:
    out, err = io.StringIO(), Terminal()
    code = main(["caption", str(folder), "--out", str(tmp_path / "c.jsonl")], out=out, err=err)
    shown = err.getvalue()
    assert code == 0 and "\r" in shown and "captioning" in shown and "4/4" in shown
    assert "0 failed, 0 answered 429" in shown  # the bar's postfix
    assert "\ndone: 4 captioned" in shown  # the summary on a line of its own, after the bar
    assert "progress: " not in shown  # no log lines on a terminal
