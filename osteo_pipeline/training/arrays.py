"""Decoded pixels and labels of a split, as the trainer and evaluators index them."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from osteo_pipeline.config import Settings
from osteo_pipeline.io.cachedir import cache_folder
from osteo_pipeline.io.pixels import PixelCache
from osteo_pipeline.io.split_manifest import SplitManifest


@dataclass
class Arrays:
    pixels: np.ndarray  # N x S x S x 3 uint8
    labels: np.ndarray  # N class indices
    paths: list[str] = field(default_factory=list)



def pixel_cache(settings: Settings, size: int | None = None) -> PixelCache:
    """The decode-once cache at ``size`` (default: the model's input size)."""
    return PixelCache(size or settings.model.input_size, settings.validation.max_pixels, cache_folder(settings.train.cache_dir, "pixels"))


def load_arrays(split: SplitManifest, settings: Settings, cache: PixelCache) -> dict[str, Arrays]:
    """Decoded pixels and label indices per split, decoding each image once."""
    index = {c: i for i, c in enumerate(settings.data.classes)}
    arrays = {}
    for name in ("train", "val", "test"):
        subset = split.subset(name)
        paths = [split.data_dir / p for p in subset["path"]]
        arrays[name] = Arrays(cache.load(paths, list(subset["sha256"])), subset["label"].map(index).to_numpy(dtype=np.int64), list(subset["path"]))
    return arrays
