"""Typed views of the two results shown everywhere: a batch's validation summary and a table of
metrics with their intervals. Each format has one renderer: markdown here (Prefect artifacts, the
model card), the terminal in the CLI (``osteo_pipeline.cli.render``) and HTML in the validation
report's template (``osteo_pipeline/io/templates``). The JSON form stays the step's dict."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def finite(value: float | None) -> bool:
    """A number to show: results read back from JSON hold null for a missing value (no CI, no
    AUC), fresh ones NaN."""
    return value is not None and math.isfinite(value)


def number(value: float | None) -> str:
    """Three decimals, or ``-`` for a missing value."""
    return f"{value:.3f}" if finite(value) else "-"


@dataclass(frozen=True)
class MetricEstimate:
    """One metric's value and its 95% interval (``low``/``high`` missing when it has none)."""

    name: str
    value: float | None
    low: float | None = None
    high: float | None = None

    @property
    def has_interval(self) -> bool:
        return finite(self.low) and finite(self.high)


@dataclass(frozen=True)
class MetricsTable:
    """Metrics with intervals, as evaluation, refit and CV report them."""

    rows: tuple[MetricEstimate, ...]

    @classmethod
    def from_dict(cls, metrics: Mapping[str, Mapping[str, float | None]]) -> MetricsTable:
        """From ``{metric: {"value", "low", "high"}}``, the form every step returns."""
        return cls(
            tuple(
                MetricEstimate(name, v.get("value"), v.get("low"), v.get("high"))
                for name, v in metrics.items()
            )
        )

    def to_markdown(self, value_header: str = "value", interval_header: str = "95% CI") -> str:
        lines = [f"| metric | {value_header} | {interval_header} |", "|---|---|---|"]
        lines += [
            f"| {m.name} | {number(m.value)} | "
            + (f"{number(m.low)} – {number(m.high)} |" if m.has_interval else "- |")
            for m in self.rows
        ]
        return "\n".join(lines)


@dataclass(frozen=True)
class FileNote:
    """A file (or folder) and why it was rejected or left out."""

    path: str
    reason: str


@dataclass(frozen=True)
class Unexpected:
    """A row outside an expectation's bound: its file (or class) and the value found."""

    id: str
    value: Any


def named_row(row_id: str, column: str | None, value: Any) -> str:
    """How a failing row is named: a file by its path; a clinical manifest's row (``row 7``) with
    the column and what it holds, since the row alone does not say what to fix."""
    return f"{row_id}, column {column}: {value}" if str(row_id).startswith("row ") else row_id


@dataclass(frozen=True)
class FailedExpectation:
    """A Great Expectations check the batch did not meet; ``critical`` ones fail validation."""

    check: str
    expectation: str
    table: str
    column: str | None
    bound: dict[str, Any]
    observed: Any
    unexpected: tuple[Unexpected, ...]
    severity: str
    why: str

    def listed_ids(self, limit: int) -> tuple[list[str], bool]:
        """The first ``limit`` rows' ids (a manifest's rows with the column and what is in it),
        and whether more were found."""
        return [named_row(u.id, self.column, u.value) for u in self.unexpected[:limit]], len(
            self.unexpected
        ) > limit


@dataclass(frozen=True)
class LabelConflict:
    """Copies of one radiograph filed under different classes."""

    paths: tuple[str, ...]
    labels: tuple[str, ...]
    kinds: tuple[str, ...]


@dataclass(frozen=True)
class CopyCheck:
    """What the derived-copy search did (it is optional: ``validation.derived_copies``)."""

    checked: bool
    links: int
    matched_now: int
    seconds: float


@dataclass(frozen=True)
class ClassCount:
    label: str
    images: int
    share: str  # of the readable images, e.g. "12.5%"; "-" when none is readable


@dataclass(frozen=True)
class ValidationSummary:
    """What ``osteo validate`` found in a batch, read from the step's JSON summary."""

    passed: bool
    data_dir: str
    files: int
    readable: int
    seconds: float
    counts: dict[str, int]
    failed_expectations: tuple[FailedExpectation, ...]
    warnings: tuple[FailedExpectation, ...]
    suggestions: tuple[str, ...]
    unreadable: tuple[FileNote, ...]
    label_conflicts: tuple[LabelConflict, ...]
    duplicate_groups: tuple[tuple[str, ...], ...]
    copy_groups: int
    derived_copies: CopyCheck
    ignored: tuple[FileNote, ...]
    data_docs: str | None

    @classmethod
    def from_dict(cls, summary: Mapping[str, Any]) -> ValidationSummary:
        """From ``steps.validate``'s summary (the dict written to ``validation.json``)."""

        def expectations(key: str) -> tuple[FailedExpectation, ...]:
            return tuple(
                FailedExpectation(
                    check=f["check"],
                    expectation=f["expectation"],
                    table=f["table"],
                    column=f["column"],
                    bound=f["bound"],
                    observed=f["observed"],
                    unexpected=tuple(Unexpected(u["id"], u["value"]) for u in f["unexpected"]),
                    severity=f["severity"],
                    why=f["why"],
                )
                for f in summary[key]
            )

        copies = summary["derived_copies"]
        return cls(
            passed=bool(summary["passed"]),
            data_dir=summary["data_dir"],
            files=summary["files"],
            readable=summary["readable"],
            seconds=summary["seconds"],
            counts=dict(summary["counts"]),
            failed_expectations=expectations("failed_expectations"),
            warnings=expectations("warnings"),
            suggestions=tuple(summary["suggestions"]),
            unreadable=tuple(FileNote(u["path"], u["reason"]) for u in summary["unreadable"]),
            label_conflicts=tuple(
                LabelConflict(tuple(c["paths"]), tuple(c["labels"]), tuple(c["kinds"]))
                for c in summary["label_conflicts"]
            ),
            duplicate_groups=tuple(tuple(g) for g in summary["duplicate_groups"]),
            copy_groups=len(summary["copy_groups"]),
            derived_copies=CopyCheck(
                checked=bool(copies["checked"]),
                links=copies["links"],
                matched_now=copies["matched_now"],
                seconds=copies["seconds"],
            ),
            ignored=tuple(FileNote(i["path"], i["reason"]) for i in summary["ignored"]),
            data_docs=summary.get("data_docs"),
        )

    @property
    def verdict(self) -> str:
        return "passed" if self.passed else "FAILED"

    @property
    def expectations_not_met(self) -> tuple[FailedExpectation, ...]:
        """Critical failures first, then warnings."""
        return self.failed_expectations + self.warnings

    def class_counts(self) -> list[ClassCount]:
        return [
            ClassCount(label, n, f"{n / self.readable:.1%}" if self.readable else "-")
            for label, n in self.counts.items()
        ]

    def copies_line(self) -> str:
        """Duplicates, copies and left-out entries in one sentence."""
        copies = self.derived_copies
        found = (
            f"({copies.links} derived-copy links, {copies.matched_now} contents matched now in "
            f"{copies.seconds} s)"
            if copies.checked
            else "(derived copies not checked)"
        )
        return (
            f"{len(self.duplicate_groups)} exact-duplicate groups, {self.copy_groups} groups of "
            f"copies {found}, {len(self.ignored)} ignored entries"
        )

    def to_markdown(self, report: Path | str, listed: int = 10) -> str:
        """A Prefect artifact: the verdict, classes, what failed (``listed`` files per check and
        in all) and where the full report is."""
        lines = [
            f"## Validation {self.verdict}: `{self.data_dir}`",
            "",
            "| class | images | share |",
            "|---|---|---|",
            *(f"| {c.label} | {c.images} | {c.share} |" for c in self.class_counts()),
            "",
        ]
        for failed in self.expectations_not_met:
            ids, more = failed.listed_ids(listed)
            lines.append(
                f"- **{failed.severity}** `{failed.check}`: {failed.observed} (bound "
                f"{failed.bound}) {', '.join(f'`{i}`' for i in ids)}{' …' if more else ''}"
            )
        lines += [f"- unreadable `{u.path}`: {u.reason}" for u in self.unreadable[:listed]]
        lines += [
            f"- label conflict: {' = '.join(c.paths)} ({', '.join(c.kinds)})"
            for c in self.label_conflicts
        ]
        lines += [f"- to fit: {hint}" for hint in self.suggestions]
        lines += ["", f"{self.copies_line()}.", f"Full report: `{report}`"]
        return "\n".join(lines)
