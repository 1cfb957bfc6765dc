"""The package layout: layers import only downwards, no import circles, modules stay small.

Read from the source with ``ast`` (no imports), so it also sees imports inside functions.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

#: Lower layers first; a module may import its own layer and those before it. Prediction
#: sits below training because training predicts its "samples to predict" every epoch.
LAYERS = ("errors", "atomic", "config", "io", "data", "nets", "predict", "training", "cells",
          "evaluate", "export", "cli")
#: The front ends share the top layer: the console scripts (cli) and the napari plugin. Each
#: may import every library layer, none imports another front end.
FRONT_ENDS = ("cli", "napari")
MAX_LINES = 500  # a module over this is split by concept


def _modules() -> dict[str, Path]:
    found = {}
    for path in (SRC / "unetsl").rglob("*.py"):
        name = ".".join(path.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__")
        found[name] = path
    return found


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """unetsl modules that ``path`` imports anywhere, except under ``if TYPE_CHECKING:``."""

    class Visitor(ast.NodeVisitor):
        def __init__(self):
            self.found: set[str] = set()

        def visit_If(self, node: ast.If) -> None:
            if getattr(node.test, "id", "") != "TYPE_CHECKING":
                self.generic_visit(node)

        def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
            if node.module and node.module.split(".")[0] == "unetsl":
                for alias in node.names:
                    candidate = f"{node.module}.{alias.name}"
                    self.found.add(candidate if candidate in modules else node.module)

        def visit_Import(self, node: ast.Import) -> None:
            self.found.update(a.name for a in node.names if a.name.split(".")[0] == "unetsl")

    visitor = Visitor()
    visitor.visit(ast.parse(path.read_text(encoding="utf-8")))
    return {m for m in visitor.found if m in modules}


def _layer(module: str) -> int:
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in FRONT_ENDS:
        return len(LAYERS) - 1
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else -1


def _front_end(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in FRONT_ENDS else None


MODULES = _modules()
GRAPH = {name: _imports(path, MODULES) - {name} for name, path in MODULES.items()}


def test_every_module_belongs_to_a_layer():
    loose = [m for m in MODULES if m != "unetsl" and _layer(m) < 0]
    assert not loose, f"modules outside the layers {LAYERS}: {loose}"


def test_layers_import_only_downwards():
    upward = [f"{m} -> {d}" for m, deps in GRAPH.items() for d in deps
              if _layer(d) > _layer(m) and not m.endswith(".__init__")]
    assert not upward, "imports against the layer order:\n" + "\n".join(sorted(upward))


def test_front_ends_do_not_import_each_other():
    crossing = [f"{m} -> {d}" for m, deps in GRAPH.items() for d in deps
                if _front_end(d) is not None and _front_end(m) != _front_end(d)]
    assert not crossing, "a front end (or the library) imports a front end:\n" + "\n".join(
        sorted(crossing))


def test_no_import_circles():
    # Tarjan's strongly connected components: any component of 2+ modules is a circle
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for dep in GRAPH[node]:
            if dep not in index:
                visit(dep)
                low[node] = min(low[node], low[dep])
            elif dep in stack:
                low[node] = min(low[node], index[dep])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for node in GRAPH:
        if node not in index:
            visit(node)
    assert not circles, f"import circles: {circles}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_modules_stay_small(module):
    lines = MODULES[module].read_text(encoding="utf-8").count("\n")
    assert lines <= MAX_LINES, f"{module} has {lines} lines; split it by concept"


def test_the_layer_test_sees_a_circle_and_an_upward_import(tmp_path):
    """The checks above can fail: a planted circle and an upward import are found."""
    (tmp_path / "unetsl" / "config").mkdir(parents=True)
    (tmp_path / "unetsl" / "io").mkdir()
    (tmp_path / "unetsl" / "config" / "a.py").write_text("from unetsl.io.b import x\n")
    (tmp_path / "unetsl" / "io" / "b.py").write_text(
        "from unetsl.config.a import y\nif TYPE_CHECKING:\n    from unetsl.cli import z\n")
    modules = {"unetsl.config.a": tmp_path / "unetsl/config/a.py",
               "unetsl.io.b": tmp_path / "unetsl/io/b.py"}
    graph = {m: _imports(p, modules) for m, p in modules.items()}
    assert graph == {"unetsl.config.a": {"unetsl.io.b"}, "unetsl.io.b": {"unetsl.config.a"}}
    assert _layer("unetsl.io.b") > _layer("unetsl.config.a")
    assert _layer("unetsl.napari.x") == _layer("unetsl.cli.y") > _layer("unetsl.export.z")
    assert _front_end("unetsl.napari.x") == "napari" and _front_end("unetsl.cells.y") is None
