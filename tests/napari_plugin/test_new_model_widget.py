"""New model widget: a config with the common keys and its model, by create_model's path."""

from __future__ import annotations

import json

import pytest

from unetsl.napari.new_model_widget import config_values


def test_fields_become_config_keys():
    values = config_values("1, 16, 64, 64", 3, "categorical labels", 40, 5e-4,
                           "float32", 8, 4)
    assert values == {"input shape": [1, 16, 64, 64], "n labels": 3, "activation": "softmax",
                      "loss function": "keras.losses.categorical_crossentropy", "epochs": 40,
                      "initial learning rate": 5e-4, "precision": "float32", "n filters": 8,
                      "depth": 4, "pooling": [2, 2, 2]}
    assert config_values("1 3 64 64", 1, "linear labels", 1, 1e-3, "auto", 16, 3)[
        "pooling"] == [1, 2, 2]


def test_every_labeller_has_its_activation_and_loss():
    from unetsl.config.fields import LABELLER_NAMES, LABELLER_OUTPUTS
    from unetsl.nets.losses import LOSSES

    assert tuple(LABELLER_OUTPUTS) == LABELLER_NAMES
    assert all(loss in LOSSES for _, loss in LABELLER_OUTPUTS.values())


def test_create_writes_config_and_model_through_the_worker(viewer, tmp_path):
    from unetsl.napari.new_model_widget import NewModelWidget

    widget = NewModelWidget(viewer)
    widget.synchronous = True
    widget.config_file.value = tmp_path / "cells.json"
    widget.patch.value = "1, 3, 32, 32"
    widget.filters.value, widget.depth.value, widget.epochs.value = 4, 2, 7
    widget.run()
    assert widget.status.value.splitlines()[0] == ("wrote cells.json and cells.h5; choose "
                                                   "cells.json in Train"), widget.status.value
    assert "input:  (c, z, y, x) = (1, 3, 32, 32)" in widget.status.value
    saved = json.loads((tmp_path / "cells.json").read_text())
    assert saved["epochs"] == 7 and saved["n filters"] == 4 and saved["input shape"] == [
        1, 3, 32, 32]
    assert saved["normalization percentiles"] == [1, 99.8]  # create_model's new defaults
    assert (tmp_path / "cells.h5").stat().st_size > 0

    widget.run()  # again: the old config is backed up, as create_model does
    assert (tmp_path / "cells-json.bak").exists()


@pytest.mark.parametrize(("field", "value", "message"), [
    ("patch", "1, 64, 64", '"input shape" must be four positive integers c, z, y, x'),
    ("config_file", "model.txt", "give a file name ending in .json"),
])
def test_bad_fields_are_one_line_and_write_nothing(viewer, tmp_path, field, value, message):
    from unetsl.napari.new_model_widget import NewModelWidget

    widget = NewModelWidget(viewer)
    widget.synchronous = True
    widget.config_file.value = tmp_path / "m.json"
    getattr(widget, field).value = tmp_path / value if field == "config_file" else value
    widget.run()
    assert message in widget.status.value and "\n" not in widget.status.value
    assert list(tmp_path.iterdir()) == []
