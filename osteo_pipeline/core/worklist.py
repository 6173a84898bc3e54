"""The screening worklist's two thresholds on the risk score (the calibrated probability of the
positive class), and the three bands they make.

- **Rule-out** ``t_out``: the highest cut that keeps at least ``target_sensitivity`` of the
  positives at or above it. A score below it suggests no density exam.
- **Rule-in** ``t_in``: the lowest cut that keeps at least ``target_specificity`` of the
  negatives at or below it. A score above it (at or above it with one cut, below) is flagged as
  likely low bone density.
- Between them, the model cannot tell: refer for a density exam.

Both are chosen on predictions the model was not fitted to (its out-of-fold predictions, or its
validation split's), never on the test split, whose sensitivity and specificity at each cut are
reported beside them. A model good enough that ``t_in < t_out`` gets one cut, ``t_out``: scores
below it are ruled out, scores at or above it ruled in. Every negative at or above ``t_out`` lies
above ``t_in``, so specificity stays at least the target and both guarantees still hold; a model
whose scores saturate at 1.0 rules those scores in rather than referring them."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from osteo_pipeline.core.metrics import bootstrap_ci

RULE_IN, REFER, RULE_OUT = "rule in", "refer", "rule out"
BAND_ADVICE = {
    RULE_IN: "likely low bone density: density exam (DXA) to confirm",
    REFER: "uncertain: refer for a density exam (DXA)",
    RULE_OUT: "low risk: no density exam suggested by this screen",
}


class ThresholdError(ValueError):
    """Predictions that cannot place a threshold (one class missing)."""


@dataclass(frozen=True)
class Thresholds:
    rule_out: float
    rule_in: float
    target_sensitivity: float
    target_specificity: float
    chosen_on: str  # "out-of-fold predictions" or "validation predictions"
    one_cut: bool = False  # rule-in raised to rule-out: no refer band, rule in at or above it

    def ruled_in(self, risk: np.ndarray) -> np.ndarray:
        """Which scores the rule-in cut flags: above it, or at or above it when there is one cut."""
        risk = np.asarray(risk, dtype=np.float64)
        return risk >= self.rule_in if self.one_cut else risk > self.rule_in

    def describe(self) -> str:
        """The cuts in words, as the CLI, the worklist page and Prefect show them."""
        ruled_in = "at or above" if self.one_cut else "above"
        return (
            f"rule out below {risk_text(self.rule_out)}, "
            f"rule in {ruled_in} {risk_text(self.rule_in)}"
        )


def choose_thresholds(
    risk: np.ndarray,
    positive: np.ndarray,
    target_sensitivity: float,
    target_specificity: float,
    chosen_on: str,
) -> Thresholds:
    """The rule-out and rule-in cuts (see the module) on ``risk`` with truth ``positive``."""
    risk, positive = np.asarray(risk, dtype=np.float64), np.asarray(positive, dtype=bool)
    if positive.all() or not positive.any():
        raise ThresholdError(
            f"the {chosen_on} hold only one class: no threshold can be chosen on them"
        )
    positives = np.sort(risk[positive])[::-1]
    negatives = np.sort(risk[~positive])
    kept_positives = max(1, math.ceil(target_sensitivity * len(positives) - 1e-9))
    kept_negatives = max(1, math.ceil(target_specificity * len(negatives) - 1e-9))
    rule_out, rule_in = float(positives[kept_positives - 1]), float(negatives[kept_negatives - 1])
    return Thresholds(
        rule_out,
        max(rule_in, rule_out),
        target_sensitivity,
        target_specificity,
        chosen_on,
        one_cut=rule_in < rule_out,
    )


def risk_text(value: float) -> str:
    """A risk or cut in as few decimals as tell it apart from 0 and 1 (at least 4): a
    near-certain model's cuts read 0.99999 rather than a misleading 1.0000."""
    for decimals in range(4, 12):
        text = f"{value:.{decimals}f}"
        if not 0.0 < value < 1.0 or 0.0 < float(text) < 1.0:
            return text
    return f"{value:.12f}"


def bands(risk: np.ndarray, thresholds: Thresholds) -> np.ndarray:
    """Each score's band: rule out below ``rule_out``, rule in when ``thresholds.ruled_in``,
    else refer."""
    risk = np.asarray(risk, dtype=np.float64)
    return np.where(
        risk < thresholds.rule_out,
        RULE_OUT,
        np.where(thresholds.ruled_in(risk), RULE_IN, REFER),
    )


def _rates(risk: np.ndarray, positive: np.ndarray, flagged: np.ndarray) -> dict[str, float]:
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    return {
        "sensitivity": float((flagged & positive).sum() / n_pos) if n_pos else float("nan"),
        "specificity": float((~flagged & ~positive).sum() / n_neg) if n_neg else float("nan"),
    }


def threshold_performance(
    risk: np.ndarray,
    positive: np.ndarray,
    thresholds: Thresholds,
    groups: np.ndarray | None = None,
    n_resamples: int = 1000,
    seed: int = 0,
) -> dict[str, dict[str, dict[str, float]]]:
    """Sensitivity and specificity of each cut on held-out predictions, with percentile
    bootstrap 95% intervals (resampling ``groups``, the patients, when given): for the rule-out
    cut a case counts as flagged when it is not ruled out, for the rule-in cut when it is ruled
    in. ``{cut: {metric: {value, low, high}}}``."""
    risk, positive = np.asarray(risk, dtype=np.float64), np.asarray(positive, dtype=bool)
    flags = {"rule_out": risk >= thresholds.rule_out, "rule_in": thresholds.ruled_in(risk)}
    result = {}
    for cut, flagged in flags.items():
        point = _rates(risk, positive, flagged)
        low_high = bootstrap_ci(
            len(risk),
            lambda i, f=flagged: _rates(risk[i], positive[i], f[i]),
            n_resamples=n_resamples,
            seed=seed,
            groups=groups,
        )
        result[cut] = {
            name: {
                "value": value,
                "low": low_high.get(name, (float("nan"),) * 2)[0],
                "high": low_high.get(name, (float("nan"),) * 2)[1],
            }
            for name, value in point.items()
        }
    return result
