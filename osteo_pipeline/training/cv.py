"""Cross-validated scoring of one set of training parameters, for data too small for a
validation split to mean anything (nnU-Net judges every configuration this way).

The training data is cut into k stratified group folds (copies of one radiograph never straddle
folds). Each fold trains for the full epoch budget with no early stopping, keeping its validation
predictions after every epoch; the epoch count is then chosen once for all folds (the lowest mean
validation log loss), and each image's out-of-fold (OOF) prediction is its fold's at that epoch.
A refit on all the training data replays that epoch count; calibration and the decision threshold
are fitted on the OOF predictions. Folds report as they finish so a hopeless trial stops early.

The estimate a model card shows (:func:`oof_estimate`) is the mean of per-fold metrics with the
corrected resampled t interval, each fold's labels coming from a calibration fitted on the
other folds' predictions only."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.metrics import log_loss

from osteo_pipeline.core.calibration import cross_fitted
from osteo_pipeline.core.metrics import METRIC_NAMES, classification_metrics, fold_interval
from osteo_pipeline.core.splits import cv_folds
from osteo_pipeline.io.pixels import join_rows
from osteo_pipeline.io.split_manifest import SplitManifest
from osteo_pipeline.training.arrays import Arrays
from osteo_pipeline.training.fit import FitResult

#: What a CV search can minimise: the mean over folds of log loss, or of 1 - a score.
OBJECTIVES = ("log_loss", "roc_auc", "balanced_accuracy")


def rows_of(images: np.ndarray, views: int) -> np.ndarray:
    """Pixel rows of ``images`` (each image's ``views`` rows, image-major)."""
    images = np.asarray(images, dtype=np.int64)
    return (images[:, None] * views + np.arange(views)).ravel()


def cv_arrays(split: SplitManifest, arrays: dict[str, Arrays]) -> tuple[Arrays, np.ndarray]:
    """Train and val as one set of training images for cross-validation, with their groups."""
    train, val = arrays["train"], arrays["val"]
    groups = np.concatenate(
        [split.subset("train")["group"].to_numpy(), split.subset("val")["group"].to_numpy()]
    )
    joined = Arrays(
        join_rows(train.pixels, val.pixels),
        np.concatenate([train.labels, val.labels]),
        train.paths + val.paths,
        train.views,
    )
    return joined, groups


def _loss(labels: np.ndarray, proba: np.ndarray) -> float:
    return float(log_loss(labels, np.clip(proba, 1e-7, 1.0), labels=list(range(proba.shape[1]))))


@dataclass
class CVResult:
    """One parameter set's cross-validation at its chosen epoch count."""

    epochs: int  # epochs run before the OOF predictions (both phases, in order)
    head_epochs: int  # of which head-only
    finetune_epochs: int
    fold: np.ndarray  # fold index of each image
    labels: np.ndarray
    oof: np.ndarray  # each image's out-of-fold probabilities
    fold_scores: list[dict[str, float]]  # per fold: log_loss and METRIC_NAMES (arg-max labels)
    curve: list[float]  # mean validation log loss after each epoch

    def objective(self, metric: str) -> float:
        """What the search minimises: mean fold log loss, or 1 - the mean fold score."""
        values = np.array([scores[metric] for scores in self.fold_scores], dtype=float)
        mean = float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")
        return mean if metric == "log_loss" else 1.0 - mean

    def as_dict(self) -> dict[str, Any]:
        return {
            "epochs": self.epochs,
            "head_epochs": self.head_epochs,
            "finetune_epochs": self.finetune_epochs,
            "fold": self.fold.tolist(),
            "labels": self.labels.tolist(),
            "oof": np.round(self.oof, 6).tolist(),
            "fold_scores": self.fold_scores,
            "curve": self.curve,
        }

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> CVResult:
        return cls(
            epochs=int(values["epochs"]),
            head_epochs=int(values["head_epochs"]),
            finetune_epochs=int(values["finetune_epochs"]),
            fold=np.asarray(values["fold"], dtype=np.int64),
            labels=np.asarray(values["labels"], dtype=np.int64),
            oof=np.asarray(values["oof"], dtype=np.float64),
            fold_scores=list(values["fold_scores"]),
            curve=list(values["curve"]),
        )


FitFold = Callable[[int, np.ndarray, np.ndarray], FitResult]


def cross_validate(
    arrays: Arrays,
    folds: list[tuple[np.ndarray, np.ndarray]],
    fit_fold: FitFold,
    head_epochs: int,
    positive: int,
    objective: str = "log_loss",
    report: Callable[[int, float], None] | None = None,
) -> CVResult:
    """Run ``fit_fold(fold index, train images, val images)`` (a fixed-epoch fit returning
    per-epoch validation probabilities) on every fold; after each, ``report(fold index, the
    objective over the folds so far)``, each fold at its own best epoch, which may raise to stop
    the trial (pruning)."""
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown CV objective {objective!r}; one of {OBJECTIVES}")
    per_fold: list[list[np.ndarray]] = []
    so_far: list[float] = []
    for index, (train, val) in enumerate(folds):
        result = fit_fold(index, train, val)
        if not result.val_proba:
            raise ValueError(
                f"fold {index} returned no per-epoch validation predictions"
                " (fit with fixed_epochs and a validation part)"
            )
        per_fold.append(result.val_proba)
        y = arrays.labels[val]
        best = result.val_proba[int(np.argmin([_loss(y, p) for p in result.val_proba]))]
        so_far.append(
            _loss(y, best)
            if objective == "log_loss"
            else 1.0 - classification_metrics(y, best, positive)[objective]
        )
        if report is not None:
            report(index, float(np.nanmean(so_far)) if np.isfinite(so_far).any() else float("nan"))
    n_epochs = min(len(p) for p in per_fold)
    curve = [
        float(
            np.mean([_loss(arrays.labels[val], per_fold[f][e]) for f, (_, val) in enumerate(folds)])
        )
        for e in range(n_epochs)
    ]
    chosen = int(np.argmin(curve))
    oof = np.zeros((len(arrays.labels), per_fold[0][0].shape[1]))
    fold_of = np.full(len(arrays.labels), -1, dtype=np.int64)
    scores = []
    for f, (_, val) in enumerate(folds):
        proba = per_fold[f][chosen]
        oof[val], fold_of[val] = proba, f
        scores.append(
            {
                "log_loss": _loss(arrays.labels[val], proba),
                **classification_metrics(arrays.labels[val], proba, positive),
            }
        )
    epochs = chosen + 1
    return CVResult(
        epochs,
        min(epochs, head_epochs),
        max(0, epochs - head_epochs),
        fold_of,
        arrays.labels.copy(),
        oof,
        scores,
        curve,
    )


def oof_estimate(result: CVResult, positive: int) -> dict[str, dict[str, float]]:
    """Each metric's mean over folds with its 95% corrected resampled t interval, on labels from
    cross-fitted calibration (each fold's threshold fitted on the other folds): the number a
    model card leads with."""
    scored = result.fold >= 0
    labels, folds = result.labels[scored], result.fold[scored]
    calibrated, predicted = cross_fitted(result.oof[scored], labels, folds, positive)
    per_fold = [
        classification_metrics(
            labels[folds == f], calibrated[folds == f], positive, predicted[folds == f]
        )
        for f in np.unique(folds)
    ]
    n_val = float(np.mean([np.sum(folds == f) for f in np.unique(folds)]))
    n_train = len(labels) - n_val
    estimate = {
        name: fold_interval(
            np.array([s[name] for s in per_fold]), int(n_train), int(n_val), bounds=(0.0, 1.0)
        )
        for name in METRIC_NAMES
    }
    return {
        name: {"value": v["mean"], "low": v["low"], "high": v["high"]}
        for name, v in estimate.items()
    }


#: ``fit_predict(training images, [images to predict, ...])``: train one model from scratch on
#: the training images and return its per-image probabilities for each list.
FitPredict = Callable[[np.ndarray, list[np.ndarray]], list[np.ndarray]]


@dataclass
class FinalModels:
    """The two ways to end a cross-validated search, on the same folds: out-of-fold predictions
    of the training images (for calibration and the threshold), and the test probabilities of a
    refit on all training images and of the ensemble (mean) of the k fold models."""

    oof: np.ndarray
    refit: np.ndarray
    ensemble: np.ndarray


def final_models(
    labels: np.ndarray,
    groups: np.ndarray,
    train: np.ndarray,
    test: np.ndarray,
    k: int,
    seed: int,
    fit_predict: FitPredict,
) -> FinalModels:
    """The pipeline's protocol after a CV search, applied to one (``train``, ``test``) part of a
    larger cross-validation (``osteo compare``): k group folds of ``train`` give the fold models
    and the OOF predictions; a refit trains on all of ``train``. Both predict ``test``, which none
    of the k + 1 models saw."""
    train, test = np.asarray(train, dtype=np.int64), np.asarray(test, dtype=np.int64)
    oof: np.ndarray | None = None
    members = []
    for inner_train, inner_val in cv_folds(labels[train], groups[train], k, seed):
        val_proba, test_proba = fit_predict(train[inner_train], [train[inner_val], test])
        oof = np.zeros((len(train), val_proba.shape[1])) if oof is None else oof
        oof[inner_val] = val_proba
        members.append(test_proba)
    (refit,) = fit_predict(train, [test])
    assert oof is not None  # cv_folds gives k >= 2 folds or raises
    return FinalModels(oof, refit, np.mean(members, axis=0))
