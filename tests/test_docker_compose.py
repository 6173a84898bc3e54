"""docker/ cannot run here (no Docker engine): check the compose file's services, ports, health
checks, volumes and environment wiring, and that no credential is baked in anywhere."""

import re
from pathlib import Path

import yaml

DOCKER = Path(__file__).resolve().parents[1] / "docker"
COMPOSE = yaml.safe_load((DOCKER / "compose.yaml").read_text())
SERVICES = COMPOSE["services"]
LONG_RUNNING = ["postgres", "minio", "mlflow", "prefect-server", "model-server"]


class _ComposeLoader(yaml.SafeLoader):
    """YAML with Compose's merge tags (``!reset``, ``!override``), read as the values they carry."""


for _tag in ("!reset", "!override"):
    _ComposeLoader.add_constructor(
        _tag,
        lambda loader, node: (
            loader.construct_sequence(node)
            if isinstance(node, yaml.SequenceNode)
            else loader.construct_mapping(node)
        ),
    )
LOCAL = yaml.load((DOCKER / "compose.local.yaml").read_text(), Loader=_ComposeLoader)["services"]


def _env(service: str) -> dict[str, str]:
    env = SERVICES[service].get("environment", {})
    return env if isinstance(env, dict) else dict(item.split("=", 1) for item in env)


def test_every_part_of_the_stack_is_there():
    assert {
        "postgres",
        "minio",
        "create-bucket",
        "mlflow",
        "prefect-server",
        "prefect-worker",
        "model-server",
    } <= set(SERVICES)


def test_published_ports_bind_loopback_only():
    published = {s: svc.get("ports", []) for s, svc in SERVICES.items()}
    assert published["mlflow"] == ["127.0.0.1:5000:5000"]
    assert published["prefect-server"] == ["127.0.0.1:4200:4200"]
    assert published["model-server"] == ["127.0.0.1:5055:5055"]
    assert all(port.startswith("127.0.0.1:") for ports in published.values() for port in ports)


def test_health_checks_and_named_volumes():
    for name in LONG_RUNNING:
        assert "healthcheck" in SERVICES[name], name
    declared = set(COMPOSE["volumes"])
    used = {
        v.split(":")[0]
        for svc in SERVICES.values()
        for v in svc.get("volumes", [])
        if not v.startswith(".")
    }
    assert used <= declared and {"postgres-data", "minio-data"} <= used


def test_wiring():
    mlflow_cmd = " ".join(SERVICES["mlflow"]["command"])
    assert (
        "--backend-store-uri postgresql://" in mlflow_cmd and "@postgres:5432/mlflow" in mlflow_cmd
    )
    assert "--artifacts-destination s3://" in mlflow_cmd
    # MLflow answers 403 to a Host header it does not allow: the other services call it mlflow:5000.
    allowed = mlflow_cmd.split("--allowed-hosts ")[1].split()[0].strip('"').split(",")
    assert "mlflow:5000" in allowed and "127.0.0.1:*" in allowed
    assert _env("mlflow")["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
    for client in ("prefect-worker", "model-server"):
        env = _env(client)
        assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
        assert env["PREFECT_API_URL"] == "http://prefect-server:4200/api"
    assert (
        SERVICES["model-server"]["command"][0] == "serve"
    )  # `osteo serve`: follows the production alias
    assert "entrypoint" not in SERVICES["model-server"]  # the image's own entrypoint, `osteo`
    assert "prefect worker start --pool osteo-process" in " ".join(
        SERVICES["prefect-worker"]["command"]
    )
    assert "prefect worker start --pool osteo-tune" in " ".join(SERVICES["tune-worker"]["command"])
    for client in ("prefect-worker", "tune-worker", "model-server"):
        assert (
            _env(client)["OSTEO_TUNE__STORAGE"].startswith("postgresql+psycopg://")
            and "@postgres:5432/optuna" in _env(client)["OSTEO_TUNE__STORAGE"]
        )
    assert "CREATE DATABASE optuna" in (DOCKER / "initdb" / "10-prefect-db.sql").read_text()
    assert SERVICES["mlflow"]["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_the_image_installs_the_lock_and_owns_every_path_it_writes_or_mounts():
    dockerfile = (DOCKER / "Dockerfile").read_text()
    # The locked dependencies install in a layer before any source is copied (a source change
    # rebuilds in seconds); the package itself then installs against the same lock.
    lock_layer = dockerfile.index("-c requirements.lock -r pyproject.toml")
    assert (
        dockerfile.index("COPY requirements.lock pyproject.toml")
        < lock_layer
        < dockerfile.index("COPY osteo_pipeline")
    )
    assert dockerfile.index("COPY osteo_pipeline") < dockerfile.index(
        "pip install -q -c requirements.lock ."
    )
    created = set(re.findall(r"mkdir -p ([^&]+)", dockerfile)[0].split())
    assert "chown -R osteo:osteo /var/lib/osteo /app" in dockerfile and "USER osteo" in dockerfile
    for name, service in SERVICES.items():
        if service.get("image") != "osteo-pipeline:latest":
            continue
        for volume in service.get("volumes", []):
            assert volume.split(":")[1] in created, (
                name,
                volume,
            )  # exists in the image, owned by osteo
    assert {
        "/var/lib/osteo/outputs",
        "/var/lib/osteo/cache",
        "/var/lib/osteo/prefect",
        "/app/data/incoming",
    } <= created


def test_no_credentials_baked_in():
    secret_names = re.compile(r"(PASSWORD|SECRET|ACCESS_KEY)", re.IGNORECASE)
    for name in SERVICES:
        for key, value in _env(name).items():
            if secret_names.search(key):
                assert str(value).startswith("${") and ":?" in str(value), (name, key, value)
    dockerfile = (DOCKER / "Dockerfile").read_text()
    assert not [
        line
        for line in dockerfile.splitlines()
        if line.startswith(("ENV", "ARG")) and secret_names.search(line)
    ]
    assert (
        "ARG BASE=python:3.11-slim" in dockerfile
    )  # GPU variant: --build-arg BASE=tensorflow/tensorflow:*-gpu
    assert (DOCKER / ".env.example").exists()


def test_the_local_override_builds_a_stand_in_for_every_pulled_image():
    """docker/compose.local.yaml (no Docker Hub): every service whose image compose.yaml pulls gets
    one built here from a local base, and its published ports stay on loopback."""
    pulled = {
        name
        for name, service in SERVICES.items()
        if service.get("image") != "osteo-pipeline:latest"
    }
    built = {
        service["image"]: service["build"]
        for service in LOCAL.values()
        if "build" in service and "image" in service
    }
    for name in pulled:
        assert LOCAL[name]["image"] in built, name
    for image, build in built.items():
        context = DOCKER / build["context"]
        dockerfile = (context / build.get("dockerfile", "Dockerfile")).read_text()
        assert re.search(r"^FROM local/", dockerfile, re.MULTILINE), image
        assert not [
            line
            for line in dockerfile.splitlines()
            if line.startswith(("ENV", "ARG")) and re.search("PASSWORD|SECRET|ACCESS_KEY", line)
        ], image
    assert LOCAL["mlflow"]["build"]["args"]["BASE"].startswith("${OSTEO_BASE:-local/")
    assert all(
        port.startswith("127.0.0.1:")
        for service in LOCAL.values()
        for port in service.get("ports", [])
    )
    assert {"env_file": ["${OSTEO_ENV_FILE:-.env}"]}.items() <= LOCAL["mlflow"].items()
