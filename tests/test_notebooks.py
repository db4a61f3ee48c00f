"""The notebooks as a reader runs them: Run All twice in one kernel, and with real keys.

CI also executes each notebook once (``nbmake``); these tests check what a second run and a
user's own credentials need: the setup cell reuses its emulator, and never overwrites a
variable the user set.
"""

from __future__ import annotations

import ast
import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from llamavision.emulator import Emulator

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
PROVIDER_LINE = 'PROVIDER = "aigateway"'


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
def test_run_all_twice_in_one_kernel(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(("AIGATEWAY_", "CLOUDFLARE_")):
            monkeypatch.delenv(name)  # a reader without keys
    first, second = run(path, times=2)  # every cell ran without an error, twice
    envs = [printed.split("ENV ", 1)[1] for printed in (first, second)]
    assert "bundled emulator" in first and "bundled emulator" in second
    assert envs[0] == envs[1]  # the same emulator, reused by the second run


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_real_cloudflare_credentials_are_used_untouched(
    path: Path, emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Only Cloudflare's variables, as a reader with a Cloudflare account has them; this
    # test's emulator stands in for Cloudflare.
    monkeypatch.delenv("AIGATEWAY_API_KEY", raising=False)
    monkeypatch.delenv("AIGATEWAY_BASE_URL", raising=False)
    mine = {k: v for k, v in os.environ.items() if k.startswith("CLOUDFLARE_")}
    (printed,) = run(path, times=1, provider="cloudflare")
    assert "bundled emulator" not in printed and "credentials in the environment" in printed
    assert ast.literal_eval(printed.split("ENV ", 1)[1].strip()) == mine  # all as the user set them
    served = {r.provider for r in emulator.requests}
    assert served == {"cloudflare"}, "the answers came from the user's endpoint"
