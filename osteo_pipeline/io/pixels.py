"""Decode-once pixel cache: each image is decoded and resized once per (content, input size).

Native radiographs are up to 2,660 px: decoding them per epoch or per trial would dominate the
run. With a cache folder, each image's arrays are kept on disk as
``<dir>/v<preprocessing version>/<size>[-knees<roi version>]/<sha256>.npy`` (gray, uint8, one
per view: the film, or each knee crop), so later runs and trials skip decoding too. Keys are
content hashes, so an edited file is a new key, and the preprocessing version is part of the
path, so a change to preprocessing is a miss, never a stale hit.

A list of images is returned as a **shard**: one ``.npy`` file per list (named by the hash of its
content hashes, so a dataset version's splits are written once and reread by every trial),
memory-mapped. Memory then holds what the input pipeline is reading, not the dataset: a run's
anonymous memory stays flat as the dataset grows, and the operating system's page cache holds
the pixels while they fit (bench/scale.py). Without a cache folder (small evaluations) the
pixels are held in memory as before."""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from osteo_pipeline.core import preprocess, roi
from osteo_pipeline.core.preprocess import load_gray_views, views_per_image

DECODE_CHUNK = 256  # images decoded ahead of the shard writer
SHARDS_KEPT = 12  # per size and roi: a few dataset versions' splits, compare's and evaluations'


def three_channels(gray: np.ndarray) -> np.ndarray:
    """N x S x S gray as a read-only N x S x S x 3 view (the channel repeated without copying):
    the layout the model's inputs have, at a third of the memory or disk."""
    return np.lib.stride_tricks.as_strided(
        gray, shape=(*gray.shape, 3), strides=(*gray.strides, 0), writeable=False
    )


def _root(array: np.ndarray) -> object:
    """The object that owns ``array``'s memory (an array, or a memory map)."""
    node: object = array
    while getattr(node, "base", None) is not None:
        node = node.base  # type: ignore[attr-defined]
    return node


def join_rows(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """``first`` then ``second`` (rows of pixels): a view when ``second`` follows ``first`` in the
    same buffer (the splits of one shard), else a copy of their one gray channel."""
    if not len(first) or not len(second):
        return second if not len(first) else first
    if (
        first.dtype == second.dtype
        and first.strides == second.strides
        and first.shape[1:] == second.shape[1:]
        and _root(first) is _root(second)
        and first.__array_interface__["data"][0] + len(first) * first.strides[0]
        == second.__array_interface__["data"][0]
    ):
        return np.lib.stride_tricks.as_strided(
            first, shape=(len(first) + len(second), *first.shape[1:]), writeable=False
        )
    return three_channels(np.concatenate([first[..., 0], second[..., 0]]))


def gather_rows(pixels: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``pixels[rows]`` (any rows, in any order) as a new read-only array: their one gray channel,
    seen as three, copied a chunk at a time into an unlinked temporary file (``$TMPDIR``) mapped
    into memory. Its pages are file-backed, so a fold of a large set is held by the page cache
    like the shard it comes from, not by the process's own memory; the file goes with the
    array."""
    rows = np.asarray(rows, dtype=np.int64)
    shape = (len(rows), *pixels.shape[1:3])
    if not len(rows):
        return three_channels(np.empty(shape, pixels.dtype))
    with tempfile.TemporaryFile(prefix="osteo-rows-") as backing:
        gray = np.memmap(backing, dtype=pixels.dtype, mode="w+", shape=shape)
    for start in range(0, len(rows), DECODE_CHUNK):
        gray[start : start + DECODE_CHUNK] = pixels[rows[start : start + DECODE_CHUNK], ..., 0]
    return three_channels(gray)


def decode_workers() -> int:
    """Threads that read and decode image files (file I/O and OpenCV release the GIL)."""
    return min(8, (os.cpu_count() or 1) + 2)


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
        self.decoded = 0  # images actually decoded (cache misses), for benchmarks and tests

    def _one(self, path: Path, sha256: str) -> np.ndarray:
        stored = self.folder / f"{sha256}.npy" if self.folder else None
        if stored is not None and stored.is_file():
            try:
                gray = np.load(stored)
                if gray.shape == (self.views, self.size, self.size):
                    return gray
            except (OSError, ValueError):
                pass  # a torn or foreign file: decode again and overwrite it
        gray = load_gray_views(path, self.size, self.max_pixels, self.roi)
        self.decoded += 1
        if stored is not None:
            stored.parent.mkdir(parents=True, exist_ok=True)
            _save_atomic(stored, gray)
        return gray

    def _decoded(self, paths: list[Path], sha256s: list[str]):  # noqa: ANN202 - an iterator
        """(sha256, views) of each distinct image, decoding in threads, a chunk at a time (memory
        holds a chunk, not the dataset). Identical files (same hash) are decoded once, never by
        two threads at a time."""
        unique = list(dict(zip(sha256s, paths)).items())
        with ThreadPoolExecutor(max_workers=decode_workers()) as pool:
            for start in range(0, len(unique), DECODE_CHUNK):
                chunk = unique[start : start + DECODE_CHUNK]
                yield from zip(
                    (sha for sha, _ in chunk),
                    pool.map(self._one, (p for _, p in chunk), (sha for sha, _ in chunk)),
                )

    def load(self, paths: list[Path], sha256s: list[str]) -> np.ndarray:
        """(N x views) x size x size x 3 uint8 pixels, read-only, in the order given, each
        image's views in a row: a memory-mapped shard with a cache folder, else in memory."""
        shape = (len(sha256s) * self.views, self.size, self.size)
        if not paths:
            return three_channels(np.zeros(shape, dtype=np.uint8))
        if self.folder is None:
            decoded = dict(self._decoded(paths, sha256s))
            return three_channels(np.concatenate([decoded[sha] for sha in sha256s]))
        listed = hashlib.sha256(" ".join(sha256s).encode()).hexdigest()
        shard = self.folder / "shards" / f"{listed}.npy"
        if not _readable(shard, shape):
            self._write_shard(shard, shape, paths, sha256s)
        return three_channels(np.load(shard, mmap_mode="r"))

    def _write_shard(
        self, shard: Path, shape: tuple[int, ...], paths: list[Path], sha256s: list[str]
    ) -> None:
        """The shard, written image by image (memory holds one image at a time), then renamed."""
        rows: dict[str, list[int]] = {}
        for i, sha in enumerate(sha256s):
            rows.setdefault(sha, []).append(i)
        shard.parent.mkdir(parents=True, exist_ok=True)
        _prune(shard.parent)
        tmp = shard.with_suffix(f".{uuid.uuid4().hex}.tmp")  # unique across processes and hosts
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
        try:
            for sha, gray in self._decoded(paths, sha256s):
                for i in rows[sha]:
                    out[i * self.views : (i + 1) * self.views] = gray
            out.flush()
            del out
            os.replace(tmp, shard)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


def _readable(shard: Path, shape: tuple[int, ...]) -> bool:
    """A whole shard of this shape (its use time refreshed, for ``_prune``)."""
    try:
        if np.load(shard, mmap_mode="r").shape != shape:
            return False
        os.utime(shard)
        return True
    except (OSError, ValueError):
        return False


def _prune(folder: Path) -> None:
    """Keep the ``SHARDS_KEPT`` most recently used shards of a variant, and no temporary file a
    writer left more than a day ago (killed): the per-image files stay, so a pruned shard is
    rebuilt from them without decoding."""
    shards = sorted(folder.glob("*.npy"), key=lambda f: f.stat().st_mtime, reverse=True)
    stale = [f for f in folder.glob("*.tmp") if time.time() - f.stat().st_mtime > 86400]
    for old in [*shards[SHARDS_KEPT - 1 :], *stale]:
        old.unlink(missing_ok=True)


def _save_atomic(stored: Path, gray: np.ndarray) -> None:
    tmp = stored.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")  # unique per writer
    with tmp.open("wb") as handle:
        np.save(handle, gray)
    tmp.replace(stored)
