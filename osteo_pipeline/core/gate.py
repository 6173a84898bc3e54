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


@dataclass(frozen=True)
class Cases:
    """The held-out cases both models are judged on: true class indices, and the positive one."""

    y_true: np.ndarray
    positive: int
    groups: np.ndarray | None = None
    """The patient of each case: the paired bootstrap resamples patients, not images."""


@dataclass(frozen=True)
class Answers:
    """One model's answers on the cases: its probabilities and, when given, the labels it serves
    (its own calibrated threshold); without them, the arg-max of its probabilities."""

    proba: np.ndarray
    labels: np.ndarray | None = None

    def served(self) -> np.ndarray:
        return self.proba.argmax(axis=1) if self.labels is None else np.asarray(self.labels)


@dataclass(frozen=True)
class GatePolicy:
    """What a candidate must show: ``floors`` (metric -> minimum), and against production the CI
    of ``compare_metric`` above ``-margin`` on at least ``min_paired_cases`` cases."""

    floors: dict[str, float]
    compare_metric: str
    margin: float = 0.0
    min_paired_cases: int = 1
    n_resamples: int = 1000
    seed: int = 0


@dataclass(frozen=True)
class FloorEvidence:
    """More values the floors apply to, besides the test metrics (e.g. the lower bounds of a
    cross-validated estimate), and what they are (``source`` names them in the reasons)."""

    values: dict[str, float | None]
    source: str


def decide(
    *,
    cases: Cases,
    candidate: Answers,
    production: Answers | None,
    policy: GatePolicy,
    also_floored: FloorEvidence | None = None,
) -> GateDecision:
    """The gate's decision (see the module docstring). Floors apply to the candidate's metrics on
    these cases and, when given, to ``also_floored`` too: a small-data model must clear both.
    Each model is scored on the labels it serves (``Answers.served``)."""
    y_true, positive = np.asarray(cases.y_true), cases.positive
    candidate_pred = candidate.served()
    scores = classification_metrics(y_true, candidate.proba, positive, candidate_pred)
    reasons, passed = [], True
    judged = [("test", scores)] + (
        [(also_floored.source, also_floored.values)] if also_floored is not None else []
    )
    for source, values in judged:
        for name, floor in sorted(policy.floors.items()):
            value = values.get(name, float("nan"))
            if value is None or not np.isfinite(value) or value < floor:
                passed = False
                shown = float("nan") if value is None else value
                reasons.append(f"{source} {name} {shown:.3f} below floor {floor:.3f}")
            else:
                reasons.append(f"{source} {name} {value:.3f} >= floor {floor:.3f}")
    if production is None:
        reasons.append("no production model: floors decide")
        return GateDecision(passed, reasons, scores, n_cases=len(y_true))

    production_pred = production.served()
    production_scores = classification_metrics(y_true, production.proba, positive, production_pred)
    metric, margin, n = policy.compare_metric, policy.margin, len(y_true)

    def paired(index: np.ndarray) -> dict[str, float]:
        def score(proba: np.ndarray, pred: np.ndarray) -> float:
            return classification_metrics(
                y_true[index], proba[index], positive, pred[index], with_auc=metric == "roc_auc"
            )[metric]

        return {
            "diff": score(candidate.proba, candidate_pred)
            - score(production.proba, production_pred)
        }

    low, high = bootstrap_ci(n, paired, policy.n_resamples, policy.seed, groups=cases.groups).get(
        "diff", (float("nan"), float("nan"))
    )
    diff = scores[metric] - production_scores[metric]
    difference = {"value": diff, "low": low, "high": high}
    text = (
        f"{metric} candidate - production = {diff:+.3f} "
        f"(95% CI {low:+.3f} to {high:+.3f}, n={n} paired cases)"
    )
    if high < -margin:
        reasons.append(f"worse than production: {text}")
        passed = False
    elif not passed:
        reasons.append(f"compared with production: {text}")
    elif n < policy.min_paired_cases:
        reasons.append(
            f"inconclusive: {n} paired cases, fewer than "
            f"registry.min_paired_cases={policy.min_paired_cases}; production kept ({text})"
        )
        return GateDecision(
            False, reasons, scores, production_scores, difference, n, verdict=INCONCLUSIVE
        )
    elif low > -margin:
        reasons.append(
            f"{'better than' if margin == 0 else f'within {margin} of'} production: {text}"
        )
    else:
        reasons.append(f"inconclusive: the interval spans {-margin:+.3f}; production kept ({text})")
        return GateDecision(
            False, reasons, scores, production_scores, difference, n, verdict=INCONCLUSIVE
        )
    verdict = PASSED if passed else REJECTED
    return GateDecision(
        verdict == PASSED, reasons, scores, production_scores, difference, n, verdict=verdict
    )
