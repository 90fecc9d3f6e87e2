"""The package's rooms: no module of qnnrun imports, directly or through others, a module that imports it."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "qnnrun"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Module -> the qnnrun modules it imports anywhere in its body (deferred imports included)."""
    modules = {_module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = package.split(".")[:len(package.split(".")) - node.level + 1] if node.level else []
                target = ".".join([*base, *([node.module] if node.module else [])])
                candidates = [target, *(f"{target}.{alias.name}" for alias in node.names)]
            elif isinstance(node, ast.Import):
                candidates = [alias.name for alias in node.names]
            else:
                continue
            graph[name] |= {c for c in candidates if c in modules and c != name}
    return graph


def test_no_import_circle_among_qnnruns_modules() -> None:
    graph = import_graph()
    assert "qnnrun.engine" in graph["qnnrun.cli"]  # the graph sees deferred imports inside functions

    def reaches(start: str, goal: str) -> list[str] | None:
        """A path of imports from ``start`` to ``goal``, or None."""
        seen, frontier = {start}, [[start]]
        while frontier:
            path = frontier.pop()
            for nxt in sorted(graph[path[-1]]):
                if nxt == goal:
                    return [*path, nxt]
                if nxt not in seen:
                    seen.add(nxt)
                    frontier.append([*path, nxt])
        return None

    circles = [reaches(b, a) for a in graph for b in graph[a] if reaches(b, a)]
    assert circles == [], " ; ".join(" -> ".join(c) for c in circles if c)


def test_export_asks_quantizers_and_imports_no_method_module() -> None:
    """Quantizers answer for their own integer forms (qnnrun.quant), so export depends on no method."""
    graph = import_graph()
    export = {name: imports for name, imports in graph.items() if name.startswith("qnnrun.export")}
    assert "qnnrun.quant.grids" in export["qnnrun.export.integer"]  # the graph sees export's imports
    methods = {name: sorted(i for i in imports if i.startswith("qnnrun.methods")) for name, imports in export.items()}
    assert all(not found for found in methods.values()), methods


def test_every_quantizer_class_lives_in_quant() -> None:
    """Every quantizer class (a class deriving from one named ``*Quantizer``) is defined in qnnrun.quant:
    methods configure quantizers, they do not define them."""
    homes: dict[str, str] = {}
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and any(
                    ast.unparse(base).split(".")[-1].endswith("Quantizer") for base in node.bases):
                homes[node.name] = _module_name(path)
    assert {"LsqQuantizer", "PactQuantizer", "KQuantileQuantizer", "TernaryQuantizer"} <= set(homes)
    assert all(module.startswith("qnnrun.quant.") for module in homes.values()), homes
