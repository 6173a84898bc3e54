"""One activation cache per pretrained system, shared by all its folds (``SystemCache``), and how
the report says what a system's fits trained on."""

from __future__ import annotations

import numpy as np

from osteo_pipeline.config import Settings
from osteo_pipeline.training.activations import ActivationCache, FoldActivations, activation_cache
from osteo_pipeline.training.arrays import Arrays
from osteo_pipeline.training.cv import rows_of
from osteo_pipeline.training.zoo import KerasSystem


def seen_text(cache: ActivationCache | None, settings: Settings) -> str:
    """What a system's fits trained on, for the report."""
    if cache is not None:
        return cache.describe()
    return "freshly augmented images" if settings.train.augment.enabled else "unaugmented images"


def close_cache(cache: ActivationCache | None) -> dict[str, float]:
    """Free ``cache``; its size and cost, to log on the system's run (none without a cache)."""
    if cache is None:
        return {}
    try:
        return cache.report()
    finally:
        cache.close()


class SystemCache:
    """One activation cache of every image for all folds of a pretrained system, cut at its
    deepest trained boundary: the frozen prefix (most of ResNet-50 or VGG-16) runs once per image
    and augmented view instead of every epoch of every fold, as the search's folds share one.
    Made on the first fold, when the system's network says where it can be cut, and valid for
    later folds because every fold builds the same network from the same weights file. ``fold``
    gives ``None`` (full images) for networks with nothing frozen or no epochs, or when
    ``tune.activation_cache`` is off."""

    def __init__(self, arrays: Arrays, settings: Settings) -> None:
        self.arrays, self.settings = arrays, settings
        self.cache: ActivationCache | None = None
        self.trained = False

    def fold(
        self, system: KerasSystem, train: np.ndarray, predict: np.ndarray
    ) -> FoldActivations | None:
        """The cache's view of a fold: ``train`` images' augmented views, ``predict`` images
        plain."""
        trains = sum(system.epochs) > 0
        self.trained |= trains
        if not (trains and system.frozen_prefix and self.settings.tune.activation_cache):
            return None
        if self.cache is None:
            self.cache = activation_cache(
                self.settings, self.arrays, floor_depth=system.depth, layout=system.layout
            )
        assert self.cache is not None
        if self.cache.layout != system.layout:
            raise ValueError(
                f"this cache holds {self.cache.layout.backbone}'s activations, not"
                f" {system.layout and system.layout.backbone}'s"
            )
        views = self.arrays.views
        return self.cache.fold(rows_of(train, views), rows_of(predict, views))

    @property
    def seen(self) -> str | None:
        """What the system's fits trained on; ``None`` when they trained nothing (0 epochs)."""
        return seen_text(self.cache, self.settings) if self.trained else None

    def close(self) -> dict[str, float]:
        """Free the cache; its size and cost (see ``close_cache``)."""
        return close_cache(self.cache)
