"""The house rules a newcomer relies on: no import cycles, small modules, format names only in backends/."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from yoloq.paths import REPO_ROOT

PKG = REPO_ROOT / "yoloq"


def _module(path: Path) -> str:
    rel = path.relative_to(REPO_ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """Every yoloq module ``path`` imports, at the top or inside functions (lazy imports count)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for n in names:
            if n in modules:
                out.add(n)
    return out


def _graph() -> dict[str, set[str]]:
    files = {_module(p): p for p in PKG.rglob("*.py")}
    graph = {m: _imports(p, set(files)) - {m} for m, p in files.items()}
    for m in list(graph):  # importing a.b.c runs a/__init__ and a/b/__init__ first
        for dep in list(graph[m]):
            parts = dep.split(".")
            graph[m] |= {".".join(parts[:i]) for i in range(2, len(parts))} - {m}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for d in sorted(graph.get(m, ())):
            if d.startswith(m + "."):  # a package importing its own sub-modules is not a cycle back to it
                continue
            if state.get(d) == 1:
                return stack[stack.index(d):] + [d]
            if d not in state and (c := visit(d)):
                return c
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (c := visit(m)):
            return c
    return None


def test_no_import_cycles():
    cycle = _cycle(_graph())
    assert cycle is None, " -> ".join(cycle)


def test_the_cycle_finder_finds_cycles():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_config_is_the_first_stage():
    deps = _graph()["yoloq.config"]
    assert deps <= {"yoloq.errors", "yoloq.schema", "yoloq.config_harness"}, deps
    assert _graph()["yoloq.config_harness"] <= {"yoloq.errors", "yoloq.schema"}


def test_backends_import_no_evaluation_or_later_stage():
    later = ("yoloq.evaluate", "yoloq.accuracy", "yoloq.bootstrap", "yoloq.passes", "yoloq.pipeline", "yoloq.records",
             "yoloq.report", "yoloq.finalize", "yoloq.cli")
    for m, deps in _graph().items():
        if m.startswith("yoloq.backends"):
            bad = [d for d in deps if d.startswith(later) and d != "yoloq.records"]
            assert not bad, f"{m} imports {bad}"


def test_no_module_over_400_lines():
    big = {str(p.relative_to(REPO_ROOT)): n for p in PKG.rglob("*.py") if (n := len(p.read_text().splitlines())) > 400}
    assert not big, big


def test_no_private_names_imported_across_modules():
    bad = []
    for p in PKG.rglob("*.py"):
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("yoloq"):
                if any(part.startswith("_") and part != "__init__" for part in node.module.split(".")):
                    bad.append(f"{p.name}: {node.module}")
                bad += [f"{p.name}: {node.module}.{a.name}" for a in node.names
                        if a.name.startswith("_") and not a.name.startswith("__")]
    assert not bad, bad


def test_format_names_only_in_backends():
    from yoloq.backends.registry import available_formats

    names = "|".join(available_formats())
    pattern = re.compile(rf"""["']({names})["']""")
    allowed = {"backends", "provenance.py"}  # provenance lists distribution names (torch, onnxruntime), not formats
    hits = [f"{p.relative_to(REPO_ROOT)}:{i}" for p in PKG.rglob("*.py") if not allowed & set(p.parts)
            for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert not hits, hits
