"""Classification metrics on held-out predictions, with scikit-learn doing the arithmetic.

Binary tasks report precision, recall (sensitivity), specificity and F1 for the positive class;
with more classes they are macro averages (specificity one-vs-rest). Bootstrap CIs resample cases."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from sklearn import metrics as skm

METRIC_NAMES = ("accuracy", "balanced_accuracy", "precision", "recall", "specificity", "f1", "roc_auc")


def _specificity(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int, positive: int) -> float:
    matrix = skm.confusion_matrix(y_true, y_pred, labels=list(range(n_classes)))
    if n_classes == 2:
        negative = 1 - positive
        tn = matrix[negative, negative]
        fp = matrix[negative, positive]
        return float(tn / (tn + fp)) if tn + fp else float("nan")
    values = []
    for k in range(n_classes):
        tn = matrix.sum() - matrix[k, :].sum() - matrix[:, k].sum() + matrix[k, k]
        fp = matrix[:, k].sum() - matrix[k, k]
        if tn + fp:
            values.append(tn / (tn + fp))
    return float(np.mean(values)) if values else float("nan")


def _roc_auc(y_true: np.ndarray, proba: np.ndarray, positive: int) -> float:
    n_classes = proba.shape[1]
    if len(np.unique(y_true)) < 2:
        return float("nan")
    if n_classes == 2:
        return float(skm.roc_auc_score(y_true == positive, proba[:, positive]))
    if len(np.unique(y_true)) < n_classes:
        return float("nan")
    return float(skm.roc_auc_score(y_true, proba, multi_class="ovr", average="macro", labels=list(range(n_classes))))


def classification_metrics(y_true: np.ndarray, proba: np.ndarray, positive: int, y_pred: np.ndarray | None = None) -> dict[str, float]:
    """Every metric in :data:`METRIC_NAMES`; predictions default to the arg-max class."""
    y_true = np.asarray(y_true)
    n_classes = proba.shape[1]
    y_pred = proba.argmax(axis=1) if y_pred is None else np.asarray(y_pred)
    labels = list(range(n_classes))
    if n_classes == 2:
        averaging = {"average": "binary", "pos_label": positive}
    else:
        averaging = {"average": "macro", "labels": labels}
    return {
        "accuracy": float(skm.accuracy_score(y_true, y_pred)),
        "balanced_accuracy": float(skm.balanced_accuracy_score(y_true, y_pred)) if len(np.unique(y_true)) > 0 else float("nan"),
        "precision": float(skm.precision_score(y_true, y_pred, zero_division=0, **averaging)),
        "recall": float(skm.recall_score(y_true, y_pred, zero_division=0, **averaging)),
        "specificity": _specificity(y_true, y_pred, n_classes, positive),
        "f1": float(skm.f1_score(y_true, y_pred, zero_division=0, **averaging)),
        "roc_auc": _roc_auc(y_true, proba, positive),
    }


def bootstrap_ci(
    n_cases: int,
    statistic: Callable[[np.ndarray], dict[str, float]],
    n_resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap CIs of each value ``statistic(index)`` returns, resampling case
    indices with replacement. Paired comparisons pass a statistic that scores both models on the
    same resampled index."""
    rng = np.random.default_rng(seed)
    samples: dict[str, list[float]] = {}
    for _ in range(n_resamples):
        for name, value in statistic(rng.integers(0, n_cases, n_cases)).items():
            if np.isfinite(value):
                samples.setdefault(name, []).append(value)
    tail = (1 - level) / 2 * 100
    return {
        name: tuple(float(v) for v in np.percentile(values, [tail, 100 - tail]))  # type: ignore[misc]
        for name, values in samples.items()
    }


def metrics_with_ci(
    y_true: np.ndarray, proba: np.ndarray, positive: int, n_resamples: int = 1000, seed: int = 0
) -> dict[str, dict[str, float]]:
    """Each metric's point value and 95% bootstrap CI: ``{name: {value, low, high}}``."""
    y_true = np.asarray(y_true)
    point = classification_metrics(y_true, proba, positive)
    cis = bootstrap_ci(len(y_true), lambda i: classification_metrics(y_true[i], proba[i], positive), n_resamples, seed)
    nan = (float("nan"), float("nan"))
    return {
        name: {"value": point[name], "low": cis.get(name, nan)[0], "high": cis.get(name, nan)[1]}
        for name in METRIC_NAMES
    }
