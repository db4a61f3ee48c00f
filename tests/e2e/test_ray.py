"""Captioning on Ray Data: a local Ray (2 CPUs, one session for the module) and the emulator.

The actors run in Ray's worker processes and reach the emulator over loopback; credentials
and base URLs reach them pickled with the actors, never through ``runtime_env``.
"""

from __future__ import annotations

import io
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import ray

from llamavision.captions import load_captions
from llamavision.cli import main
from llamavision.emulator import Emulator, Fault
from llamavision.ray import FIELDS, caption_dataset
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
    make_images(tmp_path / "images", 20)
    emulator.fail(Fault("quota", provider="cloudflare", lasting=float("inf")))
    out = tmp_path / "c.jsonl"
    code, _, err = run_cli(
        "caption", str(tmp_path / "images"), "--out", str(out), "--ray",
        "--provider", "cloudflare", "--accept-license",
    )  # fmt: skip
    assert code == 1 and "stopped:" in err and "daily reset" in err
    assert load_captions(out) == []


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
