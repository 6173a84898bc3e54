"""Validate a folder of labeled X-rays: scan it, run the Great Expectations suites over the
manifest and its summary tables, and report what failed by file name."""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from osteo_pipeline.config import DataSettings, Settings, load_settings, packaged_configs
from osteo_pipeline.core import quality
from osteo_pipeline.core.expectations import SUITE_NAMES, load_suite, suite_parameters
from osteo_pipeline.io.copies import Content, CopyLinks, copy_finder
from osteo_pipeline.io.manifest import Scan, display_path, scan_folder

MAX_LISTED = 25  # unexpected rows listed per failed expectation in the summary


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
            ids = [str(u["id"]) for u in failed["unexpected"][:listed]]
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


DOCS_SITE = "osteo"  # the Data Docs site a validation with a report folder builds


def _gx_context(docs_dir: Path | None):
    """A file-backed GX context under ``docs_dir`` whose Data Docs site is kept there (offline),
    or an in-memory one when there is nowhere to keep reports. One validation at a time per
    ``docs_dir`` (each flow run has its own)."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    logging.getLogger("great_expectations").setLevel(logging.ERROR)
    if docs_dir is None:
        context = gx.get_context(mode="ephemeral")
    else:
        for earlier in (
            docs_dir / "gx" / "uncommitted" / "validations",
            docs_dir / "gx" / "data_docs",
        ):
            shutil.rmtree(
                earlier, ignore_errors=True
            )  # the docs show this validation, not every one before it
        docs_dir.mkdir(parents=True, exist_ok=True)
        context = gx.get_context(mode="file", project_root_dir=str(docs_dir))
        if DOCS_SITE not in context.get_site_names():
            context.add_data_docs_site(
                DOCS_SITE,
                {
                    "class_name": "SiteBuilder",
                    "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
                    "store_backend": {
                        "class_name": "TupleFilesystemStoreBackend",
                        "base_directory": "data_docs",
                    },
                },
            )
    context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    return context


def _bound(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {
        k: kwargs[k] for k in ("min_value", "max_value", "value_set") if kwargs.get(k) is not None
    }


def _failure(result: Any, table: str, id_column: str, critical: bool) -> dict[str, Any]:
    config = result.expectation_config
    details = result.result or {}
    unexpected = [
        {
            "id": display_path(str(row.get(id_column))),
            "value": row.get(config.kwargs.get("column")),
        }
        for row in (details.get("unexpected_index_list") or [])[:MAX_LISTED]
    ]
    observed = details.get("observed_value")
    if observed is None and "unexpected_count" in details:
        observed = (
            f"{details['unexpected_count']} of {details.get('element_count', '?')} "
            "rows outside the bound"
        )
    return {
        "expectation": config.type,
        "check": config.meta.get("check", config.type),
        "table": table,
        "column": config.kwargs.get("column"),
        "bound": _bound(config.kwargs),
        "observed": observed,
        "unexpected": unexpected,
        "severity": "critical" if critical else "warning",
        "why": config.meta.get("why", ""),
    }


def _printable_ids(table: pd.DataFrame, id_column: str) -> pd.DataFrame:
    """GX reports rows by ``id_column``; file names with undecodable bytes are shown printable."""
    if table[id_column].dtype != object:
        return table
    return table.assign(
        **{
            id_column: pd.Series(
                [display_path(v) if isinstance(v, str) else v for v in table[id_column]],
                dtype=object,
                index=table.index,
            )
        }
    )


def run_suites(
    tables: dict[str, pd.DataFrame], settings: Settings, docs_dir: Path | None = None
) -> tuple[list[dict[str, Any]], str | None]:
    """Run every suite on its table through a GX Checkpoint (one per suite: each checks its own
    table) whose action builds Data Docs when ``docs_dir`` is given. Returns the failed
    expectations (critical and warnings) and the Data Docs index, if built."""
    import great_expectations as gx
    from great_expectations.checkpoint import UpdateDataDocsAction

    context = _gx_context(docs_dir)
    source = context.data_sources.add_or_update_pandas("osteo")
    params = suite_parameters(settings)
    actions = [UpdateDataDocsAction(name="data-docs", site_names=[DOCS_SITE])] if docs_dir else []
    failures = []
    for name in SUITE_NAMES:
        suite, meta = load_suite(name, settings.validation.suites_dir)
        id_column = meta["id_column"]
        batch = source.add_dataframe_asset(name).add_batch_definition_whole_dataframe("all")
        definition = context.validation_definitions.add_or_update(
            gx.ValidationDefinition(
                name=name, data=batch, suite=context.suites.add_or_update(suite)
            )
        )
        checkpoint = context.checkpoints.add_or_update(
            gx.Checkpoint(
                name=f"osteo-{name}",
                validation_definitions=[definition],
                actions=actions,
                result_format={
                    "result_format": "COMPLETE",
                    "unexpected_index_column_names": [id_column],
                },
            )
        )
        outcome = checkpoint.run(
            batch_parameters={"dataframe": _printable_ids(tables[name], id_column)},
            expectation_parameters=params,
        )
        for suite_result in outcome.run_results.values():
            for result in suite_result.results:
                if result.success:
                    continue
                config = result.expectation_config
                escalation = config.meta.get("critical_when")
                critical = str(
                    getattr(config.severity, "value", config.severity)
                ) == "critical" or (escalation is not None and bool(_setting(settings, escalation)))
                failures.append(_failure(result, name, id_column, critical))
    index = docs_dir / "gx" / "data_docs" / "index.html" if docs_dir else None
    return failures, str(index) if index is not None and index.is_file() else None


def _setting(settings: Settings, dotted: str) -> Any:
    value: Any = settings
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


def find_copies(manifest: pd.DataFrame, root: Path, settings: Settings) -> CopyLinks:
    """Derived-copy links among the manifest's readable contents (one file per content)."""
    usable = quality.readable(manifest).drop_duplicates("sha256")
    contents = [
        Content(r.sha256, root / r.path, (int(r.width), int(r.height))) for r in usable.itertuples()
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
    """Scan ``data_dir`` and validate it; never raises for bad files, only for a bad folder.
    With ``docs_dir``, GX keeps its context, results and Data Docs there."""
    started = time.perf_counter()
    v = settings.validation
    scan = scan_folder(data_dir, settings.data.extensions, v.max_pixels)
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
    links = find_copies(manifest, scan.root, settings) if v.derived_copies else None
    manifest["group"] = quality.copy_group_column(manifest, links.groups if links else None).astype(
        "Int64"
    )
    in_scope = manifest.loc[in_scope.index]
    groups = quality.copy_groups(manifest, links.links if links else [])
    tables = {
        "files": in_scope,
        "classes": quality.class_table(in_scope, settings.data.classes, class_dirs),
        "contents": quality.content_table(manifest),
    }
    failures, data_docs = run_suites(tables, settings, docs_dir)
    critical = {f["check"] for f in failures if f["severity"] == "critical"}
    passed = not critical
    summary = {
        "passed": passed,
        "data_dir": str(scan.root),
        "classes": list(settings.data.classes),
        "files": len(in_scope),
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
