"""Suite-wide settings."""

from __future__ import annotations

import contextlib
import os
import signal
import time
import uuid
from pathlib import Path

import pytest

# Ray gives its node processes 10 s to start by default; on a loaded 2-core machine (CI, two
# suites at once) the dashboard's processes take longer. Wait for them instead of failing.
# Its dashboard likewise gives each of its modules 30 s, and gives up on all of them after one
# is late (seen on CI: "Module MetricsHead failed to start").
os.environ.setdefault("RAY_raylet_start_wait_time_s", "300")
os.environ.setdefault("RAY_DASHBOARD_SUBPROCESS_MODULE_WAIT_READY_TIMEOUT", "300")

# No network in tests: libraries that would try it first and fall back after timeouts (LiteLLM's
# price list; the Hugging Face tokenizer its cost calculator fetches for Llama models: 48 s of
# back-off per call) are told at once.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# Every process this suite starts (Ray's workers included) inherits this mark, so that the
# suite can check at its end that none outlives it, whatever else runs on the machine.
SUITE_MARK = f"LLAMAVISION_TEST_SUITE={uuid.uuid4().hex}"
os.environ["LLAMAVISION_TEST_SUITE"] = SUITE_MARK.split("=", 1)[1]


def suite_processes(marked: str = SUITE_MARK) -> dict[int, str]:
    """Return ``{pid: command line}`` of the live processes whose environment has ``marked``.

    By default the processes this suite started (Linux).
    """
    found = {}
    mark = marked.encode()
    for entry in Path("/proc").glob("[0-9]*"):
        pid = int(entry.name)
        if pid == os.getpid():
            continue
        try:
            if mark not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            if (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                continue  # a zombie: exited, waiting for its parent to read its status
            found[pid] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return found


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the run if a process it started (a Ray worker, an emulator) is still running."""
    if not Path("/proc/self/environ").exists():
        return
    deadline = time.monotonic() + 60  # Ray's shutdown is asynchronous: give it time
    left = suite_processes()
    while left and time.monotonic() < deadline:
        time.sleep(1)
        left = suite_processes()
    if not left:
        return
    for pid in left:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    listing = "\n".join(f"  {pid}: {command[:200]}" for pid, command in left.items())
    report = session.config.pluginmanager.get_plugin("terminalreporter")
    message = f"Processes started by the test suite outlived it (killed now):\n{listing}"
    if report is not None:
        report.write_line(message, red=True)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED
