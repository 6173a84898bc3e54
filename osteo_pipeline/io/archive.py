"""The files of an archive to score: a folder (any depth), a DICOM tree or a manifest (CSV or
Parquet with a ``path`` column, relative to its folder, and optionally ``patient_id``).

Each file is named as the archive names it (the manifest's cell, or the path below the folder),
so a row of scores reads the same on every machine and in every engine."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from osteo_pipeline.core.preprocess import is_dicom
from osteo_pipeline.io.clinical import inside_folder, is_manifest
from osteo_pipeline.io.manifest import DataDirError
from osteo_pipeline.io.manifest_table import read_table

log = logging.getLogger(__name__)
SKIPPED_NAMES = {"DICOMDIR"}  # a DICOM media directory, not an image


@dataclass(frozen=True)
class ArchiveFile:
    path: str  # as the archive names it
    file: Path | None  # where it is read from; None when the manifest's cell is refused
    patient_id: str = ""  # the manifest's, for the clinic's worklist only
    problem: str = ""  # why ``file`` is None


def _wanted(file: Path, relative: Path, extensions: set[str]) -> bool:
    """An image by its suffix, or a DICOM file by its content (DICOM stores name files by UID:
    no suffix, or the UID's last component read as one)."""
    if any(part.startswith(".") for part in relative.parts) or file.name in SKIPPED_NAMES:
        return False
    return file.suffix.lower() in extensions or not file.suffix or is_dicom(file)


def archive_files(source: Path, extensions: list[str]) -> list[ArchiveFile]:
    """Every file ``source`` holds, once each, sorted by path. A folder gives its files with one
    of ``extensions``, without a suffix, or with DICOM's preamble, at any depth; hidden ones are
    left out."""
    if is_manifest(source):
        table = read_table(source, labeled=False)
        files: dict[str, ArchiveFile] = {}
        for cell, patient in zip(table["path"], table.get("patient_id", [""] * len(table))):
            file, problem = inside_folder(source.parent, cell)
            files.setdefault(cell, ArchiveFile(cell, file, patient, problem or ""))
        if len(files) < len(table):
            log.warning(
                "%s: %d rows repeat a path listed above them; each file is scored once",
                source,
                len(table) - len(files),
            )
        return sorted(files.values(), key=lambda f: f.path)
    if not source.is_dir():
        raise DataDirError(f"{source}: not a folder or a manifest (.csv, .parquet) to score")
    wanted = {e.lower() for e in extensions}
    return [
        ArchiveFile(file.relative_to(source).as_posix(), file)
        for file in sorted(source.rglob("*"))
        if file.is_file() and _wanted(file, file.relative_to(source), wanted)
    ]
