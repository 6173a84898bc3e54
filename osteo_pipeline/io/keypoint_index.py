"""The derived-copy keypoint index's inverted lists in a file (faiss ``OnDiskInvertedLists``):
what ``io.copies`` hands :func:`~osteo_pipeline.core.copy_candidates.hamming_index` so that an
index over tens of thousands of images is memory-mapped pages the kernel can drop, not process
memory."""

from __future__ import annotations

import ctypes
import logging
import os
import shutil
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: The file's size, in keypoints' entries (a code and its id): room for faiss' lists to grow by
#: doubling without resizing the file. A sparse file takes only what is written, at most about
#: DISK_ROOM entries a keypoint, which must be free on the disk.
FILE_ROOM, DISK_ROOM = 8, 4
_STDOUT_LOCK = threading.Lock()


def lists_on_disk(path: Path, cells: int, code_size: int, keypoints: int) -> Any:
    """faiss' inverted lists in a memory-mapped file at ``path``, sized once (sparse) with room to
    grow: its pages are the kernel's to drop, not process memory. ``None`` (memory) when the disk
    lacks room for them: a full disk under a memory map kills the process without a word."""
    import faiss

    entry = code_size + 8  # a code and its id
    free = shutil.disk_usage(path.parent).free
    if free < DISK_ROOM * keypoints * entry:
        log.warning(
            "derived copies: %s has %d MB free, too little for the keypoint index (%d MB): it "
            "is kept in memory",
            path.parent,
            free // 2**20,
            DISK_ROOM * keypoints * entry // 2**20,
        )
        return None
    lists = faiss.OnDiskInvertedLists(cells, code_size, str(path))
    lists.prefetch_nthread = 0  # no prefetching threads per query: the page cache does that
    with _c_stdout_discarded():  # faiss prints each resize of the file to the C library's stdout
        lists.update_totsize(FILE_ROOM * keypoints * entry)
    return lists


@contextmanager
def _c_stdout_discarded() -> Iterator[None]:
    """Output to file descriptor 1 (C's ``printf``) discarded while inside, so that stdout stays
    what osteo prints (one thread at a time: each restores what it found)."""
    flush_c = ctypes.CDLL(None).fflush
    with _STDOUT_LOCK:
        if sys.stdout is not None:
            sys.stdout.flush()
        flush_c(None)
        saved = os.dup(1)
        try:
            with open(os.devnull, "w") as null:
                os.dup2(null.fileno(), 1)
            yield
        finally:
            flush_c(None)
            os.dup2(saved, 1)
            os.close(saved)
