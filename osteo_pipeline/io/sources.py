"""Where labeled images come from: a folder of class folders or a clinical manifest file. Both
become one :class:`Scan`; both are found again from the location a split manifest records."""

from __future__ import annotations

from pathlib import Path

from osteo_pipeline.config import Settings
from osteo_pipeline.io.clinical import ManifestError, is_manifest, manifest_files, scan_manifest
from osteo_pipeline.io.images import sha256_file
from osteo_pipeline.io.manifest import Scan, require_folder, scan_folder


def scan_data(location: str | Path, settings: Settings) -> Scan:
    """The scan of a data folder (``<class>/<image>``) or of a manifest (CSV or Parquet)."""
    if is_manifest(location):
        return scan_manifest(location, settings)
    return scan_folder(location, settings.data.extensions, settings.validation.max_pixels)


def require_data(location: Path) -> Path:
    """``location`` if it is a folder or a manifest file; else an error naming it."""
    if is_manifest(location):
        if not location.is_file():
            raise ManifestError(f"manifest not found: {location}")
        return location
    return require_folder(location)


def locate(location: str | Path, paths: list[str], sha256s: list[str] | None = None) -> list[Path]:
    """The files ``paths`` name in the data at ``location`` (paths under a folder, or rows of a
    manifest). A manifest's rows are checked against ``sha256s``, when given: an edited or
    re-exported manifest may hold other files on the same rows."""
    if is_manifest(location):
        files = manifest_files(Path(location), list(paths))
        for path, file, sha256 in zip(paths, files, sha256s or []):
            if file.is_file() and sha256_file(file) != sha256:
                raise ManifestError(
                    f"{location} {path}: not the image the split recorded on that row (the "
                    "manifest or its files changed since); use the manifest the model trained on"
                )
        return files
    if any(str(p).startswith("row ") for p in paths):
        raise ManifestError(
            f"{location}: these images are rows of a clinical manifest; pass the manifest file"
        )
    return [Path(location) / p for p in paths]
