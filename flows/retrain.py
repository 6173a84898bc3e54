"""Prefect flows: thin tasks over ``osteo_pipeline.steps``. Retries only where failures are
transient (the tracking server, the registry, S3); none for deterministic steps (validation,
splitting, training), where a retry would only repeat the same failure."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NONE as NO_CACHE

from osteo_pipeline.config import Settings, cli_overrides, load_settings
from osteo_pipeline.core.summaries import MetricsTable, ValidationSummary
from osteo_pipeline.errors import CheckFailedError, OsteoError
from osteo_pipeline.io.gx_checks import MAX_LISTED
from osteo_pipeline.io.reports import write_validation_report
from osteo_pipeline.steps.split import SplitManifest, split_dataset
from osteo_pipeline.steps.validate import ValidationResult, validate_folder

TRANSIENT = {"retries": 3, "retry_delay_seconds": [5, 20, 60]}


class _NoUserErrorTracebacks(logging.Filter):
    """Prefect logs a failed task's exception with its traceback. An error the user caused (an
    ``OsteoError``: the data, the settings, the weights) is one line, said once by whoever ran the
    flow (the CLI, the flow run's state); the engine's traceback in front of it says nothing."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], OsteoError))


for _engine_log in ("prefect.task_runs", "prefect.flow_runs"):
    logging.getLogger(_engine_log).addFilter(_NoUserErrorTracebacks())


class ValidationFailed(CheckFailedError):
    """The incoming batch failed validation: nothing downstream runs on it."""


def _settings(config: str | None, overrides: list[str] | None) -> Settings:
    return load_settings(config, overrides=cli_overrides(overrides or []))


@task(name="pull-from-s3", cache_policy=NO_CACHE, **TRANSIENT)
def pull_task(uri: str, settings: Settings) -> str:
    """Stage an ``s3://`` batch locally (checksums verified) in a fresh folder per run; staged
    folders are kept, since the registry gate re-reads the test images from there."""
    import tempfile

    from osteo_pipeline.io.storage import pull_batch

    root = settings.output_dir.resolve() / "incoming"
    root.mkdir(parents=True, exist_ok=True)
    staged = pull_batch(uri, Path(tempfile.mkdtemp(prefix="batch-", dir=root)))
    get_run_logger().info(
        "pulled %d files (%d bytes) from %s to %s",
        staged.files,
        staged.bytes,
        uri,
        staged.local_dir,
    )
    return str(staged.local_dir)


@task(name="validate", cache_policy=NO_CACHE)
def validate_task(data_dir: str, settings: Settings) -> ValidationResult:
    report_dir = settings.output_dir / "validation"
    result = validate_folder(data_dir, settings, docs_dir=report_dir)
    paths = write_validation_report(result, report_dir, MAX_LISTED, settings.validation.max_pixels)
    create_markdown_artifact(
        ValidationSummary.from_dict(result.summary).to_markdown(paths["html"], listed=MAX_LISTED),
        key="validation-summary",
        description="Great Expectations validation",
    )
    create_link_artifact(
        paths["html"].resolve().as_uri(),
        link_text="validation report (HTML)",
        key="validation-report",
    )
    if not result.passed:
        raise ValidationFailed(f"{result.failure()}; report: {paths['html']}")
    return result


@task(name="split", cache_policy=NO_CACHE)
def split_task(result: ValidationResult, settings: Settings) -> SplitManifest:
    manifest = split_dataset(result, settings)
    manifest.save(settings.output_dir / "split.json")
    return manifest


@task(name="tune", cache_policy=NO_CACHE)
def tune_task(
    split: SplitManifest,
    settings: Settings,
    data_location: str,
    config: str | None,
    overrides: list[str],
) -> dict[str, Any]:
    """New trials in the study of this data, on ``tune.workers`` workers: local processes or, with
    ``tune.worker_deployment``, flow runs of that deployment on its work pool (other machines);
    this flow run is always one of the workers. Returns the best trial's parameters and tags."""
    from osteo_pipeline.steps.tune import tune

    deployment = settings.tune.worker_deployment
    remote = _worker_flow_runs(deployment, data_location, config, overrides) if deployment else None
    result = tune(split, settings, start_remote_workers=remote)
    create_table_artifact(
        [
            {
                "trial": result.best_trial,
                "objective": round(result.best_value, 4),
                "new_trials": result.new_trials,
                **result.best_params,
                **result.counts,
            }
        ],
        key="best-trial",
        description=f"Optuna study {result.study_name}",
    )
    best = result.best()
    return {"params": best.params, "tags": best.tags(), "cv": best.cv}


def _worker_flow_runs(
    deployment: str, data_location: str, config: str | None, overrides: list[str]
):  # noqa: ANN202
    """Start ``count`` runs of the tune-worker deployment on the study (not awaited: the study's
    budget, not the flow runs, says when the search is done)."""
    from prefect.deployments import run_deployment

    def start(study: str, count: int) -> None:
        for index in range(1, count + 1):
            run = run_deployment(
                deployment,
                parameters={
                    "study": study,
                    "data_dir": data_location,
                    "config": config,
                    "overrides": overrides,
                    "worker": index,
                },
                timeout=0,
            )
            get_run_logger().info(
                "tune worker %d: flow run %s of %s on study %s", index, run.name, deployment, study
            )

    return start


@task(name="refit-and-evaluate", cache_policy=NO_CACHE)
def refit_task(split: SplitManifest, best: dict[str, Any], settings: Settings) -> dict[str, Any]:
    from osteo_pipeline.io.tracking import tracking_uri
    from osteo_pipeline.steps.refit import refit_and_evaluate

    result = refit_and_evaluate(
        split, best["params"], settings, source="tuned", tags=best["tags"], cv=best.get("cv")
    )
    create_markdown_artifact(
        f"## Test metrics\n\n{MetricsTable.from_dict(result.metrics).to_markdown()}\n\n"
        f"Backbone weights: `{result.weights_used}`",
        key="test-metrics",
    )
    uri = tracking_uri(settings)
    if uri.startswith("http"):
        create_link_artifact(
            f"{uri.rstrip('/')}/#/experiments/0/runs/{result.run_id}",
            link_text="MLflow run",
            key="mlflow-run",
        )
    return {"run_id": result.run_id, "model_uri": result.model_uri, "weights": result.weights_used}


@task(name="register", cache_policy=NO_CACHE, **TRANSIENT)
def register_task(run_id: str, settings: Settings) -> str:
    from osteo_pipeline.steps.registry import register_run

    return register_run(run_id, settings)


@task(name="gate-and-promote", cache_policy=NO_CACHE, **TRANSIENT)
def promote_task(version: str, settings: Settings) -> dict[str, Any]:
    from osteo_pipeline.steps.registry import promote

    decision = promote(settings, version=version)
    create_markdown_artifact(
        f"## Promotion of version {version}\n\n{decision.summary}", key="promotion-decision"
    )
    return decision.as_dict()


@flow(name="validate")
def validate_flow(
    data_dir: str, config: str | None = None, overrides: list[str] | None = None
) -> dict[str, Any]:
    """Check an incoming batch on its own; fails (with the report attached) if it is bad."""
    return validate_task(data_dir, _settings(config, overrides)).summary


def _run_settings(settings: Settings) -> Settings:
    """Settings whose ``output_dir`` is this flow run's own folder (``OUTPUT_DIR/runs/<time>-<run
    id>``): concurrent or retried runs never write to one another's reports or split manifest."""
    from datetime import UTC, datetime
    from uuid import uuid4

    from prefect.runtime import flow_run

    run_id = str(flow_run.id or uuid4().hex)
    folder = settings.output_dir / "runs" / f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{run_id[:8]}"
    return settings.model_copy(update={"output_dir": folder})


@flow(name="retrain")
def retrain_flow(
    data_dir: str, config: str | None = None, overrides: list[str] | None = None
) -> dict[str, Any]:
    """[pull from S3 ->] validate -> split -> tune -> refit best -> evaluate -> register -> gate
    and promote."""
    logger = get_run_logger()
    settings = _run_settings(_settings(config, overrides))
    logger.info("this run writes under %s", settings.output_dir)
    location = data_dir
    if data_dir.startswith("s3://"):
        data_dir = pull_task(data_dir, settings)
    validation = validate_task(data_dir, settings)
    split = split_task(validation, settings)
    best = tune_task(split, settings, location, config, list(overrides or []))
    trained = refit_task(split, best, settings)
    version = register_task(trained["run_id"], settings)
    decision = promote_task(version, settings)
    logger.info(
        "version %s: %s",
        version,
        "promoted to production" if decision["passed"] else "not promoted",
    )
    return {
        "dataset_hash": split.dataset_hash,
        "version": version,
        "promoted": decision["passed"],
        "reasons": decision["reasons"],
        "run_dir": str(settings.output_dir),
        **trained,
    }


@flow(name="tune-worker")
def tune_worker_flow(
    study: str,
    data_dir: str,
    config: str | None = None,
    overrides: list[str] | None = None,
    worker: int = 1,
) -> int:
    """Join the study ``study`` (started by a retrain run) on this worker's machine and run its
    trials until the study's budget is reached; returns the trials run here."""
    from osteo_pipeline.steps.tune import adopt_study_settings, joined_study, run_worker

    local = _run_settings(_settings(config, overrides))
    settings = adopt_study_settings(local, joined_study(study, local))
    if data_dir.startswith("s3://"):
        data_dir = pull_task(data_dir, settings)
    split = split_task(validate_task(data_dir, settings), settings)
    ran = run_worker(study, split, settings, worker=worker)
    get_run_logger().info("worker %d ran %d trials of %s", worker, ran, study)
    return ran
