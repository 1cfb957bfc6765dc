"""Inspect widget: the patches and per-head targets inspect_data_sources draws, as layers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from unetsl.data.synthetic import write_dataset

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture
def cerberus_project(tmp_path) -> Path:
    """examples/cerberus.json with one synthetic movie and its bit-packed labels attached."""
    write_dataset(tmp_path, "2d", n_images=1, shape=(3, 80, 80), seed=4, distance=False,
                  cerberus=True)
    config = json.loads((EXAMPLES / "cerberus.json").read_text())
    config["data sources"] = [
        {"source type": "paired directories", "input folders": ["images"],
         "label folders": ["labels-packed"], "labeller": "linear labels"}]
    (tmp_path / "cerberus.json").write_text(json.dumps(config))
    return tmp_path / "cerberus.json"


def test_layers_hold_the_patches_and_head_targets_training_sees(viewer, cerberus_project):
    from unetsl.config.model_config import Config
    from unetsl.data.inspect import build_pages, panels
    from unetsl.napari.inspect_widget import InspectWidget
    from unetsl.training.setup import training_shapes

    widget = InspectWidget(viewer)
    widget.synchronous = True
    widget.config_file.value = cerberus_project
    widget.patches.value = 2
    widget.run()
    assert widget.status.value == "7 layers of 2 patches", widget.status.value
    assert "head membrane-scale: bits 0..1" in widget.summary.value

    cfg = Config.load(cerberus_project)
    patch_shape, n_labels = training_shapes(cfg)
    assert n_labels == 1  # a cerberus config's sources give the raw label
    page = build_pages(cfg, patch_shape=patch_shape, n_labels=n_labels, seed=0)[0]
    expected = [panels(page, patch) for patch in page.patches(0, 2)]
    names = [layer.name for layer in viewer.layers]
    assert names[:2] == ["source 0 input", "source 0 label (raw bits)"]
    assert type(viewer.layers[1]).__name__ == "Labels"
    for k, layer in enumerate(viewer.layers):
        np.testing.assert_array_equal(layer.data, np.stack([row[k].image for row in expected]))
    half = viewer.layers["source 0 membrane-scale 0, 1/2 res, max pool"]
    assert half.data.shape[2:] == (patch_shape[2] // 2, patch_shape[3] // 2)
    assert tuple(half.scale[2:]) == (2.0, 2.0) and tuple(half.translate[2:]) == (0.5, 0.5)
    assert tuple(viewer.layers["source 0 input"].scale) == (1.0, 1.0, 1.0, 1.0)


def test_a_missing_source_is_one_line(viewer, cerberus_project):
    from unetsl.napari.inspect_widget import InspectWidget

    widget = InspectWidget(viewer)
    widget.config_file.value = cerberus_project
    widget.source.value = 3
    widget.run()
    assert widget.status.value == f"data source 3: {cerberus_project} has 1 data source(s)"
    assert len(viewer.layers) == 0
