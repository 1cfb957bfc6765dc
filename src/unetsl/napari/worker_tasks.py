"""What the plugin's worker process runs: predict, train, inspect, create, retrain (the
console scripts' own library calls). Imported in the child only (:mod:`unetsl.napari.process`):
TensorFlow loads here, never in napari's process. Arguments and results are plain values
and arrays."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from unetsl.config.model_config import Config, config_for_model
from unetsl.errors import UnetslError
from unetsl.predict.in_memory import predict_array
from unetsl.predict.job import PredictionJob

if TYPE_CHECKING:
    from unetsl.data.inspect import Page, Panel
    from unetsl.napari.process import TaskContext
    from unetsl.predict.in_memory import ArrayPrediction
    from unetsl.training.train import TrainingResult

LayerData = tuple[np.ndarray, dict[str, Any], str]
PATCH_AXES = ("patch", "z", "y", "x")
COLORMAPS = {"input": "gray", "binary": "magma", "linear": "viridis", "weights": "viridis"}


def predict(context: TaskContext, *, model: str, image_name: str, image: np.ndarray,
            settings: dict[str, Any]) -> ArrayPrediction:
    """predict_image's steps on a (t, c, z, y, x) array; the model stays loaded."""
    from unetsl.nets.model_files import load_model

    path = Path(model)
    if not path.is_file():
        raise UnetslError(f"model file {str(path)!r} does not exist")
    job = PredictionJob.create(path, Path(image_name),
                               all_outputs=bool(settings.pop("all outputs", False)))
    job.update(settings)
    key = (str(path.resolve()), path.stat().st_mtime)
    if context.cache.get("model key") != key:
        context.cache.pop("model", None)  # one model in memory
        context.cache["model"] = load_model(path)
        context.cache["model key"] = key
    return predict_array(job, image, model=context.cache["model"], progress=context.progress)


def train(context: TaskContext, *, config: str, resume: bool) -> dict[str, Any]:
    """train_model -b on ``config``: epoch lines, losses and warnings sent as events; the
    parent's Stop saves -latest after the current batch. Returns what the dock shows."""
    result = _train(context, Config.load(Path(config)), resume=resume)
    return {"epochs_done": result.epochs_done, "epochs": result.epochs,
            "monitor": result.monitor, "best": result.best, "best_epoch": result.best_epoch,
            "interrupted": result.interrupted, "latest": str(result.paths.latest),
            "best_model": str(result.paths.best)}


def retrain(context: TaskContext, *, model: str, image: np.ndarray, image_name: str,
            cells: np.ndarray, corrected: list[int], settings: dict[str, Any],
            erased: np.ndarray | None = None) -> dict[str, Any]:
    """Correct and retrain: the corrected cells of ``cells`` (t, z, y, x) become partial
    labels beside ``image`` (t, c, z, y, x) in ``corrections/`` beside the model, the model
    is fine-tuned on them (train_model --from MODEL --data, with the config NAME.json beside
    it and ``settings`` as -D values) and the image predicted with the tuned model. Returns
    the tuned model (-tuned-latest), whether Stop ended the tuning, and the prediction.
    ``erased``: where the user deleted false cells (known background)."""
    from unetsl.training.fine_tune import corrections_source

    config = config_for_model(model)
    if config is None:
        raise UnetslError(f"{model}: no config (NAME.json) beside the model; fine-tuning "
                          "needs the config it was trained with")
    cfg = Config.load(config)
    cfg.update(dict(settings), source="napari")
    tuned = corrections_source(cfg, Path(model).parent / "corrections", image_name, image,
                               cells, corrected, erased)
    result = _train(context, tuned, resume=False, start_from=model)
    predicted = predict(context, model=str(result.paths.latest), image_name=image_name,
                        image=image, settings={})
    return {"model": str(result.paths.latest), "stopped": result.interrupted is not None,
            "epochs_done": result.epochs_done, "prediction": predicted}


def _train(context: TaskContext, cfg: Config, **kwargs: Any) -> TrainingResult:
    """train() with the dock's feeds: batch/epoch losses and epoch lines as events, and the
    parent's Stop as a StopRequest (saves -latest after the current batch)."""
    import keras

    from unetsl.training.checkpoints import InterruptCheck, StopRequest
    from unetsl.training.train import train as train_model

    class Feed(keras.callbacks.Callback):
        """Batch and epoch losses for the dock's curves (x in epochs)."""

        epoch, steps = 0, 1

        def on_train_begin(self, logs: Any = None) -> None:
            self.steps = max(1, int((self.params or {}).get("steps") or 1))

        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            self.epoch = int(epoch)

        def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
            context.emit("batch", self.epoch + (batch + 1) / self.steps, _numbers(logs))

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            context.emit("epoch", int(epoch), _numbers(logs))

    class Lines:
        """The epoch lines train_model prints, one "line" event each."""

        def write(self, text: str) -> None:
            for line in text.splitlines():
                if line.strip():
                    context.emit("line", line.strip())

        def flush(self) -> None:
            pass

    stop = context.stop_request = StopRequest()
    if context.stop_pending:  # Stop was pressed while TensorFlow was still loading
        stop.request()
    return train_model(cfg, progress="lines", stream=Lines(),  # type: ignore[arg-type]
                       extra_callbacks=[InterruptCheck(stop), Feed()], **kwargs)


def inspect(context: TaskContext, *, config: str, source: int, count: int,
            seed: int) -> tuple[list[str], list[LayerData], int]:
    """The patches and targets training draws from data source ``source``, as layer data:
    (summary lines, layers, patches shown)."""
    from unetsl.data.inspect import build_pages
    from unetsl.training.setup import training_shapes

    cfg = Config.load(Path(config))
    patch_shape, n_labels = training_shapes(cfg)
    page = build_pages(cfg, patch_shape=patch_shape, n_labels=n_labels, seed=seed,
                       sources=[source])[0]
    return list(page.summary), patch_layers(page, count, f"source {source}"), min(
        len(page.order), count)


def create(context: TaskContext, *, config: str, values: dict[str, Any]) -> str:
    """create_model -b with ``values`` on top of the config (or the new-config defaults):
    returns what was written and the model's one-screen summary."""
    from unetsl.nets.model_files import create_model_files, describe_model

    cfg = Config.load(Path(config), must_exist=False)
    cfg.update(values)
    model = create_model_files(cfg)
    return (f"wrote {cfg.path.name} and {cfg.model_path.name}; choose {cfg.path.name} in "
            f"Train\n{describe_model(model)}")


def _numbers(logs: Any) -> dict[str, float]:
    out = {}
    for key, value in dict(logs or {}).items():
        try:
            out[str(key)] = float(value)
        except (TypeError, ValueError):
            continue
    return out


def placement(panel: Panel) -> tuple[list[float], list[float]]:
    """(scale, translate) of a panel over (patch, z, y, x), in input-patch pixels."""
    _, y_size, x_size = panel.image.shape
    scale, translate = [1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]
    if panel.z_map is not None:
        first = np.flatnonzero(np.asarray(panel.z_map) == 0)
        if len(first):
            scale[1], translate[1] = float(len(first)), float(first.mean())
    if panel.extent is not None:
        left, right, bottom, top = panel.extent
        scale[2], scale[3] = (bottom - top) / y_size, (right - left) / x_size
        translate[2], translate[3] = top + scale[2] / 2, left + scale[3] / 2
    return scale, translate


def patch_layers(page: Page, count: int, prefix: str) -> list[LayerData]:
    """One layer per panel title of ``count`` patches of ``page``, the patches stacked."""
    from unetsl.data.inspect import panels

    stacks: dict[str, list[Panel]] = {}
    for patch in page.patches(0, count):
        for panel in panels(page, patch):
            stacks.setdefault(panel.title.replace("\n", ", "), []).append(panel)
    layers = []
    for title, shown in stacks.items():
        data = np.stack([p.image for p in shown])
        scale, translate = placement(shown[0])
        kind = shown[0].kind
        options: dict[str, Any] = {"name": f"{prefix} {title}", "scale": scale,
                                   "translate": translate, "axis_labels": PATCH_AXES}
        if kind == "label" and np.issubdtype(data.dtype, np.integer):
            layers.append((data, options, "labels"))
            continue
        options["colormap"] = COLORMAPS.get(kind, "gray")
        if kind == "binary":
            options["contrast_limits"] = (0.0, 1.0)
        layers.append((data.astype(np.float32), options, "image"))
    return layers


TASKS = {"predict": predict, "train": train, "inspect": inspect, "create": create,
         "retrain": retrain}
