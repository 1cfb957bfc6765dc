"""The network behind the tiles: a Keras model (or any function) applied to a batch of tiles,
with outputs resampled to the input grid."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from unetsl.errors import UnetslError

log = logging.getLogger("unetsl")


class TileModel(Protocol):
    """What the tiling engine needs of a network (a Keras model through ``KerasTiles``,
    or any function, e.g. in tests)."""

    patch: tuple[int, int, int, int]  # (c, z, y, x)
    channels: list[int]  # output channels of each selected output

    def __call__(self, tiles: np.ndarray) -> list[np.ndarray]:
        """tiles (b, c, z, y, x) float32 -> one (b, n, z, y, x) float32 per output."""


class KerasTiles:
    """A Keras model as a ``TileModel``: channels-last at the boundary, selected outputs.

    With a ``tf.distribute`` strategy of several replicas (the model built in its scope),
    batches go through ``model.predict`` so that they are split over the devices;
    otherwise ``predict_on_batch`` (least overhead per batch).

    patch, output_names, output_shapes : the model's (c, z, y, x) patch, output names and
        (batch, z, y, x, n) output shapes when already known (``predict.model_info.ModelInfo``);
        read from the model otherwise.
    """

    def __init__(self, model, output_indices: Sequence[int] = (-1,), distributed: bool = False,
                 *, patch: Sequence[int] | None = None,
                 output_names: Sequence[str] | None = None,
                 output_shapes: Sequence[Sequence[Any]] | None = None):
        from unetsl.nets.shapes import model_patch_shape

        self.model = model
        self.patch = tuple(patch) if patch is not None else model_patch_shape(model)
        self.output_names = (list(output_names) if output_names is not None
                             else _output_names(model))
        shapes = (list(output_shapes) if output_shapes is not None
                  else [tuple(t.shape) for t in model.outputs])
        n_outputs = len(shapes)
        self.indices = []
        for index in output_indices:
            if not -n_outputs <= index < n_outputs:
                raise UnetslError(f'"output index" {index} is out of range: the model has '
                                  f"{n_outputs} output(s)")
            self.indices.append(index % n_outputs)
        self.channels = []
        self.upsample = []  # the original's "upsample" shaper for low-resolution heads
        for index in self.indices:
            shape = tuple(shapes[index])
            factors = None
            if len(shape) == 5 and all(s and p % s == 0 for s, p in
                                       zip(shape[1:4], self.patch[1:])):
                factors = tuple(p // s for s, p in zip(shape[1:4], self.patch[1:]))
            if factors is None:
                raise UnetslError(
                    f"model output {index} ({self._name(index)}) has shape {shape}; "
                    f"only outputs the size of the input patch {self.patch[1:]} (or a whole "
                    "fraction of it) can be tiled"
                )
            if any(f > 1 for f in factors) and "crop" in self._name(index):
                # the original's "crop" shaper: such a head sees only the tile centre
                raise UnetslError(
                    f"model output {index} ({self._name(index)}) is a crop head "
                    f"below full resolution {shape[1:4]}; only its upsampled (non-crop) or "
                    "full-resolution heads can be tiled"
                )
            self.upsample.append(factors)
            self.channels.append(int(shape[-1]))
        self.distributed = distributed

    def _name(self, index: int) -> str:
        try:
            return str(self.output_names[index])
        except IndexError:
            return f"output {index}"

    def __call__(self, tiles: np.ndarray) -> list[np.ndarray]:
        from unetsl.nets.shapes import from_model_layout, to_model_layout

        x = np.ascontiguousarray(to_model_layout(tiles), dtype=np.float32)
        n = len(x)
        if self.distributed:
            # every replica must get at least one tile: pad a short batch with copies
            replicas = self.model.distribute_strategy.num_replicas_in_sync
            short = -n % replicas
            if short:
                x = np.concatenate([x, np.repeat(x[-1:], short, axis=0)])
            out = self.model.predict(x, batch_size=len(x), verbose=0)
        else:
            out = self.model.predict_on_batch(x)
        if isinstance(out, dict):
            out = [out[name] for name in self.output_names]
        if not isinstance(out, (list, tuple)):
            out = [out]
        result = []
        for i, factors in zip(self.indices, self.upsample):
            y = from_model_layout(np.asarray(out[i], dtype=np.float32)[:n])
            for axis, f in enumerate(factors):
                if f > 1:  # nearest neighbour, as the original's "upsample" shaper
                    y = np.repeat(y, f, axis=axis + 2)
            result.append(np.ascontiguousarray(y))
        return result


def _output_names(model) -> list[str]:
    try:
        return [str(name) for name in model.output_names]
    except AttributeError:  # any function with .outputs (tests)
        return []



Sink = Any  # anything with write(t, (zs, ys, xs), block (n, z, y, x) float32)
