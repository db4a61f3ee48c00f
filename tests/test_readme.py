"""Every Python example in the README runs as written (against the emulator)."""

from __future__ import annotations

import re
import runpy
from pathlib import Path

import pytest
from packaging.version import Version

from llamavision.emulator import Emulator

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
    exec(compile(code, "README.md", "exec"), {"__name__": "__readme__"})
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
