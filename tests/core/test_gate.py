import numpy as np
import pytest

from osteo_pipeline.core.gate import decide

Y = np.array([0, 1] * 20)
GOOD = np.stack([1 - (0.2 + 0.6 * Y), 0.2 + 0.6 * Y], axis=1)  # always right
BAD = GOOD[:, ::-1]  # always wrong
COIN = np.stack([np.where(np.arange(40) % 4 < 2, 0.6, 0.4), np.where(np.arange(40) % 4 < 2, 0.4, 0.6)], axis=1)
FLOORS = {"balanced_accuracy": 0.6, "recall": 0.5}


def _decide(candidate, production, **kw):
    return decide(Y, candidate, production, 1, kw.pop("floors", FLOORS), "balanced_accuracy", n_resamples=200, **kw)


def test_no_production_floors_decide():
    assert _decide(GOOD, None).passed
    failed = _decide(COIN, None)
    assert not failed.passed and "below floor" in failed.summary


def test_better_candidate_passes_with_a_paired_ci():
    decision = _decide(GOOD, COIN)
    assert decision.passed and decision.difference["value"] == pytest.approx(0.5)
    assert decision.difference["low"] > 0 and "95% CI" in decision.summary


def test_worse_candidate_is_rejected_even_above_the_floors():
    decision = _decide(COIN, GOOD, floors={})
    assert not decision.passed and "worse than production" in decision.summary


def test_equal_is_at_least_as_good_unless_the_ci_must_clear_the_margin():
    assert _decide(GOOD, GOOD).passed
    assert _decide(COIN, COIN, floors={}).passed
    strict = _decide(GOOD, COIN, require_ci_above_margin=True)
    assert strict.passed  # clearly better: CI above zero


def test_margin_allows_a_small_loss():
    slightly_worse = GOOD.copy()
    slightly_worse[0] = slightly_worse[0][::-1]  # one case wrong: 0.975 vs 1.0
    assert not _decide(slightly_worse, GOOD).passed
    assert _decide(slightly_worse, GOOD, margin=0.05).passed


def test_models_are_scored_on_the_labels_they_serve():
    """A model whose positives all score 0.3-0.4 is useless at arg-max but perfect at its
    validation-chosen threshold of 0.25: the gate must judge what clients receive."""
    shy = np.stack([1 - (0.1 + 0.25 * Y), 0.1 + 0.25 * Y], axis=1)
    assert not _decide(shy, None).passed
    served = (shy[:, 1] >= 0.25).astype(int)
    decision = _decide(shy, COIN, candidate_pred=served)
    assert decision.passed and decision.candidate["balanced_accuracy"] == 1.0
