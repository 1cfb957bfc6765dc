"""Config: defaults, original key names, JSON round trip, -D overrides and errors."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from unetsl.config.fields import FIELDS, key_table_markdown
from unetsl.config.model_config import Config, parse_override
from unetsl.errors import UnetslError

ORIGINAL_KEYS = [
    "input shape", "kernel shape", "pooling", "n labels", "depth", "n filters", "activation",
    "spatial dropout rate", "initial learning rate", "optimizer", "loss function", "stride",
    "batch size", "multi-gpu", "samples to predict", "normalize samples",
    "validation fraction", "epochs",
]


def test_defaults_have_every_original_key_in_order():
    keys = [f.key for f in FIELDS]
    original_positions = [keys.index(k) for k in ORIGINAL_KEYS]
    assert original_positions == sorted(original_positions)
    cfg = Config()
    assert cfg["input shape"] == [1, 3, 64, 64]
    assert cfg["n labels"] == 1 and cfg["depth"] == 3 and cfg["n filters"] == 32
    assert cfg["stride"] == [0, 3, 32, 32]
    assert cfg["initial learning rate"] == 1e-4  # changed from the original's 1e-6 (README)


def test_round_trip(tmp_path):
    cfg = Config(path=tmp_path / "m.json")
    cfg["depth"] = 2
    cfg["data sources"] = [{"source type": "paired directories", "input folders": ["images"],
                            "label folders": ["labels"], "rotations": [],
                            "labeller": "multiclass labels"}]
    cfg.save()
    text = (tmp_path / "m.json").read_text()
    assert text.startswith('{\n    "input shape": [\n        1,')  # the original's layout
    again = Config.load(tmp_path / "m.json")
    assert again.as_dict() == cfg.as_dict()
    again.save(tmp_path / "m2.json")
    assert (tmp_path / "m2.json").read_text() == text
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_original_file_loads_unchanged(compat):
    for name in ["default-2d.json", "unet3d.json", "with-sources.json", "trained-2d.json"]:
        raw = json.loads((compat / name).read_text())
        cfg = Config.load(compat / name)
        for key, value in raw.items():
            assert cfg[key] == value, (name, key)


def test_alias_and_unknown_key_warns_once(tmp_path, caplog):
    path = tmp_path / "old.json"
    path.write_text(json.dumps({"nlabels": 2, "n filtres": 8, "condenser": True}))
    with caplog.at_level(logging.WARNING, logger="unetsl"):
        cfg = Config.load(path)
        cfg.update({"n filtres": 9})
    assert cfg["n labels"] == 2
    unknown = [r.message for r in caplog.records if "n filtres" in r.message]
    assert len(unknown) == 1 and 'did you mean "n filters"' in unknown[0]
    assert any("condenser" in r.message and "ignored" in r.message for r in caplog.records)
    assert "condenser" not in json.loads(cfg.to_json())
    assert json.loads(cfg.to_json())["n filtres"] == 9  # unknown keys are kept


@pytest.mark.parametrize("text, key, value", [
    ("batch size=128", "batch size", 128),
    ("normalize samples=true", "normalize samples", True),
    ('activation="softmax"', "activation", "softmax"),
    ("stride=[0,3,16,16]", "stride", [0, 3, 16, 16]),
    ("nlabels=3", "n labels", 3),
])
def test_override_values_are_json(text, key, value):
    assert parse_override(text) == (key, value)
    cfg = Config()
    cfg.apply_overrides([text])
    assert cfg[key] == value


@pytest.mark.parametrize("text, needle", [
    ("batch size", "key=value"),
    ("activation=softmax", "could not parse"),
    ("input shape=[1,3,64]", '"input shape"'),
    ("depth=-1", '"depth"'),
    ("multi-gpu=1", '"multi-gpu"'),
])
def test_override_errors_name_the_key(text, needle):
    with pytest.raises(UnetslError) as err:
        Config().apply_overrides([text])
    assert needle in str(err.value)
    assert "\n" not in str(err.value)


def test_load_errors(tmp_path):
    with pytest.raises(UnetslError, match="does not exist"):
        Config.load(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"depth": 3,,}')
    with pytest.raises(UnetslError, match=r"bad.json: malformed JSON at line 1"):
        Config.load(bad)
    wrong = tmp_path / "wrong.json"
    wrong.write_text('{"input shape": [1, 64, 64]}')
    with pytest.raises(UnetslError, match=r'wrong.json: key "input shape" must be 4 integers'):
        Config.load(wrong)


def test_validate_checks_divisibility():
    cfg = Config({"input shape": [1, 3, 60, 64], "depth": 4})
    with pytest.raises(UnetslError, match=r'"input shape" y size 60 is not divisible'):
        cfg.validate()
    Config({"input shape": [1, 3, 64, 64], "depth": 4}).validate()


def test_model_path_follows_config_name_or_model_file(tmp_path):
    cfg = Config(path=tmp_path / "net.json")
    assert cfg.model_path == tmp_path / "net.h5"
    assert cfg.sibling("-latest.h5") == tmp_path / "net-latest.h5"
    cfg["model file"] = "weights/other.keras"
    assert cfg.model_path == tmp_path / "weights" / "other.keras"
    assert cfg.sibling("-best.keras") == tmp_path / "weights" / "other-best.keras"


def test_key_table_lists_every_key():
    table = key_table_markdown()
    for f in FIELDS:
        assert f"`{f.key}`" in table
    assert "original: `1e-06`" in table


def test_readme_key_table_is_current():
    REPO = Path(__file__).resolve().parents[2]

    text = (REPO / "README.md").read_text(encoding="utf-8")
    start = text.index("<!-- keys:start -->") + len("<!-- keys:start -->")
    end = text.index("<!-- keys:end -->")
    assert text[start:end].strip() == key_table_markdown(), (
        "README key table is stale: paste the output of "
        "python -c 'from unetsl.config.fields import key_table_markdown as k; print(k())'")


def test_config_pasted_from_the_original_readme_loads_leniently(tmp_path, caplog):
    """The original's README shows "input shape" : (1,64, 64, 64): Python tuples, read as
    lists (outside strings only, never evaluated), with one note; saving writes JSON."""
    pasted = tmp_path / "pasted.json"
    pasted.write_text('{\n    "input shape" : (1,64, 64, 64),\n     "kernel shape" : (3, 3, 3),\n'
                      '     "pooling": (2, 2, 2),\n     "nlabels" : 2,\n     "depth": 4,\n'
                      '     "model file" : "default-model (2).h5",\n}\n')
    with caplog.at_level(logging.WARNING, logger="unetsl"):
        cfg = Config.load(pasted)
    notes = [r.getMessage() for r in caplog.records]
    assert len(notes) == 1 and "pasted.json" in notes[0] and "read leniently" in notes[0]
    assert "tuples" in notes[0] and "proper JSON" in notes[0]
    assert cfg["input shape"] == [1, 64, 64, 64] and cfg["pooling"] == [2, 2, 2]
    assert cfg["n labels"] == 2 and cfg["model file"] == "default-model (2).h5"
    cfg.save()
    assert json.loads(pasted.read_text())["kernel shape"] == [3, 3, 3]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="unetsl"):
        Config.load(pasted)
    assert not caplog.records  # proper JSON now
    code = tmp_path / "code.json"
    code.write_text('{"depth": __import__("os").getcwd()}')
    with pytest.raises(UnetslError, match="code.json: malformed JSON"):
        Config.load(code)


def test_save_with_backup_keeps_the_old_file_and_refuses_before_touching_anything(tmp_path):
    """The commands' one save path: the old NAME.json becomes NAME-json.bak, then the new one
    is written; a target that cannot be written leaves every file as it was."""
    path = tmp_path / "m.json"
    first = Config(path=path)
    first.update({"n filters": 8})
    first.save(backup=True)
    assert not (tmp_path / "m-json.bak").exists()  # nothing to back up yet
    second = Config.load(path)
    second.update({"n filters": 16})
    second.save(backup=True)
    assert Config.load(tmp_path / "m-json.bak", must_exist=True)["n filters"] == 8
    assert Config.load(path)["n filters"] == 16
    assert second.save(path, backup=True, text='{"n filters": 4}\n') == path
    assert Config.load(path)["n filters"] == 4
    blocked = tmp_path / "folder.json"
    blocked.mkdir()  # a folder where the file should go
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(UnetslError, match="folder.json"):
        second.save(blocked, backup=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == before
