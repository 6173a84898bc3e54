"""Write a validation result to disk: self-contained HTML (works offline), JSON summary, manifest."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import great_expectations as gx
import pandas as pd
from jinja2 import Environment, PackageLoader, select_autoescape

from osteo_pipeline.core.jsonable import dumps

_ENV = Environment(loader=PackageLoader("osteo_pipeline.io", "templates"), autoescape=select_autoescape())


def write_text_atomic(path: Path, text: str) -> Path:
    """Write ``text`` through a temporary file of its own in the same folder, then rename: a
    crash never leaves half a file, and two writers never share a temporary name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json(path: Path, payload: Any) -> Path:
    return write_text_atomic(path, dumps(payload))


def write_validation_report(
    summary: dict[str, Any], manifest: pd.DataFrame, report_dir: Path, max_listed: int
) -> dict[str, Path]:
    report_dir.mkdir(parents=True, exist_ok=True)
    html = _ENV.get_template("validation_report.html.j2").render(
        s=summary,
        gx_version=gx.__version__,
        max_listed=max_listed,
        dup_rows=[{"paths": g} for g in summary["duplicate_groups"]],
        near_rows=[{"paths": g} for g in summary["near_duplicates"]],
    )
    paths = {
        "html": report_dir / "validation.html",
        "summary": report_dir / "validation.json",
        "manifest": report_dir / "manifest.csv",
    }
    write_text_atomic(paths["html"], html)
    write_json(paths["summary"], summary)
    manifest.to_csv(paths["manifest"], index=False, errors="surrogateescape")
    return paths
