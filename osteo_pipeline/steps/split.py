"""Split a validated folder into train/val/test and record it as the dataset's version."""

from __future__ import annotations

import pandas as pd

from osteo_pipeline.config import Settings
from osteo_pipeline.core import quality
from osteo_pipeline.core.clinical import group_strata, joint_groups, overlap_check
from osteo_pipeline.core.splits import SPLITS, assign_splits, dataset_hash
from osteo_pipeline.errors import CheckFailedError
from osteo_pipeline.io.clinical import key_fingerprint
from osteo_pipeline.io.split_manifest import SplitManifest
from osteo_pipeline.steps.validate import ValidationResult

#: What a clinical manifest adds to each image of a split: who (pseudonymised), which exam, and
#: the groups evaluation reports by.
CLINICAL_COLUMNS = ("patient", "exam", "side", "sex", "age")


class NotValidatedError(CheckFailedError):
    """Splitting was asked of data that failed validation."""


def usable_images(
    validation: ValidationResult, settings: Settings
) -> tuple[pd.DataFrame, list[dict[str, str]]]:
    """The readable in-scope images of a passed validation with their ``group`` of copies
    (columns path, label, sha256, group), and the label-conflicting copies left out, with
    reasons."""
    if not validation.passed:
        raise NotValidatedError(
            f"{validation.failure()}. Fix the data (`osteo validate` writes the full report); "
            "nothing was trained on it"
        )
    manifest = validation.scan.manifest
    kinds = {
        p: ", ".join(c["kinds"])
        for c in quality.label_conflicts(validation.copy_groups)
        for p in c["paths"]
    }
    usable = quality.readable(manifest)
    usable = usable[usable["label"].isin(settings.data.classes)]
    excluded_rows = usable[usable["path"].isin(kinds)]
    usable = usable[~usable["path"].isin(kinds)].reset_index(drop=True)
    copies = (
        usable["group"]
        if settings.split.group_derived_copies
        else usable.groupby("sha256").ngroup()
    )
    clinical = [c for c in CLINICAL_COLUMNS if c in usable]
    frame = usable[["path", "label", "sha256", *clinical]].assign(
        group=joint_groups(copies.to_numpy(), usable["patient"].to_numpy())
        if "patient" in usable
        else pd.factorize(copies)[0]
    )
    excluded = [
        {
            "path": r.path,
            "reason": (
                f"label conflict: copies of one radiograph ({kinds[r.path]}) "
                "filed under different classes"
            ),
        }
        for r in excluded_rows.itertuples()
    ]
    return frame, excluded


def split_dataset(validation: ValidationResult, settings: Settings) -> SplitManifest:
    """Stratified, group-aware split of the readable in-scope images of a passed validation.

    Label-conflicting copies are left out (and listed); groups of copies (identical, and derived
    unless ``split.group_derived_copies`` is off) go to one split whole."""
    frame, excluded = usable_images(validation, settings)
    fractions = {
        "train": settings.split.train,
        "val": settings.split.val,
        "test": settings.split.test,
    }
    # A group (copies of a film, and every image of its patient) is stratified as its most severe
    # label, so a patient with one osteoporotic knee counts as osteoporotic.
    strata = group_strata(frame["label"], frame["group"], list(settings.data.classes))
    frame["split"] = assign_splits(frame.assign(stratum=strata), fractions, settings.seed)
    who = "patient" if "patient" in frame else "group"
    check = overlap_check(
        {name: frame.loc[frame["split"] == name, who] for name in SPLITS}, f"the split by {who}"
    )
    if who == "patient":
        check["key"] = key_fingerprint(settings.clinical)
    columns = [
        "path",
        "label",
        "split",
        "sha256",
        "group",
        *[c for c in CLINICAL_COLUMNS if c in frame],
    ]
    frame = frame[columns].sort_values("path", key=_row_order).reset_index(drop=True)
    return SplitManifest(
        data_dir=validation.scan.root,
        files=frame,
        dataset_hash=dataset_hash(frame),
        excluded=excluded,
        seed=settings.seed,
        patient_check=check,
    )


def _row_order(paths: pd.Series) -> pd.Series:
    """Paths in file order, and manifest rows (``row 9``, ``row 10``) in row order."""
    return paths.map(
        lambda p: (0, int(p[4:]), "") if p.startswith("row ") and p[4:].isdigit() else (1, 0, p)
    )
