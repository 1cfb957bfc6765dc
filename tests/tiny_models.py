"""Tiny real models that tests train and predict with on the CPU."""

from __future__ import annotations

from pathlib import Path


def save_tiny_unet(path: Path, patch: tuple[int, ...] = (1, 1, 16, 16), seed: int = 3) -> Path:
    """A tiny seeded sigmoid U-Net (2 labels, depth 2, 2 filters) saved at ``path``: the model
    file that predict tests run (TensorFlow is imported only when called)."""
    import keras

    from unetsl.nets.model_files import save_model
    from unetsl.nets.unet import build_unet

    keras.utils.set_random_seed(seed)
    save_model(build_unet(patch, n_labels=2, depth=2, n_filters=2, spatial_dropout_rate=0.0),
               path)
    return path
