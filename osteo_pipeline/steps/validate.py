"""Validate a folder of labeled X-rays: scan it, run the Great Expectations suites over the
manifest and its summary tables, and report what failed by file name."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from osteo_pipeline.config import DataSettings, Settings, load_settings, packaged_configs
from osteo_pipeline.core import quality
from osteo_pipeline.core.summaries import named_row
from osteo_pipeline.io.copies import Content, CopyLinks, copy_finder
from osteo_pipeline.io.gx_checks import run_suites
from osteo_pipeline.io.manifest import Scan, display_path
from osteo_pipeline.io.sources import scan_data


@dataclass
class ValidationResult:
    passed: bool
    summary: dict[str, Any]
    scan: Scan
    copy_groups: list[dict[str, Any]]  # files holding copies of one radiograph, by raw path

    def failure(self, listed: int = 5) -> str:
        """One line saying which checks failed and on which files (the first ``listed``), and
        which settings would fit the data."""
        parts = []
        for failed in self.summary["failed_expectations"]:
            ids = [
                named_row(str(u["id"]), failed["column"], u["value"])
                for u in failed["unexpected"][:listed]
            ]
            parts.append(
                f"{failed['check']} ({', '.join(ids)}"
                f"{', ...' if len(failed['unexpected']) > listed else ''})"
                if ids
                else f"{failed['check']} ({failed['observed']})"
            )
        fixes = "".join(f"; to fit: {hint}" for hint in self.summary["suggestions"])
        return f"{self.summary['data_dir']} failed validation: {'; '.join(parts)}{fixes}"


def _fits_folders(data: DataSettings, class_dirs: list[str]) -> bool:
    """Whether ``data``'s classes are the class folders found (or some of them, the others left
    out by ``ignore_unlisted_classes``)."""
    classes, folders = set(data.classes), set(class_dirs)
    return classes == folders or (data.ignore_unlisted_classes and classes <= folders)


def _naming(configs: list[str], before: str, after: str = "") -> str:
    """``configs`` as ``--config NAME`` options between ``before`` and ``after``; "" for none."""
    if not configs:
        return ""
    return f"{before}{' or '.join(f'--config {name}' for name in configs)}{after}"


def suggestions(failed_checks: set[str], class_dirs: list[str], settings: Settings) -> list[str]:
    """Settings that would let the data pass the failed class and label checks, one line each,
    naming the packaged example configs (``--config NAME``) that fit these class folders."""
    if not failed_checks & {"label_set", "label_conflicts"}:
        return []
    examples = {
        name: load_settings(path, environ={})
        for name, path in sorted(packaged_configs().items())
        if name != "default"
    }
    fitting = {
        name: example
        for name, example in examples.items()
        if _fits_folders(example.data, class_dirs)
    }
    hints = []
    unlisted = [name for name in class_dirs if name not in settings.data.classes]
    if "label_set" in failed_checks and unlisted:
        several = len(unlisted) > 1
        adding = [
            name
            for name, example in fitting.items()
            if set(example.data.classes) == set(class_dirs)
        ]
        ignoring = [
            name for name, example in fitting.items() if example.data.ignore_unlisted_classes
        ]
        hints.append(
            f"class folder{'s' if several else ''} {', '.join(repr(name) for name in unlisted)} "
            f"{'are' if several else 'is'} not in data.classes "
            f"[{', '.join(settings.data.classes)}]: add {'them' if several else 'it'} "
            f"(--set 'data.classes=[{', '.join(class_dirs)}]'{_naming(adding, ', or ')}) "
            f"or set data.ignore_unlisted_classes=true{_naming(ignoring, ' (', ')')}"
        )
    if "label_conflicts" in failed_checks:
        lenient = [
            name
            for name, example in fitting.items()
            if not example.validation.fail_on_label_conflicts
        ]
        hints.append(
            "copies of one radiograph are filed under different classes: correct their labels, "
            "or set validation.fail_on_label_conflicts=false to leave them out of the split and "
            "report them" + _naming(lenient, " (", ", which fit these class folders)")
        )
    return hints


def find_copies(scan: Scan, settings: Settings) -> CopyLinks:
    """Derived-copy links among the scan's readable contents (one file per content)."""
    usable = quality.readable(scan.manifest).drop_duplicates("sha256")
    contents = [
        Content(r.sha256, scan.file(r.path), (int(r.width), int(r.height)), r.path)
        for r in usable.itertuples()
    ]
    return copy_finder(settings.validation).find(contents)


def _printable_group(group: dict[str, Any]) -> dict[str, Any]:
    return {
        "paths": [display_path(p) for p in group["paths"]],
        "labels": group["labels"],
        "links": [
            {**link, "source": display_path(link["source"]), "copy": display_path(link["copy"])}
            for link in group["links"]
        ],
    }


def validate_folder(
    data_dir: str | Path, settings: Settings, docs_dir: Path | None = None
) -> ValidationResult:
    """Scan ``data_dir`` (a folder of class folders or a clinical manifest) and validate it; never
    raises for bad files or rows, only for a bad folder or an unreadable manifest. With
    ``docs_dir``, GX keeps its context, results and Data Docs there."""
    started = time.perf_counter()
    v = settings.validation
    scan = scan_data(data_dir, settings)
    manifest = scan.manifest
    ignored = list(scan.ignored)
    class_dirs = scan.class_dirs
    in_scope = manifest
    if settings.data.ignore_unlisted_classes:
        unlisted = sorted(set(class_dirs) - set(settings.data.classes))
        ignored += [
            {
                "path": f"{name}/",
                "reason": "class folder not in data.classes (data.ignore_unlisted_classes)",
            }
            for name in unlisted
        ]
        class_dirs = [c for c in class_dirs if c in settings.data.classes]
        in_scope = manifest[manifest["label"].isin(settings.data.classes)]
    # Copies are looked for across every folder: an image also filed as another class has an
    # unreliable label even when that class is not being trained.
    links = find_copies(scan, settings) if v.derived_copies else None
    manifest["group"] = quality.copy_group_column(manifest, links.groups if links else None).astype(
        "Int64"
    )
    in_scope = manifest.loc[in_scope.index]
    groups = quality.copy_groups(manifest, links.links if links else [])
    tables = {
        "files": in_scope,
        "classes": quality.class_table(in_scope, settings.data.classes, class_dirs),
        "contents": quality.content_table(manifest),
        **({"manifest": scan.rows} if scan.rows is not None else {}),
    }
    failures, data_docs = run_suites(tables, settings, docs_dir)
    critical = {f["check"] for f in failures if f["severity"] == "critical"}
    passed = not critical
    summary = {
        "passed": passed,
        "data_dir": str(scan.root),
        "classes": list(settings.data.classes),
        "files": len(in_scope),
        "patients": int(in_scope["patient"].nunique()) if "patient" in in_scope else None,
        "readable": int(in_scope["error"].isna().sum()),
        "counts": {row.label: int(row.count) for row in tables["classes"].itertuples()},
        "unreadable": [
            {"path": display_path(r.path), "reason": r.error}
            for r in in_scope[in_scope["error"].notna()].itertuples()
        ],
        "duplicate_groups": [
            [display_path(p) for p in g] for g in quality.duplicate_groups(manifest)
        ],
        "label_conflicts": [
            {**c, "paths": [display_path(p) for p in c["paths"]]}
            for c in quality.label_conflicts(groups)
        ],
        "copy_groups": [_printable_group(g) for g in groups],
        "derived_copies": {
            "checked": v.derived_copies,
            "links": sum(len([k for k in g["links"] if k["kind"] != "exact"]) for g in groups),
            "matched_now": links.matched if links else 0,
            "seconds": round(links.seconds, 2) if links else 0.0,
        },
        "failed_expectations": [f for f in failures if f["severity"] == "critical"],
        "warnings": [f for f in failures if f["severity"] == "warning"],
        "suggestions": suggestions(critical, scan.class_dirs, settings),
        "ignored": ignored,
        "data_docs": data_docs,
        "formats": {str(k): int(n) for k, n in in_scope["format"].value_counts().items()},
        "modes": {str(k): int(n) for k, n in in_scope["mode"].value_counts().items()},
        "seconds": round(time.perf_counter() - started, 2),
    }
    return ValidationResult(passed=passed, summary=summary, scan=scan, copy_groups=groups)
