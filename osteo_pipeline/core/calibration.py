"""Calibration and the decision rule, both fitted on validation predictions, never on test.

Temperature scaling divides the log-probabilities by one fitted T (argmax and ROC AUC unchanged),
so a reported 90% means about 90%. For two classes the decision threshold on the positive
class's probability is the one that maximises balanced accuracy on validation: with skewed
classes and class weights, 0.5 is rarely the right cut."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy.optimize import minimize_scalar

EPS = 1e-7


def _log(proba: np.ndarray) -> np.ndarray:
    return np.log(np.clip(np.asarray(proba, dtype=np.float64), EPS, 1.0))


def scale_temperature(proba: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log p / T): T > 1 softens over-confident probabilities, T < 1 sharpens them."""
    logits = _log(proba) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    scaled = np.exp(logits)
    return scaled / scaled.sum(axis=1, keepdims=True)


def _nll(proba: np.ndarray, labels: np.ndarray) -> float:
    return float(-_log(proba)[np.arange(len(labels)), labels].mean())


def fit_temperature(proba: np.ndarray, labels: np.ndarray) -> float:
    """The T in [0.05, 20] minimising validation log loss (1.0 when there is nothing to fit)."""
    labels = np.asarray(labels)
    if len(labels) < 2 or len(np.unique(labels)) < 2:
        return 1.0
    result = minimize_scalar(
        lambda log_t: _nll(scale_temperature(proba, float(np.exp(log_t))), labels),
        bounds=(np.log(0.05), np.log(20.0)),
        method="bounded",
    )
    return float(np.exp(result.x))


def choose_threshold(proba: np.ndarray, labels: np.ndarray, positive: int) -> float:
    """Binary: the cut on P(positive) maximising validation balanced accuracy (ties: nearest 0.5;
    0.5 when validation lacks a class). Cuts lie midway between observed scores."""
    labels = np.asarray(labels)
    is_positive = labels == positive
    if is_positive.all() or not is_positive.any():
        return 0.5
    scores = np.unique(proba[:, positive])
    cuts = np.concatenate(
        [[0.5], (scores[:-1] + scores[1:]) / 2, [scores[0] / 2, (scores[-1] + 1) / 2]]
    )
    predicted = proba[:, positive][None, :] >= cuts[:, None]
    sensitivity = (predicted & is_positive).sum(axis=1) / is_positive.sum()
    specificity = (~predicted & ~is_positive).sum(axis=1) / (~is_positive).sum()
    balanced = (sensitivity + specificity) / 2
    best = np.flatnonzero(np.isclose(balanced, balanced.max()))
    return float(cuts[best[np.argmin(np.abs(cuts[best] - 0.5))]])


@dataclass(frozen=True)
class Calibration:
    """What turns raw model probabilities into reported probabilities and labels."""

    temperature: float = 1.0
    threshold: float | None = None  # binary only; None: arg-max
    positive: int = -1  # class index the threshold applies to (-1: the last)

    def probabilities(self, proba: np.ndarray) -> np.ndarray:
        return (
            scale_temperature(proba, self.temperature)
            if self.temperature != 1.0
            else np.asarray(proba, dtype=np.float64)
        )

    def labels(self, calibrated: np.ndarray) -> np.ndarray:
        """Class indices of already calibrated probabilities."""
        if self.threshold is None or calibrated.shape[1] != 2:
            return calibrated.argmax(axis=1)
        positive = self.positive % 2
        return np.where(calibrated[:, positive] >= self.threshold, positive, 1 - positive)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> Calibration:
        return cls(**values) if values else cls()


def fit_calibration(val_proba: np.ndarray, val_labels: np.ndarray, positive: int) -> Calibration:
    """Temperature first, then the threshold on the calibrated validation probabilities."""
    temperature = fit_temperature(val_proba, val_labels)
    calibrated = scale_temperature(val_proba, temperature)
    threshold = (
        choose_threshold(calibrated, val_labels, positive) if val_proba.shape[1] == 2 else None
    )
    return Calibration(temperature, threshold, positive)


def cross_fitted(
    proba: np.ndarray, labels: np.ndarray, folds: np.ndarray, positive: int
) -> tuple[np.ndarray, np.ndarray]:
    """Calibrated probabilities and labels of out-of-fold predictions, each fold's by the
    temperature and threshold fitted on the *other* folds' predictions: an estimate that never
    tunes its calibration on the cases it scores."""
    calibrated = np.zeros_like(proba, dtype=np.float64)
    predicted = np.zeros(len(proba), dtype=np.int64)
    for fold in np.unique(folds):
        here = folds == fold
        calibration = fit_calibration(proba[~here], labels[~here], positive)
        calibrated[here] = calibration.probabilities(proba[here])
        predicted[here] = calibration.labels(calibrated[here])
    return calibrated, predicted


def reliability(proba: np.ndarray, labels: np.ndarray, bins: int = 10) -> dict[str, np.ndarray]:
    """Per confidence bin (equal width): mean confidence, accuracy and count, for the top class."""
    confidence = proba.max(axis=1)
    correct = proba.argmax(axis=1) == np.asarray(labels)
    index = np.minimum((confidence * bins).astype(int), bins - 1)
    count = np.bincount(index, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_confidence = np.bincount(index, confidence, bins) / count
        accuracy = np.bincount(index, correct.astype(float), bins) / count
    return {
        "edges": np.linspace(0, 1, bins + 1),
        "confidence": mean_confidence,
        "accuracy": accuracy,
        "count": count,
    }


def expected_calibration_error(proba: np.ndarray, labels: np.ndarray, bins: int = 10) -> float:
    """Count-weighted mean |accuracy - confidence| over the bins of :func:`reliability`."""
    if len(labels) == 0:
        return float("nan")
    table = reliability(proba, labels, bins)
    filled = table["count"] > 0
    gaps = np.abs(table["accuracy"][filled] - table["confidence"][filled])
    return float((gaps * table["count"][filled]).sum() / table["count"].sum())
