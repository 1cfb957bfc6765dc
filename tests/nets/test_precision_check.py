"""The start-up check of reduced precision (issue 24): its judgement of given figures, what
"auto" does with a failed check, the check on this machine's own kernels, and training
through it."""

from __future__ import annotations

import logging

import numpy as np
import pytest

import unetsl.nets.precision as precision
import unetsl.nets.precision_check as check
import unetsl.training.prepare as prepare
from unetsl.nets.model_files import load_model
from unetsl.nets.precision import PRECISION_ENV, PrecisionChoice, cpu_flags
from unetsl.nets.precision_check import (
    CHANGE_COSINE,
    PrecisionCheck,
    check_precision,
    decide_precision,
    judge_prediction,
    judge_training,
    train_reference,
)
from unetsl.training.train import train

AMX = "amx_bf16" in cpu_flags()[1]
PROPOSAL = PrecisionChoice("mixed_bfloat16", "Xeon has AMX", automatic=True)

# float32's curve on the reference task (measured: 0.6585 -> 0.1770 in 40 steps)
FLOAT32_LOSSES = [0.6585, 0.40, 0.25, 0.1770]
CHANGES = [np.array([[0.5, -0.2], [0.1, 0.3]]), np.array([0.02, -0.01])]


def test_a_candidate_that_follows_float32_passes():
    ok, said = judge_training(FLOAT32_LOSSES, [0.66, 0.41, 0.25, 0.1769],
                              CHANGES, [c * 1.01 for c in CHANGES])
    assert ok, said
    assert "0.1769 vs float32 0.1770" in said and "cosine 1.000" in said


def test_a_candidate_that_learns_nothing_fails():
    """The AMX symptom: the loss stays where learning the class frequency leaves it."""
    ok, said = judge_training(FLOAT32_LOSSES, [0.6585, 0.66, 0.65, 0.6500], CHANGES, CHANGES)
    assert not ok and "0.6500 vs float32 0.1770" in said and "allowed ±0.0481" in said


def test_a_loss_just_outside_the_margin_fails():
    decrease = FLOAT32_LOSSES[0] - FLOAT32_LOSSES[-1]
    inside = FLOAT32_LOSSES[-1] + 0.09 * decrease
    outside = FLOAT32_LOSSES[-1] + 0.11 * decrease
    assert judge_training(FLOAT32_LOSSES, [inside], CHANGES, CHANGES)[0]
    assert not judge_training(FLOAT32_LOSSES, [outside], CHANGES, CHANGES)[0]
    assert not judge_training(FLOAT32_LOSSES, [float("nan")], CHANGES, CHANGES)[0]


def test_disagreeing_gradients_fail_even_at_the_same_loss():
    """Bias gradients pointing elsewhere (cosine 0.12 measured on AMX) move a bias elsewhere:
    the loss alone could hide it for a few steps, the direction of the change does not."""
    bias = CHANGES[1]
    turned = np.array([bias[1], bias[0]]) + np.array([0.0, 0.03])  # another direction
    cosine = float(bias @ turned / np.linalg.norm(bias) / np.linalg.norm(turned))
    assert cosine < CHANGE_COSINE
    ok, said = judge_training(FLOAT32_LOSSES, FLOAT32_LOSSES, CHANGES, [CHANGES[0], turned])
    assert not ok and f"cosine {cosine:.3f}" in said


def test_prediction_needs_995_per_mille_of_equal_labels():
    full = np.linspace(0, 1, 1000)
    flipped = full.copy()
    flipped[:4] = 1.0  # 4 of 1000 voxels change side
    assert judge_prediction(full, flipped)[0]
    flipped[:6] = 1.0
    ok, said = judge_prediction(full, flipped)
    assert not ok and "99.40% of voxels" in said
    assert not judge_prediction(full, np.full_like(full, np.nan))[0]


def _fixed(passed: bool):
    calls = []

    def run(policy: str, purpose: str) -> PrecisionCheck:
        calls.append((policy, purpose))
        return PrecisionCheck(policy, purpose, passed, "figures")
    return run, calls


def test_auto_falls_back_to_float32_when_its_proposal_fails():
    run, calls = _fixed(False)
    chosen = decide_precision("auto", "training", choice=PROPOSAL, run=run)
    assert chosen.policy == "float32"
    assert chosen.reason == ("Xeon has AMX, but mixed_bfloat16 failed the start-up check for "
                             "training: figures")
    assert calls == [("mixed_bfloat16", "training")]


def test_a_passed_check_keeps_the_proposal_and_says_so():
    run, _ = _fixed(True)
    chosen = decide_precision("auto", "prediction", choice=PROPOSAL, run=run)
    assert chosen.policy == "mixed_bfloat16"
    assert chosen.reason == "Xeon has AMX; start-up check passed: figures"


def test_a_policy_set_by_hand_is_kept_with_a_warning(caplog):
    run, _ = _fixed(False)
    with caplog.at_level(logging.WARNING, logger="unetsl"):
        chosen = decide_precision("mixed_bfloat16", "training", run=run)
    assert chosen.policy == "mixed_bfloat16"
    assert 'failed the start-up check for training: figures; results may be wrong' in caplog.text


def test_float32_is_never_checked():
    run, calls = _fixed(False)
    assert decide_precision("float32", "training", run=run).policy == "float32"
    assert calls == []


def test_a_policy_this_machine_cannot_run_fails_in_one_line(monkeypatch):
    monkeypatch.setattr(check, "_results", {})
    monkeypatch.setattr(check, "_run", lambda policy, purpose: 1 / 0)
    result = check_precision("mixed_float16", "training")
    assert not result.passed
    assert result.summary == ("the reference 3D network cannot run in it here "
                              "(ZeroDivisionError: division by zero)")


def test_this_machines_bfloat16_kernels_are_judged_by_what_they_learn():
    """The real check on this CPU's kernels. Whatever it says, it must not pass kernels that
    train differently: three times the check's steps must still follow float32."""
    result = check_precision("mixed_bfloat16", "training")
    if not result.passed:
        assert AMX, f"bfloat16 failed without AMX (healthy kernels): {result.summary}"
        return
    longer = check.STEPS * 3
    full, _, full_changes = train_reference("float32", steps=longer)
    half, _, half_changes = train_reference("mixed_bfloat16", steps=longer)
    ok, said = judge_training(full, half, full_changes, half_changes)
    assert ok, f"the check passed ({result.summary}) but {longer} steps differ: {said}"


@pytest.mark.skipif(AMX, reason="AMX's bfloat16 kernels may fail the check (issue 24)")
def test_healthy_bfloat16_kernels_pass_both_checks():
    for purpose in ("training", "prediction"):
        result = check_precision("mixed_bfloat16", purpose)
        assert result.passed, result.summary


@pytest.mark.skipif(not AMX, reason="needs a CPU with AMX (amx_bf16 in /proc/cpuinfo): its "
                    "oneDNN kernels are the ones that trained 3D convolutions wrongly")
def test_on_amx_auto_trains_in_a_precision_that_learns(monkeypatch):
    monkeypatch.delenv(PRECISION_ENV)
    chosen = decide_precision("auto", "training")
    full, _, full_changes = train_reference("float32", steps=check.STEPS * 3)
    got, _, changes = train_reference(chosen.policy, steps=check.STEPS * 3)
    ok, said = judge_training(full, got, full_changes, changes)
    assert ok, f"auto chose {chosen.policy} ({chosen.reason}), which trains differently: {said}"


def _on_an_amx_machine(monkeypatch, passed: bool) -> None:
    """"auto" as on a Xeon with AMX (and no GPU), with a check that passes or fails."""
    monkeypatch.delenv(PRECISION_ENV)
    monkeypatch.setattr(precision, "cpu_flags", lambda: ("Test Xeon", {"amx_bf16"}))
    monkeypatch.setattr(precision, "_gpu_capabilities", lambda: [])
    monkeypatch.setattr(check, "_results", {})

    def run(policy: str, purpose: str) -> PrecisionCheck:
        return PrecisionCheck(policy, purpose, passed, "loss 0.65 vs float32 0.18")

    monkeypatch.setattr(check, "_run", run)  # prediction: the reference network
    monkeypatch.setattr(prepare, "model_training_check", lambda *args, **kw: run)  # training


def test_training_under_auto_falls_back_and_says_why(project, monkeypatch, caplog):
    _on_an_amx_machine(monkeypatch, passed=False)
    with caplog.at_level(logging.INFO, logger="unetsl"):
        train(project, progress="none")
    said = [r.message for r in caplog.records if r.message.startswith("precision:")]
    assert said == ["precision: float32 (Test Xeon has AMX (bfloat16 measured 3.5x faster for "
                    "prediction), but mixed_bfloat16 failed the start-up check for training: "
                    "loss 0.65 vs float32 0.18)"]


def test_training_under_auto_keeps_a_checked_proposal(project, monkeypatch, caplog):
    _on_an_amx_machine(monkeypatch, passed=True)
    with caplog.at_level(logging.INFO, logger="unetsl"):
        train(project, progress="none")
    assert "precision: mixed_bfloat16 (Test Xeon has AMX" in caplog.text
    saved = load_model(project.sibling("-latest.h5"))  # saved as the float32 model it is
    assert {layer.dtype_policy.name for layer in saved.layers} == {"float32"}


def test_prediction_under_auto_falls_back_too(monkeypatch):
    _on_an_amx_machine(monkeypatch, passed=False)
    chosen = decide_precision("auto", "prediction")
    assert chosen.policy == "float32" and "failed the start-up check for prediction" in (
        chosen.reason)


def test_the_check_leaves_the_users_seeded_random_state_alone(monkeypatch):
    """A seeded training draws the same initial weights and shuffles whether or not the
    check ran before it."""
    import keras

    def draws() -> tuple[np.ndarray, float]:
        return np.asarray(keras.initializers.GlorotUniform()((4, 4))), np.random.random()

    monkeypatch.setattr(check, "_results", {})
    monkeypatch.setattr(check, "_float32_run", None)
    keras.utils.set_random_seed(3)
    expected = draws()
    keras.utils.set_random_seed(3)
    check_precision("mixed_bfloat16", "prediction")  # builds and trains the reference nets
    got = draws()
    assert np.array_equal(expected[0], got[0]) and expected[1] == got[1]
