"""Classification metrics on held-out predictions, with scikit-learn doing the arithmetic.

Binary tasks report precision, recall (sensitivity), specificity and F1 for the positive class;
with more classes they are macro averages (specificity one-vs-rest). Bootstrap CIs resample
cases."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

METRIC_NAMES = (
    "accuracy",
    "balanced_accuracy",
    "precision",
    "recall",
    "specificity",
    "f1",
    "roc_auc",
)


def confusion(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Confusion matrix (rows true, columns predicted); same as scikit-learn's, without its
    per-call validation cost, which dominates thousands of bootstrap resamples."""
    return np.bincount(
        np.asarray(y_true) * n_classes + np.asarray(y_pred), minlength=n_classes * n_classes
    ).reshape(n_classes, n_classes)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), 0.0)


def _roc_auc(y_true: np.ndarray, proba: np.ndarray, positive: int) -> float:
    from sklearn import metrics as skm  # imported here: the config's metric names need no sklearn

    n_classes = proba.shape[1]
    present = np.unique(y_true)
    if len(present) < 2:
        return float("nan")
    if n_classes == 2:
        return float(skm.roc_auc_score(y_true == positive, proba[:, positive]))
    if len(present) < n_classes:
        return float("nan")
    return float(
        skm.roc_auc_score(
            y_true, proba, multi_class="ovr", average="macro", labels=list(range(n_classes))
        )
    )


def classification_metrics(
    y_true: np.ndarray,
    proba: np.ndarray,
    positive: int,
    y_pred: np.ndarray | None = None,
    with_auc: bool = True,
) -> dict[str, float]:
    """Every metric in :data:`METRIC_NAMES` (tests check them against scikit-learn); predictions
    default to the arg-max class. Binary: positive-class precision/recall/F1 and specificity;
    more classes: macro averages, specificity one-vs-rest."""
    y_true = np.asarray(y_true)
    n_classes = proba.shape[1]
    y_pred = proba.argmax(axis=1) if y_pred is None else np.asarray(y_pred)
    cm = confusion(y_true, y_pred, n_classes).astype(float)
    tp = np.diag(cm)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    recall = _ratio(tp, support)
    precision = _ratio(tp, predicted)
    f1 = _ratio(2 * precision * recall, precision + recall)
    negatives = cm.sum() - support
    specificity = _ratio(negatives - (predicted - tp), negatives)
    present = support > 0
    if n_classes == 2:
        chosen = {
            "precision": precision[positive],
            "recall": recall[positive],
            "f1": f1[positive],
            "specificity": specificity[positive],
        }
    else:
        chosen = {
            "precision": precision.mean(),
            "recall": recall.mean(),
            "f1": f1.mean(),
            "specificity": specificity[negatives > 0].mean()
            if (negatives > 0).any()
            else float("nan"),
        }
    result = {
        "accuracy": float(tp.sum() / cm.sum()) if cm.sum() else float("nan"),
        "balanced_accuracy": float(recall[present].mean()) if present.any() else float("nan"),
        **{k: float(v) for k, v in chosen.items()},
        "roc_auc": _roc_auc(y_true, proba, positive) if with_auc else float("nan"),
    }
    return {name: result[name] for name in METRIC_NAMES}


def bootstrap_ci(
    n_cases: int,
    statistic: Callable[[np.ndarray], dict[str, float]],
    n_resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    groups: np.ndarray | None = None,
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap CIs of each value ``statistic(index)`` returns, resampling case
    indices with replacement, or with ``groups`` (a cluster per case: the patient) whole clusters,
    since one patient's images are not independent cases. Paired comparisons pass a statistic
    that scores both models on the same resampled index."""
    rng = np.random.default_rng(seed)
    members = None
    if groups is not None:
        cluster, names = pd.factorize(np.asarray(groups, dtype=object), use_na_sentinel=False)
        members = [np.flatnonzero(cluster == c) for c in range(len(names))]
    samples: dict[str, list[float]] = {}
    for _ in range(n_resamples):
        if members is None:
            index = rng.integers(0, n_cases, n_cases)
        else:
            index = np.concatenate(
                [members[c] for c in rng.integers(0, len(members), len(members))]
            )
        for name, value in statistic(index).items():
            if np.isfinite(value):
                samples.setdefault(name, []).append(value)
    tail = (1 - level) / 2 * 100
    return {
        name: tuple(float(v) for v in np.percentile(values, [tail, 100 - tail]))  # type: ignore[misc]
        for name, values in samples.items()
    }


def metrics_with_ci(
    y_true: np.ndarray,
    proba: np.ndarray,
    positive: int,
    y_pred: np.ndarray | None = None,
    n_resamples: int = 1000,
    seed: int = 0,
    groups: np.ndarray | None = None,
) -> dict[str, dict[str, float]]:
    """Each metric's point value and 95% bootstrap CI: ``{name: {value, low, high}}``; labels are
    ``y_pred`` (e.g. from a validation-chosen threshold) or the arg-max; ``groups`` (patients)
    are resampled whole."""
    y_true = np.asarray(y_true)
    y_pred = proba.argmax(axis=1) if y_pred is None else np.asarray(y_pred)
    point = classification_metrics(y_true, proba, positive, y_pred)
    cis = bootstrap_ci(
        len(y_true),
        lambda i: classification_metrics(y_true[i], proba[i], positive, y_pred[i]),
        n_resamples,
        seed,
        groups=groups,
    )
    nan = (float("nan"), float("nan"))
    return {
        name: {"value": point[name], "low": cis.get(name, nan)[0], "high": cis.get(name, nan)[1]}
        for name in METRIC_NAMES
    }


def fold_interval(
    scores: np.ndarray,
    n_train: int,
    n_test: int,
    level: float = 0.95,
    bounds: tuple[float, float] | None = None,
) -> dict[str, float]:
    """Mean of per-fold scores with the corrected resampled t interval (Nadeau & Bengio, 2003):
    folds share training data, so the naive standard error is inflated by 1/k + n_test/n_train
    instead of 1/k. NaN folds (e.g. AUC with one class present) are left out; ``bounds`` clips
    the interval to a metric's range."""
    from scipy import stats

    values = np.asarray(scores, dtype=float)
    values = values[np.isfinite(values)]
    k = len(values)
    if k == 0:
        return {"mean": float("nan"), "low": float("nan"), "high": float("nan"), "folds": 0}
    mean = float(values.mean())
    if k == 1:
        return {"mean": mean, "low": float("nan"), "high": float("nan"), "folds": 1}
    half = float(
        stats.t.ppf((1 + level) / 2, k - 1)
        * np.sqrt((1 / k + n_test / max(n_train, 1)) * values.var(ddof=1))
    )
    low, high = (
        (mean - half, mean + half)
        if bounds is None
        else (max(bounds[0], mean - half), min(bounds[1], mean + half))
    )
    return {"mean": mean, "low": low, "high": high, "folds": k}
