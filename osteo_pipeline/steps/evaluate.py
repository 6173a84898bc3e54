"""Evaluate a model on held-out images: metrics with 95% bootstrap CIs at the validation-chosen
threshold, calibration (ECE before and after temperature scaling, reliability diagram), and,
when ``tracking.log_image_grids`` allows patient images in artifacts, the paper's prediction grid
and its Grad-CAM twin. Used by the refit and by ``osteo evaluate``."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import matplotlib.pyplot as plt
import mlflow
import numpy as np
import pandas as pd

from osteo_pipeline.config import Settings
from osteo_pipeline.core import plots
from osteo_pipeline.core.calibration import Calibration, expected_calibration_error, reliability
from osteo_pipeline.core.exams import by_exam, subgroups
from osteo_pipeline.core.explain import explainable, grad_cam, overlay
from osteo_pipeline.core.metrics import metrics_with_ci
from osteo_pipeline.io import run_artifacts, tracking
from osteo_pipeline.io.cachedir import cache_folder
from osteo_pipeline.io.copies import Content
from osteo_pipeline.io.pixels import PixelCache
from osteo_pipeline.serving import load_classifier
from osteo_pipeline.steps.seen import seen_images, training_images, training_patients
from osteo_pipeline.training.arrays import Arrays

GRID_IMAGES = 16


def evaluate_predictions(
    arrays: Arrays,
    raw_proba: np.ndarray,
    settings: Settings,
    calibration: Calibration,
    prefix: str = run_artifacts.TEST_PREFIX,
    model: keras.Model | None = None,
    clinical: pd.DataFrame | None = None,
) -> dict[str, Any]:
    """Metrics with CIs for the model's raw probabilities ``raw_proba`` on ``arrays``, calibrated
    and thresholded by ``calibration``; logs metrics and figures (Grad-CAM too, given a ``model``
    of the pipeline's layout) to the active run. With ``clinical`` (the images' patient, exam,
    sex and age, from a clinical manifest) intervals resample patients, and results per exam and
    per subgroup are logged too. Returns ``{metric: {value, low, high}}`` plus ``ece`` entries."""
    classes = list(settings.data.classes)
    positive = classes.index(settings.data.positive)
    proba = calibration.probabilities(raw_proba)
    predicted = calibration.labels(proba)
    patients = None if clinical is None else clinical["patient"].to_numpy()
    report = metrics_with_ci(
        arrays.labels, proba, positive, predicted, seed=settings.seed, groups=patients
    )
    ece = {
        "ece": expected_calibration_error(proba, arrays.labels),
        "ece_uncalibrated": expected_calibration_error(raw_proba, arrays.labels),
    }
    tracking.log_intervals(report, prefix, extra=ece)
    mlflow.log_params(
        {
            "calibration.temperature": round(calibration.temperature, 4),
            "calibration.threshold": calibration.threshold,
        }
    )
    figures = {
        "confusion_matrix.png": plots.confusion_matrix(arrays.labels, predicted, classes),
        "roc_curve.png": plots.roc_curves(arrays.labels, proba, classes, positive),
        "reliability_diagram.png": plots.reliability_diagram(
            {
                f"raw (ECE {ece['ece_uncalibrated']:.3f})": reliability(raw_proba, arrays.labels),
                f"T={calibration.temperature:.2f} (ECE {ece['ece']:.3f})": reliability(
                    proba, arrays.labels
                ),
            }
        ),
    }
    # The grids show the images themselves: patient data, logged only when the config asks.
    grids = settings.tracking.log_image_grids
    mlflow.set_tag(
        run_artifacts.IMAGE_GRIDS_TAG,
        "logged (tracking.log_image_grids)"
        if grids
        else "not logged: they would hold patient images (tracking.log_image_grids)",
    )
    if grids:
        figures["test_predictions.png"] = plots.prediction_grid(
            arrays.first_views(), arrays.labels, proba, classes, predicted, GRID_IMAGES
        )
    if grids and model is not None and explainable(model) and len(arrays.pixels):
        shown = arrays.first_views()[:GRID_IMAGES]
        heatmaps, _ = grad_cam(
            model, shown, predicted[:GRID_IMAGES]
        )  # the served label, which the threshold may move off the arg-max
        overlays = np.stack([overlay(image[..., 0], heat) for image, heat in zip(shown, heatmaps)])
        figures["test_gradcam.png"] = plots.prediction_grid(
            overlays,
            arrays.labels,
            proba,
            classes,
            predicted,
            GRID_IMAGES,
            title="Grad-CAM: evidence for the predicted class",
        )
    for name, figure in figures.items():
        mlflow.log_figure(figure, f"figures/{name}")
        plt.close(figure)
    predictions = [
        {
            "path": p,
            "true": classes[t],
            "predicted": classes[int(k)],
            **{f"p_{c}": float(row[i]) for i, c in enumerate(classes)},
        }
        for p, t, k, row in zip(arrays.paths, arrays.labels, predicted, proba)
    ]
    summary = {
        "unit": "image; intervals resample patients" if clinical is not None else "image",
        "metrics": report,
        **(
            _clinical_results(arrays, proba, calibration, settings, clinical, prefix)
            if clinical is not None
            else {}
        ),
        "calibration": calibration.as_dict(),
        **ece,
        "positive_class": settings.data.positive,
        "n": len(arrays.labels),
        "predictions": predictions,
    }
    tracking.log_json(summary, run_artifacts.evaluation_file(prefix))
    return {
        **report,
        **{k: {"value": v, "low": float("nan"), "high": float("nan")} for k, v in ece.items()},
    }


def _clinical_results(
    arrays: Arrays,
    proba: np.ndarray,
    calibration: Calibration,
    settings: Settings,
    clinical: pd.DataFrame,
    prefix: str,
) -> dict[str, Any]:
    """Per exam (the mean probability of its images) and per sex and age band; exam metrics are
    logged as ``<prefix>exam_<metric>``."""
    positive = list(settings.data.classes).index(settings.data.positive)
    exams, exam_labels, exam_proba = by_exam(clinical, arrays.labels, proba)
    per_exam = metrics_with_ci(
        exam_labels,
        exam_proba,
        positive,
        calibration.labels(exam_proba),
        seed=settings.seed,
        groups=exams["patient"].to_numpy(),
    )
    tracking.log_intervals(per_exam, f"{prefix}exam_")
    return {
        "per_exam": {
            "n_exams": len(exams),
            "n_patients": int(exams["patient"].nunique()),
            "metrics": per_exam,
        },
        "subgroups": subgroups(
            clinical,
            arrays.labels,
            proba,
            calibration.labels,
            positive,
            settings.clinical.age_bands,
            settings.seed,
        ),
    }


@dataclass
class EvaluationResult:
    run_id: str
    metrics: dict[str, dict[str, float]]
    n_images: int
    skipped_seen: list[
        str
    ]  # copies (identical or derived) of images the model trained or was calibrated on, left out
    left_out_kinds: dict[str, int]  # how many of them, by kind of copy
    seconds: float


def evaluate_model(model_uri: str, data_dir: Path, settings: Settings) -> EvaluationResult:
    """Evaluate a logged or registered model on a validated folder of labeled images, leaving
    out any image its own training run trained or calibrated on, as one MLflow run."""
    from osteo_pipeline.steps.split import usable_images
    from osteo_pipeline.steps.validate import validate_folder

    started = time.perf_counter()
    tracking.configure(settings)
    classifier = load_classifier(model_uri)
    if list(classifier.classes) != list(settings.data.classes):
        raise ValueError(
            f"{model_uri} predicts {classifier.classes}; "
            f"set data.classes to match (now {settings.data.classes})"
        )
    validation = validate_folder(data_dir, settings)
    if not validation.passed:
        raise ValueError(
            f"{data_dir} failed validation; run `osteo validate {data_dir}` for the report"
        )
    frame, _ = usable_images(validation, settings)
    scan = validation.scan
    copies = seen_images(
        [Content(sha, scan.file(p), None, p) for sha, p in zip(frame["sha256"], frame["path"])],
        training_images(model_uri),
        settings,
    )
    # Each row's reason to be left out: a copy of a trained-on image, or a trained-on patient.
    patients = training_patients(model_uri, settings) if "patient" in frame else set()
    reasons = [
        copies.get(sha) or ("patient seen in training" if patient in patients else None)
        for sha, patient in zip(frame["sha256"], frame.get("patient", frame["sha256"]))
    ]
    left_out = pd.Series([r is not None for r in reasons], index=frame.index)
    skipped = sorted(frame.loc[left_out, "path"])
    why = [{"path": p, "why": r} for p, r in zip(frame["path"], reasons) if r is not None]
    kinds = Counter(r for r in reasons if r is not None)
    frame = frame[~left_out].reset_index(drop=True)
    if frame.empty:
        raise ValueError(
            f"no image in {data_dir} is new to {model_uri}: all {len(skipped)} are copies "
            f"of images it trained or was calibrated on ({dict(kinds)})"
        )
    index = {c: i for i, c in enumerate(classifier.classes)}
    cache = PixelCache(
        classifier.size,
        classifier.max_pixels,
        cache_folder(settings.train.cache_dir, "pixels"),
        classifier.roi,
    )
    pixels = cache.load([scan.file(p) for p in frame["path"]], list(frame["sha256"]))
    arrays = Arrays(
        pixels, frame["label"].map(index).to_numpy(dtype=np.int64), list(frame["path"]), cache.views
    )
    batch = 16 * cache.views  # whole images per batch
    raw = np.concatenate(
        [classifier.predict_pixels(pixels[i : i + batch]) for i in range(0, len(pixels), batch)]
    )
    with mlflow.start_run(
        run_name=f"evaluate-{Path(data_dir).name}",
        tags={"osteo.kind": "evaluate", "model_uri": model_uri},
    ) as run:
        mlflow.log_params(
            {"data_dir": str(data_dir), "n_images": len(frame), "skipped_seen": len(skipped)}
        )
        mlflow.log_dict({"left_out": sorted(why, key=lambda w: w["path"])}, "left_out.json")
        metrics = evaluate_predictions(
            arrays,
            raw,
            settings,
            classifier.calibration,
            prefix="eval_",
            model=classifier.model,
            clinical=frame if "patient" in frame else None,
        )
        return EvaluationResult(
            run.info.run_id,
            metrics,
            len(frame),
            skipped,
            dict(kinds),
            time.perf_counter() - started,
        )
