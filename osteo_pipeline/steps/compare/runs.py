"""One system on every fold, whatever the system: a nested MLflow run for the system and one per
fold under it, each fold's predictions calibrated and scored the same way, and the system's
summary rows (mean over folds with a corrected resampled t interval)."""

from __future__ import annotations

import logging
import time
from typing import Any

import mlflow
import numpy as np

from osteo_pipeline.core.calibration import expected_calibration_error, fit_calibration
from osteo_pipeline.core.compare_report import REPORTED
from osteo_pipeline.core.compare_systems import System
from osteo_pipeline.core.metrics import classification_metrics, fold_interval
from osteo_pipeline.core.model import WeightsUnavailableError
from osteo_pipeline.core.preprocess import ImageDecodeError
from osteo_pipeline.core.splits import Fold
from osteo_pipeline.steps.compare.data import Data

log = logging.getLogger(__name__)

Row = dict[str, Any]


def run_system(
    system: System, data: Data, folds: list[Fold], positive: int
) -> tuple[list[Row], list[Row]]:
    """All folds of one system, each a nested MLflow run; its summary rows (one per variant) and
    its per-fold rows. A system whose weights are unavailable, or whose files went away after
    validation, gives one row saying so; the others stand."""
    fold_rows: list[Row] = []
    started = time.perf_counter()
    with mlflow.start_run(
        run_name=system.label,
        nested=True,
        tags={"osteo.kind": "compare-system", "system": system.name},
    ):
        mlflow.log_params(
            {
                "system": system.name,
                "input_size": system.size or "none",
                "description": system.description.note,
            }
        )
        try:
            system.prepare()
            for fold in folds:
                fold_rows += _run_fold(system, fold, data, positive)
        except WeightsUnavailableError as exc:
            mlflow.set_tag("unavailable", str(exc)[:5000])
            reason = "unavailable: no pretrained weights (see note)"
            return [_unavailable(system, f"unavailable: {_one_line(exc)}", reason)], []
        except (ImageDecodeError, OSError) as exc:  # a file changed or went away after validation
            mlflow.set_tag("failed", str(exc)[:5000])
            reason = "failed: a file could not be read or written (see note)"
            return [_unavailable(system, f"failed: {_one_line(exc)}", reason)], []
        finally:
            costs = system.close()
            if costs:  # on the system's run: its activation cache's size and cost
                mlflow.log_metrics(costs)
        n_train = int(np.mean([len(f.train) + len(f.val) for f in folds]))
        n_test = int(np.mean([len(f.test) for f in folds]))
        seconds_per_fold = (time.perf_counter() - started) / len(folds)
        mlflow.log_metric("seconds_per_fold", seconds_per_fold)
        notes = system.notes(fold_rows, n_train, n_test)
        rows = []
        for key, row_name in system.variants.items():
            row: Row = {
                "system": row_name,
                "name": system.name,
                "size": system.size,
                "available": True,
                "note": notes[key],
                "seconds_per_fold": seconds_per_fold,
                "seen": system.seen,
            }
            prefix = f"{key}." if key else ""
            for metric in REPORTED:
                values = np.array([r[metric] for r in fold_rows if r["system"] == row_name])
                row[metric] = fold_interval(values, n_train, n_test, bounds=(0.0, 1.0))
                mlflow.log_metrics(
                    {
                        f"{prefix}{metric}_{k}": v
                        for k, v in row[metric].items()
                        if k != "folds" and np.isfinite(v)
                    }
                )
            rows.append(row)
    return rows, fold_rows


def _run_fold(system: System, fold: Fold, data: Data, positive: int) -> list[Row]:
    """One fold of one system as a nested run: its scores per variant."""
    started = time.perf_counter()
    with mlflow.start_run(
        run_name=f"{system.label} {fold.name}",
        nested=True,
        tags={"osteo.kind": "compare-fold", "system": system.name, "fold": fold.name},
    ):
        predictions = system.fold_predictions(fold)
        seconds = time.perf_counter() - started
        mlflow.log_params({"fold": fold.name, **system.fold_params(fold), "n_test": len(fold.test)})
        rows = []
        for key, (calibration_proba, calibration_labels, test_proba) in predictions.items():
            scores = score_fold(
                calibration_proba, calibration_labels, test_proba, data.labels[fold.test], positive
            )
            prefix = f"{key}." if key else ""
            mlflow.log_metrics(
                {f"{prefix}{k}": v for k, v in scores.items() if np.isfinite(v)}
                | {"seconds": seconds}
            )
            row_name = system.variants[key]
            rows.append({"system": row_name, "fold": fold.name, **scores, "seconds": seconds})
            log.info(
                "%s %s: balanced accuracy %.3f (%.0f s)",
                row_name,
                fold.name,
                scores["balanced_accuracy"],
                seconds,
            )
    return rows


def score_fold(
    calibration_proba: np.ndarray,
    calibration_labels: np.ndarray,
    test_proba: np.ndarray,
    test_labels: np.ndarray,
    positive: int,
) -> dict[str, float]:
    """Test metrics after temperature and threshold fitted on the calibration predictions (the
    fold's val part, or a nested recipe's out-of-fold predictions)."""
    calibration = fit_calibration(calibration_proba, calibration_labels, positive)
    calibrated = calibration.probabilities(test_proba)
    scores = classification_metrics(
        test_labels, calibrated, positive, calibration.labels(calibrated)
    )
    scores["ece"] = expected_calibration_error(calibrated, test_labels)
    return scores | {
        "temperature": calibration.temperature,
        "threshold": calibration.threshold if calibration.threshold is not None else float("nan"),
    }


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def _unavailable(system: System, why: str, reason: str) -> Row:
    return {
        "system": system.label,
        "name": system.name,
        "size": system.size,
        "available": False,
        "note": why,
        "reason": reason,
    }
