"""Every model is U-Net features plus heads: one builder for plain, cascade and multi-head
models (nets.unet.build_model), the model file checked against the heads (nets.heads), the
one create path (nets.model_files.create_model_files) and compile reading each head."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest

from unetsl.config.cerberus_layout import CerberusConfig, CerberusTraining
from unetsl.config.heads import DEFAULT_HEADS, LEVEL, STAGE, Head
from unetsl.config.model_config import Config
from unetsl.errors import UnetslError
from unetsl.nets.heads import check_model_heads
from unetsl.nets.model_files import create_model_files, load_model
from unetsl.nets.unet import build_cascade, build_heads, build_model, build_unet

PLAIN = {"input shape": [1, 1, 16, 16], "depth": 2, "n filters": 2, "n labels": 2,
         "pooling": [1, 2, 2], "seed": 3}
UNET = {"input shape": [1, 1, 16, 16], "kernel shape": [3, 3, 3], "pooling": [1, 2, 2],
        "depth": 2, "n filters": 2, "spatial dropout rate": 0.0625}


def _plain(tmp_path: Path, **changes) -> Config:
    return Config({**PLAIN, **changes}, path=tmp_path / "m.json")


def _multi(tmp_path: Path, **training) -> CerberusTraining:
    data = {"unet": dict(UNET), "heads": copy.deepcopy(DEFAULT_HEADS), "data sources": [],
            "training": {"seed": 3, **training}}
    return CerberusTraining(CerberusConfig(data, tmp_path / "c.json"))


def _kinds(tmp_path: Path) -> dict[str, Config]:
    return {"plain": _plain(tmp_path), "cascade": _plain(tmp_path, **{"cascade stages": 2}),
            "multi-head": _multi(tmp_path)}


def _same(a, b) -> bool:
    """Same layers (names, classes, configs), outputs and weights."""
    return ([(x.name, type(x).__name__, x.get_config()) for x in a.layers]
            == [(x.name, type(x).__name__, x.get_config()) for x in b.layers]
            and list(a.output_names) == list(b.output_names)
            and len(a.weights) == len(b.weights)
            and all(w.path == v.path and np.array_equal(np.asarray(w), np.asarray(v))
                    for w, v in zip(a.weights, b.weights)))


@pytest.mark.parametrize("kind, outputs, convs", [
    ("plain", ["output"], ["output-conv"]),
    ("cascade", ["cascade_0", "cascade_1"], ["cascade_0-conv", "cascade_1-conv"]),
    ("multi-head", ["distance", "membrane-scale", "membrane-crop"],
     ["cerberus_distance", "cerberus_membrane-scale", "cerberus_membrane-crop"]),
])
def test_every_kind_is_its_heads_with_the_original_layer_names(tmp_path, kind, outputs, convs):
    cfg = _kinds(tmp_path)[kind]
    assert [h.name for h in cfg.heads()] == outputs
    model = build_model(cfg)
    names = [layer.name for layer in model.layers]
    assert list(model.output_names) == outputs and model.name == cfg.name
    assert all(conv in names for conv in convs)
    assert "contraction-a-0" in names and "expansion-b-0" in names
    if kind == "cascade":
        assert "cascade1-input" in names and "cascade1-contraction-a-0" in names
    if kind == "multi-head":  # the U-Net's own output is not part of the model
        assert "output-conv" not in names and "output" not in names
        assert [tuple(o.shape[1:]) for o in model.outputs] == [
            (1, 16, 16, 1), (1, 8, 8, 2), (1, 16, 16, 2)]


@pytest.mark.parametrize("kind", ["plain", "cascade", "multi-head"])
def test_a_seeded_config_builds_the_same_weights_every_time(tmp_path, kind):
    first = build_model(_kinds(tmp_path)[kind])
    again = build_model(_kinds(tmp_path)[kind])
    assert _same(first, again)


def test_plain_and_cascade_configs_are_their_one_head_models(tmp_path):
    """A plain config, build_unet and an explicit one-head list give the same model."""
    import keras

    cfg = _plain(tmp_path)
    from_config = build_model(cfg)
    args = dict(depth=2, n_filters=2, pooling=(1, 2, 2), name="m")
    keras.utils.set_random_seed(3)
    one_head = build_heads((1, 1, 16, 16), [Head("output", 2, kind=STAGE)], **args)
    keras.utils.set_random_seed(3)
    unet = build_unet((1, 1, 16, 16), n_labels=2, **args)
    assert _same(from_config, one_head) and _same(from_config, unet)

    cascade = build_model(_plain(tmp_path, **{"cascade stages": 2}))
    keras.utils.set_random_seed(3)
    assert _same(cascade, build_cascade((1, 1, 16, 16), 2, n_labels=2, **args))


def test_heads_carry_their_loss_and_weight(tmp_path):
    cascade = _plain(tmp_path, **{"cascade stages": 2, "loss weights": {"cascade_1": 3}})
    assert [(h.loss, h.loss_weight, h.kind, h.own_target) for h in cascade.heads()] == [
        (PLAIN.get("loss function", Config()["loss function"]), 1.0, STAGE, False),
        (Config()["loss function"], 3.0, STAGE, False)]
    # a model file wins over "cascade stages": the plain heads follow its outputs
    assert [h.name for h in _plain(tmp_path).heads(["cascade_0", "cascade_1"])] == [
        "cascade_0", "cascade_1"]
    multi = _multi(tmp_path, **{"loss weights": {"distance": 2.5}})
    heads = multi.heads()
    assert [h.kind for h in heads] == [LEVEL] * 3 and all(h.own_target for h in heads)
    assert [(h.loss, h.loss_weight) for h in heads] == [
        ("unetsl.model.logMse", 2.5), ("unetsl.model.sorensenDiceCoefLoss", 1.0),
        ("unetsl.model.sorensenDiceCoefLoss", 1.0)]


def test_compile_reads_each_heads_loss_and_weight(tmp_path):
    from unetsl.training.setup import compile_model

    multi = _multi(tmp_path, **{"loss weights": {"distance": 2.5}})
    model = build_model(multi)
    compile_model(model, multi)
    compiled = model.get_compile_config()
    assert compiled["loss_weights"] == {"distance": 2.5, "membrane-scale": 1.0,
                                        "membrane-crop": 1.0}
    assert compiled["loss"]["distance"]["class_name"] == "LogMse"
    plain = _plain(tmp_path)
    model = build_model(plain)
    compile_model(model, plain)
    assert model.get_compile_config()["loss_weights"] is None  # one output: one loss


def test_a_model_file_must_have_the_heads_that_make_their_own_targets(tmp_path):
    multi = _multi(tmp_path)
    check_model_heads(build_model(multi), multi, "c.h5")
    plain_model = build_model(_plain(tmp_path))
    with pytest.raises(UnetslError, match=r"c\.h5: outputs output do not match the heads"):
        check_model_heads(plain_model, multi, "c.h5")
    # a plain config trains whatever its model file is
    check_model_heads(build_model(multi), _plain(tmp_path), "m.h5")


def test_an_unknown_head_kind_is_refused():
    with pytest.raises(UnetslError, match="unknown kind 'dense'"):
        build_heads((1, 1, 16, 16), [Head("x", 1, kind="dense")], depth=2, n_filters=2)


def test_create_model_files_writes_both_layouts_with_a_backup(tmp_path):
    cfg = _plain(tmp_path)
    cfg.save()
    model = create_model_files(cfg)
    assert (tmp_path / "m-json.bak").is_file() and (tmp_path / "m.h5").is_file()
    loaded = load_model(tmp_path / "m.h5")
    assert all(np.array_equal(a, b) for a, b in zip(model.get_weights(), loaded.get_weights()))
    assert Config.load(tmp_path / "m.json").as_dict() == cfg.as_dict()

    data = {"unet": dict(UNET), "heads": copy.deepcopy(DEFAULT_HEADS), "data sources": []}
    multi = CerberusTraining(CerberusConfig(data, tmp_path / "c.json"))
    create_model_files(multi)  # the layout as read: no training section is added
    assert json.loads((tmp_path / "c.json").read_text()) == data
    assert list(load_model(tmp_path / "c.h5").output_names) == [h["name"] for h in DEFAULT_HEADS]
    create_model_files(multi, write_config=False)
    assert not (tmp_path / "c-json.bak").exists()
