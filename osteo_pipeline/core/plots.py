"""Figures for a run (pure: each returns a matplotlib Figure; the caller logs or saves it)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from sklearn.metrics import ConfusionMatrixDisplay, RocCurveDisplay


def training_curves(history: dict[str, list[float]], phase_boundary: int | None = None) -> Figure:
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, metric in zip(axes, ("loss", "accuracy")):
        for key, style in ((metric, "-o"), (f"val_{metric}", "--s")):
            if key in history:
                ax.plot(range(1, len(history[key]) + 1), history[key], style, label=key, markersize=3)
        if phase_boundary:
            ax.axvline(phase_boundary + 0.5, color="grey", lw=0.8, ls=":", label="unfreeze")
        ax.set_xlabel("epoch")
        ax.set_title(metric)
        ax.legend()
    fig.tight_layout()
    return fig


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, classes: list[str]) -> Figure:
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ConfusionMatrixDisplay.from_predictions(y_true, y_pred, labels=list(range(len(classes))), display_labels=classes, ax=ax, colorbar=False)
    ax.set_title("test confusion matrix")
    fig.tight_layout()
    return fig


def roc_curves(y_true: np.ndarray, proba: np.ndarray, classes: list[str], positive: int) -> Figure:
    fig, ax = plt.subplots(figsize=(4.5, 4))
    targets = [positive] if len(classes) == 2 else range(len(classes))
    for k in targets:
        if 0 < (y_true == k).sum() < len(y_true):
            RocCurveDisplay.from_predictions(y_true == k, proba[:, k], name=f"{classes[k]} vs rest", ax=ax)
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
    ax.set_title("test ROC")
    fig.tight_layout()
    return fig


def prediction_grid(pixels: np.ndarray, y_true: np.ndarray, proba: np.ndarray, classes: list[str], max_images: int = 16) -> Figure:
    """Test images with true label, predicted label and its confidence (the paper's Fig. 11)."""
    n = min(len(pixels), max_images)
    cols = min(4, max(n, 1))
    rows = max(1, int(np.ceil(n / cols)))
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3.2 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i in range(n):
        predicted = int(proba[i].argmax())
        ax = axes.flat[i]
        ax.imshow(pixels[i][..., 0], cmap="gray")
        colour = "green" if predicted == y_true[i] else "red"
        ax.set_title(f"true: {classes[y_true[i]]}\npred: {classes[predicted]} ({proba[i, predicted]:.0%})", color=colour, fontsize=9)
    fig.tight_layout()
    return fig
