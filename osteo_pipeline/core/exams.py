"""Results per patient exam and per subgroup: what a clinic acts on is one answer per exam (the
mean probability of its images), and a model that works for one sex or age band only must show
it."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from osteo_pipeline.core.metrics import metrics_with_ci

#: Fewer patients than this in a subgroup: neither its metrics (intervals that resample patients
#: would be meaningless) nor its exact size (a small cell can identify people) are reported.
MIN_SUBGROUP = 5


def by_exam(
    frame: pd.DataFrame, labels: np.ndarray, proba: np.ndarray
) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """One row per exam, a patient's visit (``frame``'s ``exam`` and ``patient`` columns, aligned
    with ``labels`` and ``proba``): its patient, its most severe label (classes run mildest
    first; the knees of one visit may differ) and the mean probability of its images."""
    exams = pd.DataFrame(
        {"exam": frame["exam"].fillna(frame["patient"]).to_numpy(), "label": labels}
    )
    exams["patient"] = frame["patient"].to_numpy()
    for column in ("sex", "age"):
        if column in frame:
            exams[column] = frame[column].to_numpy()
    order = pd.factorize(exams["exam"])[0]
    mean = np.stack([proba[order == i].mean(axis=0) for i in range(order.max() + 1)])
    first = exams.groupby(order).first().reset_index(drop=True)
    worst = exams.groupby(order)["label"].max().to_numpy(dtype=np.int64)
    return first.assign(label=worst), worst, mean


def age_band(age: float, edges: Sequence[int]) -> str | None:
    """``<50``, ``50-64``, ..., ``>=80`` for ``edges`` [50, 65, 80]; None when unknown."""
    if age is None or not np.isfinite(age):
        return None
    lower = [e for e in edges if age >= e]
    if not lower:
        return f"<{edges[0]}"
    upper = [e for e in edges if age < e]
    return f"{lower[-1]}-{upper[0] - 1}" if upper else f">={lower[-1]}"


def subgroups(
    frame: pd.DataFrame,
    labels: np.ndarray,
    proba: np.ndarray,
    predict: Callable[[np.ndarray], np.ndarray],
    positive: int,
    age_edges: Sequence[int],
    seed: int,
) -> dict[str, dict[str, object]]:
    """Metrics with patient-resampled CIs by sex and by age band, where ``frame`` knows them;
    groups of fewer than :data:`MIN_SUBGROUP` patients are named, not scored or counted."""
    keys: dict[str, pd.Series] = {}
    if "sex" in frame and frame["sex"].notna().any():
        keys["sex"] = frame["sex"]
    if "age" in frame and pd.to_numeric(frame["age"], errors="coerce").notna().any():
        ages = pd.to_numeric(frame["age"], errors="coerce")
        keys["age"] = ages.map(lambda a: age_band(a, age_edges))
    results: dict[str, dict[str, object]] = {}
    for name, key in keys.items():
        for value in sorted(v for v in key.dropna().unique()):
            rows = np.flatnonzero((key == value).to_numpy())
            patients = frame["patient"].to_numpy()[rows]
            if len(set(patients)) < MIN_SUBGROUP:
                results[f"{name}={value}"] = {"n": f"fewer than {MIN_SUBGROUP} patients"}
                continue
            results[f"{name}={value}"] = {
                "n": len(rows),
                "n_patients": len(set(patients)),
                "metrics": metrics_with_ci(
                    labels[rows],
                    proba[rows],
                    positive,
                    predict(proba[rows]),
                    seed=seed,
                    groups=patients,
                ),
            }
    return results
