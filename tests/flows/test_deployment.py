"""A real `prefect server start` on 127.0.0.1, the retrain deployment served by `osteo schedule`,
one triggered run on tiny synthetic data, and the new registered version it leaves."""

import os
import subprocess
import time

import mlflow
import pytest
import requests
from mlflow.tracking import MlflowClient

from tests.servers import BIN, free_port, running

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def test_scheduled_deployment_runs_and_registers_a_version(
    synth_dir, config_file, train_settings, tmp_path
):
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "PREFECT_API_URL": api,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
    }
    data = synth_dir(per_class=10)
    server = [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    schedule = [
        str(BIN / "osteo"),
        "schedule",
        "--data-dir",
        str(data),
        "--config",
        str(config_file),
        "--set",
        "registry.floors={}",
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
    assert len(versions) == 1 and versions[0].tags["gate.decision"] == "passed"
