"""Run the Great Expectations suites over validation's tables through GX Checkpoints, keeping
GX's context and Data Docs in a report folder (offline) or in memory, and return what failed."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import pandas as pd

from osteo_pipeline.config import Settings
from osteo_pipeline.core.expectations import SUITE_NAMES, load_suite, suite_parameters
from osteo_pipeline.io.manifest import display_path

MAX_LISTED = 25  # unexpected rows listed per failed expectation in the summary


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
    """A failed expectation as the summary lists it: which rows, their values, why it matters;
    ``column`` is the one the user wrote (a manifest's ``t_score``, not ``t_score_problem``)."""
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
        "column": config.meta.get("column", config.kwargs.get("column")),
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
    table; suites without a table are skipped) whose action builds Data Docs when ``docs_dir`` is
    given. Returns the failed
    expectations (critical and warnings) and the Data Docs index, if built."""
    import great_expectations as gx
    from great_expectations.checkpoint import UpdateDataDocsAction

    context = _gx_context(docs_dir)
    source = context.data_sources.add_or_update_pandas("osteo")
    params = suite_parameters(settings)
    actions = [UpdateDataDocsAction(name="data-docs", site_names=[DOCS_SITE])] if docs_dir else []
    failures = []
    for name in [n for n in SUITE_NAMES if n in tables]:
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
