import numpy as np
import pytest
from sklearn import metrics as skm

from osteo_pipeline.core.metrics import (
    METRIC_NAMES,
    bootstrap_ci,
    classification_metrics,
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
    assert a["recall"] == pytest.approx(b["specificity"]) and a["specificity"] == pytest.approx(b["recall"])


def test_multiclass_macro_metrics():
    y = np.array([0, 1, 2, 2, 1, 0])
    proba = np.eye(3)[[0, 1, 2, 1, 1, 2]] * 0.7 + 0.1
    m = classification_metrics(y, proba, positive=2)
    pred = proba.argmax(axis=1)
    assert m["f1"] == pytest.approx(skm.f1_score(y, pred, average="macro"))
    assert m["precision"] == pytest.approx(skm.precision_score(y, pred, average="macro", zero_division=0))
    assert m["recall"] == pytest.approx(skm.recall_score(y, pred, average="macro"))
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred))
    assert m["roc_auc"] == pytest.approx(skm.roc_auc_score(y, proba, multi_class="ovr"))
    assert 0 <= m["specificity"] <= 1


def test_bootstrap_ci_brackets_the_point_and_is_deterministic():
    report = metrics_with_ci(Y, PROBA, positive=1, n_resamples=300, seed=1)
    for values in report.values():
        assert values["low"] <= values["value"] <= values["high"]
    assert report == metrics_with_ci(Y, PROBA, positive=1, n_resamples=300, seed=1)
    paired = bootstrap_ci(len(Y), lambda i: {"diff": float((Y[i] == 1).mean() - (Y[i] == 0).mean())}, 200, 0)
    assert paired["diff"][0] < 0 < paired["diff"][1]
