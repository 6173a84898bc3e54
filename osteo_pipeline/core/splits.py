"""Deterministic, stratified, group-aware train/val/test splits and the dataset's identity hash."""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from osteo_pipeline.core.clinical import overlap_check
from osteo_pipeline.errors import OsteoError

if TYPE_CHECKING:
    from sklearn.model_selection import StratifiedGroupKFold

SPLITS = ("train", "val", "test")


class SplitError(OsteoError, ValueError):
    """The data cannot be split as configured (e.g. too few groups for the fractions)."""


def _holdout(labels: np.ndarray, groups: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of a held-out share of about ``fraction``: whole groups, per-class balanced.

    The first of k = round(1/fraction) stratified group folds is the hold-out, so the realised
    share is 1/k."""
    n_splits = max(2, round(1 / fraction))
    splitter = _splitter(
        groups,
        n_splits,
        seed,
        f"a {fraction:.0%} hold-out ({n_splits} folds needed); "
        "add images or change split fractions",
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "least populated class" on tiny sets
        try:
            _, held = next(splitter.split(np.zeros(len(labels)), labels, groups))
        except ValueError as exc:
            raise SplitError(
                f"cannot hold out {fraction:.0%} of {len(labels)} images per class: {exc}"
            ) from exc
    mask = np.zeros(len(labels), dtype=bool)
    mask[held] = True
    return mask


def worst_in_group(labels: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Each row's stratum for folds: the highest class index (classes run mildest first) in its
    group, so a patient is stratified by their most severe label."""
    frame = pd.DataFrame({"label": np.asarray(labels), "group": np.asarray(groups)})
    return frame.groupby("group")["label"].transform("max").to_numpy()


def _splitter(groups: np.ndarray, n_splits: int, seed: int, what: str) -> StratifiedGroupKFold:
    """A shuffled StratifiedGroupKFold, once there are at least ``n_splits`` groups for ``what``."""
    from sklearn.model_selection import StratifiedGroupKFold  # here: run readers need no sklearn

    n_groups = len(np.unique(groups))
    if n_groups < n_splits:
        raise SplitError(f"only {n_groups} distinct image groups: too few for {what}")
    return StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)


def assign_splits(frame: pd.DataFrame, fractions: dict[str, float], seed: int) -> pd.Series:
    """Split name per row of ``frame`` (columns ``label`` and ``group``, and ``stratum`` to
    stratify by instead of ``label``); groups never straddle.

    Rows are ordered by content before splitting, so the result does not depend on file order."""
    order = frame.sort_values(["label", "sha256", "path"]).index
    ordered = frame.loc[order]
    labels = ordered["stratum" if "stratum" in ordered else "label"].to_numpy()
    groups = ordered["group"].to_numpy()
    split = np.full(len(ordered), "train", dtype=object)

    test = _holdout(labels, groups, fractions["test"], seed)
    split[test] = "test"
    rest = ~test
    val_share = fractions["val"] / (fractions["train"] + fractions["val"])
    val = _holdout(labels[rest], groups[rest], val_share, seed + 1)
    split[np.flatnonzero(rest)[val]] = "val"
    return pd.Series(split, index=order, name="split").reindex(frame.index)


@dataclass(frozen=True)
class Fold:
    """One cross-validation fold: row indices of its train, val (carved from the training part,
    for early stopping, calibration and the threshold) and test parts."""

    repeat: int
    fold: int
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray

    @property
    def name(self) -> str:
        return f"r{self.repeat}f{self.fold}"


def group_folds(
    labels: np.ndarray,
    groups: np.ndarray,
    n_splits: int,
    repeats: int,
    val_fraction: float,
    seed: int,
) -> list[Fold]:
    """Repeated stratified group k-fold: each repeat reshuffles (seed + repeat), every group (of
    copies, and of a patient's images) lies wholly in one of train, val or test, checked, strata
    are each group's most severe label, and every row is tested once per repeat."""
    labels, groups = np.asarray(labels), np.asarray(groups)
    strata = worst_in_group(labels, groups)
    folds = []
    for repeat in range(repeats):
        splitter = _splitter(groups, n_splits, seed + repeat, f"{n_splits} folds")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            parts = list(splitter.split(np.zeros(len(labels)), strata, groups))
        for fold, (rest, test) in enumerate(parts):
            val = _holdout(
                strata[rest], groups[rest], val_fraction, seed + 1000 * (repeat + 1) + fold
            )
            folds.append(Fold(repeat, fold, rest[~val], rest[val], test))
            overlap_check(
                {
                    part: groups[rows]
                    for part, rows in (("train", rest[~val]), ("val", rest[val]), ("test", test))
                },
                f"fold {folds[-1].name}",
            )
    return folds


def cv_folds(
    labels: np.ndarray, groups: np.ndarray, n_splits: int, seed: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified group k-fold: (train, val) indices per fold; every group (of copies, and of a
    patient's images) lies in one part, checked, strata are each group's most severe label, and
    every row is validated exactly once."""
    labels, groups = np.asarray(labels), np.asarray(groups)
    splitter = _splitter(
        groups, n_splits, seed, f"{n_splits}-fold cross-validation (tune.cv_folds)"
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        strata = worst_in_group(labels, groups)
        folds = list(splitter.split(np.zeros(len(labels)), strata, groups))
    for number, (train, val) in enumerate(folds):
        overlap_check({"train": groups[train], "val": groups[val]}, f"CV fold {number}")
    return folds


def dataset_hash(frame: pd.DataFrame) -> str:
    """Identity of the exact data used: content hashes, labels and splits (not paths or order)."""
    lines = sorted(f"{r.sha256},{r.label},{r.split}" for r in frame.itertuples())
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()
