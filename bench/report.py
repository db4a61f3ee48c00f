"""What the bench commands share: the machine's description, tables, and RESULTS.md sections.

Each command (``run.py``, ``captions.py``) owns one marked section of ``RESULTS.md`` and
replaces only that one, so either can be re-run alone.
"""

from __future__ import annotations

import os
import platform
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
TITLE = "# Benchmark results\n"


@dataclass
class Row:
    """One measured client in one workload."""

    client: str
    value: float
    unit: str
    extra: dict[str, Any] = field(default_factory=dict)


def machine() -> str:
    """Describe this machine in one line."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}"
    )


def table(title: str, rows: list[Row], floor: str | None, note: str = "") -> str:
    """Render one workload as a markdown table, with ratios to the floor when given."""
    base = next((r.value for r in rows if floor and r.client.startswith(floor)), None)
    extras = list(dict.fromkeys(k for r in rows for k in r.extra))
    head = f"| client | {rows[0].unit} |" + ("" if base is None else " × floor |")
    head += "".join(f" {k} |" for k in extras)
    lines = [
        f"### {title}",
        "",
        note,
        "",
        head,
        "|---|---:|" + ("" if base is None else "---:|") + "---:|" * len(extras),
    ]
    for r in rows:
        cells = f"| {r.client} | {r.value:,.2f} |"
        if base is not None:
            cells += f" {r.value / base:.2f} |"
        for k in extras:
            v = r.extra.get(k)
            cells += f" {v:,.2f} |" if isinstance(v, float) else f" {'' if v is None else v} |"
        lines.append(cells)
    return "\n".join(lines) + "\n"


def write_section(name: str, text: str, path: Path = RESULTS) -> None:
    """Replace the section ``name`` of the results file (add it if missing)."""
    start, end = f"<!-- {name}: start -->", f"<!-- {name}: end -->"
    block = f"{start}\n{text.strip()}\n{end}\n"
    current = path.read_text(encoding="utf-8") if path.exists() else TITLE
    pattern = re.compile(re.escape(start) + ".*?" + re.escape(end) + "\n?", re.S)
    if pattern.search(current):
        updated = pattern.sub(lambda _: block, current)
    else:
        updated = current.rstrip("\n") + "\n\n" + block
    path.write_text(updated, encoding="utf-8")
