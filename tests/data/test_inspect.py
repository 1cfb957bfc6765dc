"""inspect_data_sources: the figure shows each patch's input, label and targets, side by side."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from click.testing import CliRunner
from matplotlib.figure import Figure

from unetsl.config.model_config import Config
from unetsl.data.inspect import build_pages, draw, panels, save_figure
from unetsl.data.synthetic import write_dataset


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("inspect")
    write_dataset(root, kind="2d", n_images=2, shape=(3, 64, 64))
    (root / "weights").mkdir()
    for i in range(2):
        tifffile.imwrite(root / "weights" / f"epi-00{i}.tif", np.full((3, 64, 64), 2, np.float32),
                         imagej=True, metadata={"axes": "TYX"})
    cfg = Config(path=root / "m.json")
    cfg.update({"n labels": 2, "stride": [0, 3, 16, 16], "input shape": [1, 3, 32, 32],
                "data sources": [
                    {"source type": "paired directories", "input folders": ["images"],
                     "label folders": ["labels"], "rotations": [90],
                     "labeller": "multiclass labels"},
                    {"source type": "weighted directories", "input folders": ["images"],
                     "label folders": ["labels"], "weights folders": ["weights"],
                     "labeller": "double membrane labels"}]})
    cfg.save()
    return root


def pages_of(project, **kw):
    cfg = Config.load(project / "m.json")
    return build_pages(cfg, patch_shape=(1, 3, 32, 32), n_labels=2, **kw)


def test_pages_summarise_each_source(project):
    pages = pages_of(project)
    assert [p.source.index for p in pages] == [0, 1]
    summary = "\n".join(pages[0].summary)
    assert ("source 0: paired directories; input: images; label: labels; multiclass labels"
            in summary)
    assert "rotations 90 deg" in summary
    assert "2 image pair(s), 2 volume(s) (c, z, y, x) (1, 3, 64, 64)" in summary
    assert "label values 0: " in summary and "3: " in summary
    assert "class balance (voxels per target channel) 0: " in summary
    assert len(pages[0].order) == 2 * 9 * 2  # 9 grid patches per image, plus the 90 degree copy
    first = pages[0].patches(0, 3)
    assert all(p.label.any() for p in first)  # patches with labels come first


def test_figure_panels_are_the_patch_arrays(project):
    pages = pages_of(project)
    fig = Figure()
    draw(fig, [(pages[0], 0, 2), (pages[1], 0, 1)], z=1)
    axes = fig.axes
    assert len(axes) == 2 * 4 + 5  # input, label, 2 targets (+ weights for the weighted source)
    assert [a.get_title() for a in axes[:4]] == ["input", "label", "target 0", "target 1"]
    assert [a.get_title() for a in axes[8:]] == ["input", "label", "target 0", "target 1",
                                                 "weights"]
    patch = pages[0].patches(0, 1)[0]
    shown = [np.asarray(a.images[0].get_array()) for a in axes[:4]]
    np.testing.assert_array_equal(shown[0], patch.x[0, 1])
    np.testing.assert_array_equal(shown[1], patch.label[1])
    np.testing.assert_array_equal(shown[2], patch.target[0, 1])
    np.testing.assert_array_equal(shown[3], patch.target[1, 1])
    np.testing.assert_array_equal(shown[2], (patch.label[1] & 1) > 0)  # multiclass bit 0
    weighted = pages[1].patches(0, 1)[0]
    np.testing.assert_array_equal(np.asarray(axes[12].images[0].get_array()), weighted.weights[1])
    # double membrane: bit 0 dilated by one pixel, so it covers the label's membrane
    assert weighted.target[0][(weighted.label & 1) > 0].all()
    assert "s0 epi-00" in axes[0].get_ylabel() and "z 1/3" in axes[0].get_ylabel()
    text = fig.texts[0].get_text()
    assert "source 0:" in text and "source 1: weighted directories" in text


def test_save_figure_writes_a_png(project, tmp_path):
    out = tmp_path / "view.png"
    save_figure(pages_of(project, sources=[1]), out, patches=2)
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def run(project, *args):
    from unetsl.cli.inspect_data_sources import main

    cwd = os.getcwd()
    os.chdir(project)
    try:
        result = CliRunner().invoke(main, ["-c", "m.json", *args])
    finally:
        os.chdir(cwd)

    class Ran:
        returncode, stdout, stderr = result.exit_code, result.stdout, result.stderr

    return Ran


def test_command_saves_the_view(project, tmp_path):
    out = tmp_path / "out.png"
    result = run(project, "--save", str(out), "--patches", "2", "--source", "0",
                 "-D", "augment flips=true")
    assert result.returncode == 0, result.stderr
    assert out.stat().st_size > 10_000 and f"wrote {out}" in result.stdout


def test_command_errors(project, tmp_path, monkeypatch, assert_one_line_error):
    import matplotlib

    monkeypatch.setattr(matplotlib, "get_backend", lambda: "agg")  # as on a headless node
    assert_one_line_error(run(project, "--save", str(tmp_path / "x.png"), "--source", "5"),
                          "--source 5", "2 data source(s)")
    assert_one_line_error(run(project), "no display", "--save")
    assert_one_line_error(run(project, "--save", str(tmp_path / "x.png"), "-D", "sampling=1"),
                          '"sampling" must be')


def test_window_pages_with_keys(project, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.backend_bases import KeyEvent

    from unetsl.data.inspect import show

    monkeypatch.setattr(plt, "show", lambda: None)
    show(pages_of(project), patches=2)
    fig = plt.gcf()

    def press(key):
        fig.canvas.callbacks.process("key_press_event", KeyEvent("key_press_event", fig.canvas,
                                                                  key))
        return "\n".join(t.get_text() for t in fig.texts)

    assert "source 0:" in press("right") and "source 1:" not in press("left")
    assert "source 1:" in press("up")
    assert "source 0:" in press("down")
    assert any(t.get_text() == "slice" for ax in fig.axes for t in ax.texts)  # the z slider
    image_axes = [ax for ax in fig.axes if ax.images]
    assert len(image_axes) == 2 * 4  # two patches: input, label, two targets
    plt.close(fig)


# --------------------------------------------------------------------------- cerberus

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
HEAD_TITLES = ["distance", "membrane-scale 0", "membrane-scale 1", "membrane-crop 0",
               "membrane-crop 1"]


@pytest.fixture(scope="module")
def cerberus_project(tmp_path_factory):
    """``make_example_data.py OUT --cerberus --n 1`` and examples/cerberus.json with
    images/ + labels-packed/ attached as the README does (linear labels)."""
    from unetsl.cli.attach_data_sources import main as attach

    root = tmp_path_factory.mktemp("inspect-cerberus")
    made = subprocess.run([sys.executable, str(EXAMPLES / "make_example_data.py"), str(root),
                           "--cerberus", "--n", "1"], capture_output=True, text=True, timeout=120)
    assert made.returncode == 0, made.stderr
    shutil.copy(EXAMPLES / "cerberus.json", root / "cerberus.json")
    cwd = os.getcwd()
    os.chdir(root)
    try:
        attached = CliRunner().invoke(attach, ["-c", "cerberus.json", "--paired", "images",
                                               "labels-packed", "--labeller", "linear", "-b"])
    finally:
        os.chdir(cwd)
    assert attached.exit_code == 0, attached.output
    return root


def cerberus_page(root):
    cfg = Config.load(root / "cerberus.json")
    [page] = build_pages(cfg, patch_shape=(1, 3, 64, 64), n_labels=1)
    return page


def test_cerberus_panels_are_the_training_targets(cerberus_project):
    from unetsl.config.cerberus_layout import CerberusConfig
    from unetsl.data.targets import HeadTargets

    page = cerberus_page(cerberus_project)
    config = CerberusConfig.load(cerberus_project / "cerberus.json")
    patch = page.patches(0, 1)[0]
    shown = panels(page, patch)
    assert [p.title.split("\n")[0] for p in shown] == ["input", "label (raw bits)",
                                                        *HEAD_TITLES]
    np.testing.assert_array_equal(shown[1].image, patch.label)  # the packed label itself
    expected = HeadTargets(config.heads, config.unet["pooling"])(patch.label)
    by_head = {"distance": shown[2:3], "membrane-scale": shown[3:5], "membrane-crop": shown[5:7]}
    for name, mine in by_head.items():
        np.testing.assert_array_equal(np.stack([p.image for p in mine]), expected[name])
    assert expected["membrane-scale"].shape == (2, 3, 32, 32)  # depth 1: half resolution
    assert [p.extent for p in by_head["membrane-scale"]] == [(-0.5, 63.5, 63.5, -0.5)] * 2
    assert "1/2 res, max pool" in shown[3].title and "full res" in shown[2].title
    assert all(p.extent is None for p in shown[:3] + shown[5:])
    np.testing.assert_array_equal(shown[5].image, (patch.label & 1) > 0)  # membrane bit 0
    summary = "\n".join(page.summary)
    assert "head membrane-scale: bits 0..1, multiclass labels, 1/2 res, max pool" in summary
    assert "head distance: bits 2..7, linear labels, full res" in summary


def test_cerberus_figure_has_one_axes_per_head_channel(cerberus_project):
    page = cerberus_page(cerberus_project)
    fig = Figure()
    draw(fig, [(page, 0, 2)], z=1)
    assert len(fig.axes) == 2 * 7
    assert [a.get_title().split("\n")[0] for a in fig.axes[2:7]] == HEAD_TITLES
    patch = page.patches(0, 1)[0]
    for ax, panel in zip(fig.axes[:7], panels(page, patch), strict=True):
        np.testing.assert_array_equal(np.asarray(ax.images[0].get_array()), panel.image[1])
        # every panel spans the input patch, so a half-resolution head lines up with it
        assert ax.get_xlim() == (-0.5, 63.5) and ax.get_ylim() == (63.5, -0.5)
    assert tuple(fig.axes[3].images[0].get_extent()) == (-0.5, 63.5, 63.5, -0.5)
    assert fig.axes[3].images[0].get_array().shape == (32, 32)


def test_cerberus_command_saves_the_view(cerberus_project, tmp_path):
    from unetsl.cli.inspect_data_sources import main

    out = tmp_path / "cerberus.png"
    cwd = os.getcwd()
    os.chdir(cerberus_project)
    try:
        result = CliRunner().invoke(main, ["-c", "cerberus.json", "--save", str(out),
                                           "--patches", "2"])
    finally:
        os.chdir(cwd)
    assert result.exit_code == 0, result.output
    assert f"wrote {out}" in result.stdout
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000


def test_cerberus_window_shows_the_heads(cerberus_project, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from unetsl.data.inspect import show

    monkeypatch.setattr(plt, "show", lambda: None)
    show([cerberus_page(cerberus_project)], patches=1)
    fig = plt.gcf()
    titles = [ax.get_title().split("\n")[0] for ax in fig.axes if ax.images]
    assert titles == ["input", "label (raw bits)", *HEAD_TITLES]
    plt.close(fig)


def test_head_grid_follows_the_resampler():
    from unetsl.config.heads import Head
    from unetsl.data.inspect import _head_grid

    def head(depth, resampler):
        return Head("h", 1, 2, 0, "sigmoid", depth, resampler, "multiclass labels")

    pooled = _head_grid(head(1, "max pool"), (2, 2, 2), (4, 8, 8))
    assert pooled.shape == (2, 4, 4) and pooled.z_map.tolist() == [0, 0, 1, 1]
    assert pooled.extent == (-0.5, 7.5, 7.5, -0.5)
    cropped = _head_grid(head(1, "crop"), (2, 2, 2), (4, 8, 8))
    assert cropped.shape == (2, 4, 4) and cropped.z_map.tolist() == [-1, 0, 1, -1]
    assert cropped.extent == (1.5, 5.5, 5.5, 1.5)
    flat = _head_grid(head(1, "min pool"), (1, 2, 2), (1, 8, 8))  # a 2-D patch: z not pooled
    assert flat.shape == (1, 4, 4) and flat.z_map.tolist() == [0]


def test_a_slice_outside_the_patch_is_refused_not_clamped(project, tmp_path,
                                                           assert_one_line_error):
    from unetsl.errors import UnetslError

    out = tmp_path / "x.png"
    assert_one_line_error(run(project, "--save", str(out), "--slice", "40"),
                          "--slice 40", "3 slice(s), 0 to 2")
    assert not out.exists()
    with pytest.raises(UnetslError, match="slice -1: the patches have 3 slice"):
        draw(Figure(), [(pages_of(project, sources=[0])[0], 0, 1)], z=-1)
