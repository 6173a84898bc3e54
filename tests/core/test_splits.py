import numpy as np
import pandas as pd
import pytest

from osteo_pipeline.core.splits import SplitError, assign_splits, dataset_hash

FRACTIONS = {"train": 0.7, "val": 0.15, "test": 0.15}


def _frame(n_per_class=40, dup_every=4, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for label in ("normal", "osteoporosis"):
        for i in range(n_per_class):
            group = f"{label}-{i // dup_every}"  # groups of `dup_every` copies
            rows.append({"path": f"{label}/{i}.png", "label": label, "sha256": f"{label}{i}", "group": group})
    frame = pd.DataFrame(rows)
    return frame.sample(frac=1, random_state=int(rng.integers(1000))).reset_index(drop=True)


def test_groups_never_straddle_splits():
    frame = _frame()
    frame["split"] = assign_splits(frame, FRACTIONS, seed=1)
    assert (frame.groupby("group")["split"].nunique() == 1).all()


def test_stratified_and_close_to_fractions():
    frame = _frame(n_per_class=140, dup_every=1)
    frame["split"] = assign_splits(frame, FRACTIONS, seed=1)
    shares = frame["split"].value_counts(normalize=True)
    assert abs(shares["test"] - 1 / 7) < 0.02 and abs(shares["val"] - 0.15) < 0.03
    per_class = frame.groupby(["split", "label"]).size().unstack()
    assert (per_class.min(axis=1) / per_class.max(axis=1) > 0.8).all()


def test_deterministic_and_independent_of_row_order():
    frame = _frame()
    a = frame.assign(split=assign_splits(frame, FRACTIONS, seed=5))
    shuffled = frame.sample(frac=1, random_state=9)
    b = shuffled.assign(split=assign_splits(shuffled, FRACTIONS, seed=5))
    assert a.set_index("path")["split"].equals(b.set_index("path")["split"].loc[a["path"]])
    assert dataset_hash(a) == dataset_hash(b)
    c = frame.assign(split=assign_splits(frame, FRACTIONS, seed=6))
    assert dataset_hash(a) != dataset_hash(c)


def test_too_few_groups_is_a_clear_error():
    frame = _frame(n_per_class=4, dup_every=4)
    with pytest.raises(SplitError, match="too few"):
        assign_splits(frame, FRACTIONS, seed=0)


def test_too_few_images_per_class_is_a_split_error():
    frame = _frame(n_per_class=3, dup_every=1)
    with pytest.raises(SplitError):
        assign_splits(frame, FRACTIONS, seed=0)
