"""The model card, rendered from its four typed inputs."""

import pytest

from osteo_pipeline.core.model_card import (
    CardData,
    CardIdentity,
    CardModel,
    CardResults,
    CvEstimate,
    render_model_card,
)

IDENTITY = CardIdentity("osteo-knee", "4", "abc123")
DATA = CardData(
    ["normal", "osteoporosis"],
    "d" * 64,
    {"train": {"normal": 10, "osteoporosis": 8}, "test": {"normal": 3, "osteoporosis": 2}},
    excluded=1,
)
METRICS = {
    "balanced_accuracy": {"value": 0.8, "low": 0.6, "high": 0.95},
    "roc_auc": {"value": 0.9, "low": None, "high": None},
}


def _card(**changes) -> str:
    parts = {
        "identity": IDENTITY,
        "data": DATA,
        "model": CardModel("imagenet", 224),
        "results": CardResults("osteoporosis", METRICS),
    }
    return render_model_card(**(parts | changes))


def test_a_card_says_which_version_data_and_metrics_it_describes():
    card = _card()
    assert card.startswith("# Model card: osteo-knee version 4")
    assert "Training run `abc123`" in card and f"Dataset hash `{'d' * 64}`" in card
    assert "1 label-conflicting copies were excluded" in card
    assert "| train | 10 | 8 | 18 |" in card and "| val | 0 | 0 | 0 |" in card
    assert "| test | 3 | 2 | 5 |" in card and "n = 5; positive class `osteoporosis`" in card
    assert "| balanced_accuracy | 0.800 | 0.600 – 0.950 |" in card
    assert "| roc_auc | 0.900 | - |" in card  # no interval: a dash, not "None"
    assert "input: the whole film, 224 x 224 px" in card and "the most probable class" in card
    assert "Headline" not in card and "`val` chose the search's parameters" in card


def test_a_cross_validated_model_leads_with_its_cv_estimate_and_threshold():
    card = _card(
        model=CardModel("imagenet", 384, roi="knees", params={"learning_rate": 0.001}),
        results=CardResults(
            "osteoporosis",
            METRICS,
            calibration={"temperature": 1.5, "threshold": 0.35, "positive": 1},
            cv=CvEstimate({"recall": {"value": 0.7, "low": 0.5, "high": 0.9}}, folds=5, n=40),
            image_grids="logged (tracking.log_image_grids)",
        ),
    )
    assert "## Headline: cross-validated estimate (5-fold, n = 40 images)" in card
    assert "| recall | 0.700 | 0.500 – 0.900 |" in card
    assert "`osteoporosis` when its probability is at least 0.350" in card
    assert "(T = 1.500, fitted on out-of-fold predictions of the cross-validated search)" in card
    assert "each knee cropped square around its joint line" in card and "384 x 384 px" in card
    assert "| learning_rate | 0.001 |" in card
    assert "grids) on the training run:\nlogged (tracking.log_image_grids)." in card


def test_the_card_takes_its_inputs_by_keyword_only():
    with pytest.raises(TypeError):
        render_model_card(IDENTITY, DATA, CardModel("x", 1), CardResults("p", METRICS))
