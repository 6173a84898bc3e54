"""MLflow side effects: where to track, run bookkeeping, the environment's facts. What a run
holds (its artifacts and tags) is named in ``io.run_artifacts``."""

from __future__ import annotations

import math
import os
import platform
import subprocess
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow
import requests
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from osteo_pipeline.config import Settings
from osteo_pipeline.core.jsonable import dumps
from osteo_pipeline.core.redact import redact_url
from osteo_pipeline.errors import OsteoError

PACKAGES = (
    "tensorflow",
    "keras",
    "mlflow",
    "optuna",
    "optuna-integration",
    "great-expectations",
    "numpy",
    "pillow",
    "scikit-learn",
    "osteo-pipeline",
)


#: MLflow 3's UI opens an experiment on its GenAI overview unless this tag says it holds model
#: training; with it, the pipeline's experiments open on their runs.
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"

# What ``configure`` last set (MLflow copies it into the environment).
_configured_uri: str | None = None
_user_uri: str | None = None  # the user's MLFLOW_TRACKING_URI, as it was before MLflow overwrote it


def _user_tracking_uri() -> str | None:
    """The user's ``MLFLOW_TRACKING_URI``: MLflow writes every URI it is given into that
    variable, so a value equal to the one this process set is the user's earlier one (or none)."""
    from_env = os.environ.get("MLFLOW_TRACKING_URI")
    return from_env if from_env != _configured_uri else _user_uri


def tracking_uri(settings: Settings) -> str:
    """``MLFLOW_TRACKING_URI`` when the user set it, else ``tracking.uri``."""
    return _user_tracking_uri() or settings.tracking.uri


def _artifact_location(settings: Settings, uri: str) -> str | None:
    root = settings.tracking.artifact_root
    if "://" in root:
        return root
    if uri.startswith(("http://", "https://", "databricks")):
        return None  # the tracking server decides (e.g. proxied to S3)
    return Path(root).expanduser().resolve().as_uri()


class TrackingUnavailableError(OsteoError, RuntimeError):
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
    return any(
        hint in text
        for hint in ("Max retries exceeded", "Connection refused", "ConnectionError", "timed out")
    )


def configure(settings: Settings) -> str:
    """Point MLflow at the configured store and experiment (created, or an existing one tagged, as
    a model-training experiment); returns the experiment id. Called before any work, so a dead
    tracking server fails the run before anything is trained."""
    global _configured_uri, _user_uri
    _user_uri = _user_tracking_uri()
    uri = _user_uri or settings.tracking.uri
    mlflow.set_tracking_uri(uri)
    _configured_uri = uri
    _bound_http_retries(settings)
    try:
        experiment = mlflow.get_experiment_by_name(settings.tracking.experiment)
    except (MlflowException, requests.RequestException) as exc:
        if not uri.startswith(("http://", "https://")) or not _unreachable(exc):
            raise
        retries = os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"]
        raise TrackingUnavailableError(
            redact_url(
                f"MLflow tracking server {uri} unreachable after {retries} retries with backoff "
                f"({type(exc).__name__}: {str(exc)[:300]}). Nothing was logged or registered; "
                "start the server or point tracking.uri / MLFLOW_TRACKING_URI elsewhere."
            )
        ) from exc
    if experiment is None:
        experiment_id = mlflow.create_experiment(
            settings.tracking.experiment,
            artifact_location=_artifact_location(settings, uri),
            tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND},
        )
    else:
        experiment_id = experiment.experiment_id
        if experiment.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:
            MlflowClient().set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


def _git_commit() -> str:
    try:
        root = Path(__file__).resolve().parents[2]
        out = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
        )
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "-uno"],
            capture_output=True,
            text=True,
            timeout=5,
        )
        return (
            out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
            if out.returncode == 0
            else "unknown"
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def environment() -> dict[str, str]:
    """Versions and machine facts that decide whether a result can be reproduced."""
    import keras
    import tensorflow as tf

    facts = {
        "git_commit": _git_commit(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    for package in PACKAGES:
        try:
            facts[f"version.{package}"] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    facts["gpus"] = str(len(tf.config.list_physical_devices("GPU")))
    facts["keras_backend"] = keras.backend.backend()
    return facts


def log_intervals(
    estimates: dict[str, dict[str, float]], prefix: str = "", extra: dict[str, float] | None = None
) -> None:
    """Log ``{metric: {value, low, high}}`` as ``{prefix}{metric}`` with ``_ci_low`` and
    ``_ci_high`` (plus ``extra`` metrics), leaving out what is not finite (an AUC of one class, a
    CI of one fold): a missing metric, never a NaN that charts and comparisons would carry."""
    flat = {
        f"{prefix}{name}{suffix}": values[key]
        for name, values in estimates.items()
        for key, suffix in (("value", ""), ("low", "_ci_low"), ("high", "_ci_high"))
    }
    flat |= {f"{prefix}{name}": value for name, value in (extra or {}).items()}
    mlflow.log_metrics(
        {
            name: float(value)
            for name, value in flat.items()
            if value is not None and math.isfinite(value)
        }
    )


def log_json(payload: Any, artifact_file: str, run_id: str | None = None) -> None:
    """A JSON artifact on the active run (or ``run_id``), written by the project's one serializer
    (``mlflow.log_dict`` writes NaN, which is not JSON, and rejects NumPy scalars)."""
    if run_id is None:
        mlflow.log_text(dumps(payload), artifact_file)
    else:
        MlflowClient().log_text(run_id, dumps(payload), artifact_file)


def fail_run(run_id: str, reason: str) -> bool:
    """Close a run its process left RUNNING as FAILED, saying why; ``False`` when it had ended."""
    client = MlflowClient()
    if client.get_run(run_id).info.status != "RUNNING":
        return False
    client.set_tag(run_id, "osteo.orphaned", reason)
    client.set_terminated(run_id, status="FAILED")
    return True


def log_metrics_to(run_id: str, metrics: dict[str, float]) -> None:
    """Metrics on a run that need not be active here (a study's parent, from any worker)."""
    client = MlflowClient()
    stamp = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, float(v), stamp, 0) for k, v in metrics.items()])


def set_tags_on(run_id: str, tags: dict[str, str]) -> None:
    client = MlflowClient()
    for key, value in tags.items():
        client.set_tag(run_id, key, redact_url(str(value)))
