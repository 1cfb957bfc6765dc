"""Bad inputs and faults, every command: one 'error:' line naming the culprit, no traceback,
a non-zero exit, and nothing created or changed in the working folder.

Commands run in-process (click's CliRunner), so TensorFlow is imported once for the file;
the files are tiny (16 x 16 images, a 2-filter U-Net made once per module).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from unetsl.config.fields import FIELDS, Field

# ------------------------------------------------------------------------------- the commands


def _command(name: str):
    """The click object of a console script, imported when first used."""
    import importlib

    module = importlib.import_module(f"unetsl.cli.{name}")
    return module.main


TINY = {"input shape": [1, 1, 16, 16], "depth": 2, "n filters": 2, "n labels": 1,
        "spatial dropout rate": 0.0, "epochs": 1, "validation fraction": 0.0,
        "loss function": "keras.losses.binary_crossentropy"}


def _config(**changes) -> str:
    return json.dumps({**TINY, **changes}, indent=4)


# ---------------------------------------------------------------------------------- the files


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """One folder of tiny valid and broken files, copied into every case's working folder."""
    import keras
    import zarr

    from unetsl.config.model_config import Config
    from unetsl.io.tiff import write_image
    from unetsl.nets.model_files import save_model
    from unetsl.nets.unet import build_model

    folder = tmp_path_factory.mktemp("bad-inputs")
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)

    cfg = Config(TINY, path=folder / "m.json")
    cfg.save()
    model = build_model(cfg)
    save_model(model, folder / "m.h5")
    save_model(model, folder / "m.keras")
    other = Config({**TINY, "n filters": 3, "kernel shape": [1, 5, 5]}, path=folder / "o.json")
    save_model(build_model(other), folder / "other.h5")  # no layer fits m.h5
    for name in ("m.h5", "m.keras"):
        data = (folder / name).read_bytes()
        (folder / f"trunc{Path(name).suffix}").write_bytes(data[: len(data) // 2])

    image = rng.random((1, 1, 1, 16, 16)).astype(np.float32)
    label = (rng.random((1, 1, 1, 16, 16)) > 0.7).astype(np.uint8)
    write_image(folder / "img.tif", image)
    write_image(folder / "lab.tif", label)
    write_image(folder / "big-lab.tif", np.zeros((1, 1, 1, 20, 20), np.uint8))
    write_image(folder / "prob.tif", image)
    write_image(folder / "empty.tif", np.zeros_like(image))
    write_image(folder / "two.tif", np.concatenate([image, image], axis=1))
    write_image(folder / "lab2.tif", np.concatenate([label, label], axis=1))
    write_image(folder / "nan.tif", np.full_like(image, np.nan))
    some = image.copy()
    some[0, 0, 0, 3, 4] = np.nan
    some[0, 0, 0, 9, 9] = np.inf
    write_image(folder / "somenan.tif", some)
    data = (folder / "img.tif").read_bytes()
    (folder / "trunc.tif").write_bytes(data[: len(data) - 300])
    import tifffile

    tifffile.imwrite(folder / "zlib.tif", image[0, 0], compression="zlib")
    packed = (folder / "zlib.tif").read_bytes()
    (folder / "trunc-zlib.tif").write_bytes(packed[: len(packed) // 2])
    (folder / "zlib.tif").unlink()
    (folder / "afile.txt").write_text("a file, not a folder\n")
    (folder / "adir").mkdir()

    for sub in ("images", "labels", "nanlabels", "truncimages"):
        (folder / sub).mkdir()
    write_image(folder / "images" / "img-1.tif", image)
    write_image(folder / "labels" / "img-1.tif", label)
    nan_label = label.astype(np.float32)
    nan_label[0, 0, 0, 5, 5] = np.nan
    write_image(folder / "nanlabels" / "img-1.tif", nan_label)
    (folder / "truncimages" / "img-1.tif").write_bytes(data[: len(data) - 300])

    # a zarr v2 array without fill value whose chunk 0.1 was lost: its pixels are undefined
    holed = zarr.create_array(str(folder / "hole.zarr"), shape=(16, 16), chunks=(8, 8),
                              dtype="float32", zarr_format=2, fill_value=None)
    holed[:] = image[0, 0, 0]
    (folder / "hole.zarr" / "0.1").unlink()
    # a zarr v3 array with a chunk overwritten by garbage
    broken = zarr.create_array(str(folder / "broken.zarr"), shape=(16, 16), chunks=(8, 8),
                               dtype="float32")
    broken[:] = image[0, 0, 0]
    (folder / "broken.zarr" / "c" / "0" / "1").write_bytes(b"not zstd data")
    return folder


# ---------------------------------------------------------------------------- running a case


def _snapshot(folder: Path) -> dict[str, tuple]:
    """Every file and folder under ``folder`` (hidden ones too): size, mtime, hash."""
    state: dict[str, tuple] = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs:
            state[os.path.relpath(os.path.join(root, name), folder) + "/"] = ("dir",)
        for name in files:
            path = os.path.join(root, name)
            info = os.stat(path)
            digest = hashlib.sha1(Path(path).read_bytes()).hexdigest()
            state[os.path.relpath(path, folder)] = (info.st_size, info.st_mtime_ns, digest)
    return state


def _invoke(command: str, args: list[str], cwd: Path):
    """Run a command in-process in ``cwd``, with the library's warnings on this run's stderr."""
    from click.testing import CliRunner

    logger = logging.getLogger("unetsl")
    saved = logger.handlers[:]
    logger.handlers = []  # setup_logging adds a handler on the runner's stderr
    previous = os.getcwd()
    os.chdir(cwd)
    try:
        return CliRunner().invoke(_command(command), args)
    finally:
        os.chdir(previous)
        logger.handlers = saved


def _check_refused(result, needles: tuple[str, ...]) -> None:
    """Non-zero exit through sys.exit, no traceback, exactly one error line with the needles."""
    text = result.stdout + result.stderr
    assert result.exit_code != 0, text
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in text, text
    lines = [ln for ln in result.stderr.splitlines()
             if ln.strip() and not ln.startswith(("warning: ", "info: "))]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture
def refused(base, tmp_path, monkeypatch):
    """``refused(command, args, needles, setup=None)``: the case in a copy of ``base``."""
    import unetsl.predict.engine as engine
    import unetsl.predict.job as job

    def no_compute(*args, **kwargs):  # every refusal comes before any tile is predicted
        raise AssertionError("predicted although the input was bad")

    for module in (engine, job):  # where it is defined and where predict_image calls it
        monkeypatch.setattr(module, "predict_to_sinks", no_compute)

    def run(command: str, args: list[str], needles: tuple[str, ...],
            setup: Callable[[Path], None] | None = None):
        work = tmp_path / "work"
        shutil.copytree(base, work)
        if setup is not None:
            setup(work)
        before = _snapshot(work)
        result = _invoke(command, args, work)
        _check_refused(result, needles)
        assert _snapshot(work) == before, "the working folder changed"
        return result

    return run


# ------------------------------------------------------------ config keys from the FIELDS table


def bad_value(field: Field):
    """A value of the right JSON kind but out of range when there is one, else of a wrong
    kind, that ``field.check`` refuses; derived from the default's type."""
    d = field.default
    if isinstance(d, bool):
        candidates = ["yes", 1]
    elif isinstance(d, int):
        candidates = [-1, 0, 2.5, "3"]
    elif isinstance(d, float):
        candidates = [-1.0, 1e9, "0.5"]
    elif isinstance(d, str):
        candidates = ["", 3, None]
    elif isinstance(d, list) and d and all(isinstance(v, int) for v in d):
        candidates = [[-1] * len(d), d[:-1], [1.5] * len(d)]
    elif isinstance(d, list):
        candidates = ["text", [1], [[]]]
    else:  # null defaults: an optional int or a pair of numbers
        candidates = ["text", [80, 20], 1.5]
    candidates += [None, "text", -1, [], {}, True]
    return next(v for v in candidates if not field.check(v))


FIELD_IDS = [f.key.replace(" ", "-") for f in FIELDS]
#: commands that read a config: each field's bad file goes to one of them in turn
CONFIG_READERS = [
    ("create_model", ["-b"]),
    ("train_model", ["-b"]),
    ("inspect_data_sources", ["--save", "view.png"]),
    ("attach_data_sources", ["--list"]),
]


@pytest.mark.parametrize("field", FIELDS, ids=FIELD_IDS)
def test_bad_value_in_config_file(field, refused):
    value = bad_value(field)
    assert field.check(field.default), field.key  # the bad value is bad, the default good
    command, extra = CONFIG_READERS[FIELDS.index(field) % len(CONFIG_READERS)]
    refused(command, ["-c", "bad.json", *extra], ("bad.json", f'"{field.key}"'),
            setup=lambda w: (w / "bad.json").write_text(_config(**{field.key: value})))


@pytest.mark.parametrize("field", FIELDS, ids=FIELD_IDS)
def test_bad_value_with_define(field, refused):
    value = bad_value(field)
    refused("train_model", ["-c", "m.json", "-b", "-D", f"{field.key}={json.dumps(value)}"],
            ("-D", f'"{field.key}"'))


# ------------------------------------------------------------------------- hand-written cases

def _write(name: str, text: str) -> Callable[[Path], None]:
    return lambda work: (work / name).write_text(text)


def _source(labels: str, labeller: str, images: str = "images") -> dict:
    return {"source type": "paired directories", "input folders": [images],
            "label folders": [labels], "rotations": [], "labeller": labeller}


def _training_config(name: str, **changes) -> Callable[[Path], None]:
    """A config ``name`` that trains m.h5 (so no model file is built by the case)."""
    return _write(name, _config(**{"model file": "m.h5", **changes}))


NAN_LINEAR = _training_config("nan.json", **{"data sources": [_source("nanlabels",
                                                                      "linear labels")],
                                             "activation": "relu"})

CASES = [
    # --- configs
    ("config-not-json", "create_model", ["-c", "bad.json", "-b"],
     ("bad.json", "malformed JSON"), _write("bad.json", '{"depth": 2,,}')),
    ("config-not-object", "train_model", ["-c", "bad.json", "-b"],
     ("bad.json", "JSON object"), _write("bad.json", "[1, 2, 3]")),
    ("config-missing", "train_model", ["-c", "nothere.json", "-b"], ("nothere.json",), None),
    ("config-missing-attach", "attach_data_sources", ["-c", "nothere.json", "--list"],
     ("nothere.json",), None),
    ("config-is-folder", "train_model", ["-c", "adir", "-b"], ("adir", "folder"), None),
    ("config-in-missing-folder", "create_model", ["-c", "nodir/m.json", "-b"],
     ("nodir",), None),
    ("config-shape-not-divisible", "create_model", ["-c", "bad.json", "-b"],
     ("bad.json", '"input shape"'), _write("bad.json", _config(**{"input shape": [1, 1, 15, 16]}))),
    ("define-unknown-key", "create_model", ["-c", "m.json", "-b", "-D", "n filterz=8"],
     ("n filterz", "did you mean", "n filters"), None),
    ("define-unknown-key-train", "train_model", ["-c", "m.json", "-b", "-D", "epochz=1"],
     ("epochz", "epochs"), None),
    ("define-unknown-key-inspect", "inspect_data_sources",
     ["-c", "m.json", "--save", "v.png", "-D", "strid=[0,1,8,8]"], ("strid", "stride"), None),
    ("define-value-not-json", "create_model", ["-c", "m.json", "-b", "-D", "activation=softmax"],
     ("activation", "JSON"), None),
    ("define-without-equals", "train_model", ["-c", "m.json", "-b", "-D", "epochs"],
     ("epochs", "key=value"), None),
    ("define-bad-value", "create_model", ["-c", "m.json", "-b", "-D", "n filters=0"],
     ('"n filters"',), None),
    ("model-file-under-a-file", "create_model",
     ["-c", "m.json", "-b", "-D", 'model file="afile.txt/m.h5"'], ("afile.txt",), None),
    ("cerberus-create-plain-config", "cerberus", ["create", "-c", "m.json", "-b"],
     ("m.json",), None),
    # --- data sources
    ("attach-linear-on-two-outputs", "attach_data_sources",
     ["-c", "two.json", "--paired", "images", "labels", "--labeller", "linear"],
     ("linear labels", "2"), _write("two.json", _config(**{"n labels": 2}))),
    ("attach-missing-images", "attach_data_sources",
     ["-c", "m.json", "--paired", "noimages", "labels", "--labeller", "multiclass"],
     ("noimages",), None),
    ("attach-missing-label-file", "attach_data_sources",
     ["-c", "m.json", "--files", "img.tif", "nolabel.tif", "--labeller", "multiclass"],
     ("nolabel.tif",), None),
    ("attach-label-other-size", "attach_data_sources",
     ["-c", "m.json", "--files", "img.tif", "big-lab.tif", "--labeller", "multiclass"],
     ("big-lab.tif",), None),
    ("attach-unknown-labeller", "attach_data_sources",
     ["-c", "m.json", "--paired", "images", "labels", "--labeller", "distance"],
     ("distance",), None),
    ("attach-unknown-source-setting", "attach_data_sources",
     ["-c", "m.json", "--paired", "images", "labels", "--labeller", "1", "-S", "strid=[0,1,8,8]"],
     ("strid",), None),
    ("attach-remove-missing-source", "attach_data_sources", ["-c", "m.json", "--remove", "4"],
     ("4",), None),
    ("train-nan-label", "train_model", ["-c", "nan.json", "-b"],
     ("nanlabels", "img-1.tif", "NaN"), NAN_LINEAR),
    ("inspect-nan-label", "inspect_data_sources", ["-c", "nan.json", "--save", "v.png"],
     ("nanlabels", "img-1.tif", "NaN"), NAN_LINEAR),
    ("train-truncated-image", "train_model", ["-c", "t.json", "-b"],
     ("truncimages", "img-1.tif"),
     _training_config("t.json", **{"data sources": [_source("labels", "multiclass labels",
                                                              "truncimages")]})),
    ("train-no-data-sources", "train_model", ["-c", "m.json", "-b"],
     ("m.json", "data sources"), None),
    ("inspect-source-out-of-range", "inspect_data_sources",
     ["-c", "m.json", "--save", "v.png", "--source", "3"], ("--source 3",), None),
    # --- predict_image
    ("predict-missing-model", "predict_image", ["nothere.h5", "img.tif", "-b"],
     ("nothere.h5",), None),
    ("predict-missing-image", "predict_image", ["m.h5", "nothere.tif", "-b"],
     ("nothere.tif",), None),
    ("predict-config-as-model", "predict_image", ["m.json", "img.tif", "-b"],
     ("m.json", "is a config, not a model file", "m-best.h5"), None),
    ("predict-text-as-model", "predict_image", ["img.tif", "img.tif", "-b"],
     ("img.tif", "is not a model file"), None),
    ("predict-model-is-folder", "predict_image", ["adir", "img.tif", "-b"], ("adir",), None),
    ("predict-image-is-folder", "predict_image", ["m.h5", "adir", "-b"], ("adir", "folder"),
     None),
    ("predict-model-not-a-model", "predict_image", ["img.tif", "img.tif", "-b"],
     ("img.tif",), None),
    ("predict-truncated-h5", "predict_image", ["trunc.h5", "img.tif", "-b"],
     ("trunc.h5",), None),
    ("predict-truncated-keras", "predict_image", ["trunc.keras", "img.tif", "-b"],
     ("trunc.keras",), None),
    ("predict-truncated-tiff", "predict_image", ["m.h5", "trunc.tif", "-b"],
     ("trunc.tif",), None),
    ("predict-truncated-compressed-tiff", "predict_image", ["m.h5", "trunc-zlib.tif", "-b"],
     ("trunc-zlib.tif",), None),
    ("segment-truncated-compressed-tiff", "segment_cells", ["trunc-zlib.tif"],
     ("trunc-zlib.tif",), None),
    ("predict-zarr-missing-chunk", "predict_image", ["m.h5", "hole.zarr", "out.tif", "-b"],
     ("hole.zarr", "chunk"), None),
    ("predict-zarr-corrupt-chunk", "predict_image", ["m.h5", "broken.zarr", "out.tif", "-b"],
     ("broken.zarr",), None),
    ("predict-output-under-a-file", "predict_image", ["m.h5", "img.tif", "img.tif/out.tif", "-b"],
     ("img.tif/out.tif", "is a file"), None),
    ("predict-output-is-folder", "predict_image", ["m.h5", "img.tif", "adir", "-b"],
     ("adir", "folder"), None),
    ("predict-wrong-channels", "predict_image", ["m.h5", "two.tif", "-b"],
     ("two.tif", "channel"), None),
    ("predict-all-nan", "predict_image", ["m.keras", "nan.tif", "-b"], ("nan.tif", "NaN"), None),
    ("predict-some-nan-inf", "predict_image", ["m.h5", "somenan.tif", "-b"],
     ("somenan.tif", "NaN"), None),
    ("predict-define-unknown-setting", "predict_image",
     ["m.h5", "img.tif", "-b", "-D", "batch sise=4"], ("batch sise", "batch size"), None),
    ("predict-define-bad-value", "predict_image", ["m.h5", "img.tif", "-b", "-D", "batch size=0"],
     ('"batch size"',), None),
    ("predict-output-index-out-of-range", "predict_image",
     ["m.h5", "img.tif", "-b", "-D", "output index=2"], ('"output index"',), None),
    ("predict-bad-dask-scheduler", "predict_image", ["m.h5", "img.tif", "-b", "--dask", "local:0"],
     ("local:0",), None),
    ("cerberus-predict-missing-model", "cerberus", ["predict", "nothere.h5", "img.tif", "-b"],
     ("nothere.h5",), None),
    # --- segment_cells
    ("segment-label-image", "segment_cells", ["lab.tif"], ("lab.tif", "probabilities"), None),
    ("segment-missing-channel", "segment_cells", ["prob.tif", "--channel", "2"],
     ("prob.tif", "channel 2"), None),
    ("segment-empty-map", "segment_cells", ["empty.tif"], ("empty.tif",), None),
    ("segment-nan-map", "segment_cells", ["somenan.tif"], ("somenan.tif", "NaN"), None),
    ("segment-missing-file", "segment_cells", ["nothere.tif"], ("nothere.tif",), None),
    ("segment-output-under-a-file", "segment_cells", ["prob.tif", "afile.txt/cells.tif"],
     ("afile.txt",), None),
    ("segment-unknown-cell-key", "segment_cells", ["prob.tif", "-D", "cell min sise=3"],
     ("cell min sise", "cell min size"), None),
    # --- evaluate_prediction
    ("evaluate-shape-mismatch", "evaluate_prediction", ["lab.tif", "big-lab.tif"],
     ("lab.tif", "big-lab.tif"), None),
    ("evaluate-instances-shape-mismatch", "evaluate_prediction",
     ["lab.tif", "big-lab.tif", "--instances"], ("lab.tif", "big-lab.tif"), None),
    ("evaluate-missing-truth", "evaluate_prediction", ["lab.tif", "nothere.tif"],
     ("nothere.tif",), None),
    ("evaluate-probability-map", "evaluate_prediction", ["two.tif", "two.tif"],
     ("two.tif", "holds probabilities", "the file without -prob"), None),
    ("evaluate-probabilities-vs-labels", "evaluate_prediction", ["two.tif", "lab.tif"],
     ("two.tif", "holds probabilities"), None),  # before any shape complaint (issue 28)
    ("evaluate-instances-of-probabilities", "evaluate_prediction",
     ["prob.tif", "lab.tif", "--instances"], ("prob.tif", "segment_cells prob.tif"), None),
    ("evaluate-two-channel-labels", "evaluate_prediction", ["lab2.tif", "lab2.tif"],
     ("lab2.tif", "2 channels"), None),
    ("evaluate-prediction-is-folder", "evaluate_prediction", ["adir", "lab.tif"],
     ("adir",), None),
    ("evaluate-unknown-labeller", "evaluate_prediction",
     ["lab.tif", "lab.tif", "--labeller", "distance"], ("distance",), None),
    # --- transfer_weights, export_model
    ("transfer-incompatible-models", "transfer_weights", ["other.h5", "m.h5", "out.h5", "-q"],
     ("other.h5", "m.h5", "nothing copied"), None),
    ("transfer-image-as-model", "transfer_weights", ["m.h5", "img.tif", "out.h5", "-q"],
     ("img.tif",), None),
    ("transfer-missing-origin", "transfer_weights", ["nothere.h5", "m.h5", "out.h5"],
     ("nothere.h5",), None),
    ("transfer-truncated-target", "transfer_weights", ["m.h5", "trunc.h5", "out.h5"],
     ("trunc.h5",), None),
    ("export-missing-model", "export_model", ["nothere.h5", "out.zip", "--bioimageio"],
     ("nothere.h5",), None),
    ("export-truncated-model", "export_model", ["trunc.keras", "out.zip", "--bioimageio"],
     ("trunc.keras",), None),
    ("export-not-a-zip", "export_model", ["m.h5", "out.txt", "--bioimageio"],
     ("out.txt",), None),
]


@pytest.mark.parametrize("command, args, needles, setup",
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_refused(command, args, needles, setup, refused):
    refused(command, args, needles, setup)


def test_define_unknown_key_leaves_config_as_it_was(refused, tmp_path):
    result = refused("create_model", ["-c", "m.json", "-b", "-D", "n filterz=8"],
                     ('did you mean "n filters"?',))
    assert "n filterz" not in (tmp_path / "work" / "m.json").read_text()
    assert result.stdout == ""


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_output_in_read_only_folder(refused, tmp_path):
    locked = tmp_path / "work" / "adir"
    try:
        refused("predict_image", ["m.h5", "img.tif", "adir/out.tif", "-b"],
                ("adir/out.tif", "read-only"), setup=lambda work: locked.chmod(0o555))
    finally:
        if locked.exists():
            locked.chmod(0o755)


def test_a_bad_precision_variable_is_one_line(refused, monkeypatch):
    """UNETSL_PRECISION replaces "auto" for every command: a value it does not know stops the
    command in one line naming the variable, before anything is written."""
    monkeypatch.setenv("UNETSL_PRECISION", "bf16")
    refused("predict_image", ["m.h5", "img.tif", "out.tif", "-b"],
            ("UNETSL_PRECISION must be one of", "'bf16'"))
