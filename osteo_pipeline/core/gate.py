"""The promotion gate: absolute floors, then a paired comparison with production on the same
held-out cases (bootstrap CI of the difference), never two numbers from different data.

Three outcomes. **passed**: every floor met and, against production, the CI of candidate minus
production lies above ``-margin`` (with margin 0: the candidate is shown better). **rejected**: a
floor missed, or the CI lies wholly below ``-margin`` (shown worse, whatever the number of
cases). **inconclusive**: floors met, but the CI spans the line or there are fewer paired cases
than ``min_paired_cases``; production is kept, and the reason says so. Equal models are
inconclusive: nothing shows the candidate is better."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from osteo_pipeline.core.metrics import bootstrap_ci, classification_metrics

PASSED, REJECTED, INCONCLUSIVE = "passed", "rejected", "inconclusive"


@dataclass
class GateDecision:
    passed: bool
    reasons: list[str]
    candidate: dict[str, float]
    production: dict[str, float] | None = None
    difference: dict[str, float] | None = None  # value, low, high of candidate - production
    n_cases: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    verdict: str = ""  # passed, rejected or inconclusive

    def __post_init__(self) -> None:
        self.verdict = self.verdict or (PASSED if self.passed else REJECTED)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def summary(self) -> str:
        return f"{self.verdict.upper()}: " + "; ".join(self.reasons)


def decide(
    y_true: np.ndarray,
    candidate_proba: np.ndarray,
    production_proba: np.ndarray | None,
    positive: int,
    floors: dict[str, float],
    compare_metric: str,
    margin: float = 0.0,
    min_paired_cases: int = 1,
    n_resamples: int = 1000,
    seed: int = 0,
    candidate_pred: np.ndarray | None = None,
    production_pred: np.ndarray | None = None,
    floor_values: dict[str, float] | None = None,
    floor_source: str = "test",
) -> GateDecision:
    """The gate's decision (see the module docstring). Floors apply to the candidate's metrics on
    these cases and, when given, to ``floor_values`` too (e.g. the lower bounds of a
    cross-validated estimate, named by ``floor_source``): a small-data model must clear both. Given ``*_pred``, each model is scored on the
    labels it serves (its own calibrated threshold) instead of the arg-max of its probabilities."""
    y_true = np.asarray(y_true)
    candidate_pred = (
        candidate_proba.argmax(axis=1) if candidate_pred is None else np.asarray(candidate_pred)
    )
    candidate = classification_metrics(y_true, candidate_proba, positive, candidate_pred)
    reasons, passed = [], True
    judged = [("test", candidate)] + (
        [(floor_source, floor_values)] if floor_values is not None else []
    )
    for source, values in judged:
        for name, floor in sorted(floors.items()):
            value = values.get(name, float("nan"))
            if value is None or not np.isfinite(value) or value < floor:
                passed = False
                reasons.append(
                    f"{source} {name} {float('nan') if value is None else value:.3f} below floor {floor:.3f}"
                )
            else:
                reasons.append(f"{source} {name} {value:.3f} >= floor {floor:.3f}")
    if production_proba is None:
        reasons.append("no production model: floors decide")
        return GateDecision(passed, reasons, candidate, n_cases=len(y_true))

    production_pred = (
        production_proba.argmax(axis=1) if production_pred is None else np.asarray(production_pred)
    )
    production = classification_metrics(y_true, production_proba, positive, production_pred)

    def paired(index: np.ndarray) -> dict[str, float]:
        y = y_true[index]
        auc = compare_metric == "roc_auc"
        score = lambda proba, pred: classification_metrics(
            y, proba[index], positive, pred[index], with_auc=auc
        )[compare_metric]  # noqa: E731
        return {
            "diff": score(candidate_proba, candidate_pred)
            - score(production_proba, production_pred)
        }

    low, high = bootstrap_ci(len(y_true), paired, n_resamples, seed).get(
        "diff", (float("nan"), float("nan"))
    )
    diff = candidate[compare_metric] - production[compare_metric]
    difference = {"value": diff, "low": low, "high": high}
    text = f"{compare_metric} candidate - production = {diff:+.3f} (95% CI {low:+.3f} to {high:+.3f}, n={len(y_true)} paired cases)"
    if high < -margin:
        reasons.append(f"worse than production: {text}")
        passed = False
    elif not passed:
        reasons.append(f"compared with production: {text}")
    elif len(y_true) < min_paired_cases:
        reasons.append(
            f"inconclusive: {len(y_true)} paired cases, fewer than registry.min_paired_cases={min_paired_cases}; production kept ({text})"
        )
        return GateDecision(
            False, reasons, candidate, production, difference, len(y_true), verdict=INCONCLUSIVE
        )
    elif low > -margin:
        reasons.append(
            f"{'better than' if margin == 0 else f'within {margin} of'} production: {text}"
        )
    else:
        reasons.append(f"inconclusive: the interval spans {-margin:+.3f}; production kept ({text})")
        return GateDecision(
            False, reasons, candidate, production, difference, len(y_true), verdict=INCONCLUSIVE
        )
    verdict = PASSED if passed else REJECTED
    return GateDecision(
        verdict == PASSED, reasons, candidate, production, difference, len(y_true), verdict=verdict
    )
