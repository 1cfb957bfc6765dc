"""Shared fixtures of the nets tests."""

from __future__ import annotations

import pytest

from unetsl.config.model_config import Config
from unetsl.data.synthetic import write_dataset


@pytest.fixture
def project(tmp_path) -> Config:
    """A tiny 2D training project (one synthetic image, a 2-filter U-Net, one epoch): for
    tests that train through the precision checks."""
    write_dataset(tmp_path, "2d", n_images=1, shape=(3, 32, 32), seed=2, distance=False)
    cfg = Config.new(tmp_path / "m.json")
    cfg.update({"input shape": [1, 1, 16, 16], "depth": 2, "n filters": 2, "n labels": 2,
                "pooling": [1, 2, 2], "stride": [0, 1, 16, 16], "batch size": 4, "epochs": 1,
                "seed": 5, "validation fraction": 0.25, "spatial dropout rate": 0.0,
                "data sources": [{"source type": "paired directories",
                                  "input folders": ["images"], "label folders": ["labels"],
                                  "labeller": "multiclass labels"}]})
    cfg.save()
    return cfg
