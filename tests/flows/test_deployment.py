"""The retrain as a deployment: served by `osteo schedule` on a real `prefect server start`
(127.0.0.1), one triggered run on tiny synthetic data and the version it leaves, gated by the
real floors; and `prefect deploy` of prefect.yaml, the other way to deploy it."""

import asyncio
import os
import shutil
import subprocess
import time

import mlflow
import pytest
import requests
from mlflow.tracking import MlflowClient
from prefect.client.orchestration import get_client
from prefect.settings import PREFECT_API_URL

from tests.servers import BIN, REPO, free_port, running
from tests.small import write_blind_dataset

pytestmark = [pytest.mark.slow, pytest.mark.integration]


@pytest.mark.timeout(1800)  # the triggered run is watched for up to 960 s
def test_scheduled_deployment_runs_and_registers_a_version_the_floors_gate(
    config_file, train_settings, tmp_path
):
    """The batch is blind (one picture under both classes): its version is registered and the
    real floors refuse it, as they would any scheduled candidate below them."""
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "PREFECT_API_URL": api,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
    }
    data = tmp_path / "blind"
    write_blind_dataset(data, list(train_settings.data.classes), 10)
    server = [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    schedule = [
        str(BIN / "osteo"),
        "schedule",
        "--data-dir",
        str(data),
        "--config",
        str(config_file),
        "--set",
        "tune.trials=1",
    ]
    with running(server, f"{api}/health", env=env, log=tmp_path / "server.log"):
        with running(schedule, f"{api}/health", env=env, log=tmp_path / "serve.log"):
            deadline = time.monotonic() + 120
            while True:  # wait for `flow.serve` to register the deployment
                found = requests.post(f"{api}/deployments/filter", json={}, timeout=10).json()
                if any(d["name"] == train_settings.schedule.deployment for d in found):
                    break
                assert time.monotonic() < deadline, (tmp_path / "serve.log").read_text()[-3000:]
                time.sleep(2)
            deployment = next(d for d in found if d["name"] == train_settings.schedule.deployment)
            assert deployment["schedules"][0]["schedule"]["cron"] == train_settings.schedule.cron
            run = subprocess.run(
                [
                    str(BIN / "prefect"),
                    "deployment",
                    "run",
                    f"retrain/{train_settings.schedule.deployment}",
                    "--watch",
                    "--watch-timeout",
                    "900",
                ],
                env=os.environ | env,
                capture_output=True,
                text=True,
                timeout=960,
            )
            assert run.returncode == 0, (
                run.stdout[-3000:]
                + run.stderr[-3000:]
                + (tmp_path / "serve.log").read_text()[-3000:]
            )
    mlflow.set_tracking_uri(train_settings.tracking.uri)
    versions = MlflowClient().search_model_versions(
        f"name = '{train_settings.registry.model_name}'"
    )
    assert len(versions) == 1 and versions[0].tags["gate.decision"] == "rejected"
    assert "test balanced_accuracy 0.500 below floor 0.600" in versions[0].tags["gate.reason"]


@pytest.mark.timeout(600)
def test_prefect_deploy_of_prefect_yaml_creates_every_deployment(prefect_harness, tmp_path):
    """`prefect deploy --all` as prefect.yaml's header says to run it, against a temporary API:
    the weekly retrain on the process pool and the tune worker on its own pool, each with its
    entrypoint, parameters and the pull step into OSTEO_PROJECT_DIR."""
    project = tmp_path / "checkout"
    project.mkdir()
    shutil.copy(REPO / "prefect.yaml", project / "prefect.yaml")
    (project / "flows").symlink_to(REPO / "flows")
    env = os.environ | {
        "PREFECT_API_URL": PREFECT_API_URL.value(),
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "OSTEO_PROJECT_DIR": str(project),
        "PYTHONPATH": str(REPO),
    }
    prefect = str(BIN / "prefect")
    for pool in ("osteo-process", "osteo-tune"):
        command = [prefect, "work-pool", "create", pool, "--type", "process"]
        created = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
        assert created.returncode == 0, created.stdout + created.stderr
    deploy = subprocess.run(
        [prefect, "--no-prompt", "deploy", "--all"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert deploy.returncode == 0, deploy.stdout[-3000:] + deploy.stderr[-3000:]

    async def deployments() -> dict:
        async with get_client() as client:
            found = await client.read_deployments()
            flows = {f.id: f.name for f in await client.read_flows()}
        return {f"{flows[d.flow_id]}/{d.name}": d for d in found}

    created = asyncio.run(deployments())
    assert set(created) == {
        "retrain/scheduled-retrain",
        "tune-worker/tune-worker",
        "score/scheduled-scoring",
    }
    scoring = created["score/scheduled-scoring"]
    assert (scoring.entrypoint, scoring.work_pool_name) == (
        "flows/score.py:score_flow",
        "osteo-process",
    )
    assert [s.schedule.cron for s in scoring.schedules] == ["0 1 * * *"]
    retrain, worker = created["retrain/scheduled-retrain"], created["tune-worker/tune-worker"]
    assert (retrain.entrypoint, retrain.work_pool_name) == (
        "flows/retrain.py:retrain_flow",
        "osteo-process",
    )
    assert retrain.parameters == {"data_dir": "data/incoming", "config": None, "overrides": []}
    assert [(s.schedule.cron, s.schedule.timezone, s.active) for s in retrain.schedules] == [
        ("0 3 * * 1", "UTC", True)
    ]
    assert (worker.entrypoint, worker.work_pool_name, worker.schedules) == (
        "flows/retrain.py:tune_worker_flow",
        "osteo-tune",
        [],
    )
    for deployment in (retrain, worker):
        assert deployment.pull_steps == [
            {"prefect.deployments.steps.set_working_directory": {"directory": str(project)}}
        ]
