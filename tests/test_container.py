"""The image, built and run: everything happens inside ``osteo-pipeline`` as its runtime user, on
named volumes mounted where compose mounts them (a fresh volume starts empty and must be writable
by that user). Synthetic images, a tiny ``osteo run`` (validate, split, tune, refit, register,
promote) on a random-init backbone, then the ``osteo serve`` container answers ``/invocations``
from the host with the promoted run's labels and probabilities, and a 4xx for garbage.

Needs a Docker engine (CI starts one with docker/engine.sh); skipped, saying so, without one.
``make image`` runs first: a cache hit in seconds when CI has just built it, and never a stale
image on a developer's machine."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from osteo_pipeline.steps.synth import write_synthetic_dataset


def _no_docker() -> str | None:
    """Why the container tests cannot run here, or None when a Docker engine answers."""
    if shutil.which("docker") is None:
        return "no docker CLI (CI installs and starts one: docker/engine.sh)"
    if subprocess.run(["docker", "info"], capture_output=True, timeout=60).returncode != 0:
        return "no Docker engine answers `docker info` (CI starts one: docker/engine.sh)"
    return None


NO_DOCKER = _no_docker()
pytestmark = [
    pytest.mark.docker,
    pytest.mark.slow,
    pytest.mark.timeout(5400),  # builds the image when missing (up to an hour)
    pytest.mark.skipif(NO_DOCKER is not None, reason=str(NO_DOCKER)),
]
ROOT = Path(__file__).resolve().parents[1]
IMAGE = "osteo-pipeline:latest"
# Where the volumes go in docker/compose.yaml; the MLflow store lives on the outputs volume, so the
# model-server container sees what the training container registered.
MOUNTS = {
    "incoming": "/app/data/incoming",
    "outputs": "/var/lib/osteo/outputs",
    "cache": "/var/lib/osteo/cache",
}
STORE = [
    "-e",
    "OSTEO_TRACKING__URI=sqlite:////var/lib/osteo/outputs/mlflow.db",
    "-e",
    "OSTEO_TRACKING__ARTIFACT_ROOT=/var/lib/osteo/outputs/mlruns",
]
# Tiny and deterministic: the point is that the container works, not the model's skill. No floors
# and a first version: the gate promotes it.
TINY = [
    "validation.min_width=32", "validation.min_height=32", "validation.min_images_per_class=2",
    "model.weights=none", "model.input_size=32", "model.head_units=8",
    "train.batch_size=8", "train.head_epochs=1", "train.finetune_epochs=1",
    "tune.trials=1", "tune.unfreeze_depth=[0, 1]", "tune.head_units=[4, 8]",
    "tracking.log_image_grids=false", "registry.floors={}",
]  # fmt: skip


def _docker(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    result = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, (
        f"docker {' '.join(args[:3])}…: {result.stdout[-3000:]}{result.stderr[-3000:]}"
    )
    return result


@pytest.fixture(scope="module")
def volumes() -> Iterator[list[str]]:
    """``-v`` options for fresh named volumes (removed afterwards), built image included."""
    built = subprocess.run(
        ["make", "-s", "image", f"IMAGE={IMAGE}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    prefix = f"osteo-test-{uuid.uuid4().hex[:8]}"
    names = {key: f"{prefix}-{key}" for key in MOUNTS}
    try:
        yield [option for key, path in MOUNTS.items() for option in ("-v", f"{names[key]}:{path}")]
    finally:
        subprocess.run(
            ["docker", "volume", "rm", "-f", *names.values()], capture_output=True, timeout=120
        )


def _wait_for(url: str, container: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        state = _docker("inspect", "-f", "{{.State.Running}}", container).stdout.strip()
        assert state == "true", f"{container} exited: {_docker('logs', container).stdout[-3000:]}"
        time.sleep(1)
    logs = subprocess.run(["docker", "logs", container], capture_output=True, text=True).stdout
    raise AssertionError(f"{url} did not answer within {timeout} s: {logs[-3000:]}")


def test_train_promote_and_serve_inside_the_image(volumes, tmp_path):
    whoami = _docker("run", "--rm", "--entrypoint", "id", IMAGE, "-un").stdout.strip()
    assert whoami == "osteo"  # the runtime user, not root: every write below goes through it
    _docker(
        "run",
        "--rm",
        *volumes,
        IMAGE,
        "synth",
        "data/incoming",
        "--per-class",
        "12",
        "--size",
        "64",
        "--seed",
        "3",
    )

    overrides = [option for pair in TINY for option in ("--set", pair)]
    run = _docker(
        "run",
        "--rm",
        *volumes,
        *STORE,
        IMAGE,
        "run",
        "data/incoming",
        "--config",
        "configs/demo.yaml",
        *overrides,
        timeout=900,
    )
    said = run.stdout + run.stderr  # the console and Prefect's log, wherever each goes
    assert "version 1 promoted to production" in said, said[-3000:]
    assert re.search(r"run ([0-9a-f]{32})", said), said[-3000:]

    server = f"osteo-test-serve-{uuid.uuid4().hex[:8]}"
    _docker(
        "run",
        "-d",
        "--name",
        server,
        "-p",
        "127.0.0.1::5055",
        *volumes,
        *STORE,
        IMAGE,
        "serve",
        "--host",
        "0.0.0.0",
        "--port",
        "5055",
        "--poll",
        "30",
    )
    try:
        port = _docker("port", server, "5055/tcp").stdout.splitlines()[0].rsplit(":", 1)[1]
        url = f"http://127.0.0.1:{port}"
        _wait_for(f"{url}/ping", server, timeout=300)

        write_synthetic_dataset(tmp_path / "host", ["normal", "osteoporosis"], 1, 64, 11)
        image = base64.b64encode(
            next((tmp_path / "host" / "normal").iterdir()).read_bytes()
        ).decode()
        reply = requests.post(
            f"{url}/invocations",
            json={"dataframe_split": {"columns": ["image"], "data": [[image]]}},
            timeout=60,
        )
        assert reply.status_code == 200, reply.text[:500]
        row = reply.json()["predictions"][0]
        assert row["label"] in {"normal", "osteoporosis"} and row["model_version"] == "osteo-knee/1"
        assert abs(row["p_normal"] + row["p_osteoporosis"] - 1) < 1e-4

        garbage = requests.post(
            f"{url}/invocations",
            json={"dataframe_split": {"columns": ["image"], "data": [["%%%"]]}},
            timeout=60,
        )
        assert 400 <= garbage.status_code < 500 and garbage.json()["message"], garbage.text[:500]
        not_json = requests.post(
            f"{url}/invocations",
            data="garbage",
            headers={"Content-Type": "application/json"},
            timeout=60,
        )
        assert 400 <= not_json.status_code < 500, not_json.text[:500]
    finally:
        subprocess.run(["docker", "rm", "-f", server], capture_output=True, timeout=120)
