"""The "precision" setting: what "auto" picks, reduced precision agreeing with float32 on
trained models (unetsl's and the original's), training in bfloat16, mixed models saved as
ordinary float32 models."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from unetsl.config.model_config import Config
from unetsl.data.normalize import InputNormalization, attach_normalization, model_normalization
from unetsl.data.synthetic import write_dataset
from unetsl.errors import UnetslError
from unetsl.io.tiff import read_image
from unetsl.nets.model_files import load_model
from unetsl.nets.precision import PRECISION_ENV, as_float32, choose_precision, with_precision
from unetsl.nets.unet import build_unet
from unetsl.predict.engine import predict
from unetsl.predict.job import PredictionJob
from unetsl.predict.reduce import reduce
from unetsl.training.logs import read_log
from unetsl.training.train import train


def test_auto_proposes_what_the_hardware_is_fast_in():
    bare: dict[str, str] = {}  # no UNETSL_PRECISION (tests/conftest.py pins float32)
    amx = choose_precision("auto", gpus=[], cpu=("Xeon", {"avx512f", "amx_bf16"}), environ=bare)
    assert amx.policy == "mixed_bfloat16" and amx.automatic
    no_amx = choose_precision("auto", gpus=[], cpu=("EPYC", {"avx512_bf16"}), environ=bare)
    assert no_amx.policy == "float32" and "no AMX" in no_amx.reason
    for gpu, policy in ((("H200", 9.0), "mixed_bfloat16"), (("T4", 7.5), "mixed_float16"),
                        (("K80", 3.7), "float32")):
        assert choose_precision("auto", gpus=[gpu], environ=bare).policy == policy
    set_by_hand = choose_precision("mixed_float16", gpus=[], environ=bare)
    assert set_by_hand.policy == "mixed_float16" and not set_by_hand.automatic
    with pytest.raises(UnetslError, match='"precision" must be one of'):
        choose_precision("half")


def test_the_environment_variable_replaces_auto_only():
    pinned = {PRECISION_ENV: "float32"}
    amx = ("Xeon", {"amx_bf16"})
    chosen = choose_precision("auto", gpus=[("H100", 9.0)], cpu=amx, environ=pinned)
    assert chosen.policy == "float32" and chosen.reason == "UNETSL_PRECISION=float32"
    assert not chosen.automatic  # set by hand: no fallback, a warning if its check fails
    reduced = choose_precision("auto", gpus=[], cpu=("EPYC", set()),
                               environ={PRECISION_ENV: "mixed_bfloat16"})
    assert reduced.policy == "mixed_bfloat16"
    assert choose_precision("mixed_bfloat16", environ=pinned).policy == "mixed_bfloat16"
    unset = choose_precision("auto", gpus=[], cpu=amx, environ={PRECISION_ENV: " auto "})
    assert unset.policy == "mixed_bfloat16" and unset.automatic
    with pytest.raises(UnetslError, match=r"^UNETSL_PRECISION must be one of .*'bf16'"):
        choose_precision("auto", environ={PRECISION_ENV: "bf16"})


def test_a_reduced_model_keeps_weights_record_and_float32_outputs():
    net = build_unet((1, 1, 16, 16), n_labels=2, depth=2, n_filters=2, spatial_dropout_rate=0.0)
    attach_normalization(net, InputNormalization((1.0, 99.0), False))
    half = with_precision(net, "mixed_bfloat16")
    assert half is not net and with_precision(net, "float32") is net
    policies = {layer.name: layer.dtype_policy.name for layer in half.layers}
    assert policies["output"] == "float32" and policies["contraction-a-0"] == "mixed_bfloat16"
    assert all(np.array_equal(a, b) for a, b in zip(half.get_weights(), net.get_weights()))
    assert model_normalization(half) == InputNormalization((1.0, 99.0), False)
    x = np.random.default_rng(0).random((2, 1, 16, 16, 1), dtype=np.float32)
    out = np.asarray(half.predict_on_batch(x))
    assert out.dtype == np.float32
    assert np.abs(out - np.asarray(net.predict_on_batch(x))).max() < 0.02
    back = as_float32(half)
    assert {layer.dtype_policy.name for layer in back.layers} == {"float32"}


def _agreement(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(a == b))


def test_the_originals_trained_model_agrees_in_bfloat16(compat):
    model = load_model(compat / "trained-2d-best.h5")
    image = read_image(compat / "sample-2d.tif", depth_wanted=3).data
    full = reduce(predict(model, image), "multiclass")
    half = reduce(predict(with_precision(model, "mixed_bfloat16"), image), "multiclass")
    assert _agreement(full, half) >= 0.995


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny 2D model trained 2 epochs in float32 and in bfloat16 on the same data."""
    runs = {}
    for policy in ("float32", "mixed_bfloat16"):
        root = tmp_path_factory.mktemp(policy)
        write_dataset(root, "2d", n_images=1, shape=(3, 48, 48), seed=2, distance=False)
        cfg = Config.new(root / "m.json")
        cfg.update({"input shape": [1, 1, 16, 16], "depth": 2, "n filters": 4, "n labels": 2,
                    "pooling": [1, 2, 2], "stride": [0, 1, 8, 8], "batch size": 4,
                    "epochs": 2, "seed": 5, "validation fraction": 0.25,
                    "spatial dropout rate": 0.0, "precision": policy,
                    "data sources": [{"source type": "paired directories",
                                      "input folders": ["images"], "label folders": ["labels"],
                                      "labeller": "multiclass labels"}]})
        cfg.save()
        runs[policy] = (cfg, train(cfg, progress="none"))
    return runs


def test_bfloat16_training_reaches_the_float32_score(trained):
    scores = {}
    for policy, (_, result) in trained.items():
        keys, rows = read_log(result.epoch_log)
        scores[policy] = rows[-1][keys.index("val_loss") + 1]
    assert abs(scores["mixed_bfloat16"] - scores["float32"]) < 0.05, scores
    cfg, _ = trained["mixed_bfloat16"]
    saved = load_model(cfg.sibling("-latest.h5"))  # an ordinary float32 model
    assert {layer.dtype_policy.name for layer in saved.layers} == {"float32"}


def test_predict_image_in_bfloat16_agrees_and_says_so(trained, tmp_path, caplog):
    cfg, _ = trained["float32"]
    image = cfg.folder / "images" / "epi-000.tif"
    labels = {}
    for policy in ("float32", "mixed_bfloat16"):
        job = PredictionJob.create(cfg.sibling("-latest.h5"), image, tmp_path / f"{policy}.tif")
        job.apply_overrides([f'precision="{policy}"'])
        with caplog.at_level(logging.INFO, logger="unetsl"):
            job.run()
        # kept as set; reduced precision also says how its start-up check went (passed
        # here; on a CPU whose kernels fail it, a warning says so and the policy stays)
        assert f"precision: {policy} (as set" in caplog.text
        labels[policy] = read_image(tmp_path / f"{policy}.tif").data
    assert _agreement(labels["float32"], labels["mixed_bfloat16"]) >= 0.995
