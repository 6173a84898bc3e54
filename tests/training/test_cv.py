"""Cross-validated scoring: folds never split a group, the epoch count is chosen once across folds,
out-of-fold calibration never sees a fold's own predictions, and the estimate has an interval."""

import numpy as np
import pytest

from osteo_pipeline.core.calibration import cross_fitted, fit_calibration
from osteo_pipeline.core.splits import SplitError, cv_folds
from osteo_pipeline.training.arrays import Arrays
from osteo_pipeline.training.cv import CVResult, cross_validate, final_models, oof_estimate, rows_of
from osteo_pipeline.training.fit import FitResult


def test_folds_keep_groups_whole_and_validate_every_image_once():
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(30), rng.integers(1, 4, 30))  # copies of one radiograph: a group
    labels = (groups % 3 == 0).astype(int)
    folds = cv_folds(labels, groups, 5, seed=1)
    assert len(folds) == 5
    validated = np.concatenate([val for _, val in folds])
    assert sorted(validated) == list(range(len(labels)))
    for train, val in folds:
        assert not set(groups[train]) & set(groups[val])
        assert set(labels[val]) == {0, 1}  # stratified
    with pytest.raises(SplitError, match="too few for 5-fold"):
        cv_folds(labels[:8], groups[:8], 5, seed=1)


def test_rows_of_images_with_two_views():
    assert rows_of(np.array([0, 2]), 2).tolist() == [0, 1, 4, 5]


def _fake_fit(labels, quality_by_epoch):
    """A fold 'fit' whose per-epoch validation predictions get better, then worse."""

    def fit(fold, train, val):
        proba = []
        for quality in quality_by_epoch:
            p = np.where(labels[val] == 1, 0.5 + quality, 0.5 - quality)
            proba.append(np.stack([1 - p, p], axis=1))
        return FitResult({}, 0, 0, val_proba=proba)

    return fit


def test_one_epoch_count_is_chosen_across_folds_and_oof_covers_every_image():
    labels = np.array([0, 1] * 10)
    arrays = Arrays(np.zeros((20, 4, 4, 3), np.uint8), labels)
    folds = cv_folds(labels, np.arange(20), 4, seed=0)
    reported = []
    result = cross_validate(
        arrays,
        folds,
        _fake_fit(labels, [0.05, 0.3, 0.1]),
        head_epochs=2,
        positive=1,
        report=lambda f, v: reported.append((f, v)),
    )
    assert result.epochs == 2 and (result.head_epochs, result.finetune_epochs) == (2, 0)
    assert [f for f, _ in reported] == [0, 1, 2, 3] and (result.fold >= 0).all()
    assert np.allclose(result.oof[labels == 1, 1], 0.8)
    assert result.objective("roc_auc") == pytest.approx(0.0)
    again = CVResult.from_dict(result.as_dict())
    assert again.epochs == 2 and np.allclose(again.oof, result.oof)


def test_a_report_that_raises_stops_after_that_fold():
    labels = np.array([0, 1] * 10)
    arrays = Arrays(np.zeros((20, 4, 4, 3), np.uint8), labels)
    folds = cv_folds(labels, np.arange(20), 4, seed=0)
    seen = []

    def fit(fold, train, val):
        seen.append(fold)
        return _fake_fit(labels, [0.1])(fold, train, val)

    def prune(fold, value):
        if fold == 1:
            raise RuntimeError("pruned")

    with pytest.raises(RuntimeError, match="pruned"):
        cross_validate(arrays, folds, fit, 1, 1, report=prune)
    assert seen == [0, 1]


def test_oof_calibration_never_sees_a_folds_own_predictions():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 60)
    score = np.clip(0.5 + 0.25 * (2 * labels - 1) + rng.normal(0, 0.2, 60), 0.01, 0.99)
    proba = np.stack([1 - score, score], axis=1)
    folds = np.arange(60) % 5
    calibrated, predicted = cross_fitted(proba, labels, folds, positive=1)
    # Fold 0's output is fixed by the other folds: scrambling fold 0's own predictions and labels
    # changes only how fold 0 is mapped, not the calibration fitted for it.
    expected = fit_calibration(proba[folds != 0], labels[folds != 0], 1)
    assert np.allclose(calibrated[folds == 0], expected.probabilities(proba[folds == 0]))
    scrambled_labels = labels.copy()
    scrambled_labels[folds == 0] = 1 - scrambled_labels[folds == 0]
    again, _ = cross_fitted(proba, scrambled_labels, folds, positive=1)
    assert np.allclose(again[folds == 0], calibrated[folds == 0])


def test_the_estimate_has_a_corrected_interval_around_the_fold_mean():
    rng = np.random.default_rng(1)
    labels = np.array([0, 1] * 30)
    score = np.clip(0.5 + 0.2 * (2 * labels - 1) + rng.normal(0, 0.25, 60), 0.01, 0.99)
    result = CVResult(
        3, 2, 1, np.arange(60) % 5, labels, np.stack([1 - score, score], axis=1), [], []
    )
    estimate = oof_estimate(result, positive=1)
    auc = estimate["roc_auc"]
    assert 0.5 < auc["value"] < 1 and auc["low"] < auc["value"] < auc["high"] <= 1


def test_fold_models_and_refit_never_train_on_what_they_predict():
    """final_models: each fold model predicts only its held-out fold and the test part, the refit
    trains on all training images, no model sees the test part, groups stay whole, each OOF row is
    its own image's prediction, and the ensemble is the mean of the fold models' test
    predictions."""
    labels = np.repeat([0, 1], 20)
    groups = np.arange(40) // 2  # pairs of copies
    order = np.random.default_rng(0).permutation(40)
    train, test = order[:30], order[30:]  # not contiguous: local and global indices differ
    fits: list[tuple[set[int], list[np.ndarray]]] = []
    test_predictions: list[np.ndarray] = []

    def fit_predict(trained: np.ndarray, predict: list[np.ndarray]) -> list[np.ndarray]:
        """Each image's probability encodes its index (and, for the test part, which fit)."""
        fits.append((set(trained.tolist()), predict))
        out = [
            np.column_stack([1 - (p := images / 100 + len(fits) / 1000), p]) for images in predict
        ]
        test_predictions.append(out[-1])
        return out

    final = final_models(labels, groups, train, test, 3, 0, fit_predict)
    *members, refit = fits
    assert len(members) == 3
    assert (
        refit[0] == set(train.tolist()) and len(refit[1]) == 1 and np.array_equal(refit[1][0], test)
    )
    held_out = [set(val.tolist()) for _, (val, _) in members]
    assert set().union(*held_out) == set(train.tolist()) and sum(map(len, held_out)) == len(train)
    for trained, (val, predicted_test) in members:
        assert not trained & set(val.tolist()) and not trained & set(test.tolist())
        assert {groups[i] for i in trained}.isdisjoint({groups[i] for i in val})
        assert np.array_equal(predicted_test, test)
    assert np.allclose(np.round(final.oof[:, 1] * 100), train)  # row i of the OOF is image train[i]
    assert np.array_equal(final.refit, test_predictions[-1])
    assert np.allclose(final.ensemble, np.mean(test_predictions[:3], axis=0))
