"""What a study is and where it lives: its name (one dataset version, one backbone), what its
trials minimise, its storage with heartbeats, and the check that a worker trains the study's
backbone."""

from __future__ import annotations

import functools
import logging
import warnings
from typing import Any

import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from osteo_pipeline.config import Settings
from osteo_pipeline.core.redact import redact_url
from osteo_pipeline.errors import OsteoError
from osteo_pipeline.io import tracking
from osteo_pipeline.io.split_manifest import SplitManifest
from osteo_pipeline.io.weights import BackboneWeights

log = logging.getLogger(__name__)
STUDY_TAG = "osteo.study"
TRIAL_TAG = "osteo.trial"
OBJECTIVE = "val_loss"

warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


class TuneError(OsteoError):
    """A study cannot be opened, joined or used as asked; the message says which and why."""


# --- identity: one dataset version, one backbone ---------------------------------------------


def study_name_for(base: str, dataset_hash: str, backbone: BackboneWeights) -> str:
    """The study of one dataset version and backbone: a retrain on new data or from other weights
    never resumes another's search."""
    key = "random" if backbone.random_init else backbone.identity.removeprefix("sha256:")[:12]
    return f"{base}-{dataset_hash[:12]}-{key}"


def backbone_kind(backbone: BackboneWeights) -> str:
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
        and names[legacy].get("backbone", backbone_kind(backbone)) == backbone_kind(backbone)
    ):
        return legacy
    return name


def same_backbone(study: optuna.Study, weights: BackboneWeights) -> None:
    """Every trial of a study starts from the same backbone: a worker whose machine has other
    weights (or fell back to a random init) must not add its trials to the study. Studies made
    before backbones had an identity record only their kind (random init or pretrained)."""
    recorded = study.user_attrs.get("backbone_identity")
    if recorded is not None and recorded != weights.identity:
        raise TuneError(
            f"this worker's backbone is {weights.described} but study {study.study_name!r} was "
            f"run with {recorded[:19]}: give this machine the same weights (model.weights, "
            "`osteo weights install`)"
        )
    kind, recorded_kind = backbone_kind(weights), study.user_attrs.get("backbone")
    if recorded_kind is not None and recorded_kind != kind:
        raise TuneError(
            f"this worker's backbone is {weights.described} but study {study.study_name!r} was "
            f"run with a {recorded_kind} one"
        )
    if recorded is None:  # a study from before identities: the first backbone to train names it
        study.set_user_attr("backbone_identity", weights.identity)
        study.set_user_attr("backbone", kind)


# --- what its trials minimise ----------------------------------------------------------------


def uses_cv(settings: Settings, split: SplitManifest) -> bool:
    """Whether trials are scored by cross-validation (``tune.cv``; auto: on small data)."""
    if settings.tune.cv != "auto":
        return settings.tune.cv == "on"
    return int(split.files["split"].isin(["train", "val"]).sum()) < settings.tune.cv_below_images


def study_objective(settings: Settings, split: SplitManifest) -> str:
    """What a study's trials minimise: ``val_loss``, or e.g. ``cv5_log_loss``."""
    return (
        f"cv{settings.tune.cv_folds}_{settings.tune.objective}"
        if uses_cv(settings, split)
        else OBJECTIVE
    )


# --- storage ---------------------------------------------------------------------------------


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
            reason = (
                f"its worker stopped: Optuna failed trial {trial.number} for a missing heartbeat"
            )
            try:
                tracking.fail_run(run_id, reason)
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
    if url.startswith("sqlite"):  # workers on one machine wait for SQLite's lock
        engine_kwargs["connect_args"] = {"timeout": 60}
    try:
        return RDBStorage(
            url,
            engine_kwargs=engine_kwargs,
            heartbeat_interval=heartbeat_interval_s,
            grace_period=grace_s,
            heartbeat_stale_trial_callback=StaleTrialHandler(max_retries),
        )
    except Exception as exc:  # a bad URL, a missing driver, a dead server: SQLAlchemy's many ways
        raise TuneError(
            redact_url(
                f"cannot open the Optuna storage tune.storage={url}: "
                f"{type(exc).__name__}: {str(exc)[:300]}"
            )
        ) from exc


def load_study(name: str, storage: RDBStorage, **kwargs: Any) -> optuna.Study:
    try:
        return optuna.load_study(study_name=name, storage=storage, **kwargs)
    except KeyError as exc:
        raise TuneError(f"no study named {name!r} in tune.storage") from exc


def trial_counts(study: optuna.Study) -> dict[str, int]:
    """Trials per state; the FAIL ones that only lost the race for the budget's last slot (and
    never ran) are counted apart, as ``over_budget``."""
    trials = study.get_trials(deepcopy=False)
    counts = {state.name.lower(): sum(t.state == state for t in trials) for state in TrialState}
    counts["over_budget"] = sum(
        t.state == TrialState.FAIL and bool(t.user_attrs.get("over_budget")) for t in trials
    )
    counts["fail"] -= counts["over_budget"]
    return counts


def finished(counts: dict[str, int]) -> int:
    """Finished trials (complete or pruned): what the budget counts."""
    return counts["complete"] + counts["pruned"]
