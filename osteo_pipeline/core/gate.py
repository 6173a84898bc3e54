"""The promotion gate: absolute floors, then a paired comparison with production on the same
held-out cases (bootstrap CI of the difference), never two numbers from different data."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from osteo_pipeline.core.metrics import bootstrap_ci, classification_metrics


@dataclass
class GateDecision:
    passed: bool
    reasons: list[str]
    candidate: dict[str, float]
    production: dict[str, float] | None = None
    difference: dict[str, float] | None = None  # value, low, high of candidate - production
    n_cases: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def summary(self) -> str:
        return ("PASSED: " if self.passed else "REJECTED: ") + "; ".join(self.reasons)


def decide(
    y_true: np.ndarray,
    candidate_proba: np.ndarray,
    production_proba: np.ndarray | None,
    positive: int,
    floors: dict[str, float],
    compare_metric: str,
    margin: float = 0.0,
    require_ci_above_margin: bool = False,
    n_resamples: int = 1000,
    seed: int = 0,
    candidate_pred: np.ndarray | None = None,
    production_pred: np.ndarray | None = None,
) -> GateDecision:
    """Pass when every floor is met and, if production exists, the candidate is at least as good
    (difference >= -margin; with ``require_ci_above_margin`` its CI's lower end too). Given
    ``*_pred``, each model is scored on the labels it serves (its own validation-chosen
    threshold) instead of the arg-max of its probabilities."""
    y_true = np.asarray(y_true)
    candidate_pred = candidate_proba.argmax(axis=1) if candidate_pred is None else np.asarray(candidate_pred)
    candidate = classification_metrics(y_true, candidate_proba, positive, candidate_pred)
    reasons, passed = [], True
    for name, floor in sorted(floors.items()):
        value = candidate[name]
        if not np.isfinite(value) or value < floor:
            passed = False
            reasons.append(f"{name} {value:.3f} below floor {floor:.3f}")
        else:
            reasons.append(f"{name} {value:.3f} >= floor {floor:.3f}")
    if production_proba is None:
        reasons.append("no production model: floors decide")
        return GateDecision(passed, reasons, candidate, n_cases=len(y_true))

    production_pred = production_proba.argmax(axis=1) if production_pred is None else np.asarray(production_pred)
    production = classification_metrics(y_true, production_proba, positive, production_pred)

    def paired(index: np.ndarray) -> dict[str, float]:
        y = y_true[index]
        auc = compare_metric == "roc_auc"
        score = lambda proba, pred: classification_metrics(y, proba[index], positive, pred[index], with_auc=auc)[compare_metric]  # noqa: E731
        return {"diff": score(candidate_proba, candidate_pred) - score(production_proba, production_pred)}

    low, high = bootstrap_ci(len(y_true), paired, n_resamples, seed).get("diff", (float("nan"), float("nan")))
    diff = candidate[compare_metric] - production[compare_metric]
    text = f"{compare_metric} candidate - production = {diff:+.3f} (95% CI {low:+.3f} to {high:+.3f}, n={len(y_true)} paired cases)"
    if diff < -margin:
        passed = False
        reasons.append(f"worse than production: {text}")
    elif require_ci_above_margin and not low >= -margin:
        passed = False
        reasons.append(f"not shown at least as good (CI lower end below -{margin}): {text}")
    else:
        reasons.append(f"at least as good as production: {text}")
    return GateDecision(passed, reasons, candidate, production, {"value": diff, "low": low, "high": high}, len(y_true))
