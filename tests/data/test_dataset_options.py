"""DatasetOptions: the config's sampling keys read once, per source, for the dataset."""

from __future__ import annotations

import numpy as np
import pytest

from unetsl.config.model_config import Config
from unetsl.data.augment import AugmentSettings
from unetsl.data.dataset import make_datasets
from unetsl.data.dataset_options import DatasetOptions
from unetsl.data.synthetic import write_dataset
from unetsl.errors import UnetslError


def paired(**extra):
    return {"source type": "paired directories", "input folders": ["images"],
            "label folders": ["labels"], "labeller": "multiclass labels", **extra}


def test_source_settings_win_over_the_config(tmp_path):
    cfg = Config(path=tmp_path / "m.json")
    cfg.update({"stride": [0, 1, 16, 16], "sampling": "grid", "patch jitter": [0, 2, 2],
                "normalize samples": True, "normalization percentiles": [1, 99],
                "augment flips": True, "validation fraction": 0.25,
                "validation split": "files", "seed": 7,
                "data sources": [paired(), paired(stride=[0, 1, 8, 8], sampling="random",
                                                  **{"normalize samples": False,
                                                     "normalization percentiles": None,
                                                     "augment flips": False})]})
    options = DatasetOptions.from_config(cfg)
    first, second = options.sources
    assert (first.stride, first.sampling, first.jitter) == ((1, 16, 16), "grid", (0, 2, 2))
    assert first.normalization.percentiles == (1.0, 99.0) and first.normalization.zscore_tiles
    assert first.augment == AugmentSettings(flips=True)
    assert (second.stride, second.sampling) == ((1, 8, 8), "random")
    assert second.normalization.percentiles is None and not second.normalization.zscore_tiles
    assert second.augment == AugmentSettings()
    assert (options.validation_fraction, options.validation_split, options.seed) == (
        0.25, "files", 7)
    assert options.of(second.source) is second
    with pytest.raises(AttributeError):  # frozen: read once, then passed on as it is
        options.seed = 1  # type: ignore[misc]


def test_no_sources_is_one_line_error(tmp_path):
    cfg = Config(path=tmp_path / "m.json")
    cfg["data sources"] = []
    with pytest.raises(UnetslError, match="data sources"):
        DatasetOptions.from_config(cfg)


def test_options_give_the_same_batches_and_the_config_is_refused(tmp_path):
    write_dataset(tmp_path, kind="2d", n_images=1, shape=(3, 64, 64))
    cfg = Config(path=tmp_path / "m.json")
    cfg.update({"data sources": [paired()], "validation fraction": 0.0,
                "stride": [0, 3, 32, 32], "augment flips": True, "seed": 3})
    shapes = dict(patch_shape=(1, 3, 32, 32), n_labels=2, output_names=["output"],
                  batch_size=2)
    from_options, _ = make_datasets(DatasetOptions.from_config(cfg), **shapes)
    again, _ = make_datasets(DatasetOptions.from_config(cfg), **shapes)
    assert len(from_options) == len(again) == 2
    for i in range(len(from_options)):
        for a, b in zip(from_options[i], again[i]):
            np.testing.assert_array_equal(a, b)
    with pytest.raises(TypeError, match="DatasetOptions"):  # the dataset never reads a config
        make_datasets(cfg, **shapes)
