"""Export without the optional bioimageio.spec: one clear line, before any long work.

No importorskip here: these tests hide the package, so they run with or without it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from unetsl.errors import UnetslError
from unetsl.export.bioimageio import export_bioimageio

HIDE_SPEC = "import sys; sys.modules['bioimageio.spec'] = None"  # its import then fails


def test_missing_spec_stops_before_the_model_is_loaded(tiny_model: Path, tmp_path: Path,
                                                       monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "bioimageio.spec", None)

    def loaded(*args, **kwargs):
        raise AssertionError("the model was loaded before bioimageio.spec was checked")

    monkeypatch.setattr("unetsl.nets.model_files.load_model", loaded)
    with pytest.raises(UnetslError, match=r"bioimageio\.spec.*pip install 'unetsl\[bioimageio\]'"):
        export_bioimageio(tiny_model, tmp_path / "out.zip")
    assert list(tmp_path.iterdir()) == []  # nothing written, not even a temporary file


def test_cli_without_spec_prints_one_line(tiny_model: Path, tmp_path: Path,
                                          assert_one_line_error) -> None:
    code = f"{HIDE_SPEC}; from unetsl.cli.export_model import main; main()"
    result = subprocess.run([sys.executable, "-c", code, str(tiny_model), "out.zip",
                             "--bioimageio"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=300)
    assert_one_line_error(result, "bioimageio.spec", "pip install 'unetsl[bioimageio]'")
    assert not (tmp_path / "out.zip").exists()
