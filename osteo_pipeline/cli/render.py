"""The terminal renderers (rich) of the typed summaries in ``osteo_pipeline.core.summaries``."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from osteo_pipeline.core.summaries import MetricsTable, ValidationSummary, number

LISTED_IDS = 8  # files named per failed check on the terminal


def metrics_table(metrics: MetricsTable, title: str) -> Table:
    """Metric, value and 95% interval, one row each."""
    table = Table("metric", "value", "95% CI", title=title)
    for row in metrics.rows:
        interval = f"[{number(row.low)}, {number(row.high)}]" if row.has_interval else "-"
        table.add_row(row.name, number(row.value), interval)
    return table


def print_validation(summary: ValidationSummary, to: Console) -> None:
    """The verdict, the class counts, then every problem found, one line each."""
    verdict = "[bold green]PASSED[/]" if summary.passed else "[bold red]FAILED[/]"
    to.print(
        f"Validation {verdict}: {escape(summary.data_dir)} ({summary.files} files, "
        f"{summary.seconds} s)",
    )
    table = Table("class", "images", "share")
    for count in summary.class_counts():
        table.add_row(count.label, str(count.images), count.share)
    to.print(table)
    for failed in summary.expectations_not_met:
        style = "red" if failed.severity == "critical" else "yellow"
        ids, more = failed.listed_ids(LISTED_IDS)
        named = f": {', '.join(ids)}{' …' if more else ''}" if ids else ""
        to.print(
            f"[{style}]{failed.severity}[/] {escape(f'{failed.check}: {failed.observed}')} "
            f"{escape(f'(bound {failed.bound}){named}')}",
        )
    for item in summary.unreadable:
        to.print(f"[red]unreadable[/] {escape(f'{item.path}: {item.reason}')}")
    for conflict in summary.label_conflicts:
        paths, kinds = " = ".join(conflict.paths), ", ".join(conflict.kinds)
        to.print(f"[red]label conflict[/] {escape(f'{paths} ({kinds})')}")
    for hint in summary.suggestions:
        to.print(f"[cyan]to fit:[/] {escape(hint)}")
    to.print(summary.copies_line())
