"""The package layout: layers import only downwards, no import circles, modules stay small.

Read from the source with ``ast`` (no imports), so it also sees imports inside functions.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

#: Lower layers first; a module may import its own layer and those before it. Prediction
#: sits below training because training predicts its "samples to predict" every epoch.
LAYERS = ("errors", "atomic", "quiet_tensorflow", "config", "io", "data", "nets", "predict",
          "training", "cells", "evaluate", "export", "cli")
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


# --- imports inside functions -----------------------------------------------------------
#: Libraries that may be imported inside a function: heavy to import (deep learning, Dask
#: and what pulls it in, GUI, plotting, bioimage.io) or installed only with an extra. A
#: command that does not need them must not pay for them (``create_model --help``, napari's
#: process, which must never load TensorFlow).
LAZY_LIBRARIES = {"tensorflow", "keras", "jax", "torch", "dask", "distributed", "dask_jobqueue",
                  "ome_zarr", "napari", "qtpy", "magicgui", "superqt", "PyQt5", "PyQt6",
                  "matplotlib", "bioimageio", "pydantic", "loguru", "trimesh", "roifile",
                  "laptrack", "meshio", "xarray"}


def _targets(node: ast.Import | ast.ImportFrom, modules: dict[str, Path]) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    base = node.module or ""
    return [base] + [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in modules]


def _top_level_targets(path: Path, modules: dict[str, Path]) -> list[str]:
    found = []
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        blocks = [node] if isinstance(node, (ast.Import, ast.ImportFrom)) else (
            node.body if isinstance(node, ast.Try) else [])
        for block in blocks:
            if isinstance(block, (ast.Import, ast.ImportFrom)):
                found += _targets(block, modules)
    return found


def _lazy(module: str, modules: dict[str, Path], seen: dict[str, bool]) -> bool:
    """Importing ``module`` (its packages first) loads a LAZY_LIBRARIES library."""
    if module.split(".")[0] != "unetsl":
        return module.split(".")[0] in LAZY_LIBRARIES
    if module in seen:
        return seen[module]
    seen[module] = False  # a circle adds nothing
    parts = module.split(".")
    packages = [".".join(parts[:k]) for k in range(1, len(parts) + 1)]
    seen[module] = any(_lazy(t, modules, seen) for p in packages if p in modules
                       for t in _top_level_targets(modules[p], modules))
    return seen[module]


def _function_imports(path: Path) -> list[tuple[ast.Import | ast.ImportFrom, bool]]:
    """Imports inside functions, and whether a try block guards them (optional packages)."""
    found = []

    def walk(node: ast.AST, in_function: bool, in_try: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)) and in_function:
                found.append((child, in_try))
            walk(child, in_function or isinstance(child, (ast.FunctionDef,
                                                          ast.AsyncFunctionDef)),
                 in_try or isinstance(child, ast.Try))

    walk(ast.parse(path.read_text(encoding="utf-8")), False, False)
    return found


def _needless_function_imports(modules: dict[str, Path]) -> list[str]:
    """Imports inside functions that keep nothing heavy out: of a light module, or of
    anything into a module that loads a heavy library already."""
    seen: dict[str, bool] = {}
    needless = []
    for name, path in sorted(modules.items()):
        for node, guarded in _function_imports(path):
            targets = _targets(node, modules)
            if guarded:
                continue
            if targets[0].split(".")[0] != "unetsl":
                keeps_out = targets[0].split(".")[0] in LAZY_LIBRARIES
            else:
                keeps_out = (any(_lazy(t, modules, seen) for t in targets)
                             and not _lazy(name, modules, seen))
            if not keeps_out:
                needless.append(f"{path.name}:{node.lineno} {targets[0]}")
    return needless


def test_imports_inside_functions_only_keep_heavy_libraries_out():
    needless = _needless_function_imports(MODULES)
    assert not needless, ("import these at the top (they keep no heavy library out of a "
                          f"command): {needless}")


def test_the_import_rule_sees_a_needless_and_a_needed_lazy_import(tmp_path):
    (tmp_path / "unetsl").mkdir()
    files = {"unetsl.light": "import json\n",
             "unetsl.heavy": "import keras\n",
             "unetsl.user": "def f():\n    from unetsl import heavy\n"
                            "def g():\n    from unetsl import light\n    import json\n"
                            "def h():\n    try:\n        import scipy\n    except ImportError:\n"
                            "        pass\n"}
    modules = {}
    for name, text in files.items():
        modules[name] = tmp_path / "unetsl" / f"{name.split('.')[1]}.py"
        modules[name].write_text(text)
    assert _needless_function_imports(modules) == ["user.py:4 unetsl", "user.py:5 json"]


LAYOUT_TEST = re.compile(r"""["']unet["']\s+in\s+\w+\s+and\s+["']heads["']\s+in""")


def _layout_tests(root: Path) -> list[str]:
    """Modules that recognise a config layout themselves instead of through the registry."""
    owner = Path("unetsl/config/cerberus_layout.py")
    return sorted(str(p.relative_to(root)) for p in root.rglob("*.py")
                  if p.relative_to(root) != owner and LAYOUT_TEST.search(p.read_text()))


def test_config_layouts_are_recognised_in_one_place():
    """Readers of a config file go through Config.load or layout_settings (issue 26)."""
    assert _layout_tests(SRC) == []


def test_the_layout_rule_sees_a_reader_of_its_own(tmp_path):
    (tmp_path / "unetsl" / "config").mkdir(parents=True)
    (tmp_path / "unetsl" / "config" / "cerberus_layout.py").write_text(
        'ok = "unet" in data and "heads" in data\n')
    (tmp_path / "unetsl" / "reader.py").write_text('if "unet" in data and "heads" in data:\n')
    assert _layout_tests(tmp_path) == ["unetsl/reader.py"]
