import numpy as np
import pytest

from osteo_pipeline.core.gate import Answers, Cases, FloorEvidence, GatePolicy, decide

Y = np.array([0, 1] * 20)
GOOD = np.stack([1 - (0.2 + 0.6 * Y), 0.2 + 0.6 * Y], axis=1)  # always right
BAD = GOOD[:, ::-1]  # always wrong
COIN = np.stack(
    [np.where(np.arange(40) % 4 < 2, 0.6, 0.4), np.where(np.arange(40) % 4 < 2, 0.4, 0.6)], axis=1
)
FLOORS = {"balanced_accuracy": 0.6, "recall": 0.5}


def _decide(candidate, production, floors=FLOORS, served=None, also_floored=None, **policy):
    return decide(
        cases=Cases(Y, positive=1),
        candidate=Answers(candidate, served),
        production=None if production is None else Answers(production),
        policy=GatePolicy(floors, "balanced_accuracy", n_resamples=200, **policy),
        also_floored=also_floored,
    )


def test_no_production_floors_decide():
    assert _decide(GOOD, None).passed
    failed = _decide(COIN, None)
    assert not failed.passed and "below floor" in failed.summary


def test_better_candidate_passes_with_a_paired_ci():
    decision = _decide(GOOD, COIN)
    assert (
        decision.passed
        and decision.verdict == "passed"
        and decision.difference["value"] == pytest.approx(0.5)
    )
    assert decision.difference["low"] > 0 and "95% CI" in decision.summary


def test_worse_candidate_is_rejected_even_above_the_floors():
    decision = _decide(COIN, GOOD, floors={})
    assert (
        not decision.passed
        and decision.verdict == "rejected"
        and "worse than production" in decision.summary
    )


def test_two_equal_models_are_inconclusive_and_production_is_kept():
    """Nothing shows the candidate is better: equal predictions, or equally good different ones."""
    same = _decide(GOOD, GOOD)
    assert not same.passed and same.verdict == "inconclusive" and "production kept" in same.summary
    rng = np.random.default_rng(0)
    flip_a, flip_b = (
        rng.permutation(40)[:8],
        rng.permutation(40)[:8],
    )  # each wrong on 8 different cases
    a, b = GOOD.copy(), GOOD.copy()
    a[flip_a], b[flip_b] = a[flip_a][:, ::-1], b[flip_b][:, ::-1]
    equally_good = _decide(a, b, floors={})
    assert (
        equally_good.verdict == "inconclusive"
        and equally_good.difference["low"] < 0 < equally_good.difference["high"]
    )


def test_too_few_paired_cases_is_inconclusive_even_for_a_better_model():
    decision = _decide(GOOD, COIN, min_paired_cases=100)
    assert (
        decision.verdict == "inconclusive"
        and "fewer than registry.min_paired_cases=100" in decision.summary
    )


def test_a_margin_is_a_non_inferiority_bound():
    slightly_worse = GOOD.copy()
    slightly_worse[0] = slightly_worse[0][::-1]  # one case wrong: 0.975 vs 1.0
    assert _decide(slightly_worse, GOOD).verdict == "inconclusive"
    assert _decide(slightly_worse, GOOD, margin=0.1).passed
    assert _decide(GOOD, GOOD, margin=0.05).passed


def test_floors_can_apply_to_a_cross_validated_lower_bound():
    decision = _decide(
        GOOD,
        None,
        also_floored=FloorEvidence({"balanced_accuracy": 0.55, "recall": 0.9}, "CV lower bound"),
    )
    assert (
        not decision.passed
        and "CV lower bound balanced_accuracy 0.550 below floor 0.600" in decision.summary
    )


def test_models_are_scored_on_the_labels_they_serve():
    """A model whose positives all score 0.3-0.4 is useless at arg-max but perfect at its
    validation-chosen threshold of 0.25: the gate must judge what clients receive."""
    shy = np.stack([1 - (0.1 + 0.25 * Y), 0.1 + 0.25 * Y], axis=1)
    assert not _decide(shy, None).passed
    served = (shy[:, 1] >= 0.25).astype(int)
    decision = _decide(shy, COIN, served=served)
    assert decision.passed and decision.candidate["balanced_accuracy"] == 1.0


def test_a_small_data_model_must_clear_the_floors_on_test_and_on_its_cv_lower_bound():
    decision = _decide(
        COIN,
        None,
        also_floored=FloorEvidence({"balanced_accuracy": 0.9, "recall": 0.9}, "CV lower bound"),
    )
    assert not decision.passed and "test balanced_accuracy 0.500 below floor" in decision.summary
    missing = _decide(
        GOOD,
        None,
        also_floored=FloorEvidence({"balanced_accuracy": None, "recall": 0.9}, "CV lower bound"),
    )
    assert (
        not missing.passed and "CV lower bound balanced_accuracy nan below floor" in missing.summary
    )


def test_shown_worse_is_rejected_even_on_few_cases():
    decision = _decide(BAD, GOOD, floors={}, min_paired_cases=100)
    assert decision.verdict == "rejected" and "worse than production" in decision.summary


def test_the_gate_takes_its_inputs_by_keyword_only():
    """Positional arrays are easy to swap (a candidate for production): the gate takes named,
    typed inputs."""
    with pytest.raises(TypeError):
        decide(Cases(Y, 1), Answers(GOOD), None, GatePolicy(FLOORS, "balanced_accuracy"))
    assert Answers(GOOD).served().tolist() == Y.tolist()  # no served labels: the arg-max
    assert Answers(GOOD, labels=1 - Y).served().tolist() == (1 - Y).tolist()
