"""Data sources: entries, pairing of files, paths, rotations units and loading volumes."""

from __future__ import annotations

import json
import logging
import math
import shutil

import numpy as np
import pytest
import tifffile

from unetsl.config.model_config import Config
from unetsl.data.sources import (
    check_source_files,
    image_shape,
    make_entry,
    pair_folders,
    parse_angles,
    parse_source,
    parse_sources,
    resolve_path,
    stored_path,
)
from unetsl.data.synthetic import write_dataset
from unetsl.data.volumes import load_volumes
from unetsl.errors import UnetslError


def write_tyx(path, array):
    """An ImageJ hyperstack of a (t, y, x) array, as Fiji saves a 2D time series."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, np.asarray(array), imagej=True, metadata={"axes": "TYX"})


def write_zyx(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, np.asarray(array), imagej=True, metadata={"axes": "ZYX"})


def paired(images="images", labels="labels", labeller="multiclass labels", **extra):
    return {"source type": "paired directories", "input folders": [images],
            "label folders": [labels], "rotations": [], "labeller": labeller, **extra}


def config(tmp_path, *entries, **keys):
    cfg = Config(path=tmp_path / "m.json")
    cfg["data sources"] = list(entries)
    cfg.update(keys)
    return cfg


def names(pairs):
    return [(p.image.name, p.label.name) for p in pairs]


# --- pairing ------------------------------------------------------------------------------

def test_pairs_by_identical_name(tmp_path):
    write_dataset(tmp_path, kind="2d", n_images=3, shape=(3, 32, 32))
    pairs = pair_folders([tmp_path / "images", tmp_path / "labels"])
    assert names(pairs) == [(f"epi-00{i}.tif", f"epi-00{i}.tif") for i in range(3)]


def test_pairs_by_trailing_number_when_names_differ(tmp_path):
    for i in (7, 10, 2):
        write_tyx(tmp_path / "images" / f"img-{i}.tif", np.zeros((1, 8, 8), np.uint16))
        write_tyx(tmp_path / "labels" / f"lbl-{i:03d}.tiff", np.zeros((1, 8, 8), np.uint8))
    pairs = pair_folders([tmp_path / "images", tmp_path / "labels"])
    assert sorted(names(pairs)) == [("img-10.tif", "lbl-010.tiff"), ("img-2.tif", "lbl-002.tiff"),
                                    ("img-7.tif", "lbl-007.tiff")]


def test_name_wins_over_number(tmp_path):
    for n in ("a-1", "b-1"):
        write_tyx(tmp_path / "images" / f"{n}.tif", np.zeros((1, 8, 8), np.uint16))
    write_tyx(tmp_path / "labels" / "b-1.tif", np.zeros((1, 8, 8), np.uint8))
    assert names(pair_folders([tmp_path / "images", tmp_path / "labels"])) == [
        ("b-1.tif", "b-1.tif")]


def test_label_without_image_is_an_error_naming_it(tmp_path):
    write_tyx(tmp_path / "images" / "img-1.tif", np.zeros((1, 8, 8), np.uint16))
    write_tyx(tmp_path / "labels" / "img-1.tif", np.zeros((1, 8, 8), np.uint8))
    write_tyx(tmp_path / "labels" / "other.tif", np.zeros((1, 8, 8), np.uint8))
    with pytest.raises(UnetslError, match=r"other\.tif") as err:
        pair_folders([tmp_path / "images", tmp_path / "labels"])
    assert "\n" not in str(err.value)


def test_image_without_label_is_skipped_with_warning(tmp_path, caplog):
    for i in (1, 2, 3):
        write_tyx(tmp_path / "images" / f"img-{i}.tif", np.zeros((1, 8, 8), np.uint16))
    write_tyx(tmp_path / "labels" / "img-2.tif", np.zeros((1, 8, 8), np.uint8))
    with caplog.at_level(logging.WARNING, logger="unetsl"):
        pairs = pair_folders([tmp_path / "images", tmp_path / "labels"])
    assert names(pairs) == [("img-2.tif", "img-2.tif")]
    assert "img-1.tif" in caplog.text and "img-3.tif" in caplog.text


def test_two_labels_for_one_image_is_an_error(tmp_path):
    write_tyx(tmp_path / "images" / "img-7.tif", np.zeros((1, 8, 8), np.uint16))
    write_tyx(tmp_path / "labels" / "a-7.tif", np.zeros((1, 8, 8), np.uint8))
    write_tyx(tmp_path / "labels" / "b-07.tif", np.zeros((1, 8, 8), np.uint8))
    with pytest.raises(UnetslError, match="two labels"):
        pair_folders([tmp_path / "images", tmp_path / "labels"])


def test_weights_pair_like_labels_and_missing_weights_fail(tmp_path):
    for i in (1, 2):
        write_tyx(tmp_path / "images" / f"img-{i}.tif", np.zeros((1, 8, 8), np.uint16))
        write_tyx(tmp_path / "labels" / f"img-{i}.tif", np.zeros((1, 8, 8), np.uint8))
    write_tyx(tmp_path / "weights" / "w-1.tif", np.ones((1, 8, 8), np.float32))
    folders = [tmp_path / "images", tmp_path / "labels", tmp_path / "weights"]
    with pytest.raises(UnetslError, match=r"no weights.*img-2\.tif"):
        pair_folders(folders)
    write_tyx(tmp_path / "weights" / "w-2.tif", np.ones((1, 8, 8), np.float32))
    pairs = pair_folders(folders)
    assert [(p.image.name, p.weights.name) for p in pairs] == [("img-1.tif", "w-1.tif"),
                                                              ("img-2.tif", "w-2.tif")]


@pytest.mark.parametrize("make, needle", [
    (lambda p: None, "does not exist"),
    (lambda p: (p / "images").mkdir(), "holds no .tif"),
    (lambda p: (p / "images").write_text("x"), "is not a folder"),
])
def test_bad_folders(tmp_path, make, needle):
    make(tmp_path)
    write_tyx(tmp_path / "labels" / "a.tif", np.zeros((1, 8, 8), np.uint8))
    with pytest.raises(UnetslError, match=needle) as err:
        pair_folders([tmp_path / "images", tmp_path / "labels"], where="source 0: ")
    assert str(err.value).startswith("source 0: images folder ")


def test_hidden_and_other_files_are_ignored(tmp_path):
    write_tyx(tmp_path / "images" / "a.tif", np.zeros((1, 8, 8), np.uint16))
    write_tyx(tmp_path / "labels" / "a.tif", np.zeros((1, 8, 8), np.uint8))
    (tmp_path / "images" / ".a-tmp.tif").write_bytes(b"junk")
    (tmp_path / "images" / "notes.txt").write_text("x")
    assert names(pair_folders([tmp_path / "images", tmp_path / "labels"])) == [("a.tif", "a.tif")]


def test_shape_mismatch_names_both_files(tmp_path):
    write_tyx(tmp_path / "images" / "a.tif", np.zeros((2, 16, 16), np.uint16))
    write_tyx(tmp_path / "labels" / "a.tif", np.zeros((2, 16, 12), np.uint8))
    source = parse_source(paired(), 0, tmp_path)
    with pytest.raises(UnetslError, match=r"source 0: .*images/a\.tif .*labels/a\.tif"):
        check_source_files(source)
    cfg = config(tmp_path, paired())
    with pytest.raises(UnetslError, match=r"images/a\.tif .*labels/a\.tif"):
        load_volumes(cfg, patch_shape=(1, 1, 8, 8), n_labels=1)


def test_image_shape_from_header(tmp_path):
    write_tyx(tmp_path / "t.tif", np.zeros((3, 16, 20), np.uint16))
    write_zyx(tmp_path / "z.tif", np.zeros((5, 16, 20), np.uint8))
    np.save(tmp_path / "a.npy", np.zeros((2, 4, 6), np.float32))
    assert image_shape(tmp_path / "t.tif") == (3, 1, 1, 16, 20)
    assert image_shape(tmp_path / "z.tif") == (1, 1, 5, 16, 20)
    assert image_shape(tmp_path / "a.npy") == (1, 1, 2, 4, 6)
    (tmp_path / "bad.tif").write_bytes(b"not a tiff")
    with pytest.raises(UnetslError, match=r"bad\.tif: cannot read image"):
        image_shape(tmp_path / "bad.tif")


# --- paths ----------------------------------------------------------------------------------

def test_relative_paths_follow_the_config_folder(tmp_path, monkeypatch):
    project = tmp_path / "project"
    write_dataset(project, kind="2d", n_images=1, shape=(3, 32, 32))
    cfg = config(project, paired())
    cfg.save()
    moved = tmp_path / "moved"
    shutil.move(project, moved)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    volumes = load_volumes(Config.load(moved / "m.json"), patch_shape=(1, 3, 32, 32), n_labels=2)
    assert len(volumes) == 1 and volumes[0].pair.image == moved / "images" / "epi-000.tif"


def test_environment_variables_and_home(tmp_path, monkeypatch):
    monkeypatch.setenv("UNETSL_DATA", str(tmp_path / "data"))
    assert resolve_path("$UNETSL_DATA/images", tmp_path / "cfg") == tmp_path / "data" / "images"
    monkeypatch.delenv("UNETSL_DATA")
    with pytest.raises(UnetslError, match=r"\$UNETSL_DATA is not set"):
        resolve_path("$UNETSL_DATA/images", tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert resolve_path("~/x", "/elsewhere") == tmp_path / "x"


def test_stored_path(tmp_path):
    (tmp_path / "sub").mkdir()
    assert stored_path("images", tmp_path, cwd=tmp_path) == "images"
    assert stored_path("images/", tmp_path, cwd=tmp_path) == "images"
    assert stored_path("../images", tmp_path, cwd=tmp_path / "sub") == "images"
    assert stored_path(str(tmp_path / "images"), tmp_path, cwd="/") == "images"
    assert stored_path("/data/images", tmp_path, cwd=tmp_path) == "/data/images"
    assert stored_path("$DATA/images", tmp_path) == "$DATA/images"
    assert stored_path("~/images", tmp_path) == "~/images"


# --- entries --------------------------------------------------------------------------------

def test_make_entry_is_the_original_layout_with_the_unit():
    assert make_entry("paired directories", ["images", "labels"], 1) == {
        "source type": "paired directories", "input folders": ["images"],
        "label folders": ["labels"], "rotations": [], "rotation unit": "degrees",
        "labeller": "multiclass labels"}
    weighted = make_entry("weighted directories", ["i", "l", "w"], "linear", [90.0])
    assert weighted["weights folders"] == ["w"] and weighted["labeller"] == "linear labels"
    files = make_entry("paired files", ["a.tif", "b.tif"], "region labels", [],
                       {"sampling": "foreground"})
    assert files["training images"] == ["a.tif"] and files["sampling"] == "foreground"


@pytest.mark.parametrize("entry, needle", [
    ({"source type": "folders"}, '"source type" must be one of'),
    (paired(labeller="fuzzy labels"), "unknown labeller 'fuzzy labels'"),
    ({"source type": "paired directories", "input folders": ["a"], "labeller": 1},
     '"label folders" must be a non-empty list'),
    ({**paired(), "label folders": ["a", "b"]}, "folder lists must have the same length"),
    ({**paired(), "labeller": None} | {"labeller": "x"}, "unknown labeller"),
    ({k: v for k, v in paired().items() if k != "labeller"}, 'missing "labeller"'),
    (paired(rotations=["a"]), '"rotations" must be a list of angles'),
    (paired(**{"rotation unit": "turns"}), '"rotation unit" must be'),
    (paired(**{"n labels": 0}), '"n labels" must be an integer'),
    (paired(sampling="everywhere"), 'key "sampling" must be'),
    ([1, 2], "must be a JSON object"),
])
def test_bad_entries_are_one_line_errors(tmp_path, entry, needle):
    with pytest.raises(UnetslError, match=needle) as err:
        parse_source(entry, 3, tmp_path)
    assert str(err.value).startswith("source 3") and "\n" not in str(err.value)


def test_unknown_source_key_warns(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="unetsl"):
        parse_source(paired(rotation=[1]), 0, tmp_path)
    assert 'unknown key "rotation"' in caplog.text and '"rotations"' in caplog.text


def test_rotations_are_degrees_unless_marked_radians(tmp_path, caplog):
    assert parse_source(paired(rotations=[45, 90]), 0, tmp_path).rotations == (45.0, 90.0)
    rad = parse_source(paired(rotations=[0.5, 1.0], **{"rotation unit": "radians"}), 0, tmp_path)
    assert rad.rotations == pytest.approx((math.degrees(0.5), math.degrees(1.0)))
    with caplog.at_level(logging.WARNING, logger="unetsl"):
        parse_source(paired(rotations=[0.5, 1.0]), 0, tmp_path)
    assert '"rotation unit": "radians"' in caplog.text


def test_parse_angles():
    assert parse_angles("") == []
    assert parse_angles("0.5, 1.0") == [0.5, 1.0]
    assert parse_angles("0 45,90") == [0.0, 45.0, 90.0]
    with pytest.raises(UnetslError, match="cannot convert 'x'"):
        parse_angles("10 x")


def test_empty_data_sources(tmp_path):
    with pytest.raises(UnetslError, match='"data sources" is empty; .*attach_data_sources'):
        parse_sources(config(tmp_path))


# --- volumes --------------------------------------------------------------------------------

def test_volumes_per_frame_and_time_as_depth(tmp_path):
    write_dataset(tmp_path, kind="2d", n_images=2, shape=(4, 32, 40))
    cfg = config(tmp_path, paired())
    flat = load_volumes(cfg, patch_shape=(1, 1, 32, 32), n_labels=2)
    assert len(flat) == 8 and flat[0].image.shape == (1, 1, 32, 40)
    assert flat[0].label.shape == (1, 32, 40)
    deep = load_volumes(cfg, patch_shape=(1, 3, 32, 32), n_labels=2)
    assert len(deep) == 2 and deep[0].image.shape == (1, 4, 32, 40)
    frames = tifffile.imread(tmp_path / "images" / "epi-000.tif")
    np.testing.assert_array_equal(deep[0].image[0], frames)
    np.testing.assert_array_equal(flat[1].image[0, 0], frames[1])


def test_3d_stacks_and_paired_files(tmp_path):
    write_dataset(tmp_path, kind="3d", n_images=1, shape=(8, 32, 32))
    entry = make_entry("paired files", ["images/epi-000.tif", "labels/epi-000.tif"], 1)
    volumes = load_volumes(config(tmp_path, entry), patch_shape=(1, 8, 16, 16), n_labels=2)
    assert len(volumes) == 1 and volumes[0].image.shape == (1, 8, 32, 32)
    assert set(np.unique(volumes[0].label)) <= {0, 1, 3}


def test_small_images_are_reflect_padded_with_warning(tmp_path, caplog):
    raw = np.arange(2 * 20 * 24).reshape(2, 20, 24)
    write_tyx(tmp_path / "images" / "a.tif", raw.astype(np.uint16))
    write_tyx(tmp_path / "labels" / "a.tif", np.ones((2, 20, 24), np.uint8))
    with caplog.at_level(logging.WARNING, logger="unetsl"):
        volumes = load_volumes(config(tmp_path, paired()), patch_shape=(1, 3, 32, 32), n_labels=1)
    assert "smaller than the patch" in caplog.text and "a.tif" in caplog.text
    (volume,) = volumes
    assert volume.image.shape == (1, 3, 32, 32) and volume.label.shape == (3, 32, 32)
    expected = np.pad(raw, [(0, 1), (6, 6), (4, 4)], mode="reflect")
    np.testing.assert_array_equal(volume.image[0], expected)


def test_percentile_normalisation_per_image(tmp_path):
    rng = np.random.default_rng(0)
    write_tyx(tmp_path / "images" / "a.tif", rng.integers(100, 4000, (1, 32, 32)).astype(np.uint16))
    write_tyx(tmp_path / "labels" / "a.tif", np.zeros((1, 32, 32), np.uint8))
    cfg = config(tmp_path, paired(), **{"normalization percentiles": [1, 99]})
    (volume,) = load_volumes(cfg, patch_shape=(1, 1, 16, 16), n_labels=1)
    assert volume.image.dtype == np.float32
    assert np.mean(volume.image < 0) == pytest.approx(0.01, abs=0.005)
    assert np.mean(volume.image > 1) == pytest.approx(0.01, abs=0.005)
    raw = load_volumes(config(tmp_path, paired()), patch_shape=(1, 1, 16, 16), n_labels=1)
    assert raw[0].image.dtype == np.uint16


def test_labeller_must_fit_the_model_outputs(tmp_path):
    write_dataset(tmp_path, kind="2d", n_images=1, shape=(1, 16, 16))
    cfg = config(tmp_path, paired(), paired(labels="labels-dist", labeller="linear labels"))
    with pytest.raises(UnetslError, match=r"source 1: labeller 'linear labels' gives 1 .*has 2"):
        load_volumes(cfg, patch_shape=(1, 1, 16, 16), n_labels=2)
    cfg = config(tmp_path, paired(labeller="categorical labels"))
    with pytest.raises(UnetslError, match="source 0: categorical labels: n labels must be at"):
        load_volumes(cfg, patch_shape=(1, 1, 16, 16), n_labels=1)
    cfg = config(tmp_path, paired(**{"n labels": 3}))
    with pytest.raises(UnetslError, match='source 0: "n labels" is 3 but the model has 2'):
        load_volumes(cfg, patch_shape=(1, 1, 16, 16), n_labels=2)


def test_bad_label_values_fail_at_load_naming_the_file(tmp_path):
    write_dataset(tmp_path, kind="2d", n_images=1, shape=(1, 48, 48))  # labels 0, 1, 3
    cfg = config(tmp_path, paired(labeller="categorical labels"))
    with pytest.raises(UnetslError, match=r"source 0: .*labels/epi-000\.tif: categorical labels: "
                                          "values 3 are not one-hot"):
        load_volumes(cfg, patch_shape=(1, 1, 16, 16), n_labels=2)


def test_channel_count_must_match(tmp_path):
    write_tyx(tmp_path / "images" / "a.tif", np.zeros((1, 15, 16), np.uint16))
    write_tyx(tmp_path / "labels" / "a.tif", np.zeros((1, 15, 16), np.uint8))
    with pytest.raises(UnetslError, match=r"a\.tif: shape .* the model expects 2"):
        load_volumes(config(tmp_path, paired()), patch_shape=(2, 1, 8, 8), n_labels=1)


def test_original_config_loads(compat, tmp_path, caplog):
    """with-sources.json of the original: its sources parse; radians are reported."""
    shutil.copytree(compat / "images", tmp_path / "images")
    shutil.copytree(compat / "labels", tmp_path / "labels")
    shutil.copy(compat / "trained-2d.json", tmp_path / "trained-2d.json")
    cfg = Config.load(tmp_path / "trained-2d.json")
    with caplog.at_level(logging.WARNING, logger="unetsl"):
        volumes = load_volumes(cfg, patch_shape=cfg["input shape"], n_labels=cfg["n labels"])
    assert "radians" in caplog.text
    assert len(volumes) == 3 and volumes[0].image.shape == (1, 3, 128, 128)
    data = json.loads((compat / "with-sources.json").read_text())
    assert [parse_source(e, i, tmp_path).labeller.name for i, e in
            enumerate(data["data sources"])] == ["multiclass labels", "linear labels"]


def test_shape_mismatch_names_every_axis(tmp_path):
    """A weights file whose 5 channels were saved as 5 plain pages reads as 5 slices: the
    message shows c and z of both files, so the cause is visible."""
    from unetsl.data.sources import FilePair, check_pair_shapes

    tifffile.imwrite(tmp_path / "img.tif", np.zeros((32, 32), np.uint8))
    tifffile.imwrite(tmp_path / "w.tif", np.ones((5, 32, 32), np.float32))
    pair = FilePair(image=tmp_path / "img.tif", label=tmp_path / "img.tif",
                    weights=tmp_path / "w.tif")
    with pytest.raises(UnetslError) as err:
        check_pair_shapes(pair, where="source 0: ")
    message = str(err.value)
    assert "img.tif has (t, c, z, y, x) = (1, 1, 1, 32, 32) but " in message
    assert "w.tif has (1, 1, 5, 32, 32)" in message and "\n" not in message
