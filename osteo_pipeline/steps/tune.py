"""Optuna search over learning rate, unfreeze depth, head size and dropout, on one or many workers.

**A study belongs to one dataset version and one backbone**: it is named
``<tune.study_name>-<dataset hash[:12]>-<backbone>`` (``random`` for a random init, else the first
12 hex digits of the weights file's sha256) and records both, so a retrain on new data or with other
weights starts a new study (warm-started with the best trials of the previous one) and a retrain on
the same data and weights resumes its own. ``best_params`` refuses a study run on other data unless
told otherwise. A study made before backbones named studies (``<base>-<dataset hash[:12]>``) is still
resumed and read when its recorded kind of backbone (random init or pretrained) matches.

**Budget**: each ``tune`` call adds ``trials`` *new* finished trials (complete or pruned) to the
study, capped by ``tune.max_trials`` over the study's life. The target lives in the study, so
workers on other machines (``osteo tune-worker``) stop at the same count.

**Workers** share the study through Optuna's RDB storage (SQLite on one machine, PostgreSQL across
machines). Each runs trials through ``study.optimize`` with Optuna's heartbeat: a trial whose worker
died stops beating, and after ``tune.heartbeat_grace_s`` the next worker to look fails it (Optuna's
``fail_stale_trials``), closes its MLflow run and enqueues it again
(``RetryHeartbeatStaleTrialCallback``). A live worker's trial is never touched. Each worker
proposes from its own sampler seed, derived from the seed, the trials already in the study and the
worker's index, so a resume or a second worker never repeats the first one's proposals.

**Tracking**: one MLflow parent run per study, made by the process that created the study (study
creation is atomic in the storage, so exactly one does); one run per trial, from whichever worker
runs it, nested under the parent by its ``mlflow.parentRunId`` tag."""

from __future__ import annotations

import functools
import logging
import os
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import mlflow
import numpy as np
import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback, fail_stale_trials
from optuna.trial import FrozenTrial, TrialState
from optuna_integration import KerasPruningCallback

from osteo_pipeline.config import Settings, TuneSettings, settings_to_yaml
from osteo_pipeline.core.metrics import classification_metrics
from osteo_pipeline.core.model import MAX_UNFREEZE_DEPTH
from osteo_pipeline.core.redact import redact, redact_url
from osteo_pipeline.core.splits import cv_folds
from osteo_pipeline.errors import OsteoError
from osteo_pipeline.io import tracking
from osteo_pipeline.io.split_manifest import SplitManifest
from osteo_pipeline.io.weights import BackboneWeights
from osteo_pipeline.io.weights import resolve as resolve_weights
from osteo_pipeline.training.activations import ActivationCache, activation_cache
from osteo_pipeline.training.arrays import Arrays, load_arrays, pixel_cache
from osteo_pipeline.training.backbone import StudyBackbone
from osteo_pipeline.training.cv import cross_validate, cv_arrays, rows_of
from osteo_pipeline.training.fit import FitPlan, FitResult, TrainParams, fit_two_phase, predict_val
from osteo_pipeline.training.runtime import configure_runtime, distribution, global_batch

log = logging.getLogger(__name__)
STUDY_TAG = "osteo.study"
TRIAL_TAG = "osteo.trial"
OBJECTIVE = "val_loss"
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
#: States of trials that count against the budget: finished, being run, or queued to run.
CLAIMED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
#: Settings a study records: every trial of a study must compute the same thing...
STUDY_SECTIONS = ("seed", "data", "validation", "split", "model", "train", "tune")
#: ...except how many trials run, where and how they are run, which belongs to the call or machine.
OPERATIONAL = (
    "model.weights",
    "train.cache_dir",
    "train.mixed_precision",
    "train.xla",
    "train.distribute",
    "validation.suites_dir",
    "tune.storage",
    "tune.cache_spill_dir",
    "tune.cache_memory_mb",
    "tune.trials",
    "tune.max_trials",
    "tune.timeout_s",
    "tune.workers",
    "tune.worker_deployment",
    "tune.heartbeat_interval_s",
    "tune.heartbeat_grace_s",
    "tune.max_retries",
    "tune.warm_start_trials",
    "tune.poll_s",
    "tune.study_name",
    "tune.n_startup_trials",
)

warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


class TuneError(OsteoError):
    """A study cannot be opened, joined or used as asked; the message says which and why."""


class OverBudget(Exception):
    """Raised at a trial's start when other workers already claimed the study's whole budget."""


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

    best_cv: dict[str, Any] | None = (
        None  # the best trial's cross-validation (``training.cv.CVResult``), when it had one
    )

    def best(self) -> BestTrial:
        return BestTrial(
            self.best_params,
            self.study_name,
            self.best_trial,
            self.best_trial_run_id,
            self.dataset_hash,
            self.best_cv,
        )


@dataclass
class BestTrial:
    """The parameters a refit uses, and where they came from (tags on the train run)."""

    params: dict[str, Any]
    study_name: str
    number: int
    run_id: str
    dataset_hash: str
    cv: dict[str, Any] | None = (
        None  # its cross-validation: OOF predictions for calibration and the estimate
    )

    def tags(self) -> dict[str, str]:
        return {
            STUDY_TAG: self.study_name,
            "osteo.study_trial": str(self.number),
            "osteo.study_trial_run_id": self.run_id,
            "osteo.study_dataset_hash": self.dataset_hash,
        }


def study_name_for(base: str, dataset_hash: str, backbone: BackboneWeights) -> str:
    """The study of one dataset version and backbone: a retrain on new data or from other weights
    never resumes another's search."""
    key = "random" if backbone.random_init else backbone.identity.removeprefix("sha256:")[:12]
    return f"{base}-{dataset_hash[:12]}-{key}"


def _backbone_kind(backbone: BackboneWeights) -> str:
    return "random-init" if backbone.random_init else "pretrained"


def existing_study_name(
    storage: RDBStorage, base: str, dataset_hash: str, backbone: BackboneWeights
) -> str:
    """This data's and backbone's study name; a study made before backbones named studies when
    there is one for this data, of the same kind of backbone, and none under the new name."""
    name = study_name_for(base, dataset_hash, backbone)
    names = {
        s.study_name: s.user_attrs
        for s in optuna.get_all_study_summaries(storage, include_best_trial=False)
    }
    legacy = f"{base}-{dataset_hash[:12]}"
    if (
        name not in names
        and legacy in names
        and names[legacy].get("backbone", _backbone_kind(backbone)) == _backbone_kind(backbone)
    ):
        return legacy
    return name


def suggest(trial: optuna.Trial, settings: Settings) -> TrainParams:
    """A trial's parameters; input size and roi are searched only when ``tune`` lists them."""
    space, model = settings.tune, settings.model
    return TrainParams(
        learning_rate=trial.suggest_float("learning_rate", *space.learning_rate, log=True),
        unfreeze_depth=trial.suggest_int("unfreeze_depth", *space.unfreeze_depth),
        head_units=trial.suggest_categorical("head_units", space.head_units),
        dropout=trial.suggest_float("dropout", *space.dropout),
        l2=trial.suggest_float("l2", *space.l2, log=True) if space.l2 else model.l2,
        input_size=trial.suggest_categorical("input_size", space.input_sizes)
        if space.input_sizes
        else model.input_size,
        roi=trial.suggest_categorical("roi", space.rois) if space.rois else model.roi,
    )


def make_pruner(space: TuneSettings, max_epochs: int) -> optuna.pruners.BasePruner:
    if space.pruner == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=space.pruner_startup_trials, n_warmup_steps=space.pruner_warmup_epochs
        )
    if space.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=max(1, space.pruner_warmup_epochs), max_resource=max(2, max_epochs)
        )
    return optuna.pruners.NopPruner()


def sampler_seed(seed: int, trials_in_study: int, worker: int) -> int:
    """A seed of its own for every (resume, worker): TPE's start-up phase is random search, and a
    sampler restarted from the same seed proposes the same parameters again."""
    return int(np.random.SeedSequence([seed, trials_in_study, worker]).generate_state(1)[0])


def make_sampler(settings: Settings, seed: int, budget: int) -> optuna.samplers.TPESampler:
    """TPE with ``n_startup_trials`` below the budget (else it would be a random search), and the
    constant liar, so concurrent workers do not propose next to each other's running trials."""
    startup = max(1, min(settings.tune.n_startup_trials, budget - 1))
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup, constant_liar=True)


class StaleTrialHandler:
    """Called by Optuna for each trial it failed for a missing heartbeat (its worker died): close
    that trial's MLflow run as FAILED, then enqueue the trial again."""

    def __init__(self, max_retry: int) -> None:
        self._retry = RetryHeartbeatStaleTrialCallback(max_retry=max_retry)

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        log.warning(
            "trial %d lost its worker (no heartbeat): failed, and queued again", trial.number
        )
        run_id = trial.user_attrs.get("mlflow_run_id")
        if run_id:
            try:
                tracking.fail_run(
                    run_id,
                    f"its worker stopped: Optuna failed trial {trial.number} for a missing heartbeat",
                )
            except Exception as exc:  # noqa: BLE001 - the retry must not depend on the tracking store
                log.warning(
                    "could not close the MLflow run %s of trial %d: %s", run_id, trial.number, exc
                )
        self._retry(study, trial)


def open_storage(settings: Settings) -> RDBStorage:
    """The study storage with heartbeats and the stale-trial handler; ``pool_pre_ping`` so a
    connection the database dropped between trials is replaced, not failed on. One per URL and
    heartbeat setting in a process (each holds a connection pool)."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # its per-trial lines; ours say more
    t = settings.tune
    return _storage(t.storage, t.heartbeat_interval_s, t.heartbeat_grace_s, t.max_retries)


@functools.lru_cache(maxsize=8)
def _storage(url: str, heartbeat_interval_s: int, grace_s: int, max_retries: int) -> RDBStorage:
    engine_kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if url.startswith("sqlite"):
        engine_kwargs["connect_args"] = {
            "timeout": 60
        }  # workers on one machine wait for SQLite's lock
    try:
        return RDBStorage(
            url,
            engine_kwargs=engine_kwargs,
            heartbeat_interval=heartbeat_interval_s,
            grace_period=grace_s,
            heartbeat_stale_trial_callback=StaleTrialHandler(max_retries),
        )
    except (
        Exception
    ) as exc:  # SQLAlchemy reports a bad URL, a missing driver or a dead server in many ways
        raise TuneError(
            redact_url(
                f"cannot open the Optuna storage tune.storage={url}: {type(exc).__name__}: {str(exc)[:300]}"
            )
        ) from exc


def _load(name: str, storage: RDBStorage, **kwargs: Any) -> optuna.Study:
    try:
        return optuna.load_study(study_name=name, storage=storage, **kwargs)
    except KeyError as exc:
        raise TuneError(f"no study named {name!r} in tune.storage") from exc


def _counts(study: optuna.Study) -> dict[str, int]:
    """Trials per state; the FAIL ones that only lost the race for the budget's last slot (and
    never ran) are counted apart, as ``over_budget``."""
    trials = study.get_trials(deepcopy=False)
    counts = {state.name.lower(): sum(t.state == state for t in trials) for state in TrialState}
    counts["over_budget"] = sum(
        t.state == TrialState.FAIL and bool(t.user_attrs.get("over_budget")) for t in trials
    )
    counts["fail"] -= counts["over_budget"]
    return counts


def _finished(counts: dict[str, int]) -> int:
    return counts["complete"] + counts["pruned"]


def _study_settings(settings: Settings) -> dict[str, Any]:
    """What every trial of a study shares (operational settings and secrets left out)."""
    dumped = settings.model_dump(mode="json")
    shared = {key: dumped[key] for key in STUDY_SECTIONS}
    for dotted in OPERATIONAL:
        section, key = dotted.split(".")
        shared[section].pop(key, None)
    return redact(shared)


_ABSENT = object()


def _differences(recorded: Any, current: Any, defaults: Any = None, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested settings dumps. A key the recorded
    study lacks (a setting added since it was made) counts as unchanged while it holds its
    default (``defaults``): new settings default to the earlier behaviour (no L2, the whole
    film, input size and roi not searched), and a change of objective is checked apart."""
    if isinstance(recorded, dict) and isinstance(current, dict):
        keys = sorted(set(recorded) | set(current))
        nested = defaults if isinstance(defaults, dict) else {}
        return [
            d
            for k in keys
            for d in _differences(
                recorded.get(k, _ABSENT),
                current.get(k, _ABSENT),
                nested.get(k, _ABSENT),
                f"{prefix}.{k}" if prefix else k,
            )
        ]
    if recorded is _ABSENT and current == defaults:
        return []
    return [] if recorded == current else [prefix]


def joined_study(name: str, settings: Settings) -> optuna.Study:
    """An existing study, for a worker to join."""
    return _load(name, open_storage(settings))


def adopt_study_settings(local: Settings, study: optuna.Study) -> Settings:
    """The study's search settings on top of this machine's own (weights, storage, caches,
    tracking): a worker joining from anywhere runs exactly the study's trials."""
    recorded = study.user_attrs.get("settings")
    if not recorded:
        return local
    merged = local.model_dump(mode="json")
    for section, values in recorded.items():
        merged[section] = {**merged[section], **values} if isinstance(values, dict) else values
    return Settings.model_validate(merged)


def _warm_start(
    study: optuna.Study, storage: RDBStorage, base: str, settings: Settings
) -> list[str]:
    """Enqueue the best trials of the latest other study of the same base name (the previous data
    version, of this backbone where there is one), where they fit the current search space;
    returns what was enqueued."""
    n = settings.tune.warm_start_trials
    if n == 0:
        return []
    others = [
        s
        for s in optuna.get_all_study_summaries(storage, include_best_trial=False)
        if s.user_attrs.get("base_name") == base
        and s.study_name != study.study_name
        and s.datetime_start
    ]
    if not others:
        return []
    # The latest study of this backbone (the previous data version), else of its kind, else any.
    identity, kind = study.user_attrs.get("backbone_identity"), study.user_attrs.get("backbone")
    latest = max(
        others,
        key=lambda s: (
            s.user_attrs.get("backbone_identity") == identity,
            s.user_attrs.get("backbone") == kind,
            s.datetime_start,
        ),
    )
    previous = _load(latest.study_name, storage)
    space = settings.tune
    best = sorted(
        previous.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)), key=lambda t: t.value
    )[:n]
    enqueued = []
    for trial in best:
        p = trial.params
        fits = (
            space.learning_rate[0] <= p.get("learning_rate", -1) <= space.learning_rate[1]
            and space.unfreeze_depth[0] <= p.get("unfreeze_depth", -1) <= space.unfreeze_depth[1]
            and p.get("head_units") in space.head_units
            and space.dropout[0] <= p.get("dropout", -1) <= space.dropout[1]
            and (
                space.l2 is None or space.l2[0] <= p.get("l2", space.l2[0]) <= space.l2[1]
            )  # absent (older studies): sampled
            and p.get("input_size", settings.model.input_size)
            in (space.input_sizes or [settings.model.input_size])
            and p.get("roi", settings.model.roi) in (space.rois or [settings.model.roi])
        )
        if fits:
            origin = f"{previous.study_name}#{trial.number}"
            study.enqueue_trial(p, user_attrs={"warm_start_from": origin}, skip_if_exists=True)
            enqueued.append(origin)
    return enqueued


def _create_parent_run(study: optuna.Study, split: SplitManifest, settings: Settings) -> str:
    with mlflow.start_run(
        run_name=f"study-{study.study_name}",
        tags={
            STUDY_TAG: study.study_name,
            "osteo.kind": "study",
            "optuna.storage": redact_url(settings.tune.storage),
        },
    ) as parent:
        tracking.log_settings(settings)
        tracking.log_dataset(split)
        tracking.log_environment()
    study.set_user_attr("mlflow_parent_run_id", parent.info.run_id)
    return parent.info.run_id


def _parent_run(name: str, storage: RDBStorage, wait_s: float = 60.0) -> str | None:
    """The study's parent run id, waiting a little for a creator that is still making it."""
    deadline = time.monotonic() + wait_s
    while True:
        run_id = _load(name, storage).user_attrs.get("mlflow_parent_run_id")
        if run_id or time.monotonic() > deadline:
            return run_id
        time.sleep(0.5)


def _set_up(study: optuna.Study, split: SplitManifest, settings: Settings) -> str:
    """Record what the study is (its data, settings), warm-start it, make its MLflow parent run;
    the parent run id comes last and marks the set-up done. Idempotent: a set-up its creator left
    half done (killed) is finished by the next caller."""
    attrs = study.user_attrs
    backbone = resolve_weights(settings.model.weights, settings.model.allow_random_init_fallback)
    for key, value in {
        "dataset_hash": split.dataset_hash,
        "backbone_identity": backbone.identity,
        "backbone": _backbone_kind(backbone),
        "base_name": settings.tune.study_name,
        "data_dir": str(split.data_dir),
        "settings": _study_settings(settings),
        "objective": study_objective(settings, split),
    }.items():
        if key not in attrs:
            study.set_user_attr(key, value)
    if "warm_started" not in attrs:
        warm = _warm_start(study, open_storage(settings), settings.tune.study_name, settings)
        study.set_user_attr("warm_started", warm)
        if warm:
            log.info("study %s: warm start from %s", study.study_name, ", ".join(warm))
    return attrs.get("mlflow_parent_run_id") or _create_parent_run(study, split, settings)


def prepare_study(
    split: SplitManifest, settings: Settings, new_trials: int
) -> tuple[optuna.Study, str, int]:
    """Create (or resume) the study of ``split``'s dataset and set its target: ``new_trials`` more
    finished trials, capped by ``tune.max_trials``. Returns the study, its parent run id and the
    target. A study resumed with settings that change what a trial computes is refused: its
    trials could not be compared."""
    tracking.configure(settings)
    if uses_cv(settings, split):
        groups = split.files.loc[split.files["split"].isin(["train", "val"]), "group"].nunique()
        if groups < settings.tune.cv_folds:
            raise TuneError(
                f"tune.cv_folds={settings.tune.cv_folds} but train + val hold only {groups} distinct images (groups of copies): lower tune.cv_folds or set tune.cv: off"
            )
    storage = open_storage(settings)
    backbone = resolve_weights(settings.model.weights, settings.model.allow_random_init_fallback)
    name = existing_study_name(storage, settings.tune.study_name, split.dataset_hash, backbone)
    try:
        study = optuna.create_study(
            study_name=name, storage=storage, direction="minimize", load_if_exists=False
        )
        parent_id = _set_up(study, split, settings)
        log.info(
            "new study %s for dataset %s, backbone %s",
            name,
            split.dataset_hash[:12],
            backbone.described,
        )
    except optuna.exceptions.DuplicatedStudyError:
        parent_id = _parent_run(name, storage)  # waits for a creator that is still setting it up
        study = _load(name, storage)
        recorded = study.user_attrs.get("dataset_hash", split.dataset_hash)
        if recorded != split.dataset_hash:
            raise TuneError(
                f"study {name!r} records dataset {str(recorded)[:12]}, not this data's {split.dataset_hash[:12]}"
            ) from None
        changed = _differences(
            study.user_attrs.get("settings", _study_settings(settings)),
            _study_settings(settings),
            _study_settings(Settings()),
        )
        objective, recorded_objective = (
            study_objective(settings, split),
            study.user_attrs.get("objective", OBJECTIVE),
        )
        if (
            objective != recorded_objective
        ):  # e.g. a study of a validation split, now small data is cross-validated
            raise TuneError(
                f"study {name!r} scored its trials by {recorded_objective}, these settings by {objective} (tune.cv): their trials cannot be compared; "
                f"set tune.cv to match, or start a new study with another --study base name"
            ) from None
        if changed:
            raise TuneError(
                f"study {name!r} was run with other settings ({', '.join(changed[:6])}{', ...' if len(changed) > 6 else ''}); resuming would mix "
                "trials that cannot be compared: restore those settings, or start a new study with another --study base name"
            ) from None
        parent_id = parent_id or _set_up(study, split, settings)
    finished = _finished(_counts(study))
    target = finished + new_trials
    if settings.tune.max_trials is not None:
        target = min(target, settings.tune.max_trials)
    study.set_user_attr("target_finished", target)
    log.info("study %s: %d finished trials, target %d", name, finished, target)
    return study, parent_id, target


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


def study_objective(settings: Settings, split: SplitManifest) -> str:
    """What a study's trials minimise: ``val_loss``, or e.g. ``cv5_log_loss``."""
    return (
        f"cv{settings.tune.cv_folds}_{settings.tune.objective}"
        if uses_cv(settings, split)
        else OBJECTIVE
    )


def uses_cv(settings: Settings, split: SplitManifest) -> bool:
    """Whether trials are scored by cross-validation (``tune.cv``; auto: on small data)."""
    if settings.tune.cv != "auto":
        return settings.tune.cv == "on"
    return int(split.files["split"].isin(["train", "val"]).sum()) < settings.tune.cv_below_images


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

    def _data(self, params: TrainParams) -> SearchData:
        key = (
            params.input_size or self.settings.model.input_size,
            params.roi or self.settings.model.roi,
        )
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
        key = (
            params.input_size or self.settings.model.input_size,
            params.roi or self.settings.model.roi,
        )
        if key not in self.backbones:
            train = data.cv if self.cv else data.arrays["train"]
            self.backbones[key] = StudyBackbone(params.apply(self.settings), train.pixels)
        return self.backbones[key]

    def close(self) -> dict[str, float]:
        report: dict[str, float] = {}
        for (size, roi), data in self.data.items():
            if data.cache is not None:
                suffix = "" if len(self.data) == 1 else f"_{size}_{roi}"
                report |= {f"{k}{suffix}": v for k, v in data.cache.report().items()}
                data.cache.close()
        return report

    def __call__(self, trial: optuna.Trial) -> float:
        settings = self.settings
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
        params = suggest(trial, settings)
        trial.set_user_attr(
            "effective_params", params.as_dict()
        )  # input size, roi and l2 as run, searched or not
        keras.backend.clear_session()  # Keras' global state from earlier trials must not reach this one
        where = f"{socket.gethostname()}:{os.getpid()}"
        trial.set_user_attr("worker", where)
        tags = {
            STUDY_TAG: trial.study.study_name,
            TRIAL_TAG: str(trial.number),
            "mlflow.parentRunId": self.parent_run_id,
            "osteo.worker": where,
        }
        if "warm_start_from" in trial.user_attrs:
            tags["osteo.warm_start_from"] = trial.user_attrs["warm_start_from"]
        started = time.perf_counter()
        with mlflow.start_run(run_name=f"trial-{trial.number:03d}", tags=tags) as run:
            trial.set_user_attr("mlflow_run_id", run.info.run_id)
            mlflow.log_params(
                params.as_dict()
                | {
                    "trial": trial.number,
                    "seed": settings.seed + trial.number,
                    "worker": self.worker,
                    "sampler_seed": self.sampler_seed,
                    "runtime.replicas": self.strategy.num_replicas_in_sync,
                }
                | {f"runtime.{k}": v for k, v in self.runtime.items()}
                | {"objective": study_objective(settings, self.split)}
            )
            try:
                with self.strategy.scope():
                    data = self._data(params)
                    backbone = self._backbone(params, data)
                    value = (
                        self._cross_validate(trial, params, data, backbone)
                        if self.cv
                        else self._split_trial(trial, params, data, backbone)
                    )
            except optuna.TrialPruned:
                mlflow.set_tags({"optuna.state": "PRUNED", "pruned": "true"})
                mlflow.end_run(status="KILLED")
                log.info(
                    "trial %d (worker %d): pruned after %.0f s (%s)",
                    trial.number,
                    self.worker,
                    time.perf_counter() - started,
                    _describe(params),
                )
                self.ran += 1
                raise
            mlflow.set_tag("optuna.state", "COMPLETE")
            log.info(
                "trial %d (worker %d): %s %.4f in %.0f s (%s)",
                trial.number,
                self.worker,
                _objective_name(settings, self.cv),
                value,
                time.perf_counter() - started,
                _describe(params),
            )
            self.ran += 1
            return value

    def _model(
        self, trial: optuna.Trial, params: TrainParams, backbone: StudyBackbone, seed: int
    ) -> keras.Model:
        model = backbone.model(params, seed=seed)
        _same_backbone(trial.study, backbone.weights)
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
                "backbone_weights": backbone.weights.described,
                "activation_cache": str(trial_cache is not None).lower(),
            }
        )
        callbacks = [
            tracking.EpochLogger(label=f"trial {trial.number}"),
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
                "backbone_weights": backbone.weights.described,
                "activation_cache": str(cache is not None).lower(),
                "cv_folds": str(t.cv_folds),
            }
        )

        def fit_fold(fold: int, train: np.ndarray, val: np.ndarray) -> FitResult:
            model = self._model(trial, params, backbone, settings.seed + trial.number)
            fold_cache = (
                cache.fold(rows_of(train, cv.views), rows_of(val, cv.views))
                if cache is not None
                else None
            )
            logger = tracking.EpochLogger(
                prefix=f"fold{fold}_", label=f"trial {trial.number} fold {fold}"
            )
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


def _objective_name(settings: Settings, cv: bool) -> str:
    return f"cv {settings.tune.objective}" if cv else OBJECTIVE


def _same_backbone(study: optuna.Study, weights: BackboneWeights) -> None:
    """Every trial of a study starts from the same backbone: a worker whose machine has other
    weights (or fell back to a random init) must not add its trials to the study. Studies made
    before backbones had an identity record only their kind (random init or pretrained)."""
    recorded = study.user_attrs.get("backbone_identity")
    if recorded is not None and recorded != weights.identity:
        raise TuneError(
            f"this worker's backbone is {weights.described} but study {study.study_name!r} was run with "
            f"{recorded[:19]}: give this machine the same weights (model.weights, `osteo weights install`)"
        )
    kind, recorded_kind = _backbone_kind(weights), study.user_attrs.get("backbone")
    if recorded_kind is not None and recorded_kind != kind:
        raise TuneError(
            f"this worker's backbone is {weights.described} but study {study.study_name!r} was run with a {recorded_kind} one"
        )
    if (
        recorded is None
    ):  # a study from before identities: the first backbone to train in it names it
        study.set_user_attr("backbone_identity", weights.identity)
        study.set_user_attr("backbone", kind)


def _describe(params: TrainParams) -> str:
    head = f"{params.head_units} units" if params.head_units else "linear head"
    return f"lr {params.learning_rate:.1e}, unfreeze {params.unfreeze_depth}, {head}, dropout {params.dropout:.2f}, l2 {params.l2:.0e}, {params.input_size} px {params.roi}"


def run_worker(
    study_name: str,
    split: SplitManifest,
    settings: Settings,
    worker: int = 0,
    timeout_s: float | None = None,
) -> int:
    """Run trials of ``study_name`` until its target of finished trials is reached (or
    ``timeout_s`` passes); returns how many trials this worker ran to the end. Safe to run
    anywhere, any number of times at once: see the module docstring."""
    tracking.configure(settings)
    storage = open_storage(settings)
    parent_id = _parent_run(study_name, storage)
    probe = _load(study_name, storage)
    if probe.user_attrs.get("dataset_hash") != split.dataset_hash:
        raise TuneError(
            f"study {study_name!r} was run on dataset {str(probe.user_attrs.get('dataset_hash'))[:12]}; this data is {split.dataset_hash[:12]}"
        )
    _same_backbone(
        probe, resolve_weights(settings.model.weights, settings.model.allow_random_init_fallback)
    )
    if parent_id is None or "target_finished" not in probe.user_attrs:
        raise TuneError(
            f"study {study_name!r} is not set up (its creator stopped?); run `osteo tune` on its data"
        )
    seed = sampler_seed(settings.seed, len(probe.get_trials(deepcopy=False)), worker)
    target = int(probe.user_attrs["target_finished"])
    t = settings.train
    steps = (
        settings.tune.cv_folds if uses_cv(settings, split) else t.head_epochs + t.finetune_epochs
    )  # what trials report: folds or epochs
    study = _load(
        study_name,
        storage,
        sampler=make_sampler(settings, seed, target),
        pruner=make_pruner(settings.tune, steps),
    )
    objective = Objective(settings, split, parent_id, worker, seed)
    deadline = time.monotonic() + (timeout_s or settings.tune.timeout_s or float("inf"))
    patience = max(
        600.0, 10.0 * settings.tune.heartbeat_grace_s
    )  # waiting on trials that never end
    last_change, last_counts = time.monotonic(), None
    try:
        while time.monotonic() < deadline:
            counts = _counts(study)
            target = int(study.user_attrs["target_finished"])
            if _finished(counts) >= target:
                break
            if counts != last_counts:
                last_change, last_counts = time.monotonic(), counts
            if counts["waiting"] == 0 and _finished(counts) + counts["running"] >= target:
                # The other workers' trials fill the budget: wait for them, failing any whose
                # worker died. A RUNNING trial with no heartbeat at all (made by a client outside
                # this pipeline) is never failed by Optuna: stop waiting for it after a while.
                if time.monotonic() - last_change > patience:
                    running = [
                        t.number
                        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
                    ]
                    log.warning(
                        "worker %d: trials %s have been running for %.0f s with no change; stopping",
                        worker,
                        running,
                        patience,
                    )
                    break
                fail_stale_trials(study)
                time.sleep(settings.tune.poll_s)
                continue
            study.optimize(objective, n_trials=1, catch=(OverBudget,), gc_after_trial=True)
    finally:
        report = objective.close()
        if report:
            tracking.log_metrics_to(
                parent_id, {f"{k}_worker{worker}": v for k, v in report.items()}
            )
    return objective.ran


def _spawn_workers(
    study_name: str,
    split: SplitManifest,
    settings: Settings,
    count: int,
    timeout_s: float | None,
    folder: Path,
) -> list[subprocess.Popen]:
    """``count`` local ``osteo tune-worker`` processes on the study, indexed 1..count (each its own
    sampler seed stream). They get exactly this process's settings: a file of them, and no
    ``OSTEO_*`` variable but the storage URL, which travels in the environment, never in a file.
    With several GPUs, worker ``i`` sees GPU ``i mod n`` only (this process keeps GPU 0)."""
    split_file = split.save(folder / "split.json")
    config = folder / "settings.yaml"
    config.write_text(
        settings_to_yaml(
            settings.model_copy(
                update={
                    "tune": settings.tune.model_copy(
                        update={"storage": "sqlite:///passed-in-the-environment.db"}
                    )
                }
            )
        )
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("OSTEO_")} | {
        "OSTEO_TUNE__STORAGE": settings.tune.storage
    }
    gpus = _gpus_for_workers(count + 1)
    processes = []
    for index in range(1, count + 1):
        command = [
            sys.executable,
            "-m",
            "osteo_pipeline.cli",
            "tune-worker",
            study_name,
            "--split",
            str(split_file),
            "--worker",
            str(index),
            "--config",
            str(config),
        ]
        if timeout_s:
            command += ["--timeout", str(timeout_s)]
        visible = {"CUDA_VISIBLE_DEVICES": gpus[index]} if gpus else {}
        processes.append(subprocess.Popen(command, env=env | visible))
    return processes


def _gpus_for_workers(workers: int) -> list[str]:
    """With several GPUs, one per local worker (round robin): ``CUDA_VISIBLE_DEVICES`` for each
    worker, and this process limited to the first. Empty with fewer than two GPUs (each worker
    then shares the one GPU, growing its memory as needed, or the CPU)."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if len(gpus) < 2:
        return []
    tf.config.set_visible_devices(gpus[0], "GPU")  # before this process initializes its GPUs
    return [str(index % len(gpus)) for index in range(workers)]


def tune(
    split: SplitManifest,
    settings: Settings,
    trials: int | None = None,
    timeout_s: float | None = None,
    workers: int | None = None,
    start_remote_workers: Callable[[str, int], None] | None = None,
) -> TuneResult:
    """Add ``trials`` (default ``tune.trials``) finished trials to the study of ``split``'s
    dataset on ``workers`` workers (default ``tune.workers``), this process being one, and return
    the study's best trial. The others are local processes, or whatever
    ``start_remote_workers(study name, count)`` starts (the retrain flow's work-pool runs)."""
    started = time.perf_counter()
    study, parent_id, target = prepare_study(split, settings, trials or settings.tune.trials)
    finished_before = _finished(_counts(study))
    n_workers = workers or settings.tune.workers
    with tempfile.TemporaryDirectory(prefix="osteo-tune-") as folder:
        others: list[subprocess.Popen] = []
        if n_workers > 1 and start_remote_workers is not None:
            start_remote_workers(study.study_name, n_workers - 1)
        elif n_workers > 1:
            others = _spawn_workers(
                study.study_name,
                split,
                settings,
                n_workers - 1,
                timeout_s or settings.tune.timeout_s,
                Path(folder),
            )
        try:
            run_worker(study.study_name, split, settings, worker=0, timeout_s=timeout_s)
        finally:
            failed = [
                str(index) for index, process in enumerate(others, start=1) if process.wait() != 0
            ]
        if failed:
            log.warning(
                "tune workers %s exited with an error; the study went on without them",
                ", ".join(failed),
            )
    return summarize(study.study_name, settings, parent_id, finished_before, started)


def summarize(
    study_name: str, settings: Settings, parent_id: str, finished_before: int, started: float
) -> TuneResult:
    """The study's best trial, logged on its parent run."""
    study = _load(study_name, open_storage(settings))
    counts = _counts(study)
    completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not completed:
        raise TuneError(
            f"study {study_name!r} has no completed trial yet ({counts['pruned']} pruned, {counts['fail']} failed): run more trials, or check the failed ones in MLflow"
        )
    best = study.best_trial
    best_params = _params_of(best)
    objective = str(study.user_attrs.get("objective", OBJECTIVE))
    tracking.log_metrics_to(
        parent_id,
        {
            f"best_{objective}": best.value,
            "trials_complete": counts["complete"],
            "trials_pruned": counts["pruned"],
            "trials_failed": counts["fail"],
        },
    )
    tracking.set_tags_on(
        parent_id,
        {
            "best_trial": str(best.number),
            "best_trial_run_id": best.user_attrs.get("mlflow_run_id", ""),
        },
    )
    tracking.log_json(best_params, "best_params.json", run_id=parent_id)
    return TuneResult(
        study_name,
        parent_id,
        best_params,
        float(best.value),
        best.number,
        best.user_attrs.get("mlflow_run_id", ""),
        counts,
        _finished(counts) - finished_before,
        time.perf_counter() - started,
        str(study.user_attrs.get("dataset_hash", "")),
        best.user_attrs.get("cv"),
    )


def _params_of(trial: FrozenTrial) -> dict[str, Any]:
    return (
        trial.user_attrs.get("effective_params", {})
        | trial.params
        | {
            "head_epochs": trial.user_attrs.get("head_epochs"),
            "finetune_epochs": trial.user_attrs.get("finetune_epochs"),
        }
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
            f"; studies of this base name: {', '.join(others)} (use --params study:NAME, --allow-other-data for other data)"
            if others
            else ""
        )
        raise TuneError(
            f"no study {name!r} for dataset {dataset_hash[:12]} and this backbone: run `osteo tune` on this data first{hint}"
        ) from exc
    recorded = str(study.user_attrs.get("dataset_hash", ""))
    if recorded != dataset_hash and not allow_other_data:
        raise TuneError(
            f"study {name!r} was run on dataset {recorded[:12] or '(unknown)'}, not this data's {dataset_hash[:12]}: its parameters and epochs were chosen on other images (pass --allow-other-data to use them anyway)"
        )
    try:
        best = study.best_trial
    except ValueError as exc:
        raise TuneError(
            f"study {name!r} has no completed trial yet; run `osteo tune` first"
        ) from exc
    return BestTrial(
        _params_of(best),
        name,
        best.number,
        best.user_attrs.get("mlflow_run_id", ""),
        recorded,
        best.user_attrs.get("cv"),
    )
