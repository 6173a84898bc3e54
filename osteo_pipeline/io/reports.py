"""Write a validation result to disk: self-contained HTML (works offline), JSON summary, manifest."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import great_expectations as gx
import pandas as pd
from jinja2 import Environment, PackageLoader, select_autoescape

_ENV = Environment(loader=PackageLoader("osteo_pipeline.io", "templates"), autoescape=select_autoescape())


def write_json(path: Path, payload: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str))
    tmp.replace(path)  # atomic: a crash never leaves half a file where a whole one was
    return path


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
    paths["html"].write_text(html, encoding="utf-8")
    write_json(paths["summary"], summary)
    manifest.to_csv(paths["manifest"], index=False, errors="surrogateescape")
    return paths
