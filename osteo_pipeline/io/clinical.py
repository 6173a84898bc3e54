"""Read a clinical manifest (CSV or Parquet, one row per image) into the :class:`Scan` a class
folder gives, plus who, which knee and which exam each image is.

Columns: ``path`` (relative to the manifest's folder), ``patient_id``, and ``label`` or
``t_score``; optional ``side`` (L/R/both), ``view``, ``study_date``, ``age``, ``sex``,
``label_source`` and ``dxa_date``. A DICOM file's tags fill what a row leaves blank; a row that
disagrees with its tags is reported.

Images are named by their manifest row (``row 7``: the seventh row below the header), never by
their path: PACS exports put patient IDs in folder names, and the file names end up in reports,
split manifests and run artifacts. Patient IDs become keyed hashes (``core.clinical.pseudonym``)
as they are read; the plain ID leaves this module in no column.

A manifest that cannot be read as a table at all (empty, wrong delimiter, missing column) raises
:class:`ManifestError`; every problem of a row is a column the ``manifest`` expectation suite
checks, so all of them are reported at once, by row and column.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd

from osteo_pipeline.config import ClinicalSettings, Settings
from osteo_pipeline.core.clinical import (
    SEXES,
    SIDES,
    UNLISTED,
    normal_cell,
    parse_age,
    parse_date,
    parse_number,
    pseudonym,
    row_label,
)
from osteo_pipeline.core.preprocess import is_dicom
from osteo_pipeline.io.dicom_files import dicom_tags
from osteo_pipeline.io.manifest import Scan, inspect_all
from osteo_pipeline.io.manifest_table import ManifestError, read_table

log = logging.getLogger(__name__)
MANIFEST_SUFFIXES = (".csv", ".parquet", ".pq")
MIN_KEY_LENGTH = 32  # characters of $OSTEO_PATIENT_KEY: 16 random bytes written as hex
#: What the ``manifest`` suite checks per row, each a ``<name>_problem`` column (null: fine).
PROBLEMS = ("path", "patient", "t_score", "label", "side", "view", "date", "age", "sex", "tags")


def is_manifest(location: str | Path) -> bool:
    """Whether ``location`` names a manifest file rather than a folder of class folders."""
    path = Path(location)
    return path.suffix.lower() in MANIFEST_SUFFIXES and not path.is_dir()


def row_ref(number: int) -> str:
    """How reports, split manifests and artifacts name an image of a manifest."""
    return f"row {number}"


def patient_key(settings: ClinicalSettings) -> bytes:
    """The key of the keyed hash that stands in for patient IDs, from the environment (never
    logged). Required: without one key for every run, the patients a model trained on could not
    be recognised when it is evaluated or gated later."""
    value = os.environ.get(settings.patient_key_env, "")
    if len(value) < MIN_KEY_LENGTH:
        raise ManifestError(
            f"a clinical manifest needs a patient key of at least {MIN_KEY_LENGTH} characters in "
            f"${settings.patient_key_env}: a random secret of your own, kept "
            "for every run, e.g. python3 -c 'import secrets; print(secrets.token_hex(32))' "
            "(patient IDs become keyed hashes; a guessable key would let them be recomputed)"
        )
    return value.encode("utf-8")


def key_fingerprint(settings: ClinicalSettings) -> str:
    """Which key made a split's pseudonyms, without revealing it: a later run under another key
    cannot match patients, and says so instead of matching none."""
    return pseudonym(patient_key(settings), "osteo-pipeline key fingerprint")[:12]


def inside_folder(folder: Path, raw: str) -> tuple[Path | None, str | None]:
    """The file a ``path`` cell names, or why it may not be read."""
    if not raw:
        return None, "empty path"
    relative = PurePosixPath(raw.replace("\\", "/"))
    if relative.is_absolute() or raw[1:3] == ":/" or ".." in relative.parts:
        return None, (
            "path leaves the manifest's folder (absolute or with ..): keep the manifest in the "
            "export's top folder, paths relative to it"
        )
    file = folder / relative
    if not file.resolve().is_relative_to(folder.resolve()):
        return None, "path leaves the manifest's folder (through a symlink)"
    return file, None


@dataclass
class _Row:
    """What one manifest row says, and what is wrong with it."""

    ref: str
    cells: dict[str, str]
    file: Path | None
    problems: dict[str, str]


def _fill_from_tags(row: _Row) -> None:
    """Blank cells from the DICOM tags; a cell that disagrees with them is a problem."""
    if row.file is None or not row.file.is_file() or not is_dicom(row.file):
        return
    disagree = []
    for column, tag in dicom_tags(row.file).items():
        given = row.cells[column]
        if not tag or (column == "side" and tag.upper() not in SIDES):
            continue  # DICOM's "U" (unpaired) says nothing about the knee
        if not given:
            row.cells[column] = tag
        elif normal_cell(column, given) != normal_cell(column, tag):
            disagree.append(column)  # which, never the values (an ID, a date)
    if disagree:
        row.problems["tags"] = (
            "the DICOM tags say otherwise (the manifest's value is used) for: "
            + ", ".join(disagree)
        )


def _parse(table: pd.DataFrame, folder: Path) -> list[_Row]:
    rows = []
    for number, cells in enumerate(table.to_dict(orient="records"), start=1):
        file, path_problem = inside_folder(folder, cells["path"])
        row = _Row(row_ref(number), cells, file, {})
        if path_problem:
            row.problems["path"] = path_problem
        _fill_from_tags(row)
        rows.append(row)
    return rows


def _row_table(rows: list[_Row], settings: Settings, key: bytes) -> pd.DataFrame:
    """One record per row: the values the suite checks, each problem in its own column (what is
    wrong, never the cell itself)."""
    clinical = settings.clinical
    allowed_views = clinical.allowed_views
    records = []
    for row in rows:
        cells, problems = row.cells, dict(row.problems)
        try:
            t_score = parse_number(cells["t_score"])
        except ValueError:
            t_score, problems["t_score"] = np.nan, "not a number (write e.g. -2.7)"
        low, high = clinical.plausible_t_score
        if np.isfinite(t_score) and not low <= t_score <= high:
            t_score, problems["t_score"] = (
                np.nan,
                (f"outside clinical.plausible_t_score ({low:g} to {high:g}): a typing error?"),
            )
        label, problems["label"] = row_label(
            cells["label"],
            t_score,
            settings.data.classes,
            (clinical.normal_min_t_score, clinical.osteoporosis_max_t_score),
        )
        excluded = None
        if (problems["label"] or "").startswith(UNLISTED) and settings.data.ignore_unlisted_classes:
            problems["label"] = None
            excluded = "label not in data.classes (data.ignore_unlisted_classes)"
        if "t_score" in problems and problems["label"] == "neither a label nor a T-score":
            problems["label"] = None
        dates = {}
        for column in ("study_date", "dxa_date"):
            try:
                dates[column] = parse_date(cells[column]) if cells[column] else None
            except ValueError:
                bad = f"{column} is not a date (YYYY-MM-DD, YYYYMMDD or DD.MM.YYYY)"
                problems["date"] = f"{problems['date']}; {bad}" if "date" in problems else bad
        try:
            age = parse_age(cells["age"]) if cells["age"] else np.nan
        except ValueError:
            age, problems["age"] = np.nan, "not an age in years"
        if np.isfinite(age) and not 0 <= age <= 120:
            problems["age"] = "outside 0-120 years"
        patient = pseudonym(key, cells["patient_id"]) if cells["patient_id"] else None
        if patient is None:
            problems["patient"] = "blank, and no DICOM PatientID to fill it"
        side = SIDES.get(cells["side"].upper()) if cells["side"] else None
        if cells["side"] and side is None:
            problems["side"] = "not L, R or both (left, right also read)"
        sex = SEXES.get(cells["sex"].upper()) if cells["sex"] else None
        if cells["sex"] and sex is None:
            problems["sex"] = "not F, M or O (female, male, other also read)"
        view = cells["view"].upper() or None
        if allowed_views is not None and view not in {v.upper() for v in allowed_views}:
            problems["view"] = (
                f"{'blank, with no DICOM ViewPosition' if view is None else 'not'} one of "
                f"clinical.allowed_views ({', '.join(allowed_views)})"
            )
        records.append(
            {
                "row": row.ref,
                **{f"{name}_problem": problems.get(name) for name in PROBLEMS},
                "patient": patient,
                "t_score": t_score,
                "label": label,
                "side": side,
                "view": view,
                "age": age,
                "sex": sex,
                "label_source": cells["label_source"] or None,
                "excluded": excluded,
                # a visit: both knees and every view of one patient on one day
                "exam": pseudonym(key, f"{cells['patient_id']}|{dates.get('study_date')}")
                if patient
                else None,
                "days_to_dxa": abs((dates["study_date"] - dates["dxa_date"]).days)
                if dates.get("study_date") and dates.get("dxa_date")
                else np.nan,
            }
        )
    frame = pd.DataFrame.from_records(records)
    # The same file on two rows: named by the first row, never by its path (it may hold an ID).
    files = pd.Series([str(row.file.resolve()) if row.file else row.ref for row in rows])
    first = files.groupby(files).transform(lambda same: same.index[0] + 1)
    frame["same_file_as"] = [
        f"the same file as row {f}" if f != i + 1 else None for i, f in enumerate(first)
    ]
    # One label per knee and visit (a patient, side and study date).
    knee = frame["exam"].astype(str) + "|" + frame["side"].astype(str)
    labelled = frame["exam"].notna() & frame["label"].notna()
    per_knee = frame[labelled].groupby(knee[labelled])["label"].nunique()
    frame["exam_labels"] = knee.map(per_knee).fillna(0).astype(int)
    return frame


def _exclusion(record: pd.Series, settings: Settings) -> str | None:
    """Why a well-formed row is left out of training (not a failure), or None."""
    if isinstance(record["excluded"], str):
        return record["excluded"]
    limit = settings.clinical.max_days_xray_to_dxa
    if limit is not None:
        days = record["days_to_dxa"]
        if not np.isfinite(days):
            return "no study_date and dxa_date to check clinical.max_days_xray_to_dxa against"
        if days > limit:
            return (
                f"X-ray and density exam {days:.0f} days apart, over "
                f"clinical.max_days_xray_to_dxa={limit}"
            )
    label = record["label"]  # a class, or the WHO category of the row's T-score
    if label not in settings.data.classes:
        return f"T-score {record['t_score']:g} is {label}, not one of data.classes"
    return None


def scan_manifest(location: str | Path, settings: Settings, workers: int | None = None) -> Scan:
    """The :class:`Scan` of a manifest: its usable rows as the image manifest (named by row),
    every row with its problems as ``Scan.rows`` for the ``manifest`` suite, and the rows left out
    (with reasons) as ``ignored``."""
    path = Path(location).resolve()
    table = read_table(path)
    rows = _parse(table, path.parent)
    checked = _row_table(rows, settings, patient_key(settings.clinical))
    ignored, images = [], []
    for row, record in zip(rows, checked.to_dict(orient="records")):
        if row.file is None or any(
            isinstance(record[f"{name}_problem"], str) for name in ("label", "t_score")
        ):
            continue
        reason = _exclusion(pd.Series(record), settings)
        if reason:
            ignored.append({"path": row.ref, "reason": reason})
        else:
            images.append((row, record))
    files = {row.ref: row.file for row, _ in images}
    manifest = inspect_all(
        [(row.ref, record["label"], row.file, None) for row, record in images],
        settings.validation.max_pixels,
        workers,
    )
    manifest["error"] = [
        error.replace(str(files[ref]), ref) if isinstance(error, str) else None
        for ref, error in zip(manifest["path"], manifest["error"])
    ]
    extra = ("patient", "exam", "side", "view", "sex", "age", "t_score", "label_source")
    for column in extra:
        manifest[column] = [record[column] for _, record in images]
    return Scan(
        root=path,
        manifest=manifest,
        class_dirs=sorted(set(manifest["label"])),
        ignored=ignored,
        files=files,
        rows=checked,
    )


def manifest_files(location: Path, refs: list[str]) -> list[Path]:
    """The files of the rows ``refs`` (``row N``) of the manifest at ``location``: how a split
    manifest made from it finds its images again."""
    table = read_table(Path(location))
    folder = Path(location).resolve().parent
    files = []
    for ref in refs:
        number = int(ref.removeprefix("row "))
        if not 1 <= number <= len(table):
            raise ManifestError(f"{location} has no {ref}: was it edited since the split?")
        file, problem = inside_folder(folder, table["path"].iat[number - 1])
        if file is None:
            raise ManifestError(f"{location} {ref}, column 'path': {problem}")
        files.append(file)
    return files
