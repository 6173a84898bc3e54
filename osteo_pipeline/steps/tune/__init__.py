"""Optuna search over learning rate, unfreeze depth, head size and dropout (and, when ``tune``
lists them, L2, input size and roi), on one or many workers.

**A study belongs to one dataset version and one backbone** (``study``): it is named
``<tune.study_name>-<dataset hash[:12]>-<backbone>`` (``random`` for a random init, else the first
12 hex digits of the weights file's sha256) and records both, so a retrain on new data or with
other weights starts a new study (warm-started with the best trials of the previous one,
``resume``) and a retrain on the same data and weights resumes its own. ``best_params``
(``report``) refuses a study run on other data unless told otherwise. A study made before
backbones named studies (``<base>-<dataset hash[:12]>``) is still resumed and read when its
recorded kind of backbone (random init or pretrained) matches.

**Budget**: each ``tune`` call adds ``trials`` *new* finished trials (complete or pruned) to the
study, capped by ``tune.max_trials`` over the study's life. The target lives in the study, so
workers on other machines (``osteo tune-worker``) stop at the same count.

**Workers** (``workers``) share the study through Optuna's RDB storage (SQLite on one machine,
PostgreSQL across machines). Each runs trials (``objective``) through ``study.optimize`` with
Optuna's heartbeat: a trial whose worker died stops beating, and after ``tune.heartbeat_grace_s``
the next worker to look fails it (Optuna's ``fail_stale_trials``), closes its MLflow run and
enqueues it again (``RetryHeartbeatStaleTrialCallback``). A live worker's trial is never touched.
Each worker proposes from its own sampler seed, derived from the seed, the trials already in the
study and the worker's index, so a resume or a second worker never repeats the first one's
proposals.

**Tracking**: one MLflow parent run per study, made by the process that created the study (study
creation is atomic in the storage, so exactly one does); one run per trial, from whichever worker
runs it, nested under the parent by its ``mlflow.parentRunId`` tag."""

from __future__ import annotations

import logging
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from osteo_pipeline.config import Settings
from osteo_pipeline.io.split_manifest import SplitManifest
from osteo_pipeline.steps.tune.objective import (
    CLAIMED,
    Objective,
    OverBudget,
    SearchData,
    suggest,
)
from osteo_pipeline.steps.tune.report import BestTrial, TuneResult, best_params, summarize
from osteo_pipeline.steps.tune.resume import OPERATIONAL, STUDY_SECTIONS, prepare_study
from osteo_pipeline.steps.tune.study import (
    OBJECTIVE,
    STUDY_TAG,
    TRIAL_TAG,
    StaleTrialHandler,
    TuneError,
    existing_study_name,
    finished,
    open_storage,
    study_name_for,
    study_objective,
    trial_counts,
    uses_cv,
)
from osteo_pipeline.steps.tune.workers import (
    adopt_study_settings,
    joined_study,
    make_pruner,
    make_sampler,
    run_worker,
    sampler_seed,
    spawn_workers,
)

log = logging.getLogger(__name__)


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
    # Create or resume the study of this data and backbone, and set its target.
    started = time.perf_counter()
    study, parent_id, _ = prepare_study(split, settings, trials or settings.tune.trials)
    finished_before = finished(trial_counts(study))
    n_workers = workers or settings.tune.workers
    with tempfile.TemporaryDirectory(prefix="osteo-tune-") as folder:
        # Start the other workers: remote ones through the caller, else local processes.
        others: list[subprocess.Popen] = []
        if n_workers > 1 and start_remote_workers is not None:
            start_remote_workers(study.study_name, n_workers - 1)
        elif n_workers > 1:
            others = spawn_workers(
                study.study_name,
                split,
                settings,
                n_workers - 1,
                timeout_s or settings.tune.timeout_s,
                Path(folder),
            )
        # Be worker 0 until the target is reached, then wait for the local workers.
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
    # Read the best trial and log it on the study's parent run.
    return summarize(study.study_name, settings, parent_id, finished_before, started)


__all__ = [
    "CLAIMED",
    "OBJECTIVE",
    "OPERATIONAL",
    "STUDY_SECTIONS",
    "STUDY_TAG",
    "TRIAL_TAG",
    "BestTrial",
    "Objective",
    "OverBudget",
    "SearchData",
    "StaleTrialHandler",
    "TuneError",
    "TuneResult",
    "adopt_study_settings",
    "best_params",
    "existing_study_name",
    "joined_study",
    "make_pruner",
    "make_sampler",
    "open_storage",
    "prepare_study",
    "run_worker",
    "sampler_seed",
    "study_name_for",
    "study_objective",
    "suggest",
    "summarize",
    "tune",
    "uses_cv",
]
