"""What a study found: its summary after a ``tune`` call (logged on its parent run), and the best
trial a refit uses, read from the study of this data and backbone."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from osteo_pipeline.config import Settings
from osteo_pipeline.io import tracking
from osteo_pipeline.io.weights import resolve as resolve_weights
from osteo_pipeline.steps.tune.study import (
    OBJECTIVE,
    STUDY_TAG,
    TuneError,
    existing_study_name,
    finished,
    load_study,
    open_storage,
    trial_counts,
)


@dataclass
class BestTrial:
    """The parameters a refit uses, and where they came from (tags on the train run)."""

    params: dict[str, Any]
    study_name: str
    number: int
    run_id: str
    dataset_hash: str
    #: its cross-validation: OOF predictions for calibration and the estimate
    cv: dict[str, Any] | None = None

    @classmethod
    def of(cls, trial: FrozenTrial, study_name: str, dataset_hash: str) -> BestTrial:
        params = (
            trial.user_attrs.get("effective_params", {})
            | trial.params
            | {
                "head_epochs": trial.user_attrs.get("head_epochs"),
                "finetune_epochs": trial.user_attrs.get("finetune_epochs"),
            }
        )
        return cls(
            params=params,
            study_name=study_name,
            number=trial.number,
            run_id=trial.user_attrs.get("mlflow_run_id", ""),
            dataset_hash=dataset_hash,
            cv=trial.user_attrs.get("cv"),
        )

    def tags(self) -> dict[str, str]:
        return {
            STUDY_TAG: self.study_name,
            "osteo.study_trial": str(self.number),
            "osteo.study_trial_run_id": self.run_id,
            "osteo.study_dataset_hash": self.dataset_hash,
        }


@dataclass
class TuneResult:
    study_name: str
    parent_run_id: str
    best_params: dict[str, Any]
    best_value: float
    best_trial: int
    best_trial_run_id: str
    counts: dict[str, int]
    new_trials: int  # finished trials this call added
    seconds: float
    dataset_hash: str
    #: the best trial's cross-validation (``training.cv.CVResult``), when it had one
    best_cv: dict[str, Any] | None = None

    def best(self) -> BestTrial:
        return BestTrial(
            params=self.best_params,
            study_name=self.study_name,
            number=self.best_trial,
            run_id=self.best_trial_run_id,
            dataset_hash=self.dataset_hash,
            cv=self.best_cv,
        )


def summarize(
    study_name: str, settings: Settings, parent_id: str, finished_before: int, started: float
) -> TuneResult:
    """The study's best trial, logged on its parent run."""
    study = load_study(study_name, open_storage(settings))
    counts = trial_counts(study)
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        raise TuneError(
            f"study {study_name!r} has no completed trial yet ({counts['pruned']} pruned, "
            f"{counts['fail']} failed): run more trials, or check the failed ones in MLflow"
        )
    trial = study.best_trial
    best = BestTrial.of(trial, study_name, str(study.user_attrs.get("dataset_hash", "")))
    objective = str(study.user_attrs.get("objective", OBJECTIVE))
    tracking.log_metrics_to(
        parent_id,
        {
            f"best_{objective}": trial.value,
            "trials_complete": counts["complete"],
            "trials_pruned": counts["pruned"],
            "trials_failed": counts["fail"],
        },
    )
    tracking.set_tags_on(
        parent_id, {"best_trial": str(best.number), "best_trial_run_id": best.run_id}
    )
    tracking.log_json(best.params, "best_params.json", run_id=parent_id)
    return TuneResult(
        study_name=study_name,
        parent_run_id=parent_id,
        best_params=best.params,
        best_value=float(trial.value),
        best_trial=best.number,
        best_trial_run_id=best.run_id,
        counts=counts,
        new_trials=finished(counts) - finished_before,
        seconds=time.perf_counter() - started,
        dataset_hash=best.dataset_hash,
        best_cv=best.cv,
    )


def best_params(
    settings: Settings,
    dataset_hash: str,
    study_name: str | None = None,
    allow_other_data: bool = False,
) -> BestTrial:
    """The best completed trial of the study of this dataset and this machine's backbone (or of
    ``study_name``), refusing a study that was run on other data unless ``allow_other_data``."""
    storage = open_storage(settings)
    summaries = optuna.get_all_study_summaries(storage, include_best_trial=False)
    of_this_data = f"{settings.tune.study_name}-{dataset_hash[:12]}"
    if study_name is None and any(
        s.study_name == of_this_data or s.study_name.startswith(f"{of_this_data}-")
        for s in summaries
    ):
        backbone = resolve_weights(
            settings.model.weights, settings.model.allow_random_init_fallback
        )
        study_name = existing_study_name(storage, settings.tune.study_name, dataset_hash, backbone)
    name = study_name or f"{of_this_data}-*"
    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError as exc:
        others = sorted(
            s.study_name
            for s in summaries
            if s.user_attrs.get("base_name") == settings.tune.study_name
        )
        hint = (
            f"; studies of this base name: {', '.join(others)} (use --params study:NAME, "
            "--allow-other-data for other data)"
            if others
            else ""
        )
        raise TuneError(
            f"no study {name!r} for dataset {dataset_hash[:12]} and this backbone: run "
            f"`osteo tune` on this data first{hint}"
        ) from exc
    recorded = str(study.user_attrs.get("dataset_hash", ""))
    if recorded != dataset_hash and not allow_other_data:
        raise TuneError(
            f"study {name!r} was run on dataset {recorded[:12] or '(unknown)'}, not this data's "
            f"{dataset_hash[:12]}: its parameters and epochs were chosen on other images (pass "
            "--allow-other-data to use them anyway)"
        )
    try:
        best = study.best_trial
    except ValueError as exc:
        raise TuneError(
            f"study {name!r} has no completed trial yet; run `osteo tune` first"
        ) from exc
    return BestTrial.of(best, name, recorded)
