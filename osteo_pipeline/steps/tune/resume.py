"""Creating or resuming a study: what it records (data, backbone, settings, objective), the
refusal of settings that would make its trials incomparable, the warm start from the previous
study, its MLflow parent run, and the target of finished trials for this call."""

from __future__ import annotations

import logging
import time
from typing import Any

import mlflow
import optuna
from optuna.storages import RDBStorage
from optuna.trial import TrialState

from osteo_pipeline.config import Settings
from osteo_pipeline.core.redact import redact, redact_url
from osteo_pipeline.io import run_artifacts, tracking
from osteo_pipeline.io.split_manifest import SplitManifest
from osteo_pipeline.io.weights import resolve as resolve_weights
from osteo_pipeline.steps.tune.study import (
    OBJECTIVE,
    STUDY_TAG,
    TuneError,
    backbone_kind,
    existing_study_name,
    finished,
    load_study,
    open_storage,
    study_objective,
    trial_counts,
    uses_cv,
)

log = logging.getLogger(__name__)
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
_ABSENT = object()


def prepare_study(
    split: SplitManifest, settings: Settings, new_trials: int
) -> tuple[optuna.Study, str, int]:
    """Create (or resume) the study of ``split``'s dataset and set its target: ``new_trials`` more
    finished trials, capped by ``tune.max_trials``. Returns the study, its parent run id and the
    target. A study resumed with settings that change what a trial computes is refused: its
    trials could not be compared."""
    tracking.configure(settings)
    _check_folds(split, settings)
    storage = open_storage(settings)
    backbone = resolve_weights(settings.model.weights, settings.model.allow_random_init_fallback)
    name = existing_study_name(storage, settings.tune.study_name, split.dataset_hash, backbone)
    study = _create(name, storage)
    if study is not None:
        parent_id = _set_up(study, split, settings)
        log.info(
            "new study %s for dataset %s, backbone %s",
            name,
            split.dataset_hash[:12],
            backbone.described,
        )
    else:
        parent_id = parent_run(name, storage)  # waits for a creator that is still setting it up
        study = load_study(name, storage)
        _check_resumable(study, split, settings)
        parent_id = parent_id or _set_up(study, split, settings)
    done = finished(trial_counts(study))
    target = done + new_trials
    if settings.tune.max_trials is not None:
        target = min(target, settings.tune.max_trials)
    study.set_user_attr("target_finished", target)
    log.info("study %s: %d finished trials, target %d", name, done, target)
    return study, parent_id, target


def _create(name: str, storage: RDBStorage) -> optuna.Study | None:
    """A new study named ``name``, or None when it exists: creation is atomic in the storage, so
    of workers racing to create it exactly one does."""
    try:
        return optuna.create_study(
            study_name=name, storage=storage, direction="minimize", load_if_exists=False
        )
    except optuna.exceptions.DuplicatedStudyError:
        return None


def _check_folds(split: SplitManifest, settings: Settings) -> None:
    if not uses_cv(settings, split):
        return
    groups = split.files.loc[split.files["split"].isin(["train", "val"]), "group"].nunique()
    if groups < settings.tune.cv_folds:
        raise TuneError(
            f"tune.cv_folds={settings.tune.cv_folds} but train + val hold only {groups} distinct "
            "images (groups of copies): lower tune.cv_folds or set tune.cv: off"
        )


def _check_resumable(study: optuna.Study, split: SplitManifest, settings: Settings) -> None:
    """A study is resumed on its own data, objective and settings only."""
    name = study.study_name
    recorded = study.user_attrs.get("dataset_hash", split.dataset_hash)
    if recorded != split.dataset_hash:
        raise TuneError(
            f"study {name!r} records dataset {str(recorded)[:12]}, not this data's "
            f"{split.dataset_hash[:12]}"
        )
    objective = study_objective(settings, split)
    recorded_objective = study.user_attrs.get("objective", OBJECTIVE)
    if objective != recorded_objective:  # e.g. a validation split's study, now cross-validated
        raise TuneError(
            f"study {name!r} scored its trials by {recorded_objective}, these settings by "
            f"{objective} (tune.cv): their trials cannot be compared; set tune.cv to match, or "
            "start a new study with another --study base name"
        )
    changed = _differences(
        study.user_attrs.get("settings", study_settings(settings)),
        study_settings(settings),
        study_settings(Settings()),
    )
    if changed:
        more = ", ..." if len(changed) > 6 else ""
        raise TuneError(
            f"study {name!r} was run with other settings ({', '.join(changed[:6])}{more}); "
            "resuming would mix trials that cannot be compared: restore those settings, or start "
            "a new study with another --study base name"
        )


def study_settings(settings: Settings) -> dict[str, Any]:
    """What every trial of a study shares (operational settings and secrets left out)."""
    dumped = settings.model_dump(mode="json")
    shared = {key: dumped[key] for key in STUDY_SECTIONS}
    for dotted in OPERATIONAL:
        section, key = dotted.split(".")
        shared[section].pop(key, None)
    return redact(shared)


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


def _set_up(study: optuna.Study, split: SplitManifest, settings: Settings) -> str:
    """Record what the study is (its data, settings), warm-start it, make its MLflow parent run;
    the parent run id comes last and marks the set-up done. Idempotent: a set-up its creator left
    half done (killed) is finished by the next caller."""
    attrs = study.user_attrs
    backbone = resolve_weights(settings.model.weights, settings.model.allow_random_init_fallback)
    for key, value in {
        "dataset_hash": split.dataset_hash,
        "backbone_identity": backbone.identity,
        "backbone": backbone_kind(backbone),
        "base_name": settings.tune.study_name,
        "data_dir": str(split.data_dir),
        "settings": study_settings(settings),
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
    previous = load_study(latest.study_name, storage)
    best = sorted(
        previous.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)), key=lambda t: t.value
    )[:n]
    space, unsearched = settings.tune.search_space, settings.model.model_dump()
    enqueued = []
    for trial in best:
        if space.admits(trial.params, unsearched):
            origin = f"{previous.study_name}#{trial.number}"
            study.enqueue_trial(
                trial.params, user_attrs={"warm_start_from": origin}, skip_if_exists=True
            )
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
        run_artifacts.log_settings(settings)
        run_artifacts.log_dataset(split)
        run_artifacts.log_environment()
    study.set_user_attr("mlflow_parent_run_id", parent.info.run_id)
    return parent.info.run_id


def parent_run(name: str, storage: RDBStorage, wait_s: float = 60.0) -> str | None:
    """The study's parent run id, waiting a little for a creator that is still making it."""
    deadline = time.monotonic() + wait_s
    while True:
        run_id = load_study(name, storage).user_attrs.get("mlflow_parent_run_id")
        if run_id or time.monotonic() > deadline:
            return run_id
        time.sleep(0.5)
