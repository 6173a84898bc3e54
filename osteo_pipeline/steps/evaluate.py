"""Evaluate predictions on a held-out split and log metrics (with 95% bootstrap CIs) and figures."""

from __future__ import annotations

from typing import Any

import matplotlib.pyplot as plt
import mlflow
import numpy as np

from osteo_pipeline.config import Settings
from osteo_pipeline.core import plots
from osteo_pipeline.core.metrics import metrics_with_ci
from osteo_pipeline.steps.train import Arrays


def evaluate_predictions(arrays: Arrays, proba: np.ndarray, settings: Settings, prefix: str = "test_") -> dict[str, Any]:
    """Metrics with CIs for ``proba`` on ``arrays``; logs them and the test figures to the active run."""
    classes = list(settings.data.classes)
    positive = classes.index(settings.data.positive)
    report = metrics_with_ci(arrays.labels, proba, positive, seed=settings.seed)
    flat = {}
    for name, values in report.items():
        for key, suffix in (("value", ""), ("low", "_ci_low"), ("high", "_ci_high")):
            if np.isfinite(values[key]):
                flat[f"{prefix}{name}{suffix}"] = values[key]
    mlflow.log_metrics(flat)
    figures = {
        "confusion_matrix.png": plots.confusion_matrix(arrays.labels, proba.argmax(axis=1), classes),
        "roc_curve.png": plots.roc_curves(arrays.labels, proba, classes, positive),
        "test_predictions.png": plots.prediction_grid(arrays.pixels, arrays.labels, proba, classes),
    }
    for name, figure in figures.items():
        mlflow.log_figure(figure, f"figures/{name}")
        plt.close(figure)
    predictions = [
        {"path": p, "true": classes[t], "predicted": classes[int(row.argmax())], **{f"p_{c}": float(row[i]) for i, c in enumerate(classes)}}
        for p, t, row in zip(arrays.paths, arrays.labels, proba)
    ]
    mlflow.log_dict({"metrics": report, "positive_class": settings.data.positive, "n": len(arrays.labels), "predictions": predictions}, f"{prefix}evaluation.json")
    return report
