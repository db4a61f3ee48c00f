"""The notebooks as a reader runs them: Run All twice in one kernel, with real keys, on GitHub.

These tests are how the suite executes the notebooks: every cell must run without an error,
twice in one kernel (the setup cell reuses its emulator, and a second run sends no caption
request), and with a user's own credentials (never overwritten). They run copies of the
notebooks and of their images in a temporary folder, so that the captions files and indexes
the notebooks write stay out of the checkout (an index written by one lock's qdrant-client
cannot be read by the other's). And the outputs committed with the notebooks
(``scripts/run-notebooks``) must be there, and must show nothing private.
"""

from __future__ import annotations

import ast
import itertools
import json
import os
import re
import shutil
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from llamavision.emulator import DEFAULT_AIGATEWAY_KEY, DEFAULT_CLOUDFLARE_TOKEN, Emulator
from tests.e2e.support import copy_samples

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
PROVIDER_LINE = 'PROVIDER = "aigateway"'
CAPTIONING = {"langchain_image_rag", "llamaindex_multimodal_query"}
# A local path (Unix, macOS, Windows) or something that looks like a key.
PRIVATE = re.compile(
    r"(?<![\w.:/])/(?:tmp|work|home|root|Users|usr|opt|var|private)/|[A-Za-z]:\\\\|"
    r"\bsk-[A-Za-z0-9_-]{16,}|Bearer [A-Za-z0-9._-]{8,}"
)


def copy_of(path: Path, tmp_path: Path) -> Path:
    """Copy the notebooks folder and the example images as laid out in the repository."""
    shutil.copytree(ROOT / "notebooks", tmp_path / "notebooks")
    copy_samples(tmp_path / "examples" / "images")  # without an earlier run's captions, index
    return tmp_path / "notebooks" / path.name


def run(path: Path, times: int, provider: str = "aigateway") -> list[str]:
    """Run every cell ``times`` times in one kernel; return the text each run printed."""
    nb = nbformat.read(path, as_version=4)
    setup = nb.cells[1]
    assert PROVIDER_LINE in setup.source, "the first code cell chooses the provider"
    setup.source = setup.source.replace(PROVIDER_LINE, f'PROVIDER = "{provider}"')
    check = nbformat.v4.new_code_cell(
        "import os\n"
        "print('ENV', {k: os.environ.get(k) for k in sorted(os.environ) if k.startswith(("
        "'AIGATEWAY_', 'CLOUDFLARE_'))})"
    )
    nb.cells.append(check)
    client = NotebookClient(nb, timeout=600, resources={"metadata": {"path": str(path.parent)}})
    printed = []
    with client.setup_kernel():
        for _ in range(times):
            for index, cell in enumerate(nb.cells):
                if cell.cell_type == "code":
                    client.execute_cell(cell, index)  # raises CellExecutionError on a failure
            outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
            printed.append("".join(o.get("text", "") for o in outputs))
    return printed


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_run_all_twice_in_one_kernel(
    path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in list(os.environ):
        if name.startswith(("AIGATEWAY_", "CLOUDFLARE_")):
            monkeypatch.delenv(name)  # a reader without keys
    first, second = run(copy_of(path, tmp_path), times=2)  # no cell failed, twice
    envs = [printed.split("ENV ", 1)[1] for printed in (first, second)]
    assert "bundled emulator" in first and "bundled emulator" in second
    assert envs[0] == envs[1]  # the same emulator, reused by the second run
    if path.stem in CAPTIONING:  # the captions file is kept: the second run sends nothing
        assert "embeddings: WordLlamaEmbedding" in first  # no keys: offline embeddings
        assert "4 captioned, 0 already done, 0 failed; 4 requests" in first
        assert "0 captioned, 4 already done, 0 failed; 0 requests" in second
        assert (tmp_path / "examples" / "images" / "captions-emulator.jsonl").is_file()


@pytest.mark.slow
def test_a_caption_step_that_captions_nothing_stops_the_notebook_with_the_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A key, but nothing answers: every image fails to connect.
    monkeypatch.setenv("AIGATEWAY_API_KEY", "a-real-looking-key")
    monkeypatch.setenv("AIGATEWAY_BASE_URL", "http://127.0.0.1:9/v1")  # the discard port
    with pytest.raises(CellExecutionError) as stopped:
        run(copy_of(ROOT / "notebooks" / "langchain_image_rag.ipynb", tmp_path), times=1)
    assert "NothingCaptionedError" in str(stopped.value)
    assert "all 4 failed" in str(stopped.value)


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_real_cloudflare_credentials_are_used_untouched(
    path: Path, emulator: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Only Cloudflare's variables, as a reader with a Cloudflare account has them; this
    # test's emulator stands in for Cloudflare.
    monkeypatch.delenv("AIGATEWAY_API_KEY", raising=False)
    monkeypatch.delenv("AIGATEWAY_BASE_URL", raising=False)
    mine = {k: v for k, v in os.environ.items() if k.startswith("CLOUDFLARE_")}
    (printed,) = run(copy_of(path, tmp_path), times=1, provider="cloudflare")
    assert "bundled emulator" not in printed and "credentials in the environment" in printed
    assert ast.literal_eval(printed.split("ENV ", 1)[1].strip()) == mine  # all as the user set them
    served = {r.provider for r in emulator.requests}
    assert served == {"cloudflare"}, "the answers came from the user's endpoint"
    if path.stem in CAPTIONING:  # and the index's embeddings: Workers AI's bge-base
        assert "embeddings: WorkersAIEmbedding" in printed
        assert emulator.counters["embedded"] >= 4  # the four captions, then the questions


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_committed_outputs_are_there_and_show_nothing_private(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    for number, cell in enumerate(code, 1):
        assert cell.outputs, f"code cell {number} has no committed output: scripts/run-notebooks"
        assert "execution" not in cell.metadata, "timings are noise"
        kinds = [(o.output_type, o.get("name")) for o in cell.outputs]
        assert all(a != b or a[0] != "stream" for a, b in itertools.pairwise(kinds)), (
            "merge streams"
        )
        assert "error" not in {o.output_type for o in cell.outputs}
    text = json.dumps([cell.outputs for cell in code])
    for secret in (DEFAULT_AIGATEWAY_KEY, DEFAULT_CLOUDFLARE_TOKEN):
        assert secret not in text
    found = PRIVATE.search(text.replace("\\n", "\n"))
    assert found is None, f"a local path or a key in the outputs: {found and found.group()}"
