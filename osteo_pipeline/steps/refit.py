"""Refit chosen parameters, calibrate, evaluate once on test, log the servable model.

Two protocols, by how the parameters were chosen:

- **validation split**: train on train; temperature and threshold are fitted on val, which the
  model did not train on.
- **cross-validated search** (small data, ``training.cv``): train on train + val for the epochs CV
  chose, a refit rather than the ensemble of the fold models (one network to serve, explain and
  gate); temperature and threshold are fitted on the best trial's out-of-fold predictions, and
  the run records the out-of-fold estimate with its interval (``cv_estimate.json``), the number
  the model card leads with.

Test stays untouched until the end either way."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import keras
import matplotlib.pyplot as plt
import mlflow
import numpy as np

from osteo_pipeline.config import Settings
from osteo_pipeline.core import plots
from osteo_pipeline.core.calibration import fit_calibration
from osteo_pipeline.core.model_card import CvEstimate
from osteo_pipeline.io import run_artifacts, tracking
from osteo_pipeline.io.split_manifest import SplitManifest
from osteo_pipeline.serving import log_pyfunc
from osteo_pipeline.steps.evaluate import evaluate_predictions
from osteo_pipeline.training.arrays import Arrays, load_arrays, pixel_cache
from osteo_pipeline.training.backbone import build
from osteo_pipeline.training.cv import CVResult, cv_arrays, oof_estimate
from osteo_pipeline.training.epoch_logger import EpochLogger
from osteo_pipeline.training.fit import FitPlan, TrainParams, fit_two_phase, predict_images
from osteo_pipeline.training.runtime import configure_runtime, distribution, global_batch

log = logging.getLogger(__name__)


@dataclass
class RefitResult:
    run_id: str
    model_uri: str
    metrics: dict[str, dict[str, float]]
    weights_used: str
    seconds: float


def refit_and_evaluate(
    split: SplitManifest,
    params: dict[str, Any],
    settings: Settings,
    source: str = "config",
    tags: dict[str, str] | None = None,
    cv: dict[str, Any] | None = None,
) -> RefitResult:
    """Train with ``params`` (epochs from the best trial when given), calibrate, test once (see
    the module docstring; ``cv`` is the best trial's cross-validation, when it had one). ``tags``
    link the run to where the parameters came from (the study and its best trial)."""
    started = time.perf_counter()
    # The flow refits in the process that just ran the search: start from a clean Keras state, as
    # a standalone `osteo train` does.
    keras.backend.clear_session()
    runtime = configure_runtime(settings)
    tracking.configure(settings)
    chosen = TrainParams.from_dict(params, settings)
    # Input size and roi as chosen: pixels, backbone and the logged model agree.
    settings = chosen.apply(settings)
    # 0 fine-tune epochs is a result (fine-tuning did not help), not a missing value.
    epochs = tuple(
        default if params.get(key) is None else int(params[key])
        for key, default in (
            ("head_epochs", settings.train.head_epochs),
            ("finetune_epochs", settings.train.finetune_epochs),
        )
    )
    arrays = load_arrays(split, settings, pixel_cache(settings))
    train = arrays["train"]
    oof = _matching_cv(cv, split, arrays)
    if oof is not None:
        train, _ = cv_arrays(split, arrays)
        epochs = (oof.head_epochs, oof.finetune_epochs)
    with mlflow.start_run(
        run_name=f"train-{split.dataset_hash[:8]}",
        tags={
            run_artifacts.KIND_TAG: run_artifacts.TRAINING_KIND,
            run_artifacts.PARAMS_SOURCE_TAG: source,
            **(tags or {}),
        },
    ) as run:
        run_artifacts.log_settings(settings)
        mlflow.log_params(
            {f"{run_artifacts.CHOSEN_PREFIX}{k}": v for k, v in chosen.as_dict().items()}
            | {"epochs.head": epochs[0], "epochs.finetune": epochs[1]}
            | {f"runtime.{k}": v for k, v in runtime.items()}
        )
        run_artifacts.log_dataset(split)
        run_artifacts.log_environment()
        strategy = distribution(settings)
        mlflow.log_param("runtime.replicas", strategy.num_replicas_in_sync)
        with strategy.scope():
            model, weights = build(settings, chosen, train.pixels)
            plan = FitPlan(
                global_batch(settings, strategy),
                chosen,
                epochs=epochs,
                callbacks=[EpochLogger(label="refit")],
                jit=runtime["xla"],
            )
            fit = fit_two_phase(model, train, None, plan)
        run_artifacts.log_backbone(weights.described, weights.identity)
        if weights.random_init:
            mlflow.set_tag("WARNING", f"backbone trained from RANDOM INIT: {weights.described}")
        figure = plots.training_curves(fit.history, phase_boundary=fit.head_epochs)
        mlflow.log_figure(figure, "figures/training_curves.png")
        plt.close(figure)
        positive = settings.data.classes.index(settings.data.positive)
        if oof is None:
            fitted_on = predict_images(model, arrays["val"], settings.train.batch_size)
            fitted_labels = arrays["val"].labels
            source = run_artifacts.VALIDATION_PREDICTIONS
            run_artifacts.log_calibrated_on_val()
        else:
            fitted_on, fitted_labels, source = oof.oof, oof.labels, run_artifacts.CALIBRATED_ON_OOF
            _log_cv_estimate(oof, positive, settings)
        calibration = fit_calibration(fitted_on, fitted_labels, positive)
        run_artifacts.log_calibration_predictions(
            calibration.probabilities(fitted_on), fitted_labels, source
        )
        proba = predict_images(model, arrays["test"], settings.train.batch_size)
        test = split.subset("test")
        report = evaluate_predictions(
            arrays["test"],
            proba,
            settings,
            calibration,
            model=model,
            clinical=test if "patient" in test else None,
        )
        info = log_pyfunc(
            model,
            list(settings.data.classes),
            settings.model.input_size,
            settings.validation.max_pixels,
            run_id=run.info.run_id,
            calibration=calibration,
            roi=settings.model.roi,
            bounds=settings.validation.image_bounds,
        )
        return RefitResult(
            run.info.run_id,
            info.model_uri,
            report,
            weights.described,
            time.perf_counter() - started,
        )


def _matching_cv(
    cv: dict[str, Any] | None, split: SplitManifest, arrays: dict[str, Arrays]
) -> CVResult | None:
    """The cross-validation of the chosen trial when it was run on exactly these training images
    (a study of other data, allowed by --allow-other-data, cannot calibrate this model)."""
    if not cv:
        return None
    if cv.get("dataset_hash", split.dataset_hash) != split.dataset_hash:
        log.warning(
            "the chosen trial was cross-validated on other data: calibrating on val instead of "
            "its out-of-fold predictions"
        )
        return None
    result = CVResult.from_dict(cv)
    labels = np.concatenate([arrays["train"].labels, arrays["val"].labels])
    if len(result.labels) != len(labels) or not np.array_equal(result.labels, labels):
        log.warning(
            "the chosen trial was cross-validated on other images: calibrating on val instead of "
            "its out-of-fold predictions"
        )
        return None
    return result


def _log_cv_estimate(result: CVResult, positive: int, settings: Settings) -> None:
    """The out-of-fold estimate with its interval, as metrics and ``cv_estimate.json``."""
    estimate = oof_estimate(result, positive)
    tracking.log_intervals(estimate, "cv_")
    run_artifacts.log_cv_estimate(
        CvEstimate(estimate, folds=int(result.fold.max()) + 1, n=len(result.labels)),
        {
            "epochs": result.epochs,
            "objective": settings.tune.objective,
            "interval": "corrected resampled t (Nadeau & Bengio), 95%",
        },
    )
