"""The screening worklist as the clinic reads it: ``worklist.csv`` (ranked rows) and
``worklist.html`` (the same, with the thresholds, how they did on the test split, and what the
list is not). Both stay in the output folder: they may name patients."""

from __future__ import annotations

import html
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from osteo_pipeline.core.worklist import BAND_ADVICE, Thresholds, risk_text
from osteo_pipeline.io.reports import write_text_atomic

if TYPE_CHECKING:
    from osteo_pipeline.steps.score.scorer import ModelRef

DISCLAIMER = (
    "A screening aid, not a diagnosis. The risk is a model's estimate from a knee radiograph; "
    "only a bone density exam (DXA) measures bone density. Every patient's care stays with "
    "their clinician."
)
CSS = (
    "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
    "td,th{border:1px solid #bbb;padding:3px 8px}.warn{background:#fff3cd;padding:1em}"
)


def _interval(value: dict[str, float]) -> str:
    return f"{value['value']:.2f} [{value['low']:.2f}, {value['high']:.2f}]"


def _thresholds_html(thresholds: Thresholds, performance: dict[str, Any]) -> str:
    rows = []
    for cut, label in (("rule_out", "rule-out"), ("rule_in", "rule-in")):
        rates = performance.get(cut, {})
        rows.append(
            f"<tr><td>{label}</td><td>{risk_text(getattr(thresholds, cut))}</td>"
            f"<td>{_interval(rates['sensitivity']) if 'sensitivity' in rates else ''}</td>"
            f"<td>{_interval(rates['specificity']) if 'specificity' in rates else ''}</td></tr>"
        )
    advice = "".join(
        f"<li><b>{html.escape(b)}</b>: {html.escape(a)}</li>" for b, a in BAND_ADVICE.items()
    )
    return (
        f"<p>Thresholds chosen on the model's {html.escape(thresholds.chosen_on)} for a "
        f"sensitivity of at least {thresholds.target_sensitivity:.2f} (rule-out) and a specificity "
        f"of at least {thresholds.target_specificity:.2f} (rule-in): "
        f"{html.escape(thresholds.describe())}. On its test split, with 95% "
        "bootstrap intervals:</p><table><tr><th>cut</th><th>risk</th><th>sensitivity</th>"
        f"<th>specificity</th></tr>{''.join(rows)}</table><ul>{advice}</ul>"
    )


def write_worklist(
    table: pd.DataFrame,
    out_dir: Path,
    model: ModelRef,
    thresholds: Thresholds | None,
    performance: dict[str, Any],
    note: str,
) -> tuple[Path, Path]:
    """``worklist.csv`` and ``worklist.html`` in ``out_dir``."""
    csv = write_text_atomic(out_dir / "worklist.csv", table.to_csv(index=False))
    version = f"{model.name} version {model.version}" if model.version else model.name
    body = (
        _thresholds_html(thresholds, performance)
        if thresholds is not None
        else f"<p>{html.escape(note)}</p>"
    )
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>Screening worklist</title>"
        f"<style>{CSS}</style></head><body><h1>Screening worklist</h1>"
        f"<p class='warn'>{html.escape(DISCLAIMER)}</p>"
        f"<p>{len(table)} images ranked by risk, scored by {html.escape(version)}.</p>{body}"
        f"{table.to_html(index=False, escape=True, na_rep='')}</body></html>"
    )
    return csv, write_text_atomic(out_dir / "worklist.html", page)
