"""Clinical facts as pure functions: WHO labels from T-scores, pseudonyms for patient IDs, the
groups images must not be split across, and the check that no patient crosses a split or fold."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping, Sequence
from datetime import date, datetime

import numpy as np
import pandas as pd

from osteo_pipeline.errors import CheckFailedError

NORMAL, OSTEOPENIA, OSTEOPOROSIS = "normal", "osteopenia", "osteoporosis"
SIDES = {"L": "L", "LEFT": "L", "R": "R", "RIGHT": "R", "B": "both", "BOTH": "both"}
SEXES = {"F": "F", "FEMALE": "F", "M": "M", "MALE": "M", "O": "O", "OTHER": "O"}


class PatientOverlapError(CheckFailedError):
    """A patient's images lie in two parts of a split or fold: the test would see a trained-on
    person."""


def who_label(t_score: float, normal_min: float = -1.0, osteoporosis_max: float = -2.5) -> str:
    """The WHO category of a T-score: normal at or above ``normal_min``, osteoporosis at or below
    ``osteoporosis_max``, osteopenia between."""
    if t_score >= normal_min:
        return NORMAL
    if t_score <= osteoporosis_max:
        return OSTEOPOROSIS
    return OSTEOPENIA


def pseudonym(key: bytes, patient_id: str) -> str:
    """A keyed hash (HMAC-SHA256, 16 hex digits) that stands in for ``patient_id``: the same
    patient gets the same pseudonym under one key, and nobody without the key can test a guess."""
    return hmac.new(key, patient_id.strip().encode("utf-8"), hashlib.sha256).hexdigest()[:16]


def joint_groups(copy_group: Sequence[int], patient: Sequence[object]) -> np.ndarray:
    """Group numbers (0..k-1) for rows joined by a shared copy group or a shared patient: the
    union of both relations, so a patient's other knee and a copy of that film stay together.
    Rows without a patient (``None``/NaN/"") are joined by their copy group only."""
    parent = list(range(len(copy_group)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first: dict[tuple[str, object], int] = {}
    for row, keys in enumerate(zip(copy_group, patient)):
        for kind, key in zip(("copy", "patient"), keys):
            if key is None or (isinstance(key, float) and np.isnan(key)) or key == "":
                continue
            if (kind, key) in first:
                parent[root(row)] = root(first[(kind, key)])
            else:
                first[(kind, key)] = row
    return pd.factorize(np.array([root(i) for i in range(len(parent))]))[0]


def group_strata(
    labels: Sequence[str], groups: Sequence[int], classes: Sequence[str]
) -> np.ndarray:
    """Each row's stratum: the most severe label of its group (classes are listed mildest first),
    so a patient is stratified as the worst of their exams."""
    rank = {name: i for i, name in enumerate(classes)}
    frame = pd.DataFrame({"rank": [rank[label] for label in labels], "group": groups})
    worst = frame.groupby("group")["rank"].transform("max").to_numpy()
    return np.array([classes[i] for i in worst], dtype=object)


def overlap_check(parts: Mapping[str, Sequence[object]], what: str) -> dict[str, object]:
    """Check that no patient (or group) appears in two of ``parts`` (name -> keys of its rows);
    the result says what was checked. Raises :class:`PatientOverlapError` naming the parts and
    how many patients they share, never who."""
    seen: dict[object, str] = {}
    shared: dict[tuple[str, str], int] = {}
    for name, keys in parts.items():
        for key in {k for k in keys if not pd.isna(k) and k != ""}:
            if key in seen and seen[key] != name:
                pair = (seen[key], name)
                shared[pair] = shared.get(pair, 0) + 1
            seen.setdefault(key, name)
    if shared:
        listed = ", ".join(f"{a} and {b} share {n}" for (a, b), n in sorted(shared.items()))
        raise PatientOverlapError(f"patients cross the parts of {what}: {listed}")
    return {"what": what, "parts": len(parts), "patients": len(seen), "shared": 0}


def parse_date(text: str) -> date | None:
    """A date written YYYY-MM-DD, YYYYMMDD (DICOM) or DD.MM.YYYY; ValueError otherwise."""
    for pattern in ("%Y-%m-%d", "%Y%m%d", "%d.%m.%Y"):
        try:
            return datetime.strptime(text, pattern).date()
        except ValueError:
            continue
    raise ValueError(text)


def parse_number(text: str) -> float:
    """A number (a decimal comma allowed); NaN for a blank cell, ValueError for text."""
    value = float(text.replace(",", ".")) if text else np.nan
    if text and not np.isfinite(value):
        raise ValueError(text)
    return value


def parse_age(text: str) -> float:
    """Years from ``67`` or a DICOM age string (``067Y``, ``030M``)."""
    if text[-1:].upper() in ("Y", "M", "W", "D") and text[:-1].isdigit():
        return int(text[:-1]) / {"Y": 1, "M": 12, "W": 52.18, "D": 365.25}[text[-1].upper()]
    return parse_number(text)


def normal_cell(column: str, value: str) -> str:
    """A cell in one spelling, to compare a manifest with DICOM tags (L = left, 067Y = 67)."""
    if column == "side":
        return SIDES.get(value.upper(), value)
    if column == "sex":
        return SEXES.get(value.upper(), value)
    if column == "study_date":
        try:
            return str(parse_date(value))
        except ValueError:
            return value
    if column == "age":
        try:
            return f"{parse_age(value):.0f}"
        except ValueError:
            return value
    return value.upper() if column == "view" else value


#: The start of ``row_label``'s problem for a label outside ``data.classes``.
UNLISTED = "not one of data.classes"


def row_label(
    written: str, t_score: float, classes: Sequence[str], cutoffs: tuple[float, float]
) -> tuple[str | None, str | None]:
    """A manifest row's label (``written`` as one of ``classes``, in any case, else the T-score's
    WHO category under ``cutoffs``: normal min, osteoporosis max, spelt as in ``classes`` when
    there) and what is wrong with it. Neither ever holds the cell itself unless it is a class: a
    patient ID pasted into the label column must not be printed."""
    spelt = {name.lower(): name for name in classes}
    label = spelt.get(written.lower()) if written else None
    if written and label is None:
        return None, f"{UNLISTED} ({', '.join(classes)})"
    if np.isfinite(t_score):
        by_t = who_label(t_score, *cutoffs)
        by_t = spelt.get(by_t, by_t)
        if label and label != by_t:
            return label, f"label {label} but T-score {t_score:g} is {by_t}"
        return label or by_t, None
    if not label:
        return None, "neither a label nor a T-score"
    return label, None
