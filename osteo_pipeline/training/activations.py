"""Frozen-prefix activation cache for the search and ``osteo compare``'s pretrained systems.

A trial with unfreeze depth ``d`` never changes the backbone below its top ``d`` blocks, and every
trial starts from the same backbone weights, so the output of that frozen prefix is the same in
every trial and every cross-validation fold. It is computed once, on ``K`` fixed augmented views of
each training image and on the unaugmented validation images (with cross-validation: every image
both ways, each fold selecting its rows), and trials then train only the top blocks and the head
on it (see ``core.model.top_model``). Head-only trials train on the backbone's output and cost
almost nothing.

The backbone is ResNet-50, or any other whose cut points a ``core.model.BlockLayout`` names
(``osteo compare`` caches VGG-16 this way). Boundaries are filled lazily: the lowest one the
search space can ask for is computed from the images (one pass of most of the backbone), every
higher one from the nearest cached lower one (a few blocks), keeping the boundaries that pass
goes through on the way while they fit in memory. Arrays are held in memory up to
``budget_bytes`` and then spill to ``.npy`` memory maps in a private temporary folder, removed by
``close``."""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from osteo_pipeline.config import Settings
from osteo_pipeline.core.data import XrayAugment, augmenter
from osteo_pipeline.core.model import (
    MAX_UNFREEZE_DEPTH,
    RESNET50_LAYOUT,
    BlockLayout,
    backbone_segment,
)
from osteo_pipeline.core.preprocess import gray_model_input
from osteo_pipeline.io.pixels import join_rows
from osteo_pipeline.training.arrays import Arrays

log = logging.getLogger(__name__)


def activation_cache(
    settings: Settings,
    train: Arrays,
    val: Arrays | None = None,
    *,
    floor_depth: int | None = None,
    layout: BlockLayout = RESNET50_LAYOUT,
) -> ActivationCache | None:
    """The frozen-prefix cache, or ``None`` when disabled in config: augmented views of ``train``
    and plain ``val``; without ``val`` (cross-validation), every row of ``train`` both ways, for
    the folds to select from. ``floor_depth`` is the deepest boundary its fits will ask for
    (default: the search space's deepest with a frozen prefix), ``layout`` the backbone's cut
    points."""
    t = settings.tune
    if not t.activation_cache:
        return None
    deepest = min(t.unfreeze_depth[1], MAX_UNFREEZE_DEPTH - 1)
    epochs = settings.train.head_epochs + settings.train.finetune_epochs
    rows = np.arange(len(train.pixels))
    pixels = train.pixels if val is None else join_rows(train.pixels, val.pixels)
    val_rows = rows if val is None else np.arange(len(train.pixels), len(pixels))
    return ActivationCache(
        pixels,
        rows,
        val_rows,
        views=min(t.cache_views, epochs),  # epoch e uses view e mod K
        augment=augmenter(settings.train.augment, settings.seed),
        batch_size=settings.train.batch_size,
        floor_depth=deepest if floor_depth is None else floor_depth,
        budget_bytes=int(t.cache_memory_mb * 2**20),
        disk_budget_bytes=int(t.cache_disk_mb * 2**20),
        spill_dir=t.cache_spill_dir,
        layout=layout,
    )


def view_batches(
    pixels: np.ndarray, rows: np.ndarray, views: int, augment: XrayAugment | None, batch_size: int
) -> Iterator[tuple[int, int, np.ndarray]]:
    """(view, first position, model input batch) for ``views`` augmented passes over
    ``pixels[rows]``. Each image is augmented as key (view, its row), so an image's views are the
    same whichever rows it is cached with: a cache of one fold's rows holds exactly what a cache
    of all rows holds for them."""
    for view in range(views):
        for start in range(0, len(rows), batch_size):
            batch = rows[start : start + batch_size]
            gray = pixels[batch, ..., 0]
            x = (
                np.stack(
                    [augment(gray[i : i + 1], (view, int(row)))[0] for i, row in enumerate(batch)]
                )
                if augment is not None
                else gray.astype(np.float32)
            )
            yield view, start, gray_model_input(np.clip(x, 0.0, 255.0))


class ActivationCache:
    """Frozen-prefix activations of ``pixels``: ``views`` augmented views of ``train_rows`` (what
    trials train on) and the plain ``val_rows`` (what they are scored on). Cross-validation caches
    every row both ways once and hands each fold its rows (:meth:`fold`)."""

    def __init__(
        self,
        pixels: np.ndarray,
        train_rows: np.ndarray,
        val_rows: np.ndarray,
        *,
        views: int,
        augment: XrayAugment | None,
        batch_size: int,
        floor_depth: int,
        budget_bytes: int,
        disk_budget_bytes: int = 2**62,
        spill_dir: Path | None = None,
        layout: BlockLayout = RESNET50_LAYOUT,
    ) -> None:
        self.layout = layout
        # Without augmentation every view is the same.
        self.views = views if augment is not None else 1
        self._pixels = pixels
        self._rows = {
            "train": np.asarray(train_rows, dtype=np.int64),
            "val": np.asarray(val_rows, dtype=np.int64),
        }
        self._slots = {split: _slots(rows, len(pixels)) for split, rows in self._rows.items()}
        self._augment = augment
        self._batch_size = batch_size
        self.floor_depth = floor_depth
        self.budget_bytes = budget_bytes
        self.disk_budget_bytes = disk_budget_bytes
        self._spill_parent = spill_dir
        self._spill: Path | None = None
        self._store: dict[int, dict[str, np.ndarray]] = {}
        self.bytes_in_memory = 0
        self.bytes_on_disk = 0
        self.seconds = 0.0

    # -- the trial-facing side -------------------------------------------------------------------
    def attach(self, model: keras.Model, depths: list[int]) -> None:
        """Make sure the boundaries for ``depths`` are cached, computing missing ones with
        ``model``'s backbone. Every model attached must carry the backbone weights the first one
        had: ``training.backbone.StudyBackbone`` gives each trial the same backbone, reset to
        them."""
        for depth in sorted(set(depths), reverse=True):
            self._ensure(model, depth)

    def train(self, depth: int) -> np.ndarray:
        """K x N x activation: view ``k`` of training row ``n`` at the boundary below ``depth``."""
        return self._store[depth]["train"]

    def val(self, depth: int) -> np.ndarray:
        return self._store[depth]["val"][0]

    def fold(self, train_rows: np.ndarray, val_rows: np.ndarray) -> FoldActivations:
        """The cache seen through one fold: its training rows' views and its validation rows."""
        for split, rows in (("train", train_rows), ("val", val_rows)):
            missing = np.asarray(rows)[self._slots[split][rows] < 0]
            if len(missing):
                raise ValueError(f"rows {missing[:5].tolist()} are not cached for {split}")
        return FoldActivations(self, self._slots["train"][train_rows], self._slots["val"][val_rows])

    def describe(self) -> str:
        """What fits on this cache train on, in words for reports."""
        if self._augment is None:
            return "cached unaugmented images"
        return f"{self.views} cached augmented view{'s' if self.views > 1 else ''} per image"

    def report(self) -> dict[str, float]:
        return {
            "activation_cache_views": self.views,
            "activation_cache_boundaries": len(self._store),
            "activation_cache_memory_mb": self.bytes_in_memory / 2**20,
            "activation_cache_spilled_mb": self.bytes_on_disk / 2**20,
            "activation_cache_seconds": self.seconds,
        }

    def close(self) -> None:
        self._store.clear()
        if self._spill is not None:
            shutil.rmtree(self._spill, ignore_errors=True)
            self._spill = None

    # -- filling it ------------------------------------------------------------------------------
    def _ensure(self, model: keras.Model, depth: int) -> None:
        if depth in self._store:
            return
        started = time.perf_counter()
        lower = [d for d in self._store if d > depth]
        if not lower and depth < self.floor_depth:
            self._ensure(model, self.floor_depth)
            lower = [self.floor_depth]
        source = min(lower) if lower else None
        # A pass up from a cached boundary goes through every boundary in between: keep those
        # while they fit in memory (a later trial may ask for them), never spill them to disk.
        depths = [depth] if source is None else list(range(depth, source))
        segment = backbone_segment(model, source, depths, self.layout)
        forward = tf.function(
            lambda x: tf.nest.flatten(segment(x, training=False)), reduce_retracing=True
        )
        entries: dict[int, dict[str, np.ndarray]] = {}
        for d, output in zip(depths, segment.outputs):
            dtype = keras.backend.standardize_dtype(output.dtype)
            if not self._store and not entries:  # the first, deepest boundary: the largest
                self._fit_views(int(np.prod(output.shape[1:])) * np.dtype(dtype).itemsize)
            shapes = {
                "train": (self.views, len(self._rows["train"]), *output.shape[1:]),
                "val": (1, len(self._rows["val"]), *output.shape[1:]),
            }
            nbytes = (
                sum(int(np.prod(shape)) for shape in shapes.values()) * np.dtype(dtype).itemsize
            )
            if d == depth or self.bytes_in_memory + nbytes <= self.budget_bytes:
                entries[d] = {
                    split: self._allocate(f"d{d}-{split}", shape, dtype)
                    for split, shape in shapes.items()
                }
        for split, views in (("train", self.views), ("val", 1)):
            for view, start, x in self._inputs(source, split, views):
                for d, y in zip(depths, forward(x)):
                    if d in entries:
                        entries[d][split][view, start : start + len(y)] = np.asarray(y)
        self._store.update(entries)
        self.seconds += time.perf_counter() - started

    def _fit_views(self, image_bytes: int) -> None:
        """Fewer views when the boundaries could outgrow the memory and disk budgets: the
        deepest (``image_bytes`` per image and view) is the largest, and each of the
        ``floor_depth + 1`` a search can ask for gets an equal share."""
        share = (self.budget_bytes + self.disk_budget_bytes) // (self.floor_depth + 1)
        room = share - image_bytes * len(self._rows["val"])
        fitting = max(1, room // max(1, image_bytes * len(self._rows["train"])))
        if fitting < self.views:
            log.warning(
                "activation cache: %d augmented views per image instead of %d, to stay within "
                "tune.cache_memory_mb + tune.cache_disk_mb (%.0f MB)",
                fitting,
                self.views,
                (self.budget_bytes + self.disk_budget_bytes) / 2**20,
            )
            self.views = int(fitting)

    def _inputs(
        self, source: int | None, split: str, views: int
    ) -> Iterator[tuple[int, int, np.ndarray]]:
        """(view, first position, batch) of what a segment starting at ``source`` reads: the
        images (training ones augmented) or the cached boundary ``source``."""
        if source is None:
            yield from view_batches(
                self._pixels,
                self._rows[split],
                views,
                self._augment if split == "train" else None,
                self._batch_size,
            )
            return
        previous = self._store[source][split]
        for view in range(views):
            for start in range(0, previous.shape[1], self._batch_size):
                yield view, start, previous[view, start : start + self._batch_size]

    def _allocate(self, name: str, shape: tuple[int, ...], dtype: str) -> np.ndarray:
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        if self.bytes_in_memory + nbytes <= self.budget_bytes:
            self.bytes_in_memory += nbytes
            return np.empty(shape, dtype)
        if self._spill is None:
            if self._spill_parent is not None:
                self._spill_parent.mkdir(parents=True, exist_ok=True)
            self._spill = Path(
                tempfile.mkdtemp(prefix="osteo-activations-", dir=self._spill_parent)
            )
            log.info(
                "activation cache: beyond tune.cache_memory_mb (%.0f MB), the rest is memory-mapped"
                " files in %s",
                self.budget_bytes / 2**20,
                self._spill,
            )
        self.bytes_on_disk += nbytes
        return np.lib.format.open_memmap(
            self._spill / f"{name}.npy", mode="w+", dtype=dtype, shape=shape
        )


class FoldActivations:
    """One fold's rows of an :class:`ActivationCache`, with the cache's trial-facing methods."""

    def __init__(
        self, cache: ActivationCache, train_slots: np.ndarray, val_slots: np.ndarray
    ) -> None:
        self._cache, self._train, self._val = cache, train_slots, val_slots
        self.layout = cache.layout

    @property
    def views(self) -> int:
        """The cache's views (fewer than asked when it had to fit its budgets)."""
        return self._cache.views

    def attach(self, model: keras.Model, depths: list[int]) -> None:
        self._cache.attach(model, depths)

    def train(self, depth: int) -> FoldViews:
        """K x N_fold views, read batch by batch (never a copy of the fold's whole cache)."""
        return FoldViews(self._cache.train(depth), self._train)

    def val(self, depth: int) -> _FoldRows:
        """The fold's validation rows, read when a batch asks for them (never copied whole)."""
        return _FoldRows(self._cache.val(depth), self._val)


class FoldViews:
    """``views[k][rows]`` of one fold's rows of a K x N cache array, reading only those rows: a
    spilled (memory-mapped) cache stays on disk until a batch needs it."""

    def __init__(self, views: np.ndarray, slots: np.ndarray) -> None:
        self._views, self._slots = views, slots
        self.shape = (views.shape[0], len(slots), *views.shape[2:])

    def __len__(self) -> int:
        return self._views.shape[0]

    def __getitem__(self, view: int) -> _FoldRows:
        return _FoldRows(self._views[view], self._slots)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:  # noqa: ANN001 - NumPy's protocol
        return np.asarray(self._views[:, self._slots], dtype=dtype)


class _FoldRows:
    """``rows[slots]``, indexed (by position, slice or array) without copying all of it."""

    def __init__(self, rows: np.ndarray, slots: np.ndarray) -> None:
        self._rows, self._slots = rows, slots
        self.shape = (len(slots), *rows.shape[1:])

    def __len__(self) -> int:
        return len(self._slots)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:  # noqa: ANN001 - NumPy's protocol
        return np.asarray(self._rows[self._slots], dtype=dtype)

    def __getitem__(self, index: np.ndarray) -> np.ndarray:
        return self._rows[self._slots[index]]


def _slots(rows: np.ndarray, n: int) -> np.ndarray:
    """Position of each of ``n`` rows in ``rows`` (-1 where absent)."""
    slots = np.full(n, -1, dtype=np.int64)
    slots[rows] = np.arange(len(rows))
    return slots
