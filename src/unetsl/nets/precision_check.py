"""A start-up check that reduced precision learns and predicts like float32 on this machine.

Why: on Intel Xeons with AMX, oneDNN's bfloat16 kernels for 3D convolutions train a U-Net
that learns nothing (issue 24: the demo's validation F1 stayed 0.00 against 0.83 in float32),
while the same bfloat16 training through other kernels (AVX-512, GPUs that work) follows the
float32 run step for step. Which kernels a machine runs cannot be told from its flags, so
the check runs them: a small reference network with 3D convolutions (the shape that failed:
Conv3D 16 -> max-pool (1, 2, 2) -> Conv3D 32 -> 1x1 sigmoid) is trained ``STEPS`` Adam steps
on one fixed synthetic batch in float32 and in the candidate policy, from the same weights.

- Training passes when the candidate's loss after ``STEPS`` steps is within ``LOSS_MARGIN`` of
  the float32 run's loss decrease (healthy bfloat16 on an AVX-512 Xeon without AMX: 0.1769
  vs 0.1770 after 40 steps, from 0.6585; a margin of 10% of the decrease allows 0.048) and
  every weight array moved in float32's direction (``CHANGE_COSINE``; healthy: 0.9976 at
  the least). On AMX the bias gradients of the 3D convolutions were measured at cosine
  0.12-0.95 against float32 (issue 24).
- Prediction passes when the float32-trained reference network, run in the candidate policy,
  gives the same labels (probability > 0.5) on ``LABEL_AGREEMENT`` of the voxels.

Both take 1-3 s on a 2-core CPU; results are kept for the process. Seeds are passed to the
initialisers, so Keras' global random state (the user's "seed") is not touched.

The reference network alone proved too small a sample of the kernels: on an Intel Xeon with
AMX (family 6 model 167, TensorFlow 2.21) it trained like float32 in bfloat16, while the
demo's own U-Net (3x3x3 kernels on 3 x 64 x 64 patches, 32-96 channels at full resolution)
got NaN weights within 10 steps and learned nothing (validation F1 0.00). Training therefore
checks the model it is about to train (:func:`model_training_check`): copies of it, with its
own losses, are trained ``MODEL_STEPS`` steps on one synthetic batch of its input shape in
float32 and in the candidate, which must stay finite and end near float32's loss. The fault
comes at a random step, so an AMX CPU's bfloat16 is not even proposed for training 3D
convolutions (:func:`without_amx_3d_training`).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter, zoom

from unetsl.nets.precision import PrecisionChoice, choose_precision, with_precision

log = logging.getLogger("unetsl")

__all__ = ["CHANGE_COSINE", "LABEL_AGREEMENT", "LOSS_MARGIN", "MODEL_LOSS_MARGIN", "MODEL_STEPS",
           "STEPS", "PrecisionCheck", "check_precision", "decide_precision", "judge_model_training",
           "has_depth_convolutions", "judge_prediction", "judge_training", "model_batch",
           "model_training_check", "reference_batch", "train_copy", "train_reference",
           "without_amx_3d_training"]

#: Adam steps of the reference training (float32 and the candidate each).
STEPS = 40
#: The candidate's final loss may differ from float32's by this share of float32's decrease.
LOSS_MARGIN = 0.10
#: Every weight array must move in float32's direction: cosine of the changes at least this
#: (healthy bfloat16 on an AVX-512 Xeon: 0.9976 at the least, in a bias).
CHANGE_COSINE = 0.9
#: Share of voxels whose label must agree for prediction (the README's promise: 99.5%).
LABEL_AGREEMENT = 0.995

#: Adam steps of the check on the model to be trained (float32 and the candidate each). On
#: the AMX Xeon a small 3D U-Net's weights went NaN at step 1-5 in most runs, but in one run
#: only after 36: a check of a few steps cannot clear 3D convolutions there, so "auto" does
#: not propose AMX's bfloat16 for them (:func:`without_amx_3d_training`).
MODEL_STEPS = 36
#: Its candidate may end this share of float32's loss decrease above float32's loss (healthy
#: bfloat16 on the demo's model: 0.3530 vs 0.3647 from 0.6921 after 10 steps, 4%; AMX's
#: broken kernels: 0.6906, 100%). Dropout and Adam's first steps differ between runs more
#: than on the reference network, so the margin is wider and weight directions are not judged.
MODEL_LOSS_MARGIN = 0.25

_PATCH = (8, 32, 32)


@dataclass(frozen=True)
class PrecisionCheck:
    """Whether ``policy`` passed for ``purpose`` ("training"/"prediction") and the figures."""

    policy: str
    purpose: str
    passed: bool
    summary: str


def reference_batch(n: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """A fixed batch: smooth noise (z, y, x patches, one channel) and its sign as labels
    (half the voxels on, so learning only the class frequency lowers no loss)."""

    rng = np.random.default_rng(24)
    x = gaussian_filter(rng.normal(size=(n, *_PATCH, 1)), (0, 1, 2, 2, 0))
    x = (x / x.std()).astype(np.float32)
    y = (gaussian_filter(x, (0, 1, 1, 1, 0)) > 0).astype(np.float32)
    return x, y


def reference_network(policy: str, filters: int = 32):
    """The 3D network whose training failed in bfloat16 on AMX (issue 24), seeded."""
    import keras

    def conv(n: int, size: int, seed: int, **kw):
        return keras.layers.Conv3D(n, size, padding="same", dtype=kw.pop("dtype", policy),
                                   kernel_initializer=keras.initializers.GlorotUniform(seed),
                                   **kw)

    # named layers: Keras' automatic names (and so the user's model's) stay untouched
    inputs = keras.Input((*_PATCH, 1), name="check-input")
    h = conv(16, 3, 1, activation="relu", name="check-conv-0")(inputs)
    h = keras.layers.MaxPooling3D((1, 2, 2), dtype=policy, name="check-pool")(h)
    h = conv(filters, 3, 2, activation="relu", name="check-conv-1")(h)
    h = keras.layers.UpSampling3D((1, 2, 2), dtype=policy, name="check-up")(h)
    outputs = conv(1, 1, 3, activation="sigmoid", dtype="float32", name="output")(h)
    return keras.Model(inputs, outputs, name="precision_check")


def train_reference(policy: str, steps: int = STEPS, filters: int = 32):
    """Train the reference network ``steps`` Adam steps in ``policy``.

    Returns (losses, model, changes): the loss of every step, the trained model, and how far
    each weight array moved (trained - initial), whose direction a wrong gradient turns.
    """
    import keras

    model = reference_network(policy, filters)
    model.compile(keras.optimizers.Adam(1e-3), "binary_crossentropy")
    initial = [np.array(w) for w in model.get_weights()]
    x, y = reference_batch()
    losses = [float(np.asarray(model.train_on_batch(x, y))) for _ in range(steps)]
    changes = [np.array(w) - w0 for w, w0 in zip(model.get_weights(), initial)]
    return losses, model, changes


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    norms = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(np.sum(a * b)) / norms if norms > 0 else float(np.array_equal(a, b))


def judge_training(float32_losses: list[float], candidate_losses: list[float],
                   float32_changes: list[np.ndarray], candidate_changes: list[np.ndarray],
                   margin: float = LOSS_MARGIN,
                   min_cosine: float = CHANGE_COSINE) -> tuple[bool, str]:
    """Whether the candidate trained like float32: its last loss within ``margin`` of
    float32's decrease, and every weight array moved in the same direction (cosine of the
    changes >= ``min_cosine``)."""
    start, end, got = float32_losses[0], float32_losses[-1], candidate_losses[-1]
    allowed = margin * max(start - end, 1e-6)
    cosine = min(_cosine(a, b) for a, b in zip(float32_changes, candidate_changes, strict=True))
    ok = bool(np.isfinite(got)) and abs(got - end) <= allowed and cosine >= min_cosine
    return ok, (f"reference 3D network's loss after {len(candidate_losses)} steps {got:.4f} "
                f"vs float32 {end:.4f} (from {start:.4f}; allowed ±{allowed:.4f}), weight "
                f"changes' cosine {cosine:.3f} (wanted >= {min_cosine})")


def judge_prediction(float32_probabilities: np.ndarray, candidate_probabilities: np.ndarray,
                     wanted: float = LABEL_AGREEMENT) -> tuple[bool, str]:
    """Whether the candidate's labels (p > 0.5) agree with float32's on ``wanted`` voxels."""
    same = float(np.mean((float32_probabilities > 0.5) == (candidate_probabilities > 0.5)))
    finite = bool(np.all(np.isfinite(candidate_probabilities)))
    return finite and same >= wanted, (f"reference 3D network's labels agree with float32 on "
                                       f"{100 * same:.2f}% of voxels (wanted "
                                       f"{100 * wanted:.1f}%)")


_float32_run: tuple[list[float], object, list[np.ndarray]] | None = None
_results: dict[tuple[str, str], PrecisionCheck] = {}


def _float32_reference():
    global _float32_run
    if _float32_run is None:
        _float32_run = train_reference("float32")
    return _float32_run


def _run(policy: str, purpose: str) -> PrecisionCheck:
    started = time.perf_counter()
    float32_losses, float32_model, float32_changes = _float32_reference()
    if purpose == "training":
        losses, _, changes = train_reference(policy)
        passed, figures = judge_training(float32_losses, losses, float32_changes, changes)
    else:
        x, _ = reference_batch()
        full = np.asarray(float32_model.predict_on_batch(x))
        reduced = np.asarray(with_precision(float32_model, policy).predict_on_batch(x))
        passed, figures = judge_prediction(full, reduced)
    return PrecisionCheck(policy, purpose, passed,
                          f"{figures}; checked in {time.perf_counter() - started:.1f} s")


def check_precision(policy: str, purpose: str,
                    run: Callable[[str, str], PrecisionCheck] | None = None) -> PrecisionCheck:
    """Run (once per process) the start-up check of ``policy`` for ``purpose``.

    run : replaces the real check (tests give it disagreeing figures).
    """
    if purpose not in ("training", "prediction"):
        raise ValueError(f"purpose must be training or prediction, got {purpose!r}")
    if run is not None:  # a given check (the model to be trained, tests): not kept
        return _guarded(run, policy, purpose, "the model")
    key = (policy, purpose)
    if key not in _results:
        _results[key] = _guarded(_run, policy, purpose, "the reference 3D network")
        log.debug("precision check: %s", _results[key])
    return _results[key]


def _guarded(run: Callable[[str, str], PrecisionCheck], policy: str, purpose: str,
             what: str) -> PrecisionCheck:
    """``run``'s result, or a failed check that says in one line why it could not run."""
    try:
        return run(policy, purpose)
    except Exception as exc:  # e.g. no float16 kernel for an op on this device
        first = " ".join(str(exc).split("\n")[0].split())[:160]
        return PrecisionCheck(policy, purpose, False, f"{what} cannot run in it here "
                                                      f"({type(exc).__name__}: {first})")


def decide_precision(setting: str, purpose: str, *, choice: PrecisionChoice | None = None,
                     run: Callable[[str, str], PrecisionCheck] | None = None) -> PrecisionChoice:
    """The dtype policy a training or prediction computes in, and why (one info line).

    The setting ("auto": ``UNETSL_PRECISION`` or the hardware's proposal; ``choice`` replaces
    :func:`unetsl.nets.precision.choose_precision`) is checked on this machine's kernels
    when it is not float32. A proposal of "auto" that fails falls back to float32; a policy
    set by hand is kept, with a warning. ``run`` replaces the real check (tests).
    """
    choice = choose_precision(setting) if choice is None else choice
    if choice.policy == "float32":
        return choice
    result = check_precision(choice.policy, purpose, run)
    if result.passed:
        return PrecisionChoice(choice.policy, f"{choice.reason}; start-up check passed: "
                               f"{result.summary}", choice.automatic)
    if choice.automatic:
        return PrecisionChoice("float32", f"{choice.reason}, but {choice.policy} failed the "
                               f"start-up check for {purpose}: {result.summary}", True)
    log.warning(f"precision {choice.policy} ({choice.reason}) failed the start-up check for "
                f'{purpose}: {result.summary}; results may be wrong: set "precision" to "auto" '
                f'or "float32"')
    return choice


# -------------------------------------------------------------- the model about to be trained


def has_depth_convolutions(model) -> bool:
    """Whether ``model`` convolves across z (a Conv3D kernel deeper than 1): the layers whose
    training AMX's bfloat16 kernels break."""
    import keras

    return any(isinstance(layer, (keras.layers.Conv3D, keras.layers.Conv3DTranspose))
               and int(layer.kernel_size[0]) > 1 for layer in model.layers)


def without_amx_3d_training(choice: PrecisionChoice, model) -> PrecisionChoice:
    """float32 instead of an AMX CPU's bfloat16 proposal for training a model with 3D
    convolutions. On the AMX Xeon their weights went NaN after 1 to more than 36 steps, at
    random from run to run, so no check of a few steps can clear them; 2D models trained
    correctly there and are checked as usual."""
    if not (choice.amx and choice.policy != "float32" and has_depth_convolutions(model)):
        return choice
    return PrecisionChoice("float32", f"{choice.reason}, but AMX's bfloat16 kernels break the "
                           "training of 3D convolutions (weights NaN after 1 to more than 36 "
                           "steps, at random)", True)


def model_batch(model, batch_size: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """A fixed batch for ``model``: smooth noise of its input shape and, for every output, a
    learnable target of that output's shape: the smoothed input cut into as many equal bands
    as the output has channels, one-hot (one channel: the upper half; valid for sigmoid,
    softmax and linear heads)."""
    rng = np.random.default_rng(24)
    shape = tuple(int(n) for n in model.inputs[0].shape[1:])
    sigma = (0,) + tuple(min(1.0, (n - 1) / 4) for n in shape[:-1]) + (0,)
    x = gaussian_filter(rng.normal(size=(batch_size, *shape)), sigma)
    x = (x / max(float(x.std()), 1e-6)).astype(np.float32)
    field = gaussian_filter(x[..., 0], sigma[:-1])
    targets = []
    for output in model.outputs:
        out_shape = tuple(int(n) for n in output.shape[1:])
        factors = (1,) + tuple(o / i for o, i in zip(out_shape[:-1], shape[:-1]))
        resized = zoom(field, factors, order=1) if any(f != 1 for f in factors) else field
        channels = out_shape[-1]
        bands = np.quantile(resized, np.linspace(0, 1, max(channels, 2) + 1)[1:-1])
        band = np.digitize(resized, bands)
        targets.append(band[..., None].astype(np.float32) if channels == 1
                       else np.eye(channels, dtype=np.float32)[band])
    return x, targets


def train_copy(model, policy: str, compile_model: Callable, x: np.ndarray,
               targets: list[np.ndarray], steps: int) -> tuple[list[float], bool]:
    """Train a copy of ``model`` in ``policy`` ``steps`` steps on one batch: (total loss of
    every step, whether every weight stayed finite). ``model`` itself is not changed."""
    import keras

    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    copy = with_precision(copy, policy)
    compile_model(copy)
    y = targets[0] if len(targets) == 1 else dict(zip(copy.output_names, targets))
    losses = [float(np.ravel(copy.train_on_batch(x, y))[0]) for _ in range(steps)]
    finite = all(np.all(np.isfinite(w)) for w in copy.get_weights())
    return losses, finite


def judge_model_training(float32_losses: list[float], candidate_losses: list[float],
                         finite: bool, margin: float = MODEL_LOSS_MARGIN) -> tuple[bool, str]:
    """Whether the model trained in the candidate policy like float32: every weight finite
    and its last loss at most ``margin`` of float32's decrease above float32's last loss."""
    start, end, got = float32_losses[0], float32_losses[-1], candidate_losses[-1]
    allowed = margin * max(start - end, 1e-6)
    ok = finite and bool(np.isfinite(got)) and got - end <= allowed
    weights = "" if finite else "; weights became NaN or infinite"
    return ok, (f"the model's loss after {len(candidate_losses)} steps {got:.4f} vs float32 "
                f"{end:.4f} (from {start:.4f}; allowed up to {end + allowed:.4f}){weights}")


def model_training_check(model, compile_model: Callable, batch_size: int,
                         steps: int = MODEL_STEPS) -> Callable[[str, str], PrecisionCheck]:
    """The check ``decide_precision`` runs for training ``model``: copies of it trained on one
    synthetic batch in float32 and in the candidate (``compile_model(copy)`` compiles a copy
    with the training's losses). Python's and NumPy's global random states are restored."""
    def run(policy: str, purpose: str) -> PrecisionCheck:
        started = time.perf_counter()
        python_state, numpy_state = random.getstate(), np.random.get_state()
        try:
            x, targets = model_batch(model, batch_size)
            full, _ = train_copy(model, "float32", compile_model, x, targets, steps)
            got, finite = train_copy(model, policy, compile_model, x, targets, steps)
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)
        passed, figures = judge_model_training(full, got, finite)
        return PrecisionCheck(policy, purpose, passed,
                              f"{figures}; checked in {time.perf_counter() - started:.1f} s")

    return run
