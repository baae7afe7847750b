"""The package's shape: data flows one way (no two modules import each other, directly or
around a longer loop, counting imports inside functions too), the pipeline's layers import only
downwards, and every module says what it is for."""

from __future__ import annotations

import ast
from pathlib import Path

import defectdet

ROOT = Path(defectdet.__file__).parent
#: Pipeline order: a layer may import its own and earlier layers only.
LAYERS = ["errors", "io", "config", "data", "console", "analysis", "model", "engine", "cli"]


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports() -> dict[str, set[str]]:
    """Module -> the defectdet modules it imports (anywhere in the file)."""
    modules = {module_name(p): p for p in ROOT.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            found |= {t for t in targets if t in modules and t != name}
        graph[name] = found
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def _is_package_to_child(a: str, b: str) -> bool:
    return b.startswith(a + ".")


def test_no_import_cycles() -> None:
    graph = imports()
    # A package's __init__ re-exporting its children is not a loop of the pipeline.
    flows = {a: {b for b in bs if not _is_package_to_child(a, b)} for a, bs in graph.items()}
    assert cycles(flows) == []


def test_layers_import_only_downwards() -> None:
    def layer(module: str) -> int:
        top = module.split(".")[1] if "." in module else ""
        return LAYERS.index(top) if top in LAYERS else -1

    wrong = [
        f"{a} imports {b}"
        for a, bs in imports().items()
        for b in bs
        if layer(a) >= 0 and layer(b) > layer(a)
    ]
    assert wrong == []


def test_the_cycle_finder_finds_cycles() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]


def test_every_module_has_a_docstring() -> None:
    missing = [
        module_name(p)
        for p in ROOT.rglob("*.py")
        if ast.get_docstring(ast.parse(p.read_text(encoding="utf-8"))) is None
    ]
    assert missing == []
