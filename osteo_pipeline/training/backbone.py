"""The model a fit trains: ResNet-50 with the configured weights under a head sized by the trial's
parameters, and the search's one backbone that every trial starts from."""

from __future__ import annotations

import keras
import numpy as np

from osteo_pipeline.config import Settings
from osteo_pipeline.core.model import (
    FeatureStatistics,
    ModelSpec,
    WeightsUnavailableError,
    backbone,
    pooled_feature_statistics,
    with_head,
)
from osteo_pipeline.io.weights import BackboneWeights
from osteo_pipeline.io.weights import resolve as resolve_weights
from osteo_pipeline.training.fit import TrainParams


def build(
    settings: Settings, params: TrainParams, train_pixels: np.ndarray
) -> tuple[keras.Model, BackboneWeights]:
    """The model with its backbone weights, and which weights those are. ``train_pixels`` (model
    inputs of training images) standardise a random-init backbone's features
    (``FeatureStatistics``)."""
    settings = params.apply(settings)
    base, weights = load_backbone(settings)
    return with_head(
        base,
        model_spec(settings, params),
        feature_statistics(base, weights, train_pixels, settings),
    ), weights


def model_spec(settings: Settings, params: TrainParams) -> ModelSpec:
    """The head for the settings' classes, sized and regularised by ``params``."""
    return ModelSpec(
        tuple(settings.data.classes),
        params.input_size or settings.model.input_size,
        params.head_units,
        params.dropout,
        params.l2,
    )


def load_backbone(settings: Settings) -> tuple[keras.Model, BackboneWeights]:
    """ResNet-50 with the configured weights (``io.weights.resolve``), and which weights those
    are."""
    weights = resolve_weights(settings.model.weights, settings.model.allow_random_init_fallback)
    try:
        return backbone(
            None if weights.random_init else str(weights.path), settings.model.input_size
        ), weights
    except WeightsUnavailableError:
        raise
    except Exception as exc:  # a truncated or foreign .h5 file
        raise WeightsUnavailableError(
            f"cannot load backbone weights {weights.described}: {str(exc)[:200]}"
        ) from exc


#: Training images a random-init backbone's feature statistics are measured on, at most.
STATISTICS_SAMPLE = 512


def feature_statistics(
    base: keras.Model, weights: BackboneWeights, train_pixels: np.ndarray, settings: Settings
) -> FeatureStatistics | None:
    """The standardisation a random-init backbone's head needs, from (up to ``STATISTICS_SAMPLE``)
    training images spread over the set; none for pretrained weights."""
    if not weights.random_init:
        return None
    rows = (
        np.linspace(0, len(train_pixels) - 1, min(len(train_pixels), STATISTICS_SAMPLE))
        .round()
        .astype(int)
    )
    return pooled_feature_statistics(base, train_pixels[rows], settings.train.batch_size)


class StudyBackbone:
    """The study's one ResNet-50, built and its weights read on the first trial only, not once
    a trial. Each trial gets it back reset to those weights, under a new head initialised from the
    trial's own seed: trials stay independent of each other and of their order, and every trial
    starts from the backbone weights the activation cache was computed with. ``train_pixels``
    standardise a random-init backbone's features, once for every trial."""

    def __init__(self, settings: Settings, train_pixels: np.ndarray) -> None:
        self._settings = settings
        self._train_pixels = train_pixels
        self._base: keras.Model | None = None
        self._weights: list[np.ndarray] = []
        self._statistics: FeatureStatistics | None = None
        # Which weights (for each trial's tags), known before the backbone is built.
        self.weights = resolve_weights(
            settings.model.weights, settings.model.allow_random_init_fallback
        )

    def model(self, params: TrainParams, seed: int) -> keras.Model:
        if self._base is None:
            self._base, self.weights = load_backbone(self._settings)
            self._weights = self._base.get_weights()
            self._statistics = feature_statistics(
                self._base, self.weights, self._train_pixels, self._settings
            )
        else:
            self._base.set_weights(self._weights)
        keras.utils.set_random_seed(seed)
        return with_head(self._base, model_spec(self._settings, params), self._statistics)
