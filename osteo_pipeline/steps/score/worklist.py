"""The screening worklist of a scoring run, and what of it goes to MLflow.

The worklist ranks this model version's scored images by risk and bands them with the rule-out
and rule-in thresholds (``core.worklist``), chosen on the predictions its calibration was fitted
on (out-of-fold, else validation) and reported with their sensitivity and specificity on the
model's test split. It is written for the clinic (``worklist.csv``, ``worklist.html``) and may
name patients there; the scoring run in MLflow gets counts, bands and thresholds only."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from osteo_pipeline.config import Settings
from osteo_pipeline.core.worklist import (
    BAND_ADVICE,
    REFER,
    RULE_IN,
    RULE_OUT,
    ThresholdError,
    Thresholds,
    bands,
    choose_thresholds,
    threshold_performance,
)
from osteo_pipeline.io.run_artifacts import TrainingRun
from osteo_pipeline.io.worklist_page import write_worklist

if TYPE_CHECKING:
    from osteo_pipeline.steps.score import ScoreResult
    from osteo_pipeline.steps.score.scorer import ModelRef

log = logging.getLogger(__name__)
UNBANDED = "not banded"


@dataclass
class Worklist:
    table: pd.DataFrame  # ranked: rank, band, advice, risk, path, patient_id, label, scored_at
    csv: Path
    html: Path
    thresholds: Thresholds | None
    performance: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    note: str = ""  # why there are no thresholds

    @property
    def band_counts(self) -> dict[str, int]:
        """Images per band; none without thresholds (nothing was banded)."""
        if self.thresholds is None:
            return {}
        counts = self.table["band"].value_counts()
        return {band: int(counts.get(band, 0)) for band in (RULE_IN, REFER, RULE_OUT)}


def screening_thresholds(
    run: TrainingRun, positive_class: str, settings: Settings
) -> tuple[Thresholds, dict[str, Any]]:
    """The thresholds for the configured targets on the run's calibration predictions, and their
    sensitivity and specificity on its test split (intervals resampling patients when its split
    has them). Raises ``ThresholdError`` when the run has no such predictions."""
    found = run.calibration_predictions
    if found is None:
        raise ThresholdError(
            "its training run logged no calibration predictions (trained before osteo score "
            "existed): retrain to get rule-in and rule-out thresholds"
        )
    positive = run.classes.index(positive_class)
    proba, labels = np.asarray(found["proba"]), np.asarray(found["labels"])
    scoring = settings.scoring
    thresholds = choose_thresholds(
        proba[:, positive],
        labels == positive,
        scoring.target_sensitivity,
        scoring.target_specificity,
        str(found["source"]),
    )
    test = pd.DataFrame(run.test_predictions)
    split_test = run.split.subset("test")
    groups = None
    if "patient" in split_test:
        groups = test["path"].map(dict(zip(split_test["path"], split_test["patient"]))).to_numpy()
    performance = threshold_performance(
        test[f"p_{positive_class}"].to_numpy(),
        (test["true"] == positive_class).to_numpy(),
        thresholds,
        groups,
        settings.registry.bootstrap_resamples,
        settings.seed,
    )
    return thresholds, performance


def make_worklist(
    rows: pd.DataFrame,
    ref: ModelRef,
    run: TrainingRun,
    positive_class: str,
    paths: set[str],
    out_dir: Path,
    settings: Settings,
) -> Worklist:
    """The archive's images (``paths``) as this model version last scored them, ranked by risk
    (``positive_class``'s calibrated probability) and banded; an image whose latest row is an
    error is left out; thresholds from the model's training ``run``. Written as
    ``OUT/worklist.csv`` and ``OUT/worklist.html``."""
    columns = ["path", "patient_id", "label", "risk", "scored_at", "error"]
    mine = pd.DataFrame(columns=columns)
    if not rows.empty:
        mine = rows[
            (rows["model_name"] == ref.name)
            & (rows["model_version"] == ref.version)
            & rows["path"].isin(paths)
        ]
        mine = mine.sort_values("scored_at", kind="stable").drop_duplicates("path", keep="last")
    mine = mine[mine["error"].isna()]
    table = mine.sort_values(["risk", "path"], ascending=[False, True], kind="stable")
    thresholds, performance, note = None, {}, ""
    try:
        thresholds, performance = screening_thresholds(run, positive_class, settings)
    except ThresholdError as exc:
        note = f"no thresholds: {exc}"
        log.warning("%s", note)
    banded = bands(table["risk"], thresholds) if thresholds else np.full(len(table), UNBANDED)
    worklist_table = pd.DataFrame(
        {
            "rank": np.arange(1, len(table) + 1),
            "band": banded,
            "advice": [BAND_ADVICE.get(b, "") for b in banded],
            "risk": table["risk"].astype("float64").to_numpy(),
            "path": table["path"].to_numpy(),
            "patient_id": table["patient_id"].to_numpy(),
            "label": table["label"].to_numpy(),
            "scored_at": table["scored_at"].astype(str).to_numpy(),
        }
    )
    csv, html = write_worklist(worklist_table, out_dir, ref, thresholds, performance, note)
    return Worklist(worklist_table, csv, html, thresholds, performance, note)


def log_scoring_run(result: ScoreResult, settings: Settings) -> str:
    """An MLflow run in ``<experiment><experiment_suffix>``: the model scored with, the engine,
    counts, bands, thresholds and their test-split sensitivity and specificity. No path, patient
    or image."""
    import mlflow

    name = settings.tracking.experiment + settings.scoring.experiment_suffix
    found = mlflow.get_experiment_by_name(name)
    experiment = found.experiment_id if found else mlflow.create_experiment(name)
    worklist = result.worklist
    with mlflow.start_run(experiment_id=experiment, tags={"osteo.kind": "score"}) as run:
        mlflow.log_params(
            {
                "model_name": result.model.name,
                "model_version": result.model.version,
                "engine": result.engine,
                "target_sensitivity": settings.scoring.target_sensitivity,
                "target_specificity": settings.scoring.target_specificity,
            }
        )
        metrics = {
            "files": result.files,
            "scored": result.scored,
            "skipped": result.skipped,
            "errors": result.errors,
        }
        if worklist is not None:
            metrics |= {f"band_{b.replace(' ', '_')}": n for b, n in worklist.band_counts.items()}
            if worklist.thresholds is not None:
                mlflow.log_param("thresholds_chosen_on", worklist.thresholds.chosen_on)
                mlflow.log_param("thresholds_one_cut", worklist.thresholds.one_cut)
                metrics |= {
                    "threshold_rule_out": worklist.thresholds.rule_out,
                    "threshold_rule_in": worklist.thresholds.rule_in,
                }
                for cut, rates in worklist.performance.items():
                    for name, value in rates.items():
                        for part, number in value.items():
                            suffix = "" if part == "value" else f"_{part}"
                            metrics[f"test_{cut}_{name}{suffix}"] = number
        mlflow.log_metrics({k: float(v) for k, v in metrics.items() if np.isfinite(v)})
    return run.info.run_id
