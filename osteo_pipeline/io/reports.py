"""Write a validation result to disk: self-contained HTML (works offline), JSON summary, manifest.

The HTML is the validation summary's one HTML renderer (``templates/validation_report.html.j2``,
given the typed :class:`~osteo_pipeline.core.summaries.ValidationSummary`)."""

from __future__ import annotations

import base64
import io
import os
import tempfile
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
from jinja2 import Environment, PackageLoader, select_autoescape
from PIL import Image

from osteo_pipeline.core.jsonable import dumps
from osteo_pipeline.core.preprocess import ImageDecodeError, load_gray
from osteo_pipeline.core.summaries import ValidationSummary
from osteo_pipeline.io.manifest import display_path

if TYPE_CHECKING:
    from osteo_pipeline.io.manifest import Scan
    from osteo_pipeline.steps.validate import ValidationResult

_ENV = Environment(
    loader=PackageLoader("osteo_pipeline.io", "templates"), autoescape=select_autoescape()
)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_text_atomic(path: Path, text: str) -> Path:
    """Write ``text`` through a temporary file of its own in the same folder, then rename: a
    crash never leaves half a file, and two writers never share a temporary name. The file gets
    the permissions ``open`` would give it (the temporary one is private to its owner)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(handle, 0o666 & ~_umask())
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json(path: Path, payload: Any) -> Path:
    return write_text_atomic(path, dumps(payload))


THUMB_SIDE = 120  # px, thumbnails of copy groups in the HTML report
SHOWN_GROUPS = 100  # copy groups with thumbnails in the HTML report


def _thumbnail(path: Path, max_pixels: int) -> str | None:
    """A small JPEG data URL of ``path`` (any format the pipeline reads, DICOM included) for the
    offline report, or None when it cannot be read."""
    try:
        small = Image.fromarray(load_gray(path, 2 * THUMB_SIDE, max_pixels))
    except (ImageDecodeError, OSError):
        return None
    small.thumbnail((2 * THUMB_SIDE, THUMB_SIDE))
    buffer = io.BytesIO()
    small.save(buffer, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _copy_rows(
    scan: Scan, copy_groups: list[dict[str, Any]], manifest: pd.DataFrame, max_pixels: int
) -> list[dict[str, Any]]:
    """Groups of copies that hold a derived (not only identical) copy, conflicts first, with
    thumbnails (``copy_groups`` by raw path, as validation found them)."""
    labels = dict(zip(manifest["path"], manifest["label"]))
    groups = sorted(
        (g for g in copy_groups if any(link["kind"] != "exact" for link in g["links"])),
        key=lambda g: len(g["labels"]) == 1,
    )
    return [
        {
            "thumbs": [
                {
                    "path": display_path(p),
                    "label": labels.get(p, "?"),
                    "src": _thumbnail(scan.file(p), max_pixels),
                }
                for p in g["paths"]
            ],
            "links": [
                {**link, "source": display_path(link["source"]), "copy": display_path(link["copy"])}
                for link in g["links"]
            ],
        }
        for g in groups[:SHOWN_GROUPS]
    ]


def write_validation_report(
    result: ValidationResult, report_dir: Path, max_listed: int, max_pixels: int
) -> dict[str, Path]:
    """``validation.html`` (self-contained), ``validation.json`` (the summary) and
    ``manifest.csv``."""
    summary, manifest = ValidationSummary.from_dict(result.summary), result.scan.manifest
    report_dir.mkdir(parents=True, exist_ok=True)
    html = _ENV.get_template("validation_report.html.j2").render(
        s=summary,
        gx_version=version("great_expectations"),
        max_listed=max_listed,
        dup_rows=[{"paths": g} for g in summary.duplicate_groups],
        copy_rows=_copy_rows(result.scan, result.copy_groups, manifest, max_pixels),
    )
    paths = {
        "html": report_dir / "validation.html",
        "summary": report_dir / "validation.json",
        "manifest": report_dir / "manifest.csv",
    }
    write_text_atomic(paths["html"], html)
    write_json(paths["summary"], result.summary)
    manifest.to_csv(paths["manifest"], index=False, errors="surrogateescape")
    return paths
