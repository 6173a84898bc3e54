"""``osteo compare``'s tables: the terminal rows and the markdown report (pure formatting)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import numpy as np

from osteo_pipeline.config import Settings
from osteo_pipeline.core.compare_systems import SYSTEMS, check_system_names, describe
from osteo_pipeline.core.metrics import METRIC_NAMES
from osteo_pipeline.core.splits import Fold

REPORTED = (*METRIC_NAMES, "ece")
HEADERS = {
    "accuracy": "accuracy",
    "balanced_accuracy": "balanced acc.",
    "precision": "precision",
    "recall": "sensitivity",
    "specificity": "specificity",
    "f1": "F1",
    "roc_auc": "ROC AUC",
    "ece": "ECE",
}


def _cell(summary: dict[str, float]) -> str:
    if not np.isfinite(summary["mean"]):
        return "-"
    if not np.isfinite(summary["low"]):
        return f"{summary['mean']:.2f}"
    return f"{summary['mean']:.2f} [{summary['low']:.2f}, {summary['high']:.2f}]"


def table_rows(rows: list[dict[str, Any]]) -> list[list[str]]:
    """Cells for the terminal and markdown tables: system, each metric as mean [CI], s/fold."""
    cells = []
    for row in rows:
        if not row["available"]:
            cells.append([row["system"], row["reason"], *[""] * len(REPORTED)])
        else:
            cells.append(
                [
                    row["system"],
                    *(_cell(row[m]) for m in REPORTED),
                    f"{row['seconds_per_fold']:.0f}",
                ]
            )
    return cells


def trained_on(rows: list[dict[str, Any]], names: list[str]) -> str:
    """What the named systems trained on (cached views or fresh images), once when they agree."""
    seen = {
        row["name"]: row["seen"]
        for row in rows
        if row["available"] and row["name"] in names and row.get("seen")
    }
    if not seen:
        return ""
    if len(set(seen.values())) == 1:
        return f" on {next(iter(seen.values()))}"
    return " (" + "; ".join(f"{name} on {text}" for name, text in seen.items()) + ")"


def markdown_report(
    rows: list[dict[str, Any]],
    data: Any,
    folds: list[Fold],
    settings: Settings,
    command: str,
    seconds: float,
) -> str:
    """The report: command, date, data (``steps.compare.Data``), protocol, the table, notes."""
    c = settings.compare
    header = ["system", *(HEADERS[m] for m in REPORTED), "s / fold"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row, cells in zip(rows, table_rows(rows)):
        if row["available"]:
            lines.append("| " + " | ".join(cells) + " |")
        else:
            lines.append(f"| {row['system']} | {row['reason']} |" + " |" * (len(header) - 2))
    counts = ", ".join(
        f"{label} {n}"
        for label, n in data.frame["label"]
        .value_counts()
        .reindex(settings.data.classes)
        .fillna(0)
        .astype(int)
        .items()
    )
    averaging = (
        "of the positive class"
        if len(settings.data.classes) == 2
        else "macro-averaged over classes (specificity one-vs-rest)"
    )
    check_system_names(c.systems)
    # rows whose note is not their system's, e.g. resnet50-tl's recipe: refit and fold ensemble
    tuned = [row for row in rows if row["available"] and row["note"] != describe(row["name"]).note]
    tuned_names = {row["name"] for row in tuned}
    families = {name: SYSTEMS[name].family for name in c.systems}
    transfer = [n for n, f in families.items() if f == "transfer" and n not in tuned_names]
    scratch = [n for n, f in families.items() if f == "scratch"]
    t = settings.train
    parts = (
        [f"transfer {t.head_epochs}+{t.finetune_epochs}{trained_on(rows, transfer)}"]
        if transfer
        else []
    )
    parts += [f"scratch {c.scratch_epochs}"] if scratch else []
    patience = settings.train.early_stopping_patience
    epochs = (
        f"Epochs: {', '.join(parts)} (early stopping on val, patience {patience})." if parts else ""
    )
    if tuned:
        epochs += " A tuned recipe trains as its note says."
    epochs = epochs.strip() or "Probes only: no network is trained."
    notes = "\n".join(
        "\n".join(f"- `{row['system']}`: {row['note']}" for row in tuned if row["name"] == name)
        if name in tuned_names
        else f"- `{name}`: {system.note}"
        for name, system in SYSTEMS.items()
        if name in c.systems
    )
    nested = (
        " (a tuned recipe's refit and fold-ensemble rows instead train on the whole training part"
        " and calibrate on its inner out-of-fold predictions)"
        if any("fold ensemble" in row["system"] for row in tuned)
        else ""
    )
    notes += "".join(
        f"\n- `{row['system']}`: {row['note']}" for row in rows if not row["available"]
    )
    protocol = [
        f"`{command}` on {datetime.now(UTC):%Y-%m-%d}, {seconds / 60:.1f} min on this machine.",
        f"{len(data.frame)} images ({counts}); {len(data.excluded)} label-conflicting copies"
        f" excluded; dataset `{data.identity[:16]}`.",
        f"{c.folds}-fold stratified group CV x {c.repeats} repeat(s) = {len(folds)} folds,"
        " duplicate groups kept within one part;",
        f"each fold's training part gives {c.val_fraction:.0%} to val (early stopping,"
        f" temperature, threshold){nested}. Positive class `{settings.data.positive}`;",
        f"sensitivity, specificity and F1 {averaging}. Cells: mean over folds [95% corrected"
        " resampled t interval].",
        epochs,
    ]
    title = f"## osteo compare: {', '.join(settings.data.classes)}"
    return "\n".join([title, "", *protocol, "", *lines, "", notes, ""])
