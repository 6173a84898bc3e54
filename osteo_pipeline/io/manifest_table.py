"""A clinical manifest file as a table of text cells: CSV or Parquet read alike, and the problems
that make it no table of images at all (empty, wrong delimiter, a missing or repeated column, a
row whose fields do not line up) raised as one :class:`ManifestError` (exit 2). Messages name the
known columns and row numbers only, never a cell: a file without a header would otherwise show
its first row, a path and a patient ID."""

from __future__ import annotations

import csv
from pathlib import Path

import pandas as pd

from osteo_pipeline.io.manifest import DataDirError

REQUIRED = ("path", "patient_id")
OPTIONAL = ("label", "t_score", "side", "view", "study_date", "age", "sex", "label_source")
OPTIONAL += ("dxa_date",)
KNOWN = REQUIRED + OPTIONAL


class ManifestError(DataDirError):
    """The manifest cannot be read as a table of images (exit 2); the message names the file and
    the row or column."""


def read_table(path: Path, labeled: bool = True) -> pd.DataFrame:
    """The manifest as text cells (blank for missing), columns lower-cased; structural problems
    raise :class:`ManifestError`, which names the known columns only (a file without a header
    would otherwise show its first row: a path and a patient ID). An unlabeled manifest (an
    archive to score) needs only the ``path`` column."""
    if not path.is_file():
        raise ManifestError(f"manifest not found: {path}")
    if path.stat().st_size == 0:
        raise ManifestError(
            f"{path}: empty file (expected a header row: path, patient_id, label or t_score)"
        )
    try:
        if path.suffix.lower() == ".csv":
            # blank lines are kept as rows, so ``row N`` is the Nth line below the header
            _same_field_counts(path)
            table = pd.read_csv(
                path,
                dtype=str,
                keep_default_na=False,
                encoding="utf-8-sig",
                skip_blank_lines=False,
                index_col=False,
            )
        else:
            table = _as_text(pd.read_parquet(path))
    except (ValueError, UnicodeDecodeError, OSError, ImportError) as exc:
        raise ManifestError(f"{path}: cannot read it as {path.suffix[1:]}: {exc}") from exc
    written = _header(path, table)
    names = written if len(written) == len(table.columns) else list(table.columns)
    columns = [str(c).strip().lower() for c in names]
    known = [c for c in dict.fromkeys(columns) if c in KNOWN]
    if len(columns) == 1:
        found = next((d for d in (";", "\t", "|") if d in columns[0]), None)
        if found:
            raise ManifestError(
                f"{path} row 0 (header): one column only; separate columns with commas "
                f"(found {found!r})"
            )
    repeated = sorted({c for c in columns if columns.count(c) > 1})
    if repeated:
        shown = f"column {repeated[0]!r}" if repeated[0] in KNOWN else "a column name"
        raise ManifestError(f"{path} row 0 (header): {shown} appears twice")
    table.columns = columns
    missing = [c for c in (REQUIRED if labeled else ("path",)) if c not in columns]
    if missing:
        raise ManifestError(
            f"{path} row 0 (header): missing column {missing[0]!r} (found {len(columns)} "
            f"columns; known ones: {', '.join(known) or 'none'})"
        )
    if labeled and "label" not in columns and "t_score" not in columns:
        raise ManifestError(f"{path} row 0 (header): needs a 'label' or a 't_score' column")
    while len(table) and not "".join(map(str, table.iloc[-1])).strip():
        table = table.iloc[:-1]  # blank lines at the end
    if table.empty:
        raise ManifestError(f"{path}: a header and no rows")
    for column in OPTIONAL:
        if column not in table:
            table[column] = ""
    return table.map(lambda v: str(v).strip()).reset_index(drop=True)


def _same_field_counts(path: Path) -> None:
    """A row with more or fewer fields than the header (an unquoted comma) would shift every
    column after it: refuse it by row, without showing it."""
    with open(path, newline="", encoding="utf-8-sig") as handle:
        lines = csv.reader(handle)
        width = len(next(lines, []))
        for number, fields in enumerate(lines, start=1):
            if fields and len(fields) != width and width > 1:
                raise ManifestError(
                    f"{path} row {number}: {len(fields)} fields, the header has {width} (a comma "
                    "inside a cell needs quotes)"
                )


def _as_text(table: pd.DataFrame) -> pd.DataFrame:
    """A Parquet table as the text a CSV would hold: dates as YYYY-MM-DD, whole numbers without
    ``.0`` (an ID 123 stays 123), missing as blank."""
    columns = {}
    for name in table.columns:
        values = table[name]
        if pd.api.types.is_datetime64_any_dtype(values):
            values = values.dt.strftime("%Y-%m-%d")
        elif pd.api.types.is_float_dtype(values) and (values.dropna() % 1 == 0).all():
            values = values.astype("Int64")
        columns[name] = [("" if pd.isna(v) else str(v)) for v in values.astype(object)]
    return pd.DataFrame(columns, columns=list(table.columns), dtype=object)


def _header(path: Path, table: pd.DataFrame) -> list[str]:
    """The column names as written (pandas renames a repeated ``path`` to ``path.1``)."""
    if path.suffix.lower() != ".csv":
        return list(table.columns)
    with open(path, newline="", encoding="utf-8-sig") as handle:
        return next(csv.reader(handle), [])
