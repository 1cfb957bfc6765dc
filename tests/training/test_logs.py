"""The epoch and batch logs: the original's names, comment lines, headers, values; curves."""

from __future__ import annotations

import numpy as np
import pytest

from unetsl.nets.losses import get_loss
from unetsl.nets.unet import build_cascade, build_unet
from unetsl.training.logs import (
    BatchLog,
    EpochLog,
    expected_log_keys,
    format_value,
    log_files,
    new_run_id,
    plot_curves,
    read_log,
)

TINY = dict(n_labels=2, depth=2, n_filters=2)


class Counter:
    batches_done = 0


def compiled(cascade: bool = False):
    model = (build_cascade((1, 3, 16, 16), 2, **TINY) if cascade
             else build_unet((1, 3, 16, 16), **TINY))
    model.compile(optimizer="adam", loss=get_loss("unetsl.model.sorensenDiceCoefLoss"))
    return model


def test_run_id_is_milliseconds_in_hex(tmp_path):
    assert new_run_id(tmp_path, "m", now_ms=0x1A2103B2D58) == "1a2103b2d58"
    assert new_run_id(tmp_path, "m", now_ms=255) == "000000ff"  # %08x
    files = log_files(tmp_path, "m", "000000ff")
    assert files.epoch_log.name == "training-log_m-000000ff.txt"
    assert files.batch_log.name == "batch-log_m-000000ff.txt"
    assert files.snapshot.name == "training-log_m-000000ff.json"
    files.batch_log.write_text("")
    assert new_run_id(tmp_path, "m", now_ms=255) == "00000100"  # taken: the next one
    assert len(new_run_id(tmp_path, "m")) >= 11  # now: about 11 hex digits


def test_values_are_python_float_text():
    assert format_value(np.float32(0.25)) == "0.25"
    assert format_value(np.float32(0.1)) == str(float(np.float32(0.1)))
    assert format_value(-0.7630274891853333) == "-0.7630274891853333"
    assert format_value(None) == "-1"


def test_epoch_log_layout(tmp_path):
    model = compiled()
    log = EpochLog(tmp_path / "e.txt", "m.h5", comments=["resumed: x"])
    log.set_model(model)
    log.on_train_begin()
    keys = {"loss": -0.5, "binary_accuracy": np.float32(0.75), "accuracy": 0.5,
            "val_loss": -0.25, "val_accuracy": 0.5, "val_binary_accuracy": 1.0,
            "learning_rate": 0.001}
    log.on_epoch_end(0, keys)
    log.on_epoch_end(1, {k: v for k, v in keys.items() if k != "val_accuracy"})
    log.close()
    lines = (tmp_path / "e.txt").read_text().splitlines()
    assert lines[0] == "#training model: m.h5"
    assert lines[1].startswith("#input: <KerasTensor shape=(None, 3, 16, 16, 1)")
    assert lines[2].startswith("#output: <KerasTensor shape=(None, 3, 16, 16, 2)")
    assert lines[3].startswith("#optimiser: <keras.src.optimizers.adam.Adam object at 0x")
    assert lines[4] == "#resumed: x"
    assert lines[5] == ("#epoch\taccuracy\tbinary_accuracy\tloss\tval_accuracy\t"
                        "val_binary_accuracy\tval_loss")  # sorted, learning_rate left out
    assert lines[6] == "0\t0.5\t0.75\t-0.5\t0.5\t1.0\t-0.25"
    assert lines[7] == "1\t0.5\t0.75\t-0.5\t-1\t1.0\t-0.25"  # a missing value is -1
    assert (tmp_path / "e.txt").read_text().endswith("\n")


def test_batch_log_layout_and_counter(tmp_path):
    model = compiled()
    counter = Counter()
    counter.batches_done = 7
    log = BatchLog(tmp_path / "b.txt", counter)
    log.set_model(model)
    log.on_train_begin()
    for batch in range(3):
        log.on_train_batch_end(batch, {"loss": -0.1 * batch, "accuracy": 0.5,
                                       "binary_accuracy": 0.25})
    log.close()
    lines = (tmp_path / "b.txt").read_text().splitlines()
    assert [ln.split(":")[0] for ln in lines[:3]] == ["#input", "#output", "#optimiser"]
    assert lines[3] == "#batch_number\t2.accuracy\t3.binary_accuracy\t4.loss"
    assert lines[4:] == ["7\t0.5\t0.25\t-0.0", "8\t0.5\t0.25\t-0.1", "9\t0.5\t0.25\t-0.2"]
    assert counter.batches_done == 10


def test_cascade_batch_log_follows_the_readme(tmp_path):
    model = compiled(cascade=True)
    log = BatchLog(tmp_path / "b.txt", Counter(), batch_size=4)
    log.set_model(model)
    log.on_train_begin()
    logs = {f"cascade_{i}_{m}": 0.5 for i in range(2)
            for m in ("accuracy", "binary_accuracy", "loss")}
    log.on_train_batch_end(0, {**logs, "loss": -1.0})
    log.on_train_batch_end(1, {**logs, "loss": -2.0})
    log.close()
    lines = (tmp_path / "b.txt").read_text().splitlines()
    header = lines[3].split("\t")
    assert header == ["#batch_number", "batch", "cascade_0_accuracy",
                      "cascade_0_binary_accuracy", "cascade_0_loss", "cascade_1_accuracy",
                      "cascade_1_binary_accuracy", "cascade_1_loss", "loss", "size"]
    assert lines[5].split("\t") == ["1", "1", "0.5", "0.5", "0.5", "0.5", "0.5", "0.5", "-2.0",
                                    "4"]


def test_expected_keys():
    assert expected_log_keys(["output"], True) == [
        "accuracy", "binary_accuracy", "loss", "val_accuracy", "val_binary_accuracy", "val_loss"]
    keys = expected_log_keys(["cascade_0", "cascade_1", "cascade_2"], True)
    assert keys[:10] == [f"cascade_{i}_{m}" for i in range(3)
                         for m in ("accuracy", "binary_accuracy", "loss")] + ["loss"]
    assert keys[10] == "val_cascade_0_accuracy" and keys[-1] == "val_loss" and len(keys) == 20


def test_same_headers_as_the_original(compat, tmp_path):
    """Our header and comment lines match the original's real logs line by line."""
    model = compiled()
    epoch = EpochLog(tmp_path / "e.txt", "trained-2d.h5")
    batch = BatchLog(tmp_path / "b.txt", Counter())
    for cb in (epoch, batch):
        cb.set_model(model)
        cb.on_train_begin()
    original_epoch = (compat / "training-log_trained-2d-1a2103b2d58.txt").read_text().splitlines()
    original_batch = (compat / "batch-log_trained-2d-1a2103b2d58.txt").read_text().splitlines()
    keys = original_epoch[4].split("\t")[1:]
    epoch.on_epoch_end(0, dict.fromkeys(keys, 0.5))
    batch.on_train_batch_end(0, {k.split(".", 1)[1]: 0.5
                                 for k in original_batch[3].split("\t")[1:]})
    epoch.close()
    batch.close()
    ours_epoch = (tmp_path / "e.txt").read_text().splitlines()
    ours_batch = (tmp_path / "b.txt").read_text().splitlines()
    assert ours_epoch[0] == original_epoch[0]
    assert ours_epoch[4] == original_epoch[4]
    assert ours_batch[3] == original_batch[3]
    pairs = ((ours_epoch[:4], original_epoch[:4]), (ours_batch[:3], original_batch[:3]))
    for ours, theirs in pairs:
        assert [ln.split(":")[0] for ln in ours] == [ln.split(":")[0] for ln in theirs]
    # the original's values are Python float text too: parse and re-format identically
    for line in original_epoch[5:] + original_batch[4:10]:
        fields = line.split("\t")
        assert [format_value(float(f)) for f in fields[1:]] == fields[1:]


def test_read_log_and_curves_of_the_original(compat, tmp_path):
    keys, rows = read_log(compat / "batch-log_trained-2d-1a2103b2d58.txt")
    assert keys == ["accuracy", "binary_accuracy", "loss"]
    assert len(rows) == 693 and rows[-1][0] == 692
    keys, rows = read_log(compat / "training-log_trained-2d-1a2103b2d58.txt")
    assert len(rows) == 3 and keys[-1] == "val_loss"
    png = plot_curves([compat / "training-log_trained-2d-1a2103b2d58.txt"], tmp_path / "c.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_read_log_skips_a_cut_line_and_curves_need_rows(tmp_path):
    log = tmp_path / "e.txt"
    log.write_text("#training model: m.h5\n")
    assert plot_curves([log], tmp_path / "c.png") is None
    assert not (tmp_path / "c.png").exists()
    log.write_text("#epoch\tloss\tval_loss\n0\t-0.5\t-0.25\n1\t-0.")
    assert read_log(log) == (["loss", "val_loss"], [[0.0, -0.5, -0.25]])
    assert plot_curves([log, tmp_path / "missing.txt"], tmp_path / "c.png") == tmp_path / "c.png"


def test_cascade_curves(tmp_path):
    log = tmp_path / "e.txt"
    keys = expected_log_keys(["cascade_0", "cascade_1"], True)
    rows = ["\t".join([str(e)] + [str(0.1 * e + i) for i in range(len(keys))]) for e in range(4)]
    log.write_text("#epoch\t" + "\t".join(keys) + "\n" + "\n".join(rows) + "\n")
    assert plot_curves([log], tmp_path / "c.png").stat().st_size > 1000


@pytest.mark.parametrize("key, parts", [
    ("val_cascade_0_binary_accuracy", (True, "cascade_0", "binary_accuracy")),
    ("accuracy", (False, "", "accuracy")),
    ("val_loss", (True, "", "loss")),
])
def test_split_key(key, parts):
    from unetsl.training.logs import _split_key

    assert _split_key(key) == parts


def test_curves_one_colour_per_quantity_solid_training_dashed_validation(tmp_path):
    from unetsl.training.logs import curves_figure

    heads = ["distance", "membrane"]
    keys = sorted([f"{p}{h}_{m}" for p in ("", "val_") for h in heads
                   for m in ("accuracy", "binary_accuracy", "loss", "f1_0", "f1_1")]
                  + ["loss", "val_loss"])
    log = tmp_path / "e.txt"
    rows = ["\t".join([str(e)] + [str(0.1 * e + i) for i in range(len(keys))]) for e in range(3)]
    log.write_text("#epoch\t" + "\t".join(keys) + "\n" + "\n".join(rows) + "\n")
    fig = curves_figure([log])
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["loss", "accuracy", "binary accuracy", "F1 per channel"]
    for ax in fig.axes:
        colours: dict[str, set] = {}
        for line in ax.get_lines():
            colours.setdefault(line.get_color(), set()).add(line.get_linestyle())
        assert all(styles == {"-", "--"} for styles in colours.values()), (ax.get_title(),
                                                                           colours)
        legend = [t.get_text() for t in ax.get_legend().get_texts()]
        assert {"training", "validation"} <= set(legend)
        assert len(colours) == len(legend) - 2  # one legend entry per colour
    legend = {ax.get_title(): [t.get_text() for t in ax.get_legend().get_texts()]
              for ax in fig.axes}
    assert legend["loss"][:3] == ["total", "distance", "membrane"]
    assert "membrane channel 1" in legend["F1 per channel"]
    assert list(fig.axes[0].get_lines()[0].get_xdata()) == [1, 2, 3]  # as the terminal counts
    by_output = {(ax.get_title(), t.get_text()): h.get_color() for ax in fig.axes
                 for t, h in zip(ax.get_legend().get_texts(), ax.get_legend().legend_handles)}
    assert by_output["loss", "membrane"] == by_output["accuracy", "membrane"]  # every panel
    assert by_output["loss", "distance"] != by_output["loss", "membrane"]
    single = tmp_path / "s.txt"
    single.write_text("#epoch\tloss\tval_loss\n0\t0.5\t0.6\n1\t0.4\t0.5\n")
    (ax,) = curves_figure([single]).axes
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["loss", "training",
                                                                   "validation"]
    assert len({line.get_color() for line in ax.get_lines()}) == 1
