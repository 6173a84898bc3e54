"""The scoring flow: ``osteo score`` as a Prefect flow, run on demand or by the
``scheduled-scoring`` deployment over an incoming folder. Resuming is the step's own (parts
already scored by this model version are skipped), so a re-run after a failure or on a folder
that has grown scores only what is new.

The worklist becomes a Prefect artifact of keyed hashes only (HMAC of each path under
``$OSTEO_PATIENT_KEY``; counts alone without a key): the clinic reads names in OUT/worklist.html,
never in Prefect."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NONE as NO_CACHE

from osteo_pipeline.config import Settings, cli_overrides, load_settings
from osteo_pipeline.core.clinical import pseudonym
from osteo_pipeline.errors import OsteoError
from osteo_pipeline.io.clinical import patient_key
from osteo_pipeline.steps.score import ScoreResult, score_archive

LISTED = 100  # worklist rows in the Prefect artifact


@task(name="score", cache_policy=NO_CACHE, persist_result=False)  # the worklist names patients
def score_task(source: str, out_dir: str, settings: Settings) -> ScoreResult:
    result = score_archive(Path(source), Path(out_dir), settings, settings.scoring.model_uri)
    get_run_logger().info(
        "%d files: %d scored, %d already scored, %d errors",
        result.files,
        result.scored,
        result.skipped,
        result.errors,
    )
    return result


def _worklist_artifacts(result: ScoreResult, settings: Settings) -> None:
    worklist = result.worklist
    if worklist is None:
        return
    counts = ", ".join(f"{n} {band}" for band, n in worklist.band_counts.items())
    counts = counts or f"{len(worklist.table)} images, not banded"
    thresholds = worklist.thresholds
    cuts = (
        f"{thresholds.describe()} (chosen on the {thresholds.chosen_on})"
        if thresholds
        else worklist.note
    )
    create_markdown_artifact(
        f"**Screening worklist** of {result.model.name} {result.model.version}: {counts}. "
        f"{cuts}. A screening aid, not a diagnosis.",
        key="worklist-summary",
        description="osteo score",
    )
    try:
        key = patient_key(settings.clinical)
    except OsteoError:
        get_run_logger().info("no patient key: the worklist artifact holds counts only")
        return
    rows: list[dict[str, Any]] = [
        {"rank": int(r.rank), "id": pseudonym(key, r.path), "band": r.band, "risk": float(r.risk)}
        for r in worklist.table.head(LISTED).itertuples()
    ]
    create_table_artifact(rows, key="worklist", description="keyed hashes of paths, by risk")


@flow(name="score")
def score_flow(
    source: str,
    out_dir: str,
    config: str | None = None,
    overrides: list[str] | None = None,
) -> dict[str, Any]:
    """Score ``source`` into ``out_dir`` with the configured model (default: production)."""
    settings = load_settings(config, overrides=cli_overrides(overrides or []))
    result = score_task(source, out_dir, settings)
    _worklist_artifacts(result, settings)
    return {
        "files": result.files,
        "scored": result.scored,
        "skipped": result.skipped,
        "errors": result.errors,
        "model_version": result.model.version,
        "run_id": result.run_id,
    }
