"""Every Python example in the README runs as written (against the emulator)."""

from __future__ import annotations

import contextlib
import os
import re
import runpy
import signal
import uuid
from pathlib import Path

import pytest
from packaging.version import Version

from llamavision.emulator import Emulator
from tests.conftest import suite_processes

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", README, re.S)
LOCK = runpy.run_path(str(ROOT / "scripts" / "lock.py"))


@pytest.mark.parametrize("code", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_readme_example_runs(
    code: str,
    emulator: Emulator,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(ROOT)
    mark = f"LLAMAVISION_README_BLOCK={uuid.uuid4().hex}"
    monkeypatch.setenv(*mark.split("="))  # what the block starts inherits it
    try:
        exec(compile(code, "README.md", "exec"), {"__name__": "__readme__"})
    finally:
        # The Ray example's ray.init() runs Ray's dashboard (ray[default] is installed), which
        # our jobs never do; Ray 2.51's shutdown sometimes leaves one of the dashboard's
        # module processes (multiprocessing spawn children) behind, orphaned, as the
        # Ray-display test saw too. Stop what is left of the block's processes.
        for pid in suite_processes(mark):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
    assert capsys.readouterr().out.strip()


def test_every_test_the_reliability_table_names_exists() -> None:
    section = (ROOT / "README.md").read_text().split("## Reliability", 1)[1].split("\n## ", 1)[0]
    named = re.findall(r"`(tests/[\w/]+\.py)::(\w+)`", section)
    assert len(named) >= 20
    missing = [
        f"{path}::{name}"
        for path, name in named
        if not re.search(rf"^(async )?def {name}\(", (ROOT / path).read_text(), re.M)
    ]
    assert missing == []


def test_ci_runs_the_readme_test_command_with_the_lock() -> None:
    command = re.search(r"# 2\. run the whole test suite.*\n(.+)\n", README)
    assert command is not None and "-c requirements/lock.txt" in command.group(1)
    assert command.group(1) in (ROOT / ".ci" / "run").read_text()
    assert f"```bash\n{command.group(1)}\n```" in README.split("## Tests", 1)[1]


def test_the_compatibility_table_is_what_the_locks_hold() -> None:
    table = README.split("<!-- compat:start -->\n", 1)[1].split("<!-- compat:end -->", 1)[0]
    assert table == LOCK["compat_table"]()


def test_every_declared_lower_bound_is_pinned_in_the_oldest_lock() -> None:
    oldest = LOCK["pinned"](ROOT / "requirements" / "oldest.txt")
    pyproject = LOCK["tomllib"].loads((ROOT / "pyproject.toml").read_text())
    bounds = LOCK["lower_bounds"](pyproject)
    assert len(bounds) >= 9
    for bound in bounds:
        name, version = bound.split("==")
        [(pinned, marker)] = oldest[name.lower()]
        assert Version(pinned) == Version(version) and not marker, bound
