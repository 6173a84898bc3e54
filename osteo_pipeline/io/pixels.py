"""Decode-once pixel cache: each image is decoded and resized once per (content, input size).

Native radiographs are up to 2,660 px: decoding them per epoch or per trial would dominate the
run. Arrays live in memory for the run and, when a cache folder is set, on disk as
``<dir>/v<preprocessing version>/<size>[-knees<roi version>]/<sha256>.npy`` (gray, uint8, one
per view: the film, or each knee crop), so later runs and trials
skip decoding too. Keys are content hashes, so an edited file is a new key, and the preprocessing
version is part of the path, so a change to preprocessing is a miss, never a stale hit."""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from osteo_pipeline.core import preprocess, roi
from osteo_pipeline.core.preprocess import load_gray_views, views_per_image


class PixelCache:
    def __init__(
        self, size: int, max_pixels: int, cache_dir: Path | None = None, roi_mode: str = "image"
    ) -> None:
        self.size = size
        self.max_pixels = max_pixels
        self.roi = roi_mode
        self.views = views_per_image(roi_mode)
        variant = str(size) if roi_mode == "image" else f"{size}-{roi_mode}{roi.VERSION}"
        self.folder = (
            cache_dir / f"v{preprocess.PREPROCESS_VERSION}" / variant if cache_dir else None
        )
        self._memory: dict[str, np.ndarray] = {}
        self.decoded = 0  # images actually decoded (cache misses), for benchmarks and tests

    def _one(self, path: Path, sha256: str) -> np.ndarray:
        if sha256 in self._memory:
            return self._memory[sha256]
        stored = self.folder / f"{sha256}.npy" if self.folder else None
        if stored is not None and stored.is_file():
            try:
                gray = np.load(stored)
                if gray.shape == (self.views, self.size, self.size):
                    self._memory[sha256] = gray
                    return gray
            except (OSError, ValueError):
                pass  # a torn or foreign file: decode again and overwrite it
        gray = load_gray_views(path, self.size, self.max_pixels, self.roi)
        self.decoded += 1
        if stored is not None:
            stored.parent.mkdir(parents=True, exist_ok=True)
            tmp = stored.with_suffix(
                f".{os.getpid()}.{threading.get_ident()}.tmp"
            )  # unique per writer
            with tmp.open("wb") as handle:
                np.save(handle, gray)
            tmp.replace(stored)
        self._memory[sha256] = gray
        return gray

    def load(self, paths: list[Path], sha256s: list[str]) -> np.ndarray:
        """(N x views) x size x size x 3 uint8 pixels, in the order given, each image's views in a
        row. Identical files (same hash) are decoded once, never by two threads at a time."""
        if not paths:
            return np.zeros((0, self.size, self.size, 3), dtype=np.uint8)
        unique = dict(zip(sha256s, paths))
        with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 1) + 2)) as pool:
            decoded = dict(zip(unique, pool.map(self._one, unique.values(), unique.keys())))
        return np.repeat(np.concatenate([decoded[sha] for sha in sha256s])[..., None], 3, axis=3)
