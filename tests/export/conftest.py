"""Fixtures of the export tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """A saved 2-channel sigmoid U-Net on 16x16 patches: the smallest model worth exporting."""
    from unetsl.nets.model_files import save_model
    from unetsl.nets.unet import build_unet

    path = tmp_path_factory.mktemp("model") / "tiny.h5"
    save_model(build_unet((1, 1, 16, 16), n_labels=2, depth=1, n_filters=2,
                          activation="sigmoid", pooling=(1, 2, 2)), path)
    return path
