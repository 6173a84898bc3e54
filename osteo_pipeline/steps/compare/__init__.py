"""``osteo compare``: the seed paper's comparison run on the user's data under one protocol.

Every system sees the same repeated stratified group folds (duplicate groups within one part,
label conflicts excluded). In each fold a system trains on the training part, uses the val part
for early stopping, temperature scaling and the decision threshold, and is scored once on the
test part. Results are the mean over folds with a corrected resampled t interval, logged to
MLflow as one parent run, a nested run per system and, under it, one per fold.

Where things live: the systems' names and descriptions, and the ``System`` protocol, in
``core.compare_systems`` (the registry); the built-in systems in ``systems``; the pipeline's own
tuned recipe in ``recipe``; one system's folds and MLflow runs in ``runs``; pretrained systems'
shared activation cache in ``cache``; the images in ``data``; the tables in
``core.compare_report``."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import mlflow

from osteo_pipeline.config import Settings
from osteo_pipeline.core import plots
from osteo_pipeline.core.compare_report import markdown_report
from osteo_pipeline.core.splits import Fold, group_folds
from osteo_pipeline.io import run_artifacts, tracking
from osteo_pipeline.io.reports import write_json
from osteo_pipeline.steps.compare.data import Data, ensure_pixels, load_data
from osteo_pipeline.steps.compare.runs import run_system
from osteo_pipeline.steps.compare.systems import Setup, plan
from osteo_pipeline.training.runtime import configure_runtime

__all__ = ["CompareResult", "compare"]


@dataclass
class CompareResult:
    rows: list[dict[str, Any]]
    folds: list[dict[str, Any]]
    markdown: str
    parent_run_id: str
    files: dict[str, Path]
    seconds: float


def compare(
    data_dir: Path, settings: Settings, command: str = "osteo compare", out_dir: Path | None = None
) -> CompareResult:
    """Run every configured system at every configured size on identical folds."""
    started = time.perf_counter()
    # The runtime, the tracking store, and the folder's usable images (conflicts excluded).
    runtime = configure_runtime(settings)
    tracking.configure(settings)
    data = load_data(data_dir, settings)
    # One set of folds for every system.
    c = settings.compare
    groups = data.frame["group"].to_numpy()
    folds = group_folds(data.labels, groups, c.folds, c.repeats, c.val_fraction, settings.seed)
    with mlflow.start_run(
        run_name=f"compare-{data.identity[:8]}", tags={"osteo.kind": "compare"}
    ) as parent:
        # The parent run: settings, environment, the images and their folds.
        _log_parent(data, folds, settings)
        # The systems, as the registry's classes plan them (one per input size), before any runs:
        # a missing study for a tuned recipe stops the comparison here.
        setup = Setup(data, settings, runtime["xla"])
        systems = [system for name in c.systems for system in plan(name, setup)]
        # Each system on every fold, a nested run per system and per fold.
        positive = settings.data.classes.index(settings.data.positive)
        rows, fold_rows = [], []
        for system in systems:
            if system.size is not None:
                ensure_pixels(data, system.size, settings, system.roi)
            system_rows, per_fold = run_system(system, data, folds, positive)
            rows.extend(system_rows)
            fold_rows.extend(per_fold)
        # The report: markdown, JSON and a chart, written and logged to the parent run.
        seconds = time.perf_counter() - started
        markdown = markdown_report(rows, data, folds, settings, command, seconds)
        payload = {
            "rows": rows,
            "folds": fold_rows,
            "dataset_hash": data.identity,
            "command": command,
            "seconds": seconds,
        }
        files = _write_report(out_dir or settings.output_dir / "compare", markdown, payload)
        for path in files.values():
            mlflow.log_artifact(str(path))
        return CompareResult(rows, fold_rows, markdown, parent.info.run_id, files, seconds)


def _log_parent(data: Data, folds: list[Fold], settings: Settings) -> None:
    c = settings.compare
    run_artifacts.log_settings(settings)
    run_artifacts.log_environment()
    mlflow.log_params(
        {"dataset_hash": data.identity, "n_images": len(data.frame), "cv": f"{c.folds}x{c.repeats}"}
    )
    tracking.log_json(
        {
            "files": data.frame[["path", "label", "sha256", "group"]].to_dict(orient="records"),
            "excluded": data.excluded,
            "folds": {
                f.name: {"train": f.train.tolist(), "val": f.val.tolist(), "test": f.test.tolist()}
                for f in folds
            },
        },
        "compare_folds.json",
    )


def _write_report(target: Path, markdown: str, payload: dict[str, Any]) -> dict[str, Path]:
    """comparison.md, comparison.json and comparison.png in ``target``."""
    target.mkdir(parents=True, exist_ok=True)
    files = {
        "markdown": target / "comparison.md",
        "json": target / "comparison.json",
        "plot": target / "comparison.png",
    }
    files["markdown"].write_text(markdown)
    write_json(files["json"], payload)
    figure = plots.comparison_chart(
        payload["rows"], ["balanced_accuracy", "recall", "specificity", "roc_auc"]
    )
    figure.savefig(files["plot"], dpi=120)
    plt.close(figure)
    return files
