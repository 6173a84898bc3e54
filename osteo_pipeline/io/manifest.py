"""Scan ``DATA_DIR/<class>/*`` into a manifest: one row per candidate image file.

Labels come from folder names. Files that cannot be used stay in the manifest with an ``error``
(so validation can fail on them by name); things that are not candidates at all (files in the
root, sub-folders, other suffixes, hidden files) are listed as ``ignored`` with the reason.
"""

from __future__ import annotations

import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from osteo_pipeline.errors import OsteoError
from osteo_pipeline.io.images import ImageFacts, inspect_image

log = logging.getLogger(__name__)
PROGRESS_EVERY = 500  # files between progress lines
MANIFEST_COLUMNS = [
    "path",
    "label",
    "format",
    "width",
    "height",
    "mode",
    "channels",
    "bytes",
    "sha256",
    "pixel_spacing_mm",
    "error",
]


class DataDirError(OsteoError, ValueError):
    """The data folder itself is unusable (missing, not a folder, unreadable)."""


@dataclass
class Scan:
    """The manifest plus what the scan saw around it."""

    root: Path
    manifest: pd.DataFrame
    class_dirs: list[str]
    ignored: list[dict[str, str]] = field(default_factory=list)
    files: dict[str, Path] | None = None
    """The file of each ``path`` when paths are not relative to ``root`` (a clinical manifest
    names its images by row)."""
    rows: pd.DataFrame | None = None
    """A clinical manifest's rows with their problems (the ``manifest`` suite's table)."""

    def file(self, path: str) -> Path:
        """The file the manifest's ``path`` names."""
        return self.files[path] if self.files is not None else self.root / path


def display_path(path: str) -> str:
    """A printable form of a file name that may hold undecodable bytes."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _escape_reason(entry: Path, root: Path) -> str | None:
    """Why a symlink may not be followed (a loop, dangling, or leaving the data folder)."""
    if not entry.is_symlink():
        return None
    try:
        target = entry.resolve(strict=True)
    except RuntimeError:
        return "symlink loop"
    except OSError as exc:
        return f"broken symlink ({exc.strerror or exc})"
    if not target.is_relative_to(root):
        return f"symlink points outside the data folder (to {display_path(str(target))})"
    return None


def _candidates(
    root: Path, extensions: set[str]
) -> tuple[list[tuple[str, str, Path | None, str | None]], list[str], list[dict[str, str]]]:
    rows: list[tuple[str, str, Path | None, str | None]] = []  # (rel path, label, file, error)
    class_dirs: list[str] = []
    ignored: list[dict[str, str]] = []

    def ignore(rel: str, reason: str) -> None:
        ignored.append({"path": display_path(rel), "reason": reason})

    for entry in sorted(root.iterdir(), key=lambda p: p.name):
        rel = entry.name
        if entry.name.startswith("."):
            continue
        escape = _escape_reason(entry, root)
        if escape:
            rows.append((rel, "", None, escape))
            continue
        if not entry.is_dir():
            ignore(
                rel, "file in the data folder's root, not inside a class folder: it has no label"
            )
            continue
        class_dirs.append(entry.name)
        try:
            children = sorted(entry.iterdir(), key=lambda p: p.name)
        except OSError as exc:
            rows.append((rel, entry.name, None, f"cannot list class folder: {exc.strerror or exc}"))
            continue
        for child in children:
            child_rel = f"{entry.name}/{child.name}"
            if child.name.startswith("."):
                continue
            escape = _escape_reason(child, root)
            if escape:
                rows.append((child_rel, entry.name, None, escape))
            elif child.is_dir():
                ignore(
                    child_rel,
                    "sub-folder inside a class folder; only DATA_DIR/<class>/* is scanned",
                )
            elif child.suffix.lower() not in extensions:
                ignore(child_rel, f"suffix {child.suffix or '(none)'!r} is not in data.extensions")
            else:
                rows.append((child_rel, entry.name, child, None))
    return rows, class_dirs, ignored


def require_folder(root: Path) -> Path:
    """``root`` if it is a folder; else a :class:`DataDirError` naming it."""
    if not root.exists():
        raise DataDirError(f"data folder not found: {root}")
    if not root.is_dir():
        raise DataDirError(f"not a folder: {root} (expected DATA_DIR/<class>/<image>)")
    return root


def inspect_all(
    rows: list[tuple[str, str, Path | None, str | None]],
    max_pixels: int,
    workers: int | None = None,
) -> pd.DataFrame:
    """The manifest of candidate files ``(path, label, file, error)``: each file's facts, read in
    parallel (``error`` set: the file is not opened)."""

    def facts(row: tuple[str, str, Path | None, str | None]) -> ImageFacts:
        _, _, file, error = row
        return ImageFacts(error=error) if file is None else inspect_image(file, max_pixels)

    started = time.perf_counter()
    all_facts = []
    with ThreadPoolExecutor(max_workers=workers or min(8, (os.cpu_count() or 1) + 2)) as pool:
        for done, fact in enumerate(pool.map(facts, rows), start=1):
            all_facts.append(fact)
            if done % PROGRESS_EVERY == 0:
                log.info("checked %d of %d files", done, len(rows))
    log.info("checked %d files in %.1f s", len(rows), time.perf_counter() - started)
    records = [
        {"path": rel, "label": label, **fact.as_dict()}
        for (rel, label, _, _), fact in zip(rows, all_facts)
    ]
    # Paths stay Python objects: file names with undecodable bytes (kept as surrogate escapes so
    # the file can still be opened) are not valid UTF-8 for pandas' Arrow-backed strings.
    manifest = pd.DataFrame(
        {
            column: pd.Series(
                [r[column] for r in records], dtype=object if column == "path" else None
            )
            for column in MANIFEST_COLUMNS
        }
    )
    for column in ("width", "height", "channels", "bytes"):
        manifest[column] = manifest[column].astype("Int64")
    return manifest


def scan_folder(
    data_dir: str | Path, extensions: list[str], max_pixels: int, workers: int | None = None
) -> Scan:
    """Build the manifest of ``data_dir``; raises :class:`DataDirError` only for the folder
    itself."""
    root = require_folder(Path(data_dir)).resolve()
    try:
        rows, class_dirs, ignored = _candidates(root, {e.lower() for e in extensions})
    except OSError as exc:
        raise DataDirError(f"cannot read data folder {root}: {exc.strerror or exc}") from exc

    manifest = inspect_all(rows, max_pixels, workers)
    return Scan(root=root, manifest=manifest, class_dirs=class_dirs, ignored=ignored)
