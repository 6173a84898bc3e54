"""One trial: its parameters drawn from the search space, a model from the worker's shared
backbone, trained and scored on the validation split or by cross-validation on small data, inside
a nested MLflow run."""

from __future__ import annotations

import logging
import os
import socket
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import mlflow
import numpy as np
import optuna
from optuna.trial import TrialState
from optuna_integration import KerasPruningCallback

from osteo_pipeline.config import Settings
from osteo_pipeline.core.metrics import classification_metrics
from osteo_pipeline.core.model import MAX_UNFREEZE_DEPTH
from osteo_pipeline.core.splits import cv_folds
from osteo_pipeline.io import tracking
from osteo_pipeline.io.run_artifacts import BACKBONE_WEIGHTS_TAG, CV_FOLDS_TAG
from osteo_pipeline.io.split_manifest import SplitManifest
from osteo_pipeline.steps.tune.study import (
    OBJECTIVE,
    STUDY_TAG,
    TRIAL_TAG,
    same_backbone,
    study_objective,
    uses_cv,
)
from osteo_pipeline.training.activations import ActivationCache, activation_cache
from osteo_pipeline.training.arrays import Arrays, load_arrays, pixel_cache
from osteo_pipeline.training.backbone import StudyBackbone
from osteo_pipeline.training.cv import cross_validate, cv_arrays, rows_of
from osteo_pipeline.training.epoch_logger import EpochLogger
from osteo_pipeline.training.fit import FitPlan, FitResult, TrainParams, fit_two_phase, predict_val
from osteo_pipeline.training.runtime import configure_runtime, distribution, global_batch

if TYPE_CHECKING:
    import keras

log = logging.getLogger(__name__)
#: States of trials that count against the budget: finished, being run, or queued to run.
CLAIMED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)


class OverBudget(Exception):
    """Raised at a trial's start when other workers already claimed the study's whole budget."""


def suggest(trial: optuna.Trial, settings: Settings) -> TrainParams:
    """A trial's parameters: drawn from ``tune``'s search space, the model's where it searches
    nothing (input size, roi and l2 unless ``tune`` lists them)."""
    return TrainParams.from_dict(settings.tune.search_space.suggest(trial), settings)


@dataclass
class SearchData:
    """What a worker's trials train on at one input (size, roi): the split's arrays, and with a
    CV search the training images (train + val) and their folds; a frozen-prefix cache each."""

    arrays: dict[str, Arrays]
    folds: list[tuple[np.ndarray, np.ndarray]] | None
    cache: ActivationCache | None = None
    cache_made: bool = False

    @property
    def cv(self) -> Arrays:
        return self.arrays["cv"]


class Objective:
    """One trial: a ResNet-50 built once per worker and input size and reset each trial
    (``StudyBackbone``), pixels and activation cache made on the first trial that needs them, a
    nested MLflow run. Small data: the trial is scored by cross-validation (``training.cv``)."""

    def __init__(
        self, settings: Settings, split: SplitManifest, parent_run_id: str, worker: int, seed: int
    ) -> None:
        self.settings = settings
        self.split = split
        self.cv = uses_cv(settings, split)
        self.parent_run_id = parent_run_id
        self.worker = worker
        self.sampler_seed = seed
        self.runtime = configure_runtime(settings)
        self.strategy = distribution(settings)
        self.fit_settings = global_batch(settings, self.strategy)
        self.backbones: dict[tuple[int, str], StudyBackbone] = {}
        self.data: dict[tuple[int, str], SearchData] = {}
        self.ran = 0  # trials this worker ran to the end (complete or pruned)

    def __call__(self, trial: optuna.Trial) -> float:
        import keras

        # Claim a slot of the budget, draw the parameters, start from a clean Keras state.
        self._claim(trial)
        params = suggest(trial, self.settings)
        trial.set_user_attr("effective_params", params.as_dict())  # input, roi, l2 as run
        keras.backend.clear_session()  # Keras' global state of earlier trials must not leak in
        where = f"{socket.gethostname()}:{os.getpid()}"
        trial.set_user_attr("worker", where)
        # Train and score it inside its MLflow run, nested under the study's.
        started = time.perf_counter()
        run_name = f"trial-{trial.number:03d}"
        with mlflow.start_run(run_name=run_name, tags=self._tags(trial, where)) as run:
            trial.set_user_attr("mlflow_run_id", run.info.run_id)
            mlflow.log_params(self._logged_params(trial, params))
            try:
                with self.strategy.scope():
                    data = self._data(params)
                    backbone = self._backbone(params, data)
                    score = self._cross_validate if self.cv else self._split_trial
                    value = score(trial, params, data, backbone)
            except optuna.TrialPruned:
                mlflow.set_tags({"optuna.state": "PRUNED", "pruned": "true"})
                mlflow.end_run(status="KILLED")
                self._ended(trial, params, started, "pruned after")
                raise
            mlflow.set_tag("optuna.state", "COMPLETE")
            objective = f"cv {self.settings.tune.objective}" if self.cv else OBJECTIVE
            self._ended(trial, params, started, f"{objective} {value:.4f} in")
            return value

    def close(self) -> dict[str, float]:
        """Close the activation caches; what they report (hits, spills), per input."""
        report: dict[str, float] = {}
        for (size, roi), data in self.data.items():
            if data.cache is not None:
                suffix = "" if len(self.data) == 1 else f"_{size}_{roi}"
                report |= {f"{k}{suffix}": v for k, v in data.cache.report().items()}
                data.cache.close()
        return report

    def _ended(self, trial: optuna.Trial, params: TrainParams, started: float, how: str) -> None:
        """Count a trial this worker ran to the end (complete or pruned), and say how it ended."""
        self.ran += 1
        seconds = time.perf_counter() - started
        log.info(
            "trial %d (worker %d): %s %.0f s (%s)",
            trial.number,
            self.worker,
            how,
            seconds,
            describe(params),
        )

    def _claim(self, trial: optuna.Trial) -> None:
        target = int(trial.study.user_attrs["target_finished"])
        before = [
            t
            for t in trial.study.get_trials(deepcopy=False, states=CLAIMED)
            if t.number < trial.number
        ]
        if len(before) >= target:  # another worker took the last slot between our check and ask
            trial.set_user_attr("over_budget", True)
            raise OverBudget(
                f"trial {trial.number}: the study's {target} trials are already claimed"
            )

    def _tags(self, trial: optuna.Trial, where: str) -> dict[str, str]:
        tags = {
            STUDY_TAG: trial.study.study_name,
            TRIAL_TAG: str(trial.number),
            "mlflow.parentRunId": self.parent_run_id,
            "osteo.worker": where,
        }
        if "warm_start_from" in trial.user_attrs:
            tags["osteo.warm_start_from"] = trial.user_attrs["warm_start_from"]
        return tags

    def _logged_params(self, trial: optuna.Trial, params: TrainParams) -> dict[str, object]:
        return (
            params.as_dict()
            | {
                "trial": trial.number,
                "seed": self.settings.seed + trial.number,
                "worker": self.worker,
                "sampler_seed": self.sampler_seed,
                "runtime.replicas": self.strategy.num_replicas_in_sync,
            }
            | {f"runtime.{k}": v for k, v in self.runtime.items()}
            | {"objective": study_objective(self.settings, self.split)}
        )

    def _input(self, params: TrainParams) -> tuple[int, str]:
        return (
            params.input_size or self.settings.model.input_size,
            params.roi or self.settings.model.roi,
        )

    def _data(self, params: TrainParams) -> SearchData:
        key = self._input(params)
        if key not in self.data:
            arrays = load_arrays(self.split, self.settings, pixel_cache(self.settings, *key))
            folds = None
            if self.cv:
                arrays["cv"], groups = cv_arrays(self.split, arrays)
                folds = cv_folds(
                    arrays["cv"].labels, groups, self.settings.tune.cv_folds, self.settings.seed
                )
            self.data[key] = SearchData(arrays, folds)
        return self.data[key]

    def _cache(self, data: SearchData, params: TrainParams) -> ActivationCache | None:
        if params.unfreeze_depth >= MAX_UNFREEZE_DEPTH:  # depth 16 has no frozen prefix
            return None
        if not data.cache_made:
            data.cache = activation_cache(
                self.settings,
                data.cv if self.cv else data.arrays["train"],
                None if self.cv else data.arrays["val"],
            )
            data.cache_made = True
        return data.cache

    def _backbone(self, params: TrainParams, data: SearchData) -> StudyBackbone:
        key = self._input(params)
        if key not in self.backbones:
            train = data.cv if self.cv else data.arrays["train"]
            self.backbones[key] = StudyBackbone(params.apply(self.settings), train.pixels)
        return self.backbones[key]

    def _model(
        self, trial: optuna.Trial, params: TrainParams, backbone: StudyBackbone, seed: int
    ) -> keras.Model:
        model = backbone.model(params, seed=seed)
        same_backbone(trial.study, backbone.weights)
        return model

    def _split_trial(
        self, trial: optuna.Trial, params: TrainParams, data: SearchData, backbone: StudyBackbone
    ) -> float:
        """Train on train, early-stopped and scored on val: minimum val loss."""
        settings, arrays = self.settings, data.arrays
        model = self._model(trial, params, backbone, settings.seed + trial.number)
        trial_cache = self._cache(data, params)
        mlflow.set_tags(
            {
                BACKBONE_WEIGHTS_TAG: backbone.weights.described,
                "activation_cache": str(trial_cache is not None).lower(),
            }
        )
        callbacks = [
            EpochLogger(label=f"trial {trial.number}"),
            KerasPruningCallback(trial, OBJECTIVE),
        ]
        fit = fit_two_phase(
            model,
            arrays["train"],
            arrays["val"],
            FitPlan(self.fit_settings, params, callbacks=callbacks, jit=self.runtime["xla"]),
            cache=trial_cache,
        )
        positive = settings.data.classes.index(settings.data.positive)
        proba = predict_val(
            model, arrays["val"], params.unfreeze_depth, settings.train.batch_size, trial_cache
        )
        val = classification_metrics(arrays["val"].labels, proba, positive)
        value = float(min(fit.history[OBJECTIVE]))
        mlflow.log_metrics(
            {f"val_{k}": v for k, v in val.items() if np.isfinite(v)}
            | {"objective_val_loss": value}
        )
        mlflow.log_params(
            {"head_epochs_to_best": fit.head_epochs, "finetune_epochs_to_best": fit.finetune_epochs}
        )
        trial.set_user_attr("head_epochs", fit.head_epochs)
        trial.set_user_attr("finetune_epochs", fit.finetune_epochs)
        trial.set_user_attr("val_balanced_accuracy", val["balanced_accuracy"])
        return value

    def _cross_validate(
        self, trial: optuna.Trial, params: TrainParams, data: SearchData, backbone: StudyBackbone
    ) -> float:
        """k folds of train+val on one shared activation cache, each from the same initial
        weights; reported fold by fold for pruning. Keeps the OOF predictions on the trial."""
        settings, cv, t = self.settings, data.cv, self.settings.tune
        positive = settings.data.classes.index(settings.data.positive)
        cache = self._cache(data, params)
        mlflow.set_tags(
            {
                BACKBONE_WEIGHTS_TAG: backbone.weights.described,
                "activation_cache": str(cache is not None).lower(),
                CV_FOLDS_TAG: str(t.cv_folds),
            }
        )

        def fit_fold(fold: int, train: np.ndarray, val: np.ndarray) -> FitResult:
            model = self._model(trial, params, backbone, settings.seed + trial.number)
            fold_cache = (
                cache.fold(rows_of(train, cv.views), rows_of(val, cv.views))
                if cache is not None
                else None
            )
            logger = EpochLogger(prefix=f"fold{fold}_", label=f"trial {trial.number} fold {fold}")
            plan = FitPlan(
                self.fit_settings,
                params,
                callbacks=[logger],
                jit=self.runtime["xla"],
                fixed_epochs=True,
            )
            return fit_two_phase(model, cv.select(train), cv.select(val), plan, cache=fold_cache)

        def report(fold: int, value: float) -> None:
            mlflow.log_metric(f"cv_running_{t.objective}", value, step=fold)
            trial.report(value, fold)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned after fold {fold}")

        result = cross_validate(
            cv,
            data.folds or [],
            fit_fold,
            settings.train.head_epochs,
            positive,
            t.objective,
            report,
        )
        value = result.objective(t.objective)
        for fold, scores in enumerate(result.fold_scores):
            mlflow.log_metrics(
                {f"cv_fold_{k}": v for k, v in scores.items() if np.isfinite(v)}, step=fold
            )
        means = {
            k: float(np.nanmean([s[k] for s in result.fold_scores])) for k in result.fold_scores[0]
        }
        mlflow.log_metrics(
            {f"cv_{k}": v for k, v in means.items() if np.isfinite(v)} | {"objective_cv": value}
        )
        mlflow.log_params(
            {
                "head_epochs_to_best": result.head_epochs,
                "finetune_epochs_to_best": result.finetune_epochs,
            }
        )
        tracking.log_json(result.as_dict() | {"paths": cv.paths}, "cv_oof.json")
        trial.set_user_attr("head_epochs", result.head_epochs)
        trial.set_user_attr("finetune_epochs", result.finetune_epochs)
        trial.set_user_attr("cv", result.as_dict() | {"dataset_hash": self.split.dataset_hash})
        trial.set_user_attr("val_balanced_accuracy", means["balanced_accuracy"])
        return value


def describe(params: TrainParams) -> str:
    head = f"{params.head_units} units" if params.head_units else "linear head"
    return (
        f"lr {params.learning_rate:.1e}, unfreeze {params.unfreeze_depth}, {head}, "
        f"dropout {params.dropout:.2f}, l2 {params.l2:.0e}, {params.input_size} px {params.roi}"
    )
