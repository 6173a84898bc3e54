"""Temperature scaling, the validation-chosen threshold and the calibration error."""

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score

from osteo_pipeline.core.calibration import (
    Calibration,
    choose_threshold,
    expected_calibration_error,
    fit_calibration,
    fit_temperature,
    reliability,
    scale_temperature,
)


def _softmax(logits):
    z = np.exp(logits - logits.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def _overconfident(n=4000, true_temperature=3.0, seed=0):
    """Labels drawn from softmax(z); the model reports softmax(z * T): over-confident by T."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 1.5, (n, 3))
    labels = np.array([rng.choice(3, p=p) for p in _softmax(logits)])
    return _softmax(logits * true_temperature), labels


def test_temperature_recovers_the_overconfidence_and_lowers_ece():
    proba, labels = _overconfident()
    temperature = fit_temperature(proba, labels)
    assert temperature == pytest.approx(3.0, rel=0.1)
    calibrated = scale_temperature(proba, temperature)
    assert (
        expected_calibration_error(calibrated, labels)
        < 0.03
        < expected_calibration_error(proba, labels)
    )
    assert (calibrated.argmax(axis=1) == proba.argmax(axis=1)).all()  # ranking unchanged


def test_temperature_is_one_without_two_classes_to_fit():
    proba = np.array([[0.9, 0.1], [0.8, 0.2]])
    assert fit_temperature(proba, np.array([0, 0])) == 1.0


def test_threshold_maximises_validation_balanced_accuracy():
    # Positives score 0.30-0.45, negatives 0.05-0.25: arg-max (0.5) calls everything negative.
    rng = np.random.default_rng(1)
    p_pos = np.concatenate([rng.uniform(0.30, 0.45, 20), rng.uniform(0.05, 0.25, 60)])
    labels = np.array([1] * 20 + [0] * 60)
    proba = np.stack([1 - p_pos, p_pos], axis=1)
    threshold = choose_threshold(proba, labels, positive=1)
    assert 0.25 < threshold <= 0.30
    calibration = Calibration(1.0, threshold, positive=1)
    assert balanced_accuracy_score(labels, calibration.labels(proba)) == 1.0
    assert balanced_accuracy_score(labels, proba.argmax(axis=1)) == 0.5


def test_threshold_for_a_first_positive_class_and_degenerate_val():
    proba = np.array([[0.7, 0.3], [0.6, 0.4], [0.2, 0.8]])
    labels = np.array([0, 0, 1])
    threshold = choose_threshold(proba, labels, positive=0)
    assert Calibration(1.0, threshold, positive=0).labels(proba).tolist() == [0, 0, 1]
    assert choose_threshold(proba, np.array([1, 1, 1]), positive=1) == 0.5


def test_multiclass_has_no_threshold_and_round_trips():
    proba, labels = _overconfident(n=600)
    calibration = fit_calibration(proba, labels, positive=2)
    assert calibration.threshold is None
    assert (calibration.labels(calibration.probabilities(proba)) == proba.argmax(axis=1)).all()
    assert Calibration.from_dict(calibration.as_dict()) == calibration
    assert Calibration.from_dict(None) == Calibration()


def test_reliability_bins_count_every_case():
    proba, labels = _overconfident(n=500)
    table = reliability(proba, labels, bins=10)
    assert table["count"].sum() == 500
    filled = table["count"] > 0
    assert (
        (table["confidence"][filled] >= table["edges"][:-1][filled])
        & (table["confidence"][filled] <= table["edges"][1:][filled])
    ).all()
    assert np.isnan(expected_calibration_error(np.zeros((0, 2)), np.zeros(0, int)))
