"""The compose stack, run for real and driven as an operator would (``make stack-test``; not in
``make test``: it takes minutes and many containers). docker/compose.yaml with the local
stand-ins of docker/compose.local.yaml: PostgreSQL (Debian's package), moto's S3 server for MinIO,
optuna-dashboard from PyPI. Fresh secrets, volumes, ports and project name of its own, all
removed afterwards.

Two batches go through the retrain deployment on the Prefect worker: the first fans its study out
to the tune-worker deployment (the tune-worker container must run trials of it), registers and
promotes version 1, which the model server then serves; the second promotes version 2, and the
model server moves to it by itself. MLflow must keep runs in PostgreSQL and model files in S3."""

from __future__ import annotations

import base64
import os
import secrets
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests
from mlflow.tracking import MlflowClient

from osteo_pipeline.steps.synth import write_synthetic_dataset
from tests.servers import free_port
from tests.test_container import NO_DOCKER, TINY

pytestmark = [
    pytest.mark.stack,
    pytest.mark.docker,
    pytest.mark.slow,
    pytest.mark.timeout(7200),  # the image and the stack's images, then two retrains
    pytest.mark.skipif(NO_DOCKER is not None, reason=str(NO_DOCKER)),
]
ROOT = Path(__file__).resolve().parents[1]
MODEL = "osteo-knee"  # configs/demo.yaml's registry.model_name
# Every batch's promotion is deterministic: no floors, and a margin no difference in balanced
# accuracy can fall below (the stack is under test, not the model).
PROMOTABLE = [pair for pair in TINY if not pair.startswith("registry.")] + [
    "registry.floors={}",
    "registry.margin=2.0",
    "registry.min_paired_cases=1",
]


class Stack:
    """One compose project: ``compose(...)`` runs docker compose on it, ``url(service)`` is a
    published port on the host."""

    def __init__(self, env_file: Path, ports: dict[str, int]) -> None:
        self.name = f"osteo-stack-{uuid.uuid4().hex[:8]}"
        self.ports = ports
        self.env = {
            "OSTEO_ENV_FILE": str(env_file),
            **{f"OSTEO_{key.upper()}_PORT": str(port) for key, port in ports.items()},
        }
        self.files = [
            "-f",
            "docker/compose.yaml",
            "-f",
            "docker/compose.local.yaml",
            "--env-file",
            str(env_file),
        ]

    def compose(
        self, *args: str, timeout: float = 900, check: bool = True
    ) -> subprocess.CompletedProcess:
        command = ["docker", "compose", "-p", self.name, *self.files, *args]
        result = subprocess.run(
            command,
            cwd=ROOT,
            env=os.environ | self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        assert not check or result.returncode == 0, (
            f"{' '.join(args[:4])}: {result.stdout[-3000:]}{result.stderr[-3000:]}"
        )
        return result

    def url(self, service: str) -> str:
        return f"http://127.0.0.1:{self.ports[service]}"

    def logs(self) -> str:
        return self.compose("logs", "--no-color", "--tail", "60", check=False).stdout


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[Stack]:
    built = subprocess.run(
        ["make", "-s", "image"], cwd=ROOT, capture_output=True, text=True, timeout=3600
    )
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    env_file = tmp_path_factory.mktemp("stack") / ".env"
    env_file.write_text(
        "POSTGRES_USER=osteo\n"
        f"POSTGRES_PASSWORD={secrets.token_hex(12)}\n"
        f"AWS_ACCESS_KEY_ID=key-{secrets.token_hex(6)}\n"
        f"AWS_SECRET_ACCESS_KEY={secrets.token_hex(16)}\n"
        "AWS_DEFAULT_REGION=us-east-1\nS3_BUCKET=osteo\n"
        "OSTEO_BACKBONE_WEIGHTS=none\n"  # no weights can be downloaded here: a random-init backbone
    )
    stack = Stack(
        env_file, {name: free_port() for name in ("mlflow", "prefect", "serve", "dashboard")}
    )
    try:
        stack.compose("build", "postgres", "minio", "optuna-dashboard", timeout=1800)
        stack.compose("up", "-d")
        yield stack
    finally:
        print(stack.logs())  # shown by pytest when the test failed
        stack.compose("down", "--volumes", "--remove-orphans", timeout=300, check=False)


def _until(
    what: str, condition: Callable[[], object], stack: Stack, timeout: float, every: float = 3
) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = condition()
        except (requests.RequestException, KeyError, ValueError):
            value = None
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}:\n{stack.logs()}")


def _retrain(stack: Stack, data_dir: str, overrides: list[str]) -> str:
    """Run the scheduled-retrain deployment now, as `prefect deployment run` does; returns the
    flow run's final state type once it has one."""
    api = f"{stack.url('prefect')}/api"
    deployment = _until(
        "the retrain deployment",
        lambda: requests.get(
            f"{api}/deployments/name/retrain/scheduled-retrain", timeout=10
        ).json()["id"],
        stack,
        600,
    )
    parameters = {"data_dir": data_dir, "config": "configs/demo.yaml", "overrides": overrides}
    run = requests.post(
        f"{api}/deployments/{deployment}/create_flow_run",
        json={"parameters": parameters},
        timeout=30,
    )
    assert run.status_code == 201, run.text[:500]

    def final_state() -> str | None:
        state = requests.get(f"{api}/flow_runs/{run.json()['id']}", timeout=10).json()["state"][
            "type"
        ]
        return state if state in {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"} else None

    return _until("the retrain flow run", final_state, stack, 1200, every=5)


def _served(stack: Stack, image: str) -> str | None:
    reply = requests.post(
        f"{stack.url('serve')}/invocations",
        json={"dataframe_split": {"columns": ["image"], "data": [[image]]}},
        timeout=60,
    )
    if reply.status_code != 200:
        return None
    row = reply.json()["predictions"][0]
    assert (
        row["label"] in {"normal", "osteoporosis"}
        and abs(row["p_normal"] + row["p_osteoporosis"] - 1) < 1e-4
    )
    return row["model_version"]


def test_the_stack_retrains_through_its_deployment_and_serves_each_promotion(stack, tmp_path):
    assert _until(
        "MLflow", lambda: requests.get(f"{stack.url('mlflow')}/health", timeout=5).ok, stack, 600
    )
    assert _until(
        "the Prefect server",
        lambda: requests.get(f"{stack.url('prefect')}/api/health", timeout=5).ok,
        stack,
        600,
    )
    assert _until(
        "optuna-dashboard", lambda: requests.get(stack.url("dashboard"), timeout=5).ok, stack, 300
    )

    for batch, seed in (
        ("batch-1", 3),
        ("batch-2", 9),
    ):  # an operator drops batches on the incoming volume
        stack.compose(
            "exec",
            "-T",
            "prefect-worker",
            "osteo",
            "synth",
            f"data/incoming/{batch}",
            "--per-class",
            "12",
            "--size",
            "64",
            "--seed",
            str(seed),
        )

    fan_out = ["tune.trials=6", "tune.workers=2", "tune.worker_deployment=tune-worker/tune-worker"]
    assert _retrain(stack, "data/incoming/batch-1", [*PROMOTABLE, *fan_out]) == "COMPLETED"

    client = MlflowClient(stack.url("mlflow"))
    first = client.get_model_version_by_alias(MODEL, "production")
    assert first.version == "1"
    tune_host = stack.compose("ps", "-q", "tune-worker").stdout.strip()[
        :12
    ]  # its container's hostname
    experiment = client.get_run(first.run_id).info.experiment_id
    workers = {
        run.data.tags["osteo.worker"].split(":")[0]
        for run in client.search_runs([experiment], max_results=500)
        if "osteo.worker" in run.data.tags
    }
    assert tune_host in workers and len(workers) == 2, (
        tune_host,
        workers,
    )  # the tune-worker ran trials of the study
    # The bucket, listed with the stack's own S3 credentials and endpoint (the MLflow server's).
    listing = (
        "import boto3, os; print(*(o['Key'] for o in boto3.client('s3', "
        "endpoint_url=os.environ['MLFLOW_S3_ENDPOINT_URL'])"
        ".list_objects_v2(Bucket='osteo', Prefix='mlflow/')['Contents']))"
    )
    keys = stack.compose("exec", "-T", "mlflow", "python", "-c", listing).stdout.split()
    assert any(key.endswith("/MLmodel") for key in keys) and any(
        first.run_id in key for key in keys
    )
    runs_in_postgres = stack.compose(
        "exec",
        "-T",
        "postgres",
        "psql",
        "-U",
        "osteo",
        "-d",
        "mlflow",
        "-tAc",
        "select count(*) from runs",
    ).stdout.strip()
    assert int(runs_in_postgres) >= 4  # the study, its trials and the refit

    write_synthetic_dataset(tmp_path / "host", ["normal", "osteoporosis"], 1, 64, 21)
    image = base64.b64encode(next((tmp_path / "host" / "normal").iterdir()).read_bytes()).decode()
    _until(
        "the model server on version 1",
        lambda: _served(stack, image) == f"{MODEL}/{first.version}",
        stack,
        600,
        every=5,
    )
    garbage = requests.post(
        f"{stack.url('serve')}/invocations",
        json={"dataframe_split": {"columns": ["image"], "data": [["%%%"]]}},
        timeout=60,
    )
    assert 400 <= garbage.status_code < 500, garbage.text[:300]

    assert _retrain(stack, "data/incoming/batch-2", [*PROMOTABLE, "tune.trials=1"]) == "COMPLETED"
    second = client.get_model_version_by_alias(MODEL, "production")
    assert second.version == "2" and second.run_id != first.run_id
    _until(
        "the model server on version 2",
        lambda: _served(stack, image) == f"{MODEL}/{second.version}",
        stack,
        600,
        every=5,
    )
