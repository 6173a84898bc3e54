import numpy as np
import pytest
from sklearn import metrics as skm

from osteo_pipeline.core.metrics import (
    METRIC_NAMES,
    bootstrap_ci,
    classification_metrics,
    fold_interval,
    metrics_with_ci,
)

Y = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 0])
P1 = np.array([0.1, 0.4, 0.35, 0.8, 0.9, 0.65, 0.3, 0.7, 0.95, 0.2])
PROBA = np.stack([1 - P1, P1], axis=1)


def test_binary_metrics_match_scikit_learn():
    pred = PROBA.argmax(axis=1)
    m = classification_metrics(Y, PROBA, positive=1)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(Y, pred))
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(Y, pred))
    assert m["precision"] == pytest.approx(skm.precision_score(Y, pred))
    assert m["recall"] == pytest.approx(skm.recall_score(Y, pred))
    assert m["specificity"] == pytest.approx(skm.recall_score(Y, pred, pos_label=0))
    assert m["f1"] == pytest.approx(skm.f1_score(Y, pred))
    assert m["roc_auc"] == pytest.approx(skm.roc_auc_score(Y, P1))
    assert set(m) == set(METRIC_NAMES)


def test_positive_class_choice_swaps_sensitivity_and_specificity():
    a = classification_metrics(Y, PROBA, positive=1)
    b = classification_metrics(Y, PROBA, positive=0)
    assert a["recall"] == pytest.approx(b["specificity"]) and a["specificity"] == pytest.approx(
        b["recall"]
    )


def test_multiclass_macro_metrics():
    y = np.array([0, 1, 2, 2, 1, 0])
    proba = np.eye(3)[[0, 1, 2, 1, 1, 2]] * 0.7 + 0.1
    m = classification_metrics(y, proba, positive=2)
    pred = proba.argmax(axis=1)
    assert m["f1"] == pytest.approx(skm.f1_score(y, pred, average="macro"))
    assert m["precision"] == pytest.approx(
        skm.precision_score(y, pred, average="macro", zero_division=0)
    )
    assert m["recall"] == pytest.approx(skm.recall_score(y, pred, average="macro"))
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred))
    assert m["roc_auc"] == pytest.approx(skm.roc_auc_score(y, proba, multi_class="ovr"))
    one_vs_rest = skm.multilabel_confusion_matrix(y, pred)  # per class [[tn, fp], [fn, tp]]
    specificity = [tn / (tn + fp) for (tn, fp), _ in one_vs_rest]
    assert m["specificity"] == pytest.approx(np.mean(specificity))


def test_bootstrap_ci_brackets_the_point_and_is_deterministic():
    report = metrics_with_ci(Y, PROBA, positive=1, n_resamples=300, seed=1)
    for values in report.values():
        assert values["low"] <= values["value"] <= values["high"]
    assert report == metrics_with_ci(Y, PROBA, positive=1, n_resamples=300, seed=1)
    paired = bootstrap_ci(
        len(Y), lambda i: {"diff": float((Y[i] == 1).mean() - (Y[i] == 0).mean())}, 200, 0
    )
    assert paired["diff"][0] < 0 < paired["diff"][1]


def test_fold_interval_is_the_corrected_resampled_t_interval():
    from scipy import stats

    scores = np.array([0.6, 0.7, 0.65, 0.8, 0.75])
    result = fold_interval(scores, n_train=80, n_test=20)
    half = stats.t.ppf(0.975, 4) * np.sqrt((1 / 5 + 20 / 80) * scores.var(ddof=1))
    assert result["mean"] == pytest.approx(0.7)
    assert (result["low"], result["high"]) == pytest.approx((0.7 - half, 0.7 + half))
    naive = stats.t.ppf(0.975, 4) * scores.std(ddof=1) / np.sqrt(5)
    assert result["high"] - result["mean"] > naive  # wider than the naive interval, as it must be
    assert result["folds"] == 5


def test_fold_interval_skips_nan_folds_and_clips_to_bounds():
    result = fold_interval(
        np.array([0.1, 0.9, np.nan, 0.95]), n_train=10, n_test=10, bounds=(0.0, 1.0)
    )
    assert result["folds"] == 3 and result["low"] == 0.0 and result["high"] == 1.0
    single = fold_interval(np.array([0.5]), 10, 10)
    assert single["mean"] == 0.5 and np.isnan(single["low"])
    assert np.isnan(fold_interval(np.array([np.nan]), 10, 10)["mean"])
