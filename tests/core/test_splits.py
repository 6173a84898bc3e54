import numpy as np
import pandas as pd
import pytest

from osteo_pipeline.core.splits import SplitError, assign_splits, dataset_hash, group_folds

FRACTIONS = {"train": 0.7, "val": 0.15, "test": 0.15}


def _frame(n_per_class=40, dup_every=4, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for label in ("normal", "osteoporosis"):
        for i in range(n_per_class):
            group = f"{label}-{i // dup_every}"  # groups of `dup_every` copies
            rows.append(
                {
                    "path": f"{label}/{i}.png",
                    "label": label,
                    "sha256": f"{label}{i}",
                    "group": group,
                }
            )
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
    with pytest.raises(
        SplitError, match="only 6 distinct image groups: too few for a 15% hold-out"
    ):
        assign_splits(frame, FRACTIONS, seed=0)


def test_group_folds_test_every_row_once_per_repeat_and_keep_groups_whole():
    frame = _frame(n_per_class=30, dup_every=3)
    labels = (frame["label"] == "osteoporosis").to_numpy().astype(int)
    groups = frame["group"].to_numpy()
    folds = group_folds(labels, groups, n_splits=5, repeats=2, val_fraction=0.2, seed=3)
    assert len(folds) == 10 and [f.name for f in folds[:2]] == ["r0f0", "r0f1"]
    for repeat in (0, 1):
        tested = np.concatenate([f.test for f in folds if f.repeat == repeat])
        assert sorted(tested) == list(range(len(frame)))
    for fold in folds:
        parts = [set(groups[fold.train]), set(groups[fold.val]), set(groups[fold.test])]
        assert not (parts[0] & parts[1]) and not (parts[0] & parts[2]) and not (parts[1] & parts[2])
        assert len(fold.train) + len(fold.val) + len(fold.test) == len(frame)
        assert 0.3 < labels[fold.test].mean() < 0.7 and 0.3 < labels[fold.val].mean() < 0.7
    assert not np.array_equal(folds[0].test, folds[5].test)  # a repeat reshuffles
    again = group_folds(labels, groups, n_splits=5, repeats=2, val_fraction=0.2, seed=3)
    assert all(
        np.array_equal(a.test, b.test) and np.array_equal(a.val, b.val)
        for a, b in zip(folds, again)
    )


def test_group_folds_need_enough_groups():
    frame = _frame(n_per_class=4, dup_every=4)
    with pytest.raises(SplitError, match="too few for 5 folds"):
        group_folds(frame["label"].to_numpy(), frame["group"].to_numpy(), 5, 1, 0.2, 0)
