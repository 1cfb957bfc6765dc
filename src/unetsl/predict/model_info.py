"""What a prediction needs to know about a Keras model, read once: ``ModelInfo.of(model)``.

The patch it takes, its outputs (names, shapes, channels, final activations), its receptive
reach and the input normalisation recorded with it. A prediction (``PredictionJob.run``,
``engine.predict_outputs``, ``in_memory.predict_array``) reads these once and passes the
record down instead of asking the model again at every step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from unetsl.data.normalize import InputNormalization, choose_normalization, model_normalization
from unetsl.errors import UnetslError
from unetsl.predict.adapter import KerasTiles
from unetsl.predict.reach import Reach, receptive_reach

__all__ = ["ModelInfo"]


@dataclass(frozen=True)
class ModelInfo:
    """One model's shapes and settings for prediction.

    patch : (c, z, y, x) input patch; output_names : one per output, in order;
    output_shapes : (batch, z, y, x, n) of each output; activations : the final activation
    of each output ("sigmoid", "softmax", ...); reach : receptive reach and pooling factor;
    normalization : the input normalisation recorded with the model (None: the original's).
    """

    patch: tuple[int, int, int, int]
    output_names: tuple[str, ...]
    output_shapes: tuple[tuple[Any, ...], ...]
    activations: tuple[str, ...]
    reach: Reach
    normalization: InputNormalization | None = None

    @classmethod
    def of(cls, model: Any, *, reach: Reach | None = None) -> ModelInfo:
        """Read everything from ``model`` (``reach``: one already known)."""
        from unetsl.nets.shapes import model_patch_shape, output_activations

        return cls(
            patch=model_patch_shape(model),
            output_names=tuple(str(name) for name in model.output_names),
            output_shapes=tuple(tuple(t.shape) for t in model.outputs),
            activations=tuple(output_activations(model)),
            reach=reach if reach is not None else receptive_reach(model),
            normalization=model_normalization(model),
        )

    @property
    def input_channels(self) -> int:
        return self.patch[0]

    @property
    def n_outputs(self) -> int:
        return len(self.output_names)

    @property
    def channels(self) -> tuple[int, ...]:
        """Channels of each output."""
        return tuple(int(shape[-1]) for shape in self.output_shapes)

    def output_index(self, index: int) -> int:
        """``index`` (negative from the end) as 0..n-1; UnetslError when out of range."""
        n = self.n_outputs
        if not -n <= index < n:
            raise UnetslError(f'"output index" {index} is out of range: the model has {n} '
                              "output(s)")
        return index % n

    def resized(self, model: Any) -> ModelInfo:
        """The record of ``model``, the same network rebuilt for another tile
        (``predict.tiling.model_for_tiles``): its patch and output shapes, the rest kept."""
        from unetsl.nets.shapes import model_patch_shape

        patch = model_patch_shape(model)
        if patch == self.patch:
            return self
        return replace(self, patch=patch,
                       output_shapes=tuple(tuple(t.shape) for t in model.outputs))

    def tiles(self, model: Any, output_indices: Sequence[int] = (-1,),
              distributed: bool = False) -> KerasTiles:
        """``model`` (the network this record describes) as the tiling engine's network."""
        return KerasTiles(model, output_indices, distributed, patch=self.patch,
                          output_names=self.output_names, output_shapes=self.output_shapes)

    def input_normalization(self, normalization: InputNormalization | None = None,
                            normalize: bool | None = None) -> InputNormalization:
        """What a prediction applies: ``normalization`` if given, else the model's record,
        else raw input; ``normalize`` overrides the per-tile z-score
        (``data.normalize.resolve_normalization``)."""
        return choose_normalization(self.normalization, normalization, normalize)
