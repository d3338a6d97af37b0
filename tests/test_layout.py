"""The package's import graph (docs/design.md §1): no cycles, and every import points down the
layers constants -> data, ops -> models -> engine (and console) -> cli_options -> cli. Read from the
source with ast (every import statement, also those inside functions), so a lazy import cannot hide
a cycle."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "walnet"

#: Layer of each top-level part of the package; a module may import only from lower layers or
#: its own part.
LAYERS = {"constants": 0, "files": 0, "_version": 0, "data": 1, "ops": 1, "models": 2, "engine": 3, "console": 3,
          "cli_options": 4, "cli": 5, "__main__": 6, "__init__": 6}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, name: str, modules: set[str]) -> set[str]:
    """The walnet modules that `path` imports (a `from package import submodule` counts as the
    submodule)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            submodules = {f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in modules}
            found |= submodules
            if len(submodules) < len(node.names):  # names defined in `base` itself
                found.add(base)
    return {m for m in found if m in modules and m != name}


def _graph() -> dict[str, set[str]]:
    paths = {_module_name(p): p for p in ROOT.rglob("*.py")}
    modules = set(paths) | {"walnet._C"}  # the compiled extension: a module without a .py file
    return {name: _imports(path, name, modules) for name, path in paths.items()}


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_graph_is_read():
    graph = _graph()
    assert "walnet.engine.trainer" in graph and "walnet.ops._library" in graph["walnet.ops.pgm"]
    assert "walnet.constants" in graph["walnet.ops.reference"]


def test_no_import_cycle():
    graph = _graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycle = path[path.index(nxt):] + [nxt] if nxt in path else [node, nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])


def test_imports_point_down_the_layers():
    bad = []
    for module, imported in _graph().items():
        if module == "walnet":
            continue
        for target in imported:
            if target == "walnet":
                bad.append(f"{module} imports the top-level package walnet")
            elif target == "walnet._C" or _part(target) == _part(module):
                continue
            elif LAYERS[_part(target)] >= LAYERS[_part(module)]:
                bad.append(f"{module} ({_part(module)}) imports {target} ({_part(target)})")
    assert not bad, "\n".join(sorted(bad))
