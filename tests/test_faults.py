"""Faults: processes killed mid-search and between registering and promoting, a dead tracking
server, a dead S3 endpoint. Each must end in a clean state or a bounded, clear failure."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from osteo_pipeline.io.storage import StorageError, pull_batch
from osteo_pipeline.io.tracking import TrackingUnavailableError
from osteo_pipeline.steps.registry import open_registry, promote, register_run
from osteo_pipeline.steps.split import split_dataset
from osteo_pipeline.steps.tune import tune
from osteo_pipeline.steps.validate import validate_folder
from tests.registry_helpers import log_candidate, non_inferiority
from tests.servers import BIN, free_port

pytestmark = pytest.mark.slow


def _wait_for(condition, timeout: float, what: str) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _kill(process: subprocess.Popen) -> None:
    os.killpg(process.pid, signal.SIGKILL)  # no cleanup handlers run: as a crash or OOM kill
    process.wait(timeout=30)


def _trials(settings):
    """The trials of the one study in the storage (named after its dataset's hash)."""
    summaries = optuna.get_all_study_summaries(settings.tune.storage, include_best_trial=False)
    if not summaries:
        raise KeyError("no study yet")
    return optuna.load_study(
        study_name=summaries[0].study_name, storage=settings.tune.storage
    ).trials


def _running_runs(settings) -> list[str]:
    mlflow.set_tracking_uri(settings.tracking.uri)
    experiment = mlflow.get_experiment_by_name(settings.tracking.experiment)
    return [
        r.info.run_id
        for r in MlflowClient().search_runs([experiment.experiment_id])
        if r.info.status == "RUNNING"
    ]


@pytest.mark.timeout(1800)  # up to 600 s to the kill, then up to 900 s of resumed search
def test_search_killed_mid_trial_resumes_without_repeating_finished_trials(
    synth_dir, train_settings, tmp_path
):
    root = synth_dir(per_class=10)
    settings = train_settings.model_copy(
        update={
            "tune": train_settings.tune.model_copy(
                update={
                    "trials": 3,
                    "pruner": "none",
                    "heartbeat_interval_s": 1,
                    "heartbeat_grace_s": 2,
                }
            )
        },
        deep=True,
    )
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(settings.model_dump(mode="json")))
    command = [str(BIN / "osteo"), "tune", str(root), "--config", str(config)]
    process = subprocess.Popen(
        command,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=tmp_path,
    )
    try:

        def one_done_one_running() -> bool:
            try:
                trials = _trials(settings)
            except KeyError:  # the study does not exist yet
                return False
            states = [t.state for t in trials]  # and the running trial has its MLflow run open:
            return (
                TrialState.COMPLETE in states
                and states[-1] == TrialState.RUNNING
                and "mlflow_run_id" in trials[-1].user_attrs
            )

        _wait_for(one_done_one_running, 600, "a finished trial and a running one")
    finally:
        _kill(process)
    before = {t.number: (t.state, t.value, t.params) for t in _trials(settings)}
    killed = max(before)
    assert before[killed][0] == TrialState.RUNNING and _running_runs(
        settings
    )  # what the kill left behind

    time.sleep(3)  # longer than the heartbeat's grace period: the killed trial is now stale
    done = subprocess.run(
        [*command, "--trials", "2"], capture_output=True, text=True, cwd=tmp_path, timeout=900
    )
    assert done.returncode == 0, done.stdout + done.stderr
    trials = _trials(settings)
    after = {t.number: (t.state, t.value, t.params) for t in trials}
    assert after[killed][0] == TrialState.FAIL
    retried = [t for t in trials if t.system_attrs.get("failed_trial") == killed]
    assert (
        len(retried) == 1
        and retried[0].state == TrialState.COMPLETE
        and retried[0].params == before[killed][2]
    )
    finished_before = sum(state == TrialState.COMPLETE for state, _, _ in before.values())
    for number, (state, value, params) in before.items():
        if state == TrialState.COMPLETE:
            assert after[number] == (state, value, params)  # kept, not run again
    assert (
        sum(state == TrialState.COMPLETE for state, _, _ in after.values()) == finished_before + 2
    )  # --trials: new trials
    assert _running_runs(settings) == []  # the killed trial's MLflow run was closed as FAILED


KILLED_AFTER_REGISTER = """
import sys, time, yaml
from osteo_pipeline.config import Settings
from osteo_pipeline.steps.registry import promote, register_run
settings = Settings.model_validate(yaml.safe_load(open(sys.argv[1])))
print("registered", register_run(sys.argv[2], settings), flush=True)
time.sleep(600)  # the kill lands here: registered, not yet promoted
promote(settings)
"""


def test_killed_between_register_and_promote_leaves_production_alone(
    synth_dir, train_settings, tmp_path
):
    train_settings = non_inferiority(
        train_settings
    )  # the second, equal candidate must be promotable
    root = synth_dir(per_class=12)
    split = split_dataset(validate_folder(root, train_settings), train_settings)
    register_run(log_candidate(split, train_settings, 1.0), train_settings)
    assert promote(train_settings).passed
    candidate = log_candidate(split, train_settings, 1.0)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(train_settings.model_dump(mode="json")))
    process = subprocess.Popen(
        [sys.executable, "-c", KILLED_AFTER_REGISTER, str(config), candidate],
        start_new_session=True,
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path.cwd(),
    )
    try:
        assert process.stdout.readline().split() == ["registered", "2"]
    finally:
        _kill(process)
    registry = open_registry(train_settings)
    assert registry.aliases()["production"] == "1" and registry.aliases()["staging"] == "2"
    decision = promote(train_settings)  # the re-run: gates the staged version and finishes cleanly
    assert (
        decision.passed
        and registry.aliases()["production"] == "2"
        and registry.aliases()["previous"] == "1"
    )
    assert _running_runs(train_settings) == []


def test_dead_tracking_server_fails_fast_and_clearly_and_keeps_local_outputs(
    synth_dir, train_settings
):
    port = free_port()  # nothing listens there
    dead = train_settings.model_copy(
        update={
            "tracking": train_settings.tracking.model_copy(
                update={"uri": f"http://127.0.0.1:{port}", "http_retries": 2, "http_backoff_s": 0}
            )
        },
        deep=True,
    )
    validation = validate_folder(synth_dir(per_class=10), dead)
    split = split_dataset(validation, dead)
    saved = split.save(Path(dead.output_dir) / "split.json")
    started = time.monotonic()
    with pytest.raises(
        TrackingUnavailableError, match=rf"127.0.0.1:{port} unreachable after 2 retries"
    ) as failure:
        tune(split, dead)
    # a connection never made (no timeout, no error page), after the bounded retries
    assert "Max retries exceeded" in str(failure.value)
    assert "NewConnectionError" in str(failure.value)
    assert time.monotonic() - started < 60  # bounded, not MLflow's default minutes of retrying
    with pytest.raises(TrackingUnavailableError):
        register_run("0" * 32, dead)  # nothing half-registered: it never gets that far
    assert (
        saved.is_file() and yaml.safe_load(saved.read_text())["dataset_hash"] == split.dataset_hash
    )


def test_dead_s3_endpoint_fails_after_bounded_retries_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    staging = tmp_path / "staging"
    staging.mkdir()
    started = time.monotonic()
    with pytest.raises(StorageError, match="unreachable .* after 4 attempts"):
        pull_batch("s3://incoming/batch-7", staging)
    assert time.monotonic() - started < 120
    assert list(staging.iterdir()) == []
