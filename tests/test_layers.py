"""The design's layering rules, checked on the source (DESIGN.md: one place for each fact).

- Outside ``providers/`` (and the emulator's provider routes), no code compares a provider
  with its literal name or names a provider's environment variable: those are codec facts.
"""

from __future__ import annotations

import ast
from pathlib import Path

from llamavision.providers import PROVIDERS

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("llamavision", "langchain_llamavision", "llamaindex_llamavision")
EXEMPT = (
    "llamavision/providers/",
    "llamavision/emulator/aigateway.py",
    "llamavision/emulator/cloudflare.py",
)
ENV_NAMES = {
    value
    for codec in PROVIDERS.values()
    for value in (
        codec.KEY_ENV,
        codec.ACCOUNT_ENV,
        codec.BASE_URL_ENV,
        codec.GATEWAY_ENV,
        codec.GATEWAY_TOKEN_ENV,
        codec.GATEWAY_BASE_URL_ENV,
    )
    if value
}


def sources() -> list[tuple[str, ast.Module]]:
    found = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            name = path.relative_to(ROOT).as_posix()
            if not name.startswith(EXEMPT):
                found.append((name, ast.parse(path.read_text())))
    return found


def docstrings(tree: ast.Module) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            for stmt in node.body:
                if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant):
                    ids.add(id(stmt.value))
    return ids


def test_no_code_compares_a_provider_with_its_name() -> None:
    found = []
    for name, tree in sources():
        for node in ast.walk(tree):
            if isinstance(node, ast.Compare):
                for part in [node.left, *node.comparators]:
                    values = (
                        part.elts if isinstance(part, (ast.Tuple, ast.List, ast.Set)) else [part]
                    )
                    if any(isinstance(v, ast.Constant) and v.value in PROVIDERS for v in values):
                        found.append(f"{name}:{node.lineno}")
    assert found == []


def test_no_code_names_a_providers_environment_variable() -> None:
    found = []
    for name, tree in sources():
        skip = docstrings(tree)
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and id(node) not in skip
            ) and any(env in node.value for env in ENV_NAMES):
                found.append(f"{name}:{node.lineno}: {node.value[:60]!r}")
    assert found == []


def module_name(path: str) -> str:
    name = path.removesuffix(".py").replace("/", ".")
    return name.removesuffix(".__init__")


def imports(name: str, tree: ast.Module, modules: set[str]) -> set[str]:
    """Our modules that ``name`` imports, anywhere in it (a function-level import counts)."""
    package = name if name in PACKAGES or f"{name}.__init__" in modules else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            for alias in node.names:  # "from pkg import sub" imports the submodule pkg.sub
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in modules else base)
    return {m for m in found if m in modules} - {name}


def test_no_module_imports_one_that_imports_it_back() -> None:
    trees = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            trees[module_name(path.relative_to(ROOT).as_posix())] = ast.parse(path.read_text())
    modules = set(trees)
    graph = {name: imports(name, tree, modules) for name, tree in trees.items()}
    circles = []
    for start in graph:  # a path from a module back to itself, each reported once
        stack, seen = [(start, [start])], set()
        while stack:
            node, path = stack.pop()
            for nxt in graph[node]:
                if nxt == start and min(path) == start:
                    circles.append(" -> ".join([*path, start]))
                elif nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, [*path, nxt]))
    assert circles == []
