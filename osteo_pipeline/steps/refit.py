"""Refit chosen parameters on the training split, calibrate on validation, evaluate once on test,
log the servable model.

Validation is kept out of the refit so that the temperature and the decision threshold are
fitted on predictions the model did not train on; test stays untouched until the end."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import keras
import matplotlib.pyplot as plt
import mlflow

from osteo_pipeline.config import Settings
from osteo_pipeline.core import plots
from osteo_pipeline.core.calibration import fit_calibration
from osteo_pipeline.io import tracking
from osteo_pipeline.io.split_manifest import SplitManifest
from osteo_pipeline.serving import log_pyfunc
from osteo_pipeline.steps.evaluate import evaluate_predictions
from osteo_pipeline.training.arrays import load_arrays, pixel_cache
from osteo_pipeline.training.fit import TrainParams, build, fit_two_phase, predict_proba
from osteo_pipeline.training.runtime import configure_runtime, distribution, global_batch


@dataclass
class RefitResult:
    run_id: str
    model_uri: str
    metrics: dict[str, dict[str, float]]
    weights_used: str
    seconds: float


def refit_and_evaluate(split: SplitManifest, params: dict[str, Any], settings: Settings, source: str = "config", tags: dict[str, str] | None = None) -> RefitResult:
    """Train on train with ``params`` (epochs from the best trial when given), fit temperature
    and threshold on val, test once. ``tags`` link the run to where the parameters came from
    (the study and its best trial)."""
    started = time.perf_counter()
    # The flow refits in the process that just ran the search: start from a clean Keras state, as
    # a standalone `osteo train` does.
    keras.backend.clear_session()
    runtime = configure_runtime(settings)
    tracking.configure(settings)
    chosen = TrainParams.from_dict(params)
    epochs = tuple(  # 0 fine-tune epochs is a result (fine-tuning did not help), not a missing value
        default if params.get(key) is None else int(params[key])
        for key, default in (("head_epochs", settings.train.head_epochs), ("finetune_epochs", settings.train.finetune_epochs))
    )
    arrays = load_arrays(split, settings, pixel_cache(settings))
    train = arrays["train"]
    with mlflow.start_run(run_name=f"train-{split.dataset_hash[:8]}", tags={"osteo.kind": "train", "params_source": source, **(tags or {})}) as run:
        tracking.log_settings(settings)
        mlflow.log_params({f"chosen.{k}": v for k, v in chosen.as_dict().items()} | {"epochs.head": epochs[0], "epochs.finetune": epochs[1]} | {f"runtime.{k}": v for k, v in runtime.items()})
        tracking.log_dataset(split)
        tracking.log_environment()
        strategy = distribution(settings)
        mlflow.log_param("runtime.replicas", strategy.num_replicas_in_sync)
        with strategy.scope():
            model, weights_used = build(settings, chosen)
            fit = fit_two_phase(model, train, None, chosen, global_batch(settings, strategy), [tracking.EpochLogger(label="refit")], epochs=epochs, jit=runtime["xla"])
        mlflow.set_tag("backbone_weights", weights_used)
        if weights_used.startswith("random-init"):
            mlflow.set_tag("WARNING", "backbone trained from RANDOM INIT: ImageNet weights were unavailable (demo fallback)")
        figure = plots.training_curves(fit.history, phase_boundary=fit.head_epochs)
        mlflow.log_figure(figure, "figures/training_curves.png")
        plt.close(figure)
        positive = settings.data.classes.index(settings.data.positive)
        calibration = fit_calibration(predict_proba(model, arrays["val"].pixels, settings.train.batch_size), arrays["val"].labels, positive)
        proba = predict_proba(model, arrays["test"].pixels, settings.train.batch_size)
        report = evaluate_predictions(arrays["test"], proba, settings, calibration, model=model)
        info = log_pyfunc(model, list(settings.data.classes), settings.model.input_size, settings.validation.max_pixels, run.info.run_id, calibration)
        return RefitResult(run.info.run_id, info.model_uri, report, weights_used, time.perf_counter() - started)
