"""Optuna search over learning rate, unfreeze depth, head size and dropout.

One MLflow parent run per study and one nested run per trial. The study lives in SQLite, so a
re-run with the same name resumes: finished and pruned trials are kept, trials a killed process
left RUNNING are marked FAIL (and their MLflow runs FAILED), and only the missing trials run."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import keras
import mlflow
import numpy as np
import optuna
from optuna.trial import TrialState
from optuna_integration import KerasPruningCallback

from osteo_pipeline.config import Settings, TuneSettings
from osteo_pipeline.core.data import augmenter
from osteo_pipeline.core.metrics import classification_metrics
from osteo_pipeline.core.model import MAX_UNFREEZE_DEPTH, with_head
from osteo_pipeline.io import tracking
from osteo_pipeline.io.activations import ActivationCache
from osteo_pipeline.steps.split import SplitManifest
from osteo_pipeline.steps.train import (
    Arrays,
    TrainParams,
    configure_runtime,
    fit_two_phase,
    load_arrays,
    load_backbone,
    model_spec,
    pixel_cache,
    predict_val,
)

log = logging.getLogger(__name__)
STUDY_TAG = "osteo.study"
TRIAL_TAG = "osteo.trial"
OBJECTIVE = "val_loss"


@dataclass
class TuneResult:
    study_name: str
    parent_run_id: str
    best_params: dict[str, Any]
    best_value: float
    best_trial: int
    counts: dict[str, int]
    seconds: float


def suggest(trial: optuna.Trial, space: TuneSettings) -> TrainParams:
    return TrainParams(
        learning_rate=trial.suggest_float("learning_rate", *space.learning_rate, log=True),
        unfreeze_depth=trial.suggest_int("unfreeze_depth", *space.unfreeze_depth),
        head_units=trial.suggest_categorical("head_units", space.head_units),
        dropout=trial.suggest_float("dropout", *space.dropout),
    )


def make_pruner(space: TuneSettings, max_epochs: int) -> optuna.pruners.BasePruner:
    if space.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=space.pruner_startup_trials, n_warmup_steps=space.pruner_warmup_epochs)
    if space.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=max(1, space.pruner_warmup_epochs), max_resource=max(2, max_epochs))
    return optuna.pruners.NopPruner()


def open_study(settings: Settings) -> optuna.Study:
    t = settings.train
    study = optuna.create_study(
        study_name=settings.tune.study_name,
        storage=settings.tune.storage,
        direction="minimize",
        sampler=optuna.samplers.TPESampler(seed=settings.seed),
        pruner=make_pruner(settings.tune, t.head_epochs + t.finetune_epochs),
        load_if_exists=True,
    )
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        # A trial still RUNNING when its study is opened again was left by a killed process.
        study._storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)
        log.warning("trial %d was left RUNNING by a stopped process: marked FAIL", trial.number)
    return study


def _finished(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))


def activation_cache(settings: Settings, arrays: dict[str, Arrays]) -> ActivationCache | None:
    """The search's frozen-prefix cache, or ``None`` when disabled in config."""
    t = settings.tune
    if not t.activation_cache:
        return None
    return ActivationCache(
        arrays["train"].pixels,
        arrays["val"].pixels,
        views=min(t.cache_views, settings.train.head_epochs + settings.train.finetune_epochs),  # epoch e uses view e mod K
        augment=augmenter(settings.train.augment, settings.seed),
        batch_size=settings.train.batch_size,
        floor_depth=min(t.unfreeze_depth[1], MAX_UNFREEZE_DEPTH - 1),
        budget_bytes=int(t.cache_memory_mb * 2**20),
        spill_dir=t.cache_spill_dir,
    )


class StudyBackbone:
    """The study's one ResNet-50, built and its weights read on the first trial only (about 2 s
    a trial). Each trial gets it back reset to those weights, under a new head initialised from the
    trial's own seed: trials stay independent of each other and of their order, and every trial
    starts from the backbone weights the activation cache was computed with."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._base: keras.Model | None = None
        self._weights: list[np.ndarray] = []
        self.weights_used = ""  # where the weights came from, for each trial's tags

    def model(self, params: TrainParams, seed: int) -> keras.Model:
        if self._base is None:
            self._base, self.weights_used = load_backbone(self._settings)
            self._weights = self._base.get_weights()
        else:
            self._base.set_weights(self._weights)
        keras.utils.set_random_seed(seed)
        return with_head(self._base, model_spec(self._settings, params))


def objective_factory(settings: Settings, arrays: dict[str, Arrays], runtime: dict[str, bool], cache: ActivationCache | None):
    backbone = StudyBackbone(settings)
    positive = settings.data.classes.index(settings.data.positive)

    def objective(trial: optuna.Trial) -> float:
        params = suggest(trial, settings.tune)
        keras.backend.clear_session()  # Keras' global state from earlier trials must not reach this one
        with mlflow.start_run(run_name=f"trial-{trial.number:03d}", nested=True, tags={STUDY_TAG: settings.tune.study_name, TRIAL_TAG: str(trial.number)}) as run:
            trial.set_user_attr("mlflow_run_id", run.info.run_id)
            mlflow.log_params(params.as_dict() | {"trial": trial.number, "seed": settings.seed + trial.number})
            trial_cache = cache if params.unfreeze_depth < MAX_UNFREEZE_DEPTH else None  # depth 16 has no frozen prefix
            model = backbone.model(params, seed=settings.seed + trial.number)
            mlflow.set_tag("backbone_weights", backbone.weights_used)
            callbacks = [tracking.EpochLogger(), KerasPruningCallback(trial, OBJECTIVE)]
            mlflow.set_tag("activation_cache", str(trial_cache is not None).lower())
            try:
                fit = fit_two_phase(model, arrays["train"], arrays["val"], params, settings, callbacks, jit=runtime["xla"], cache=trial_cache)
            except optuna.TrialPruned:
                mlflow.set_tags({"optuna.state": "PRUNED", "pruned": "true"})
                mlflow.end_run(status="KILLED")
                raise
            proba = predict_val(model, arrays["val"], params.unfreeze_depth, settings.train.batch_size, trial_cache)
            val = classification_metrics(arrays["val"].labels, proba, positive)
            value = float(min(fit.history[OBJECTIVE]))
            mlflow.log_metrics({f"val_{k}": v for k, v in val.items() if np.isfinite(v)} | {"objective_val_loss": value})
            mlflow.log_params({"head_epochs_to_best": fit.head_epochs, "finetune_epochs_to_best": fit.finetune_epochs})
            mlflow.set_tag("optuna.state", "COMPLETE")
            trial.set_user_attr("head_epochs", fit.head_epochs)
            trial.set_user_attr("finetune_epochs", fit.finetune_epochs)
            trial.set_user_attr("val_balanced_accuracy", val["balanced_accuracy"])
            return value

    return objective


def tune(split: SplitManifest, settings: Settings, trials: int | None = None, timeout_s: float | None = None) -> TuneResult:
    """Run (or resume) the study until ``trials`` trials have finished or ``timeout_s`` passes."""
    started = time.perf_counter()
    runtime = configure_runtime(settings)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    experiment_id = tracking.configure(settings)
    study = open_study(settings)
    name = settings.tune.study_name
    tracking.fail_orphaned_runs(experiment_id, f"tags.`{STUDY_TAG}` = '{name}'")
    target = trials or settings.tune.trials
    arrays = load_arrays(split, settings, pixel_cache(settings))

    parent_id = tracking.find_run(experiment_id, f"tags.`{STUDY_TAG}` = '{name}' and tags.`osteo.kind` = 'study'")
    with mlflow.start_run(run_id=parent_id, run_name=None if parent_id else f"study-{name}") as parent:
        if parent_id is None:
            mlflow.set_tags({STUDY_TAG: name, "osteo.kind": "study", "optuna.storage": settings.tune.storage})
            tracking.log_settings(settings)
            tracking.log_dataset(split)
            tracking.log_environment()
            mlflow.log_params({f"runtime.{k}": v for k, v in runtime.items()})
        remaining = target - _finished(study)
        if remaining > 0:
            cache = activation_cache(settings, arrays)
            try:
                study.optimize(
                    objective_factory(settings, arrays, runtime, cache),
                    n_trials=remaining,
                    timeout=timeout_s or settings.tune.timeout_s,
                    catch=(),
                    gc_after_trial=True,
                )
            finally:
                if cache is not None:
                    mlflow.log_metrics(cache.report())
                    cache.close()
        counts = {state.name.lower(): len(study.get_trials(deepcopy=False, states=(state,))) for state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
        completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if not completed:
            raise RuntimeError(f"study {name!r} has no completed trial yet ({counts})")
        best = study.best_trial
        best_params = best.params | {"head_epochs": best.user_attrs.get("head_epochs"), "finetune_epochs": best.user_attrs.get("finetune_epochs")}
        mlflow.log_metrics({"best_val_loss": best.value, "trials_complete": counts["complete"], "trials_pruned": counts["pruned"]})
        mlflow.set_tags({"best_trial": str(best.number), "best_trial_run_id": best.user_attrs.get("mlflow_run_id", "")})
        mlflow.log_dict(best_params, "best_params.json")
        return TuneResult(name, parent.info.run_id, best_params, float(best.value), best.number, counts, time.perf_counter() - started)


def best_params(settings: Settings) -> dict[str, Any]:
    """The best completed trial's parameters and epochs run, from the study storage."""
    try:
        study = optuna.load_study(study_name=settings.tune.study_name, storage=settings.tune.storage)
        best = study.best_trial
    except (KeyError, ValueError) as exc:
        raise ValueError(f"no completed trial in study {settings.tune.study_name!r} at {settings.tune.storage}; run `osteo tune` first") from exc
    return best.params | {"head_epochs": best.user_attrs.get("head_epochs"), "finetune_epochs": best.user_attrs.get("finetune_epochs")}
