"""Decoded pixels and labels of a split, as the trainer and evaluators index them."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from osteo_pipeline.config import Settings
from osteo_pipeline.core.preprocess import per_image
from osteo_pipeline.io.cachedir import cache_folder
from osteo_pipeline.io.pixels import PixelCache, gather_rows
from osteo_pipeline.io.split_manifest import SplitManifest


@dataclass
class Arrays:
    """N labeled images as ``views`` model inputs each (``core.preprocess.views_per_image``):
    pixel rows are image-major, so image ``i`` is rows ``i * views`` to ``(i + 1) * views``."""

    pixels: np.ndarray  # (N x views) x S x S x 3 uint8, read-only (often a memory-mapped shard)
    labels: np.ndarray  # N class indices
    paths: list[str] = field(default_factory=list)
    views: int = 1

    @property
    def row_labels(self) -> np.ndarray:
        """The label of each pixel row (each view carries its image's label)."""
        return np.repeat(self.labels, self.views)

    def first_views(self) -> np.ndarray:
        """One picture per image (its first view), for figures."""
        return self.pixels[:: self.views]

    def image_proba(self, row_proba: np.ndarray) -> np.ndarray:
        """Per-image probabilities: the mean over each image's views."""
        return per_image(row_proba, self.views)

    def select(self, images: np.ndarray) -> Arrays:
        """The images at ``images`` (indices), with their views, gathered into a file-backed
        array (``io.pixels.gather_rows``): a fold of a large set does not grow memory."""
        images = np.asarray(images, dtype=np.int64)
        rows = (images[:, None] * self.views + np.arange(self.views)).ravel()
        return Arrays(
            gather_rows(self.pixels, rows),
            self.labels[images],
            [self.paths[i] for i in images] if self.paths else [],
            self.views,
        )


def pixel_cache(settings: Settings, size: int | None = None, roi: str | None = None) -> PixelCache:
    """The decode-once cache at ``size`` and ``roi`` (default: the model's)."""
    return PixelCache(
        size or settings.model.input_size,
        settings.validation.max_pixels,
        cache_folder(settings.train.cache_dir, "pixels"),
        roi or settings.model.roi,
    )


def load_arrays(split: SplitManifest, settings: Settings, cache: PixelCache) -> dict[str, Arrays]:
    """Decoded pixels and label indices per split, decoding each image once. The three splits
    are rows of one shard (``io.pixels``), train then val then test, so train and val can be
    taken together without a copy (``io.pixels.join_rows``)."""
    index = {c: i for i, c in enumerate(settings.data.classes)}
    names = ("train", "val", "test")
    subsets = [split.subset(name) for name in names]
    pixels = cache.load(
        [path for subset in subsets for path in split.file_paths(subset)],
        [sha for subset in subsets for sha in subset["sha256"]],
    )
    arrays, start = {}, 0
    for name, subset in zip(names, subsets):
        stop = start + len(subset) * cache.views
        arrays[name] = Arrays(
            pixels[start:stop],
            subset["label"].map(index).to_numpy(dtype=np.int64),
            list(subset["path"]),
            cache.views,
        )
        start = stop
    return arrays
