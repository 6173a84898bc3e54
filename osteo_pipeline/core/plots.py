"""Figures for a run (pure: each returns a matplotlib Figure; the caller logs or saves it)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.patches
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from sklearn.metrics import ConfusionMatrixDisplay, RocCurveDisplay


def training_curves(history: dict[str, list[float]], phase_boundary: int | None = None) -> Figure:
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, metric in zip(axes, ("loss", "accuracy")):
        for key, style in ((metric, "-o"), (f"val_{metric}", "--s")):
            if key in history:
                ax.plot(
                    range(1, len(history[key]) + 1), history[key], style, label=key, markersize=3
                )
        if phase_boundary:
            ax.axvline(phase_boundary + 0.5, color="grey", lw=0.8, ls=":", label="unfreeze")
        ax.set_xlabel("epoch")
        ax.set_title(metric)
        ax.legend()
    fig.tight_layout()
    return fig


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, classes: list[str]) -> Figure:
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ConfusionMatrixDisplay.from_predictions(
        y_true,
        y_pred,
        labels=list(range(len(classes))),
        display_labels=classes,
        ax=ax,
        colorbar=False,
    )
    ax.set_title("test confusion matrix")
    fig.tight_layout()
    return fig


def roc_curves(y_true: np.ndarray, proba: np.ndarray, classes: list[str], positive: int) -> Figure:
    fig, ax = plt.subplots(figsize=(4.5, 4))
    targets = [positive] if len(classes) == 2 else range(len(classes))
    for k in targets:
        if 0 < (y_true == k).sum() < len(y_true):
            RocCurveDisplay.from_predictions(
                y_true == k, proba[:, k], name=f"{classes[k]} vs rest", ax=ax
            )
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
    ax.set_title("test ROC")
    fig.tight_layout()
    return fig


def prediction_grid(
    images: np.ndarray,
    y_true: np.ndarray,
    proba: np.ndarray,
    classes: list[str],
    y_pred: np.ndarray | None = None,
    max_images: int = 16,
    title: str | None = None,
) -> Figure:
    """Test images (N x S x S x 3 uint8: replicated gray, or Grad-CAM overlays) with true label,
    predicted label and its probability (the paper's Fig. 11); predictions default to the
    arg-max."""
    y_pred = proba.argmax(axis=1) if y_pred is None else y_pred
    n = min(len(images), max_images)
    cols = min(4, max(n, 1))
    rows = max(1, int(np.ceil(n / cols)))
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3.2 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i in range(n):
        predicted = int(y_pred[i])
        ax = axes.flat[i]
        ax.imshow(images[i], cmap="gray")  # S x S x 3 uint8: gray replicated, or an RGB overlay
        colour = "green" if predicted == y_true[i] else "red"
        ax.set_title(
            f"true: {classes[y_true[i]]}\npred: {classes[predicted]} ({proba[i, predicted]:.0%})",
            color=colour,
            fontsize=9,
        )
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def reliability_diagram(
    curves: dict[str, dict[str, np.ndarray]], title: str = "reliability (top-class confidence)"
) -> Figure:
    """Accuracy against mean confidence per bin, one line per named set of bins
    (``core.calibration.reliability``); the diagonal is perfect calibration."""
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--", label="perfect")
    for name, table in curves.items():
        filled = table["count"] > 0
        ax.plot(
            table["confidence"][filled], table["accuracy"][filled], "-o", markersize=4, label=name
        )
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def comparison_chart(rows: list[dict], metrics: list[str]) -> Figure:
    """Mean and 95% CI per system (one panel per metric); ``rows`` as ``steps.compare``
    builds them."""
    shown = [r for r in rows if r.get("available", True)]
    fig, axes = plt.subplots(
        1,
        len(metrics),
        figsize=(3.2 * len(metrics), 0.45 * max(len(shown), 2) + 1.5),
        sharey=True,
        squeeze=False,
    )
    names = [r["system"] for r in shown]
    for ax, metric in zip(axes[0], metrics):
        means = np.array([r[metric]["mean"] for r in shown], dtype=float)
        lows = np.array([r[metric]["low"] for r in shown], dtype=float)
        highs = np.array([r[metric]["high"] for r in shown], dtype=float)
        errors = np.nan_to_num(np.vstack([means - lows, highs - means]), nan=0.0)
        ax.errorbar(means, range(len(shown)), xerr=errors, fmt="o", capsize=3)
        ax.axvline(0.5, color="grey", lw=0.8, ls=":")
        ax.set_xlim(0, 1)
        ax.set_title(metric, fontsize=9)
    axes[0][0].set_yticks(range(len(shown)), names)
    axes[0][0].invert_yaxis()
    fig.tight_layout()
    return fig


def knee_crop_grid(
    films: list[tuple[str, np.ndarray, list[tuple[int, int, int]]]], columns: int = 4
) -> Figure:
    """Films (name, gray pixels, knee boxes as left, top, side) with their boxes drawn: what a
    person checks before trusting ``model.roi: knees``."""
    rows = max(1, -(-len(films) // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(3 * columns, 3.2 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (name, gray, boxes) in zip(axes.ravel(), films):
        ax.imshow(gray, cmap="gray")
        for left, top, side in boxes:
            ax.add_patch(
                matplotlib.patches.Rectangle(
                    (left, top), side, side, fill=False, edgecolor="red", linewidth=1.5
                )
            )
        ax.set_title(f"{name} ({len(boxes)} knee{'s' if len(boxes) > 1 else ''})", fontsize=8)
    fig.tight_layout()
    return fig
