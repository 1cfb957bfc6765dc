"""One predict_image run: its settings (the original's keys), loading, predicting, writing.

The settings are a flat key/value table, as in the original, so that -D and the editor
work on them the same way. ``PredictionJob.run`` reads the image lazily and writes each
output file block by block while the tiles are predicted (see ``unetsl.predict.engine``).
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from unetsl.atomic import check_writable
from unetsl.config.fields import PRECISIONS, unknown_key_hint
from unetsl.config.model_config import parse_overrides
from unetsl.data.normalize import InputNormalization, ScaledSource, image_scaling
from unetsl.errors import UnetslError
from unetsl.io.arrays import ArraySource, check_finite
from unetsl.io.lazy import open_image
from unetsl.io.omezarr import is_zarr_path, open_zarr
from unetsl.io.outputs import open_output, output_format, split_suffix, with_suffix
from unetsl.io.tiff import match_channels, read_image
from unetsl.predict.augment import AveragedViews
from unetsl.predict.dask_blocks import predict_to_sinks_dask
from unetsl.predict.dask_cluster import dask_client
from unetsl.predict.engine import predict_to_sinks
from unetsl.predict.model_info import ModelInfo
from unetsl.predict.reduce import label_dtype, reduce, reduction_for_activation, reduction_name
from unetsl.predict.tiling import model_for_tiles

if TYPE_CHECKING:
    from unetsl.nets.precision import PrecisionChoice

log = logging.getLogger("unetsl")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _reduction_ok(v: Any) -> bool:
    if v is None or (_is_int(v) and v in (0, 1, 2)):
        return True
    return isinstance(v, dict) and all(_is_int(x) and x in (0, 1, 2) for x in v.values())


SETTING_CHECKS = {
    "model file": (lambda v: isinstance(v, str) and v != "", "a file name"),
    "image to predict": (lambda v: isinstance(v, str) and v != "", "a file name"),
    "output image": (lambda v: isinstance(v, str) and v != "", "a file name"),
    "reduction type": (_reduction_ok, "0 (categorical), 1 (multiclass), 2 (linear), null (from "
                       "the output activation) or {output name: 0|1|2}"),
    "output index": (lambda v: _is_int(v) or v == "all", 'an integer (-1 = last) or "all"'),
    "normalize samples": (lambda v: isinstance(v, bool), "true or false"),
    "normalization percentiles": (
        lambda v: v is None or (isinstance(v, list) and len(v) == 2
                                and all(isinstance(p, (int, float)) and not isinstance(p, bool)
                                        for p in v) and 0 <= v[0] < v[1] <= 100),
        "null or [low, high] with 0 <= low < high <= 100"),
    "batch size": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "overlap": (lambda v: v is None or (isinstance(v, list) and len(v) == 3
                                        and all(_is_int(i) and i >= 0 for i in v)),
                "null (from the receptive field) or 3 integers >= 0 (z, y, x)"),
    "precision": (lambda v: v in PRECISIONS, " or ".join(f'"{p}"' for p in PRECISIONS)),
    "tile shape": (lambda v: v is None or (isinstance(v, list) and len(v) == 3
                                           and all(_is_int(i) and i >= 1 for i in v)),
                   "null (chosen for the image and batch size) or 3 integers >= 1 (z, y, x)"),
    "test time augmentation": (lambda v: isinstance(v, bool), "true or false"),
}


def default_output_path(model_path: Path, image_path: Path) -> Path:
    """pred-<model name without suffix>-<image file name>, in the working folder: a .tif, or
    an .ome.zarr for a zarr image."""
    model_path, image_path = Path(model_path), Path(image_path)
    base = model_path.name[: -len(model_path.suffix)] if model_path.suffix else model_path.name
    image = image_path.name.rstrip("/")
    stem, suffix = split_suffix(image_path)
    if output_format(image_path) == "zarr":
        image = stem + ".ome.zarr"
    elif not image.lower().endswith((".tif", ".tiff")):
        image = (image[: -len(image_path.suffix)] if image_path.suffix else image) + ".tif"
    return Path(f"pred-{base}-{image}")


class _FileSink:
    """Reduces finished blocks of one output and writes labels (and probabilities)."""

    def __init__(self, labels, reduction: str, probabilities=None):
        self.labels, self.reduction, self.probabilities = labels, reduction, probabilities

    def write(self, t: int, region, block: np.ndarray) -> None:

        self.labels.write(t, region, reduce(block, self.reduction, channel_axis=0))
        if self.probabilities is not None:
            self.probabilities.write(t, region, block)

    def parallel(self) -> _FileSink | None:
        """A twin that Dask workers write themselves (zarr outputs), else None."""
        parts = [self.labels] + ([self.probabilities] if self.probabilities is not None else [])
        if not all(hasattr(p, "parallel") for p in parts):
            return None
        return _FileSink(self.labels.parallel(), self.reduction,
                         self.probabilities.parallel() if self.probabilities is not None
                         else None)


def _strategy(gpus: int):
    """A MirroredStrategy over ``gpus`` GPUs (unetsl.nets.devices), or None for one device."""
    if gpus <= 1:
        return None
    from unetsl.nets.devices import distribution_strategy, visible_gpus

    if len(visible_gpus()) <= 1:
        return None
    strategy = distribution_strategy(gpus)
    return strategy if strategy.num_replicas_in_sync > 1 else None


def _trained_normalization(model: Path):
    """How the model file's inputs were normalised in training (raw when nothing says)."""
    from unetsl.nets.records import file_normalization

    return file_normalization(model) or InputNormalization()


@dataclass
class PredictionJob:
    """Settings of one prediction, editable as the original's key/value table."""

    values: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def create(cls, model: Path, image: Path, output: Path | None = None, *,
               all_outputs: bool = False) -> PredictionJob:
        """The original's settings (normalisation as the model was trained), then unetsl's."""
        trained = _trained_normalization(Path(model))
        return cls({
            "model file": str(model),
            "image to predict": str(image),
            "output image": str(output or default_output_path(model, image)),
            "reduction type": None,
            "output index": "all" if all_outputs else -1,
            "normalize samples": trained.zscore_tiles,
            "batch size": 16,
            "overlap": None,
            "tile shape": None,
            "normalization percentiles": trained.settings()["normalization percentiles"],
            "precision": "auto",
            "test time augmentation": False,
        })

    def settings(self) -> dict[str, Any]:
        return dict(self.values)

    def check_settings(self, values: dict[str, Any]) -> None:
        """UnetslError naming the first unknown key or bad value."""
        for key, value in values.items():
            if key not in SETTING_CHECKS:
                raise UnetslError(f'unknown prediction setting "{key}"; '
                                  + unknown_key_hint(key, SETTING_CHECKS))
            check, kind = SETTING_CHECKS[key]
            if not check(value):
                raise UnetslError(f'prediction setting "{key}" must be {kind}, got {value!r}')

    def update(self, values: dict[str, Any]) -> None:
        self.check_settings(values)
        self.values.update(values)

    def apply_overrides(self, overrides: tuple[str, ...] | list[str]) -> None:
        self.update(parse_overrides(overrides))

    def decide_precision(self) -> PrecisionChoice:
        """The dtype policy of the "precision" setting, checked on this machine's kernels
        (``unetsl.nets.precision_check``: once per process), said in one info line."""
        from unetsl.nets.precision_check import decide_precision  # loads Keras: not at import

        precision = decide_precision(self.values["precision"], "prediction")
        log.info(f"precision: {precision.policy} ({precision.reason})")
        return precision

    # ---------------------------------------------------------------------------------
    def _reductions(self, info: ModelInfo, indices: list[int]) -> list[str]:

        activations = info.activations
        names = list(info.output_names)
        setting = self.values["reduction type"]
        if isinstance(setting, dict):
            unknown = sorted(set(setting) - set(names))
            if unknown:
                raise UnetslError(f'"reduction type": unknown output {unknown[0]!r}; the model '
                                  f"outputs are {', '.join(names)}")
        result = []
        for index in indices:
            value = setting.get(names[index]) if isinstance(setting, dict) else setting
            result.append(reduction_for_activation(activations[index]) if value is None
                          else reduction_name(value))
        return result

    def output_paths(self, model: Any) -> list[Path]:
        """The label file of each selected output (one per output with "all").

        model : a Keras model or its :class:`~unetsl.predict.model_info.ModelInfo`."""
        info = _info(model)
        out = Path(self.values["output image"])
        indices = self._indices(info)
        if len(indices) == 1 and self.values["output index"] != "all" or info.n_outputs == 1:
            return [out]
        return [with_suffix(out, f"-{info.output_names[i]}") for i in indices]

    def _indices(self, info: ModelInfo) -> list[int]:
        index = self.values["output index"]
        if index == "all":
            return list(range(info.n_outputs))
        return [info.output_index(index)]

    def run(self, *, probabilities: bool = False, gpus: int = 1, progress=None,
            model=None, dask: Any = None, levels: int = 1) -> PredictionRun:
        """Load, predict every time point, reduce and write: the named steps below.

        model : an already loaded Keras model to use instead of "model file" (benchmarks,
            notebooks). progress : see ``unetsl.predict.engine.Progress``.
        dask : a --dask value ("local:N", "slurm:N", a scheduler address or file) or a
            ``distributed.Client``: the blocks are predicted on its workers
            (``unetsl.predict.dask_blocks``), each loading "model file" itself.
        levels : resolution levels of OME-Zarr outputs (outputs whose name ends in .zarr).
        """

        self.check_settings(self.values)
        model, strategy, precision = self._model(model, gpus)
        info = ModelInfo.of(model)  # read once: patch, outputs, activations, reach
        source = self._open_input(info)
        tiling = self._tiling(model, info, source, strategy)
        paths = self.output_paths(tiling.info)
        check_writable([*paths, *(with_suffix(p, "-prob") for p in paths if probabilities)])
        with contextlib.ExitStack() as stack:  # first in, last out: outputs before the cluster
            client = _dask_client(stack, dask)
            sinks, written = _open_sinks(stack, paths, tiling, source, probabilities, levels,
                                         client)
            if client is not None:
                return PredictionRun(written, precision, dask=self._predict_on_dask(
                    client, source, sinks, tiling, precision.policy, progress))
            tiles = _predict_here(source, sinks, tiling, progress)
        return PredictionRun(written, precision, tiles=tiles)

    # --- the steps of run() -------------------------------------------------------------
    def _model(self, model: Any, gpus: int) -> tuple[Any, Any, PrecisionChoice]:
        """The model (loaded from "model file" unless given) in the checked precision, and
        the strategy of several GPUs (None on one device)."""
        from unetsl.nets.model_files import load_model
        from unetsl.nets.precision import with_precision
        from unetsl.nets.records import never_trained

        strategy = None
        if model is None:
            path = Path(self.values["model file"])
            if path.is_file() and never_trained(path):
                log.warning(f"{path}: the model create_model wrote, never trained here (no "
                            "training state), so unless it was trained elsewhere its output "
                            "is that of random weights; train_model writes "
                            f"{path.stem}-best{path.suffix}")
            strategy = _strategy(gpus)
            with _scope(strategy):
                model = load_model(path)
        precision = self.decide_precision()
        with _scope(strategy):
            model = with_precision(model, precision.policy)
        return model, strategy, precision

    def _open_input(self, info: ModelInfo) -> _Input:
        """The image, opened lazily (eagerly where the original's channel rules need the
        whole array), checked for NaN/Inf before any tile, its normalisation resolved."""

        c, z, _, _ = info.patch
        name = self.values["image to predict"]
        image = open_image(name, depth_wanted=z)
        data = image.data
        if data.shape[1] != c:
            eager = read_image(name, depth_wanted=z)
            data = ArraySource(match_channels(eager.data, c, source=name))
        check_finite(data, name)
        normalization = InputNormalization.from_settings(self.values)
        scaling = (image_scaling(data, normalization.percentiles)
                   if normalization.percentiles is not None else None)
        log.info(f"input normalisation: {normalization.describe()}")
        return _Input(name, z, image, data, normalization, scaling)

    def _tiling(self, model: Any, info: ModelInfo, source: _Input, strategy: Any) -> _Tiling:
        """The model for the chosen tile size, its tiles and the outputs' reductions."""

        indices = self._indices(info)
        overlap = self.values["overlap"]
        overlap = tuple(overlap) if overlap is not None else None
        with _scope(strategy):
            model, per_batch = model_for_tiles(
                model, source.data.shape[2:], batch_size=self.values["batch size"],
                overlap=overlap, tile=self.values.get("tile shape"), reach=info.reach)
        tiled = info.resized(model)
        tiles = tiled.tiles(model, indices, distributed=strategy is not None)
        if self.augmented:
            tiles = AveragedViews(tiles)
        return _Tiling(tiled, tiles, per_batch, overlap, info.reach,
                       self._reductions(info, indices))

    @property
    def augmented(self) -> bool:
        """"test time augmentation": every tile's flipped and turned views averaged."""
        return bool(self.values.get("test time augmentation", False))

    def _predict_on_dask(self, client: Any, source: _Input, sinks: list[_FileSink],
                         tiling: _Tiling, policy: str, progress: Any) -> Any:
        """The blocks on the client's workers, each loading "model file" itself."""

        run = predict_to_sinks_dask(
            client, self.values["model file"],
            source.name if source.data is source.image.data else source.data, sinks,
            tile_model=tiling.tiles, reach=tiling.reach, output_indices=tiling.tiles.indices,
            depth_wanted=source.depth, batch_size=tiling.per_batch, overlap=tiling.overlap,
            normalize=source.normalization.zscore_tiles, scaling=source.scaling,
            precision=policy, progress=progress, shape=source.data.shape,
            augment=self.augmented)
        log.info(f"dask: {run.blocks} blocks of {list(run.block)} (z, y, x) on "
                 f"{run.workers} workers; {run.tiles_predicted} tiles predicted for "
                 f"{run.tiles} ({run.redundancy:.2f}x)")
        return run


@dataclass
class PredictionRun:
    """What one :meth:`PredictionJob.run` did."""

    written: list[Path]
    precision: PrecisionChoice
    #: tiles of one time point predicted in this process (0 when Dask workers did)
    tiles: int = 0
    #: the Dask run (blocks, workers, tiles predicted: ``unetsl.predict.dask_blocks``)
    dask: Any = None


@dataclass
class _Input:
    """The image side of a run."""

    name: str
    depth: int  # the model's patch depth, which the image was opened for
    image: Any  # ``unetsl.io.lazy.open_image``'s result: data, spacing, unit, time as depth
    data: Any  # what the tiles are read from (image.data, or the channel-matched array)
    normalization: Any  # ``unetsl.data.normalize.InputNormalization``
    scaling: Any  # per-channel percentile scaling, or None


@dataclass
class _Tiling:
    """The model side of a run, for the chosen tiles."""

    info: ModelInfo  # of the model resized to the tiles
    tiles: Any  # the network behind the tiles (``unetsl.predict.adapter``)
    per_batch: int
    overlap: tuple[int, int, int] | None
    reach: Any
    reductions: list[str]


def _scope(strategy: Any) -> contextlib.AbstractContextManager:
    return strategy.scope() if strategy is not None else contextlib.nullcontext()


def _dask_client(stack: contextlib.ExitStack, dask: Any) -> Any:
    """The Dask client of a --dask value (started, and closed with ``stack``), or None."""
    if dask is None:
        return None

    return stack.enter_context(dask_client(dask) if isinstance(dask, str)
                               else contextlib.nullcontext(dask))


def _open_sinks(stack: contextlib.ExitStack, paths: list[Path], tiling: _Tiling,
                source: _Input, probabilities: bool, levels: int,
                client: Any) -> tuple[list[_FileSink], list[Path]]:
    """Every output file opened for writing block by block (``unetsl.io.outputs``: the
    format from the name, written atomically), in the order they are listed; each keeps the
    input's pixel size and frame interval, so a prediction overlays the movie it came from."""

    t, _, zs, ys, xs = source.data.shape
    like = _zarr_like(source.name, source.depth)
    image = source.image
    options = dict(spacing=image.spacing, unit=image.unit, time_as_depth=image.time_as_depth,
                   frame_interval=image.frame_interval,
                   like_axes=like.axes if like is not None else None,
                   chunks=(1, 1, *like.chunks[2:]) if like is not None else None,
                   levels=levels, client=client)
    sinks, written = [], []
    for path, n, reduction in zip(paths, tiling.tiles.channels, tiling.reductions):
        label_channels = n if reduction == "linear" else 1
        dtype = label_dtype(reduction, n)
        labels = stack.enter_context(open_output(
            path, (t, label_channels, zs, ys, xs), dtype,
            labels=np.dtype(dtype).kind in "ui", **options))
        written.append(path)
        floats = None
        if probabilities:
            written.append(with_suffix(path, "-prob"))
            floats = stack.enter_context(open_output(written[-1], (t, n, zs, ys, xs),
                                                     np.float32, **options))
        sinks.append(_FileSink(labels, reduction, floats))
    return sinks, written


def _predict_here(source: _Input, sinks: list[_FileSink], tiling: _Tiling,
                  progress: Any) -> int:
    """Every tile predicted in this process; returns the tiles of one time point."""

    scaled = ScaledSource(source.data, source.scaling) if source.scaling is not None \
        else source.data
    plan = predict_to_sinks(tiling.tiles, scaled, sinks, reach=tiling.reach,
                            batch_size=tiling.per_batch, overlap=tiling.overlap,
                            normalize=source.normalization.zscore_tiles, progress=progress,
                            frames_as_depth=source.image.time_as_depth)
    log.info("%d tiles of %s (z, y, x), %d per batch, overlap %s", plan.count(),
             plan.patch, tiling.per_batch, plan.overlap)
    return plan.count()


def _info(model: Any) -> ModelInfo:
    return model if isinstance(model, ModelInfo) else ModelInfo.of(model)


def _zarr_like(name: str, depth_wanted: int):
    """The zarr input's axes and chunks, which zarr outputs copy (None for other inputs)."""

    if not is_zarr_path(name):
        return None
    try:
        return open_zarr(name, depth_wanted=depth_wanted)
    except UnetslError:
        return None
