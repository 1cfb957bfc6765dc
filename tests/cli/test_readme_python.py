"""The README's Python snippets run as they are written (issue 28 item 6): each indented block
that starts with an import is executed with only the inputs its text names but does not make
(``image``, ``membrane_probability``, the model file), and what it returns is checked."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from tests.tiny_models import save_tiny_unet

README = Path(__file__).resolve().parents[2] / "README.md"


def _python_blocks() -> dict[int, str]:
    """{first line number: code} of every indented block that starts with an import."""
    blocks: dict[int, str] = {}
    start, lines = 0, []
    for number, line in enumerate(README.read_text(encoding="utf-8").splitlines() + [""], 1):
        if lines and line.startswith("    "):
            lines.append(line[4:])
            continue
        if lines:
            blocks[start] = "\n".join(lines) + "\n"
            lines = []
        if re.match(r"    (from unetsl|import unetsl)", line):
            start, lines = number, [line[4:]]
    return blocks


BLOCKS = _python_blocks()


def _block(*needles: str) -> str:
    found = [code for code in BLOCKS.values() if all(n in code for n in needles)]
    assert len(found) == 1, f"README: expected one Python block with {needles}, found {found}"
    return found[0]


def test_every_python_block_is_run_here():
    """A new snippet must get a test below (and its inputs), not be skipped silently."""
    run = [_block("from unetsl.predict import predict"), _block("from unetsl.cells import")]
    assert sorted(run) == sorted(BLOCKS.values())


def test_prediction_snippet(tmp_path, monkeypatch):
    save_tiny_unet(tmp_path / "model_name-best.h5")
    monkeypatch.chdir(tmp_path)
    image = np.random.default_rng(0).integers(0, 1000, (2, 1, 1, 40, 36)).astype(np.uint16)
    names = {"image": image}
    exec(_block("from unetsl.predict import predict"), names)  # noqa: S102 - our own README
    assert names["probabilities"].shape == (2, 2, 1, 40, 36)
    assert names["probabilities"].dtype == np.float32
    assert names["labels"].shape == (2, 1, 1, 40, 36)
    expected = (names["probabilities"][:, 0] > 0.5) + 2 * (names["probabilities"][:, 1] > 0.5)
    np.testing.assert_array_equal(names["labels"][:, 0], expected)


def test_cells_snippet():
    from unetsl.data import synthetic

    sample = synthetic.epithelium_time_series((3, 64, 64), seed=3)
    membrane = (sample.labels & 1).astype(np.float32)[:, None]  # (t, z, y, x)
    names = {"membrane_probability": membrane}
    exec(_block("from unetsl.cells import"), names)  # noqa: S102 - our own README
    labels, table = names["labels"], names["table"]
    assert labels.shape == membrane.shape and labels.max() > 10
    assert len(table["id"]) == sum(len(np.unique(f[f > 0])) for f in labels)
    first = table["t"] == 0
    assert table["area"][first].sum() == pytest.approx((labels[0] > 0).sum() * 0.5 * 0.5)


def test_every_python_name_the_readme_gives_exists():
    """`unetsl.x.y` names in the text import (the README once named a module that did not
    exist); loss names are the config's "loss function" values."""
    import importlib

    from unetsl.nets.losses import LOSSES

    names = set(re.findall(r"`(unetsl(?:\.\w+)+)", README.read_text(encoding="utf-8")))
    assert len(names) > 10
    for name in sorted(names - set(LOSSES)):
        parts = name.split(".")
        for cut in range(len(parts), 0, -1):
            try:
                found = importlib.import_module(".".join(parts[:cut]))
                break
            except ModuleNotFoundError:
                continue
        for attribute in parts[cut:]:
            assert hasattr(found, attribute), f"README names {name}: no {attribute}"
            found = getattr(found, attribute)
