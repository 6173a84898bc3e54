"""Distributed tuning for real: three `osteo tune-worker` processes on one study in PostgreSQL,
a global budget, a worker SIGKILLed mid-trial, and a password-bearing storage URL that must not
reach the tracking store anywhere."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import mlflow
import optuna
import psycopg
import pytest
import yaml
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from osteo_pipeline.steps.split import split_dataset
from osteo_pipeline.steps.tune import prepare_study, summarize
from osteo_pipeline.steps.validate import validate_folder
from tests.integration_services import pg_bin, postgres
from tests.servers import BIN

pytestmark = [
    pytest.mark.slow,
    pytest.mark.integration,
    pytest.mark.skipif(
        pg_bin() is None, reason="PostgreSQL server binaries not installed (.ci/run installs them)"
    ),
]
PASSWORD = "pw-osteo-7Hq2xZ"  # noqa: S105 - a test secret that must never be logged
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def _workers(
    study: str, split_file: Path, config: Path, storage: str, log_dir: Path
) -> list[subprocess.Popen]:
    env = os.environ | {"OSTEO_TUNE__STORAGE": storage}
    processes = []
    for index in (1, 2, 3):
        log = (log_dir / f"worker{index}.log").open("w")
        command = [
            str(BIN / "osteo"),
            "tune-worker",
            study,
            "--split",
            str(split_file),
            "--worker",
            str(index),
            "--config",
            str(config),
        ]
        processes.append(
            subprocess.Popen(
                command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        )
    return processes


def _wait(processes: list[subprocess.Popen], timeout: float = 900) -> list[int]:
    return [p.wait(timeout=timeout) for p in processes]


@pytest.mark.timeout(1800)  # each worker process is awaited for up to 900 s
def test_three_workers_share_one_study_a_budget_and_survive_a_killed_worker(
    synth_dir, train_settings, tmp_path
):
    with postgres() as url:
        with psycopg.connect(url, autocommit=True) as connection:
            connection.execute("create database optuna")
        storage = (
            url.replace(
                "postgresql://postgres@", f"postgresql+psycopg://postgres:{PASSWORD}@"
            ).rsplit("/", 1)[0]
            + "/optuna"
        )
        settings = train_settings.model_copy(
            update={
                "tune": train_settings.tune.model_copy(
                    update={
                        "storage": storage,
                        "heartbeat_interval_s": 1,
                        "heartbeat_grace_s": 4,
                        "poll_s": 0.5,
                        "pruner": "none",
                        "trials": 9,
                    }
                )
            },
            deep=True,
        )
        split = split_dataset(validate_folder(synth_dir(per_class=10), settings), settings)
        split_file = split.save(tmp_path / "split.json")
        config = tmp_path / "config.yaml"
        config.write_text(
            yaml.safe_dump(
                settings.model_copy(
                    update={
                        "tune": settings.tune.model_copy(
                            update={"storage": "sqlite:///not-this.db"}
                        )
                    }
                ).model_dump(mode="json")
            )
        )

        # Three workers share one study and a global budget of 9 finished trials. One is SIGKILLed
        # mid-trial: its trial is failed by heartbeat and run again by another worker; the others
        # never stop; the budget still ends at exactly 9, with no proposal made twice.
        study, parent, target = prepare_study(split, settings, 9)
        assert target == 9
        shared = optuna.storages.RDBStorage(storage)  # one connection pool for all the polling here
        workers = _workers(study.study_name, split_file, config, storage, tmp_path)
        victim = workers[0]
        deadline = time.monotonic() + 600
        killed_trial = None
        while killed_trial is None:
            assert time.monotonic() < deadline, "the victim never ran a trial"
            for trial in optuna.load_study(study_name=study.study_name, storage=shared).get_trials(
                states=(TrialState.RUNNING,)
            ):
                if (
                    trial.user_attrs.get("worker", "").endswith(f":{victim.pid}")
                    and "mlflow_run_id" in trial.user_attrs
                ):
                    killed_trial = trial
            time.sleep(0.5)
        os.killpg(victim.pid, signal.SIGKILL)
        assert victim.wait(timeout=30) == -signal.SIGKILL
        assert _wait(workers[1:]) == [0, 0]

        trials = optuna.load_study(study_name=study.study_name, storage=shared).trials
        finished = [t for t in trials if t.state in FINISHED]
        assert len(finished) == 9
        assert len({tuple(sorted(t.params.items())) for t in finished}) == 9
        assert trials[killed_trial.number].state == TrialState.FAIL
        retried = [t for t in trials if t.system_attrs.get("failed_trial") == killed_trial.number]
        assert (
            len(retried) == 1
            and retried[0].state in FINISHED
            and retried[0].params == killed_trial.params
        )
        assert not retried[0].user_attrs["worker"].endswith(f":{victim.pid}")
        assert len({t.user_attrs["worker"] for t in finished}) >= 2  # the work was shared

        mlflow.set_tracking_uri(settings.tracking.uri)
        client = MlflowClient()
        experiment = client.get_experiment_by_name(settings.tracking.experiment)
        runs = client.search_runs([experiment.experiment_id])
        parents = [r for r in runs if r.data.tags.get("osteo.kind") == "study"]
        nested = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent]
        assert [p.info.run_id for p in parents] == [parent]
        assert (
            sorted(r.info.status for r in nested) == ["FAILED"] + ["FINISHED"] * 9
        )  # the killed trial's run closed as FAILED
        assert client.get_run(killed_trial.user_attrs["mlflow_run_id"]).info.status == "FAILED"
        summary = summarize(study.study_name, settings, parent, 0, time.perf_counter())
        assert (
            summary.counts["complete"] == 9
            and summary.counts["fail"] == 1
            and summary.best_trial_run_id
        )
        shared.engine.dispose()

    # The password of the storage URL is nowhere in the tracking store: database and artifacts.
    store = Path(settings.tracking.uri.removeprefix("sqlite:///"))
    assert PASSWORD.encode() not in store.read_bytes()
    leaked = [
        p
        for p in Path(settings.tracking.artifact_root).rglob("*")
        if p.is_file() and PASSWORD.encode() in p.read_bytes()
    ]
    assert leaked == []
    assert (
        "postgresql+psycopg://postgres:***@" in client.get_run(parent).data.tags["optuna.storage"]
    )
    logs = "".join(p.read_text() for p in tmp_path.glob("worker*.log"))
    assert PASSWORD not in logs
