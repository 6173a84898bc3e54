"""Workers: each runs trials of one study until the study's target of finished trials is
reached, whichever machine it is on. Local workers are ``osteo tune-worker`` processes spawned
here; remote ones join by the study's name (``joined_study``, ``adopt_study_settings``)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import optuna
from optuna.storages import fail_stale_trials
from optuna.trial import TrialState

from osteo_pipeline.config import Settings, TuneSettings, settings_to_yaml
from osteo_pipeline.io import tracking
from osteo_pipeline.io.split_manifest import SplitManifest
from osteo_pipeline.io.weights import resolve as resolve_weights
from osteo_pipeline.steps.tune.objective import Objective, OverBudget
from osteo_pipeline.steps.tune.resume import parent_run
from osteo_pipeline.steps.tune.study import (
    TuneError,
    finished,
    load_study,
    open_storage,
    same_backbone,
    trial_counts,
    uses_cv,
)

log = logging.getLogger(__name__)


def run_worker(
    study_name: str,
    split: SplitManifest,
    settings: Settings,
    worker: int = 0,
    timeout_s: float | None = None,
) -> int:
    """Run trials of ``study_name`` until its target of finished trials is reached (or
    ``timeout_s`` passes); returns how many trials this worker ran to the end. Safe to run
    anywhere, any number of times at once: see the package docstring."""
    # Join the study: its data, its backbone, its set-up done by its creator.
    tracking.configure(settings)
    storage = open_storage(settings)
    parent_id = parent_run(study_name, storage)
    probe = load_study(study_name, storage)
    if probe.user_attrs.get("dataset_hash") != split.dataset_hash:
        raise TuneError(
            f"study {study_name!r} was run on dataset "
            f"{str(probe.user_attrs.get('dataset_hash'))[:12]}; "
            f"this data is {split.dataset_hash[:12]}"
        )
    same_backbone(
        probe, resolve_weights(settings.model.weights, settings.model.allow_random_init_fallback)
    )
    if parent_id is None or "target_finished" not in probe.user_attrs:
        raise TuneError(
            f"study {study_name!r} is not set up (its creator stopped?); "
            "run `osteo tune` on its data"
        )
    # This worker's own sampler seed, and the pruner of what trials report: folds or epochs.
    seed = sampler_seed(settings.seed, len(probe.get_trials(deepcopy=False)), worker)
    target = int(probe.user_attrs["target_finished"])
    t = settings.train
    steps = (
        settings.tune.cv_folds if uses_cv(settings, split) else t.head_epochs + t.finetune_epochs
    )
    study = load_study(
        study_name,
        storage,
        sampler=make_sampler(settings, seed, target),
        pruner=make_pruner(settings.tune, steps),
    )
    # Run trials until the budget is reached, then report the worker's caches on the parent run.
    objective = Objective(settings, split, parent_id, worker, seed)
    deadline = time.monotonic() + (timeout_s or settings.tune.timeout_s or float("inf"))
    try:
        _run_until_target(study, objective, deadline, settings.tune, worker)
    finally:
        report = objective.close()
        if report:
            tracking.log_metrics_to(
                parent_id, {f"{k}_worker{worker}": v for k, v in report.items()}
            )
    return objective.ran


def _run_until_target(
    study: optuna.Study, objective: Objective, deadline: float, tune: TuneSettings, worker: int
) -> None:
    patience = max(600.0, 10.0 * tune.heartbeat_grace_s)  # waiting on trials that never end
    last_change, last_counts = time.monotonic(), None
    while time.monotonic() < deadline:
        counts = trial_counts(study)
        target = int(study.user_attrs["target_finished"])
        if finished(counts) >= target:
            return
        if counts != last_counts:
            last_change, last_counts = time.monotonic(), counts
        if counts["waiting"] == 0 and finished(counts) + counts["running"] >= target:
            # The other workers' trials fill the budget: wait for them, failing any whose
            # worker died. A RUNNING trial with no heartbeat at all (made by a client outside
            # this pipeline) is never failed by Optuna: stop waiting for it after a while.
            if time.monotonic() - last_change > patience:
                running = [
                    t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
                ]
                log.warning(
                    "worker %d: trials %s have been running for %.0f s with no change; stopping",
                    worker,
                    running,
                    patience,
                )
                return
            fail_stale_trials(study)
            time.sleep(tune.poll_s)
            continue
        study.optimize(objective, n_trials=1, catch=(OverBudget,), gc_after_trial=True)


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


def joined_study(name: str, settings: Settings) -> optuna.Study:
    """An existing study, for a worker to join."""
    return load_study(name, open_storage(settings))


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


def spawn_workers(
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
    placeholder = {"storage": "sqlite:///passed-in-the-environment.db"}
    config.write_text(
        settings_to_yaml(
            settings.model_copy(update={"tune": settings.tune.model_copy(update=placeholder)})
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
