"""MLflow side effects: where to track, run bookkeeping, environment and dataset identity."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import keras
import mlflow
import requests
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from osteo_pipeline.config import Settings

PACKAGES = ("tensorflow", "keras", "mlflow", "optuna", "optuna-integration", "great-expectations", "numpy", "pillow", "scikit-learn", "osteo-pipeline")
#: Never logged as params or tags, whatever a caller passes (credentials stay in the environment).
_SECRET_HINTS = ("SECRET", "PASSWORD", "TOKEN", "ACCESS_KEY", "CREDENTIAL")


def tracking_uri(settings: Settings) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or settings.tracking.uri


def _artifact_location(settings: Settings, uri: str) -> str | None:
    root = settings.tracking.artifact_root
    if "://" in root:
        return root
    if uri.startswith(("http://", "https://", "databricks")):
        return None  # the tracking server decides (e.g. proxied to S3)
    return Path(root).expanduser().resolve().as_uri()


class TrackingUnavailableError(RuntimeError):
    """The tracking server did not answer within the configured retries."""


def _bound_http_retries(settings: Settings) -> None:
    """MLflow's own defaults retry a dead server for minutes; bound them. Config decides: this
    sets MLFLOW_HTTP_REQUEST_* for the process."""
    t = settings.tracking
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = str(t.http_retries)
    os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"] = str(t.http_backoff_s)
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(int(t.http_timeout_s))


def _unreachable(exc: BaseException) -> bool:
    """A connection that failed or timed out (after the retries), not an answer from the server."""
    if isinstance(exc, requests.ConnectionError | requests.Timeout):
        return True
    text = str(exc)
    return any(hint in text for hint in ("Max retries exceeded", "Connection refused", "ConnectionError", "timed out"))


def configure(settings: Settings) -> str:
    """Point MLflow at the configured store and experiment; returns the experiment id. Called
    before any work, so a dead tracking server fails the run before anything is trained."""
    uri = tracking_uri(settings)
    mlflow.set_tracking_uri(uri)
    _bound_http_retries(settings)
    try:
        experiment = mlflow.get_experiment_by_name(settings.tracking.experiment)
    except (MlflowException, requests.RequestException) as exc:
        if not uri.startswith(("http://", "https://")) or not _unreachable(exc):
            raise
        retries = os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"]
        raise TrackingUnavailableError(
            f"MLflow tracking server {uri} unreachable after {retries} retries with backoff "
            f"({type(exc).__name__}: {str(exc)[:300]}). Nothing was logged or registered; start the "
            "server or point tracking.uri / MLFLOW_TRACKING_URI elsewhere."
        ) from exc
    if experiment is None:
        experiment_id = mlflow.create_experiment(
            settings.tracking.experiment, artifact_location=_artifact_location(settings, uri)
        )
    else:
        experiment_id = experiment.experiment_id
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


def _git_commit() -> str:
    try:
        root = Path(__file__).resolve().parents[2]
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "-uno"], capture_output=True, text=True, timeout=5)
        return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "") if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def environment() -> dict[str, str]:
    """Versions and machine facts that decide whether a result can be reproduced."""
    import tensorflow as tf

    facts = {"git_commit": _git_commit(), "python": platform.python_version(), "platform": platform.platform()}
    for package in PACKAGES:
        try:
            facts[f"version.{package}"] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    facts["gpus"] = str(len(tf.config.list_physical_devices("GPU")))
    facts["keras_backend"] = keras.backend.backend()
    return facts


def log_environment() -> None:
    facts = environment()
    mlflow.set_tags({f"env.{k}": v for k, v in facts.items()})
    mlflow.log_dict(facts, "environment.json")


def safe_params(params: dict[str, Any]) -> dict[str, Any]:
    """Drop anything that looks like a credential before it reaches the tracking store."""
    return {k: v for k, v in params.items() if not any(h in k.upper() for h in _SECRET_HINTS)}


def log_settings(settings: Settings) -> None:
    flat: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                walk(f"{prefix}.{key}" if prefix else key, item)
        else:
            flat[prefix] = json.dumps(value) if isinstance(value, list | tuple) else value

    dumped = settings.model_dump(mode="json")
    walk("", {k: dumped[k] for k in ("seed", "data", "split", "model", "train", "tune")})
    mlflow.log_params(safe_params(flat))
    mlflow.log_dict(dumped, "config.json")


def log_dataset(split: Any, context: str = "training") -> None:
    """The split manifest as an MLflow dataset input: its hash is the digest, counts are params."""
    frame = split.files
    dataset = mlflow.data.from_pandas(frame, source=str(split.data_dir), name=f"knee-xray-{split.dataset_hash[:12]}", digest=split.dataset_hash[:32])
    mlflow.log_input(dataset, context=context)
    mlflow.set_tag("dataset_hash", split.dataset_hash)
    counts = split.counts()
    mlflow.log_params({f"n_{name}": sum(c.values()) for name, c in counts.items()} | {"dataset_hash": split.dataset_hash})
    mlflow.log_dict(split.to_dict(), "split_manifest.json")


def fail_orphaned_runs(experiment_id: str, tag_filter: str) -> list[str]:
    """Mark runs left RUNNING by a killed process as FAILED; returns their ids."""
    client = MlflowClient()
    runs = client.search_runs([experiment_id], filter_string=f"{tag_filter} and attributes.status = 'RUNNING'")
    for run in runs:
        client.set_tag(run.info.run_id, "osteo.orphaned", "true: its process stopped before the run ended")
        client.set_terminated(run.info.run_id, status="FAILED")
    return [r.info.run_id for r in runs]


def find_run(experiment_id: str, filter_string: str) -> str | None:
    runs = MlflowClient().search_runs([experiment_id], filter_string=filter_string, order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0].info.run_id if runs else None


class EpochLogger(keras.callbacks.Callback):
    """Per-epoch Keras logs (loss, accuracy, val_*) to the active MLflow run, step = epoch."""

    def __init__(self, prefix: str = "") -> None:
        super().__init__()
        self.prefix = prefix

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        if logs:
            mlflow.log_metrics({f"{self.prefix}{k}": float(v) for k, v in logs.items() if k != "learning_rate"}, step=epoch)
