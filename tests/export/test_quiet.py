"""export_model's quiet mode: third-party progress bars and warnings off, ours one line each."""

from __future__ import annotations

import logging
import warnings

import numpy as np

from unetsl.export.quiet import quiet_third_party
from unetsl.export.validation import located


def _tiny_model():
    import keras

    return keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])


def test_keras_bars_and_tensorflow_warnings_hidden_python_warnings_become_lines(capsys):
    model = _tiny_model()
    model.predict(np.zeros((4, 2), np.float32))  # Keras' bar, as bioimageio.core runs it
    assert "step" in capsys.readouterr().out
    with quiet_third_party() as caught:
        model.predict(np.zeros((4, 2), np.float32))
        assert not logging.getLogger("tensorflow").isEnabledFor(logging.WARNING)
        warnings.warn("Missing `maintainers`", UserWarning, stacklevel=1)
        warnings.warn("old API", DeprecationWarning, stacklevel=1)
    assert capsys.readouterr().out == ""
    assert len(caught) == 1 and caught[0].startswith("test_quiet.py:")
    assert caught[0].endswith(": UserWarning: Missing `maintainers`")
    assert logging.getLogger("tensorflow").isEnabledFor(logging.WARNING)  # restored
    with quiet_third_party(verbose=True):
        model.predict(np.zeros((4, 2), np.float32))
    assert "step" in capsys.readouterr().out


def test_validator_findings_name_a_location_even_when_it_gives_none():
    whole = located("warning", "/data/m.zip", (), "Missing `maintainers` or any author")
    assert whole == "warning: m.zip/rdf.yaml: Missing `maintainers` or any author"
    field = located("error", "m.zip", ("weights", "keras_hdf5", 0), "bad\n  hash")
    assert field == "error: m.zip/rdf.yaml weights.keras_hdf5.0: bad hash"
