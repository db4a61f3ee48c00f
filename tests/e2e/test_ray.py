"""Captioning on Ray Data: a local Ray (2 CPUs, one session for the module) and the emulator.

The actors run in Ray's worker processes and reach the emulator over loopback; credentials
and base URLs reach them pickled with the actors, never through ``runtime_env``.
"""

from __future__ import annotations

import io
import shutil
import signal
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import ray

from langchain_llamavision import CaptionLoader
from llamaindex_llamavision import CaptionReader
from llamavision.captions import load_captions
from llamavision.cli import main
from llamavision.emulator import Emulator, Fault
from llamavision.ray import FIELDS, caption_dataset
from tests.e2e.support import assert_copies_share_one_caption, dead_port, start_caption_run
from tests.e2e.test_scale import make_images


@pytest.fixture(scope="module", autouse=True)
def local_ray() -> object:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def test_a_users_pipeline_reads_captions_and_writes_parquet(
    emulator: Emulator, tmp_path: Path
) -> None:
    paths = make_images(tmp_path / "images", 100)
    images = ray.data.read_binary_files(str(tmp_path / "images"), include_paths=True)
    captions = caption_dataset(images, actors=2, concurrency=4)
    captions.write_parquet(str(tmp_path / "captions"))

    table = pq.read_table(tmp_path / "captions")
    assert table.column_names == list(FIELDS)
    rows = table.to_pylist()
    assert sorted(Path(r["image_path"]).name for r in rows) == sorted(p.name for p in paths)
    assert all(r["error"] is None and "synthetic answer" in r["caption"] for r in rows)
    assert len({r["sha256"] for r in rows}) == 100
    assert emulator.counters["received"] == 100  # each image exactly once


def test_the_loaders_read_what_a_pipeline_wrote(emulator: Emulator, tmp_path: Path) -> None:
    paths = make_images(tmp_path / "images", 6)
    images = ray.data.read_binary_files(str(tmp_path / "images"), include_paths=True)
    captions = caption_dataset(images, actors=1).materialize()
    captions.write_parquet(str(tmp_path / "parquet"))
    captions.write_json(str(tmp_path / "json"))
    names = sorted(p.name for p in paths)
    for written in ("parquet", "json"):
        docs = list(CaptionLoader(tmp_path / written).lazy_load())
        assert sorted(Path(d.metadata["image_path"]).name for d in docs) == names
        assert all(Path(d.metadata["image_path"]).is_file() and d.page_content for d in docs)
        nodes = CaptionReader().load_data(tmp_path / written)
        assert sorted(Path(str(n.image_path)).name for n in nodes) == names
    assert emulator.counters["received"] == 6


def test_the_command_line_runs_on_ray_with_the_same_records_and_resumes(
    emulator: Emulator, tmp_path: Path
) -> None:
    make_images(tmp_path / "images", 100)
    local, on_ray = tmp_path / "local.jsonl", tmp_path / "ray.jsonl"
    assert run_cli("caption", str(tmp_path / "images"), "--out", str(local))[0] == 0
    emulator.reset()
    code, _, err = run_cli("caption", str(tmp_path / "images"), "--out", str(on_ray), "--ray")
    assert code == 0, err
    assert "100 captioned" in err and "on Ray" in err
    assert emulator.counters["received"] == 100
    ours, theirs = load_captions(local), load_captions(on_ray)
    assert [sorted(r) for r in ours[:1]] == [sorted(r) for r in theirs[:1]]  # same schema
    assert {r["sha256"] for r in ours} == {r["sha256"] for r in theirs}

    emulator.reset()
    code, _, err = run_cli("caption", str(tmp_path / "images"), "--out", str(on_ray), "--ray")
    assert code == 0 and "0 captioned, 100 already done" in err
    assert emulator.counters["requests"] == 0  # nothing was scheduled
    assert len(load_captions(on_ray)) == 100


def test_a_corrupt_image_is_an_error_row_and_the_job_finishes(
    emulator: Emulator, tmp_path: Path
) -> None:
    make_images(tmp_path / "images", 6)
    (tmp_path / "images" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    images = ray.data.read_binary_files(str(tmp_path / "images"), include_paths=True)
    rows = caption_dataset(images, actors=1).take_all()
    errors = [r for r in rows if r["error"]]
    assert len(rows) == 7 and len(errors) == 1
    assert errors[0]["image_path"].endswith("broken.jpg") and errors[0]["caption"] is None
    assert "cannot be decoded" in errors[0]["error"]


def test_read_images_arrays_are_captioned_too(emulator: Emulator, tmp_path: Path) -> None:
    make_images(tmp_path / "images", 4)
    images = ray.data.read_images(str(tmp_path / "images"), include_paths=True)
    rows = caption_dataset(images, actors=1).take_all()
    assert len(rows) == 4 and all(r["error"] is None for r in rows)
    assert all("64x48 JPEG" in r["caption"] for r in rows)


def test_an_account_level_error_stops_the_job(emulator: Emulator, tmp_path: Path) -> None:
    make_images(tmp_path / "images", 60)
    emulator.fail(Fault("quota", provider="cloudflare", lasting=float("inf")))
    out = tmp_path / "c.jsonl"
    code, _, err = run_cli(
        "caption", str(tmp_path / "images"), "--out", str(out), "--ray", "--provider",
        "cloudflare", "--accept-license", "--ray-actors", "2", "--concurrency", "2",
    )  # fmt: skip
    assert code == 1 and "stopped:" in err and "daily reset" in err
    assert load_captions(out) == []
    # The first account-level answer stops every actor: at most the requests then in flight
    # follow it, not the rest of the collection (they went on after the job had failed).
    assert emulator.counters["requests"] <= 2 * 2, emulator.counters


def test_actors_together_respect_the_providers_limit(emulator: Emulator, tmp_path: Path) -> None:
    paths = make_images(tmp_path / "images", 60)
    # Ten a second and half a second of burst. Four busy actors that each believed they had
    # the whole limit (a governor each) got 13 % answered 429 here; sharing one, none. The job
    # paces at 0.6x the provider's limit: at exactly the limit (or 0.8x, with other suites and
    # busy loops on the machine) a loaded machine sends paced requests late and then together,
    # over the burst. Four governors of their own at 0.6x would still send 2.4x the limit.
    emulator.rate_limit, emulator.rate_burst = 600, 5
    images = ray.data.read_binary_files(
        str(tmp_path / "images"), include_paths=True, override_num_blocks=12
    )
    captions = caption_dataset(images, actors=4, concurrency=4, rate_limit=360, batch_size=5)
    rows = captions.take_all()
    assert len(rows) == len(paths) and all(r["error"] is None for r in rows)
    sent = emulator.counters["requests"]
    assert emulator.counters["rate_limited"] <= 0.05 * sent, emulator.counters


def test_actors_get_the_gateway_and_the_fallbacks_credentials(
    emulator: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Set after Ray started, so that only what the job forwards reaches its actors.
    monkeypatch.setenv("CLOUDFLARE_GATEWAY_ID", "gw-ray")
    monkeypatch.setenv("CLOUDFLARE_AI_GATEWAY_AUTH", "gw-token-for-ray")
    monkeypatch.setattr(emulator, "gateway_token", "gw-token-for-ray")
    make_images(tmp_path / "images", 3)
    emulator.fail(*[Fault("status", status=503, provider="aigateway")] * 3)  # primary down
    images = ray.data.read_binary_files(str(tmp_path / "images"), include_paths=True)
    rows = caption_dataset(
        images,
        actors=1,
        max_retries=0,
        fallback_providers=["cloudflare"],
        accept_license=True,
    ).take_all()
    assert len(rows) == 3 and all(r["error"] is None for r in rows), rows
    served = [r.path for r in emulator.requests if r.provider == "cloudflare"]
    assert served and all(p.startswith("/v1/") and "/gw-ray/workers-ai/" in p for p in served)


def test_an_interrupted_run_writes_every_answered_caption(
    emulator: Emulator, tmp_path: Path
) -> None:
    make_images(tmp_path / "images", 40)
    out = tmp_path / "c.jsonl"
    release = emulator.hold(after=6)  # six answers, then every request waits for the test
    proc = start_caption_run(
        str(tmp_path / "images"), "--out", str(out), "--ray", "--ray-actors", "2",
        "--concurrency", "2", "--ray-address", ray.get_runtime_context().gcs_address,
        "--progress-every", "1000", "--timeout", "900",  # held requests must not time out
    )  # fmt: skip
    lines: list[str] = []
    try:
        # Six answered, then at least one held in flight (how many depends on how Ray Data
        # splits the images into blocks over the actors: one block is one actor's).
        assert emulator.wait_for_requests(7, timeout=600), "the job never sent a 7th request"
        proc.send_signal(signal.SIGINT)
        assert proc.stderr is not None
        for line in proc.stderr:  # until the driver says it waits for those in flight
            lines.append(line)
            if line.startswith("Stopping: waiting for the"):
                break
        release.set()  # the held requests are answered now, after the interrupt
        lines.append(proc.communicate(timeout=300)[1])
    finally:
        release.set()
        proc.kill()
    err = "".join(lines)
    assert proc.returncode == 130, err
    answered = emulator.counters["received"]
    records = load_captions(out)
    assert 7 <= answered < 40, err  # interrupted before the end...
    assert len(records) == answered, err  # ...with every answered caption written
    assert all(r["caption"] for r in records)
    assert f"interrupted: {answered} captioned" in err and f"{answered} requests" in err


def test_a_provider_that_stays_down_stops_the_job(
    emulator: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_images(tmp_path / "images", 60)
    monkeypatch.setenv("AIGATEWAY_BASE_URL", f"http://127.0.0.1:{dead_port()}/v1")
    out = tmp_path / "c.jsonl"
    code, _, err = run_cli(
        "caption", str(tmp_path / "images"), "--out", str(out), "--ray", "--max-retries", "1",
        "--outage-after", "3", "--outage-limit", "1",
    )  # fmt: skip
    assert code == 1, err
    assert "stopped:" in err and "it seems down" in err and "Connection refused" not in err
    assert len(load_captions(out)) < 60  # not a failure row for every image


def test_duplicate_photos_each_keep_a_record(emulator: Emulator, tmp_path: Path) -> None:
    paths = make_images(tmp_path / "images", 5)
    shutil.copy(paths[0], tmp_path / "images" / "copy-a.jpg")
    shutil.copy(paths[0], tmp_path / "images" / "copy-b.jpg")
    out = tmp_path / "c.jsonl"
    code, _, err = run_cli("caption", str(tmp_path / "images"), "--out", str(out), "--ray")
    assert code == 0 and "5 captioned" in err and "2 copied" in err, err
    assert emulator.counters["received"] == 5  # the same bytes are captioned once
    records = load_captions(out)
    assert len({r["image_path"] for r in records}) == 7  # a record for every path
    assert_copies_share_one_caption(records, {paths[0].name, "copy-a.jpg", "copy-b.jpg"})


def test_both_modes_choose_the_same_files(emulator: Emulator, tmp_path: Path) -> None:
    make_images(tmp_path / "images", 3)
    make_images(tmp_path / "images" / "sub", 2, size=(32, 24))
    (tmp_path / "images" / "readme.txt").write_text("not an image")
    for flags in ((), ("--recursive",)):
        chosen = []
        for mode in ((), ("--ray",)):
            out = tmp_path / f"{'-'.join(flags + mode) or 'plain'}.jsonl"
            code, _, err = run_cli("caption", str(tmp_path / "images"), "--out", str(out),
                                   *flags, *mode)  # fmt: skip
            assert code == 0, err
            chosen.append(sorted(Path(r["image_path"]).name for r in load_captions(out)))
        assert chosen[0] == chosen[1] and len(chosen[0]) == (5 if flags else 3)
        assert not any(name.endswith(".txt") for name in chosen[0])
