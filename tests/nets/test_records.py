"""How a model's inputs were normalised, read from the config beside it in either layout."""

from __future__ import annotations

import json

from unetsl.config.model_config import layout_settings
from unetsl.data.normalize import InputNormalization
from unetsl.nets.records import file_normalization

TRAINING = {"normalization percentiles": [1, 99.5], "normalize samples": True}


def test_a_plain_config_beside_the_model(tmp_path):
    (tmp_path / "net.json").write_text(json.dumps({"n labels": 2, **TRAINING}))
    found = file_normalization(tmp_path / "net-best.h5")  # no file: the config speaks
    assert found == InputNormalization((1.0, 99.5), True)


def test_a_cerberus_config_is_read_through_its_layout(tmp_path):
    data = {"unet": {"depth": 3}, "heads": [{"name": "membrane"}], "training": TRAINING}
    (tmp_path / "net.json").write_text(json.dumps(data))
    assert layout_settings(data) == {"depth": 3, **TRAINING}
    assert file_normalization(tmp_path / "net-latest.h5") == InputNormalization((1.0, 99.5),
                                                                                 True)


def test_nothing_beside_the_model_means_raw_input(tmp_path):
    assert file_normalization(tmp_path / "net.h5") is None
    (tmp_path / "net.json").write_text("[1, 2]")
    assert file_normalization(tmp_path / "net.h5") is None
    assert layout_settings([1, 2]) is None
