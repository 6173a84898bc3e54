"""``osteo score``: score every image of an archive (a folder, a DICOM tree or a manifest) with a
registered model, then rank them into a screening worklist.

Rows stream to Parquet parts as each batch is scored (``io.score_store``), so memory holds one
part, a kill loses at most one part, and a re-run skips what the same model version has already
scored (same path, same content hash). The engine is this process (``local``: decoding in
threads beside the model) or Apache Spark (``steps.score.spark``); both produce rows through one
``Scorer``, so they agree row for row."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from osteo_pipeline.config import Settings
from osteo_pipeline.errors import OsteoError
from osteo_pipeline.io.archive import archive_files
from osteo_pipeline.io.score_store import ScoreStore
from osteo_pipeline.steps.score.local import Progress, Tally, score_locally
from osteo_pipeline.steps.score.scorer import ModelRef, Scorer
from osteo_pipeline.steps.score.worklist import Worklist, log_scoring_run, make_worklist

if TYPE_CHECKING:
    from osteo_pipeline.io.run_artifacts import TrainingRun

log = logging.getLogger(__name__)


class ScoringError(OsteoError):
    """A model that cannot score (none in production, not an osteo-pipeline classifier)."""


@dataclass
class ScoreResult:
    files: int  # in the archive
    scored: int  # by this run
    skipped: int  # already scored by this model version
    errors: int  # rows of this run that carry an error instead of scores
    model: ModelRef
    engine: str
    scores: Path
    worklist: Worklist | None = None
    run_id: str = ""


def resolve_model(settings: Settings, model_uri: str | None) -> ModelRef:
    """The model URI asked for (default: the registry's production alias), pinned to the version
    it names now, so every row of this run records the same one."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from osteo_pipeline.io.registry import registered_version

    uri = model_uri or f"models:/{settings.registry.model_name}@{settings.serving.alias}"
    try:
        found = registered_version(uri, MlflowClient())
    except MlflowException as exc:
        raise ScoringError(f"cannot resolve {uri}: {exc.message}") from exc
    if found is None:
        if uri.startswith("models:/"):  # models:/NAME/latest, a stage: not one version
            raise ScoringError(
                f"{uri}: name one version (models:/NAME/3) or an alias (models:/NAME@production),"
                " so every row records the version that scored it and a re-run resumes it"
            )
        return ModelRef(uri, uri, "")
    name, version = found
    return ModelRef(f"models:/{name}/{version}", name, version)


def score_archive(
    source: Path,
    out_dir: Path,
    settings: Settings,
    model_uri: str | None = None,
    progress: Progress | None = None,
) -> ScoreResult:
    """Score ``source`` into ``out_dir`` with ``model_uri`` (default: production) on the
    configured engine, then write the worklist and log the scoring run."""
    from osteo_pipeline.io import tracking

    # 1. The archive's files.
    files = archive_files(source, settings.data.extensions)
    # 2. The model: asked for, or production's version now, and what it has already scored.
    tracking.configure(settings)
    ref = resolve_model(settings, model_uri)
    store = ScoreStore(out_dir)
    done = store.done(ref.name, ref.version)
    # 3. Score the rest, one Parquet part at a time.
    scoring = settings.scoring
    training_run, positive = _training_run(ref)
    scorer = _load(ref, positive, scoring.batch_size)
    tally = Tally(store, scorer, {f.path: f.patient_id for f in files}, len(files), progress)
    if scoring.engine == "spark":
        from osteo_pipeline.steps.score.spark import score_on_spark

        score_on_spark(tally, ref, positive, files, done, scoring)
    else:
        score_locally(tally, files, done, scoring.part_size)
    # 4. Every part in one table, and the worklist ranked by risk.
    scores_path, rows = store.write_scores()
    worklist = make_worklist(
        rows, ref, training_run, positive, {f.path for f in files}, out_dir, settings
    )
    # 5. A scoring run in MLflow: counts, bands and thresholds, never a path or an image.
    result = ScoreResult(
        len(files),
        tally.scored,
        tally.skipped,
        tally.errors,
        ref,
        scoring.engine,
        scores_path,
        worklist,
    )
    result.run_id = log_scoring_run(result, settings)
    return result


def _training_run(ref: ModelRef) -> tuple[TrainingRun, str]:
    """The run that trained the model, and the class whose calibrated probability is the risk:
    the one its test evaluation was for (a model without one is refused before scoring)."""
    from mlflow.exceptions import MlflowException

    from osteo_pipeline.io.run_artifacts import TrainingRun

    try:
        run = TrainingRun.of_model(ref.uri)
        return run, run.evaluation.positive_class
    except (MlflowException, OSError, KeyError) as exc:
        raise ScoringError(
            f"{ref.uri}: not an osteo-pipeline training run's model (no test evaluation): {exc}"
        ) from exc


def _load(ref: ModelRef, positive: str, batch_size: int) -> Scorer:
    from mlflow.exceptions import MlflowException

    try:
        return Scorer.load(ref.uri, ref, positive, batch_size)
    except MlflowException as exc:
        raise ScoringError(f"cannot load {ref.uri}: {exc.message}") from exc
