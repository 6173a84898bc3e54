"""Split a validated folder into train/val/test and record it as the dataset's version."""

from __future__ import annotations

import pandas as pd

from osteo_pipeline.config import Settings
from osteo_pipeline.core import quality
from osteo_pipeline.core.splits import assign_splits, dataset_hash
from osteo_pipeline.errors import CheckFailedError
from osteo_pipeline.io.split_manifest import SplitManifest
from osteo_pipeline.steps.validate import ValidationResult


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
    group = (
        usable["group"]
        if settings.split.group_derived_copies
        else usable.groupby("sha256").ngroup()
    )
    frame = usable[["path", "label", "sha256"]].assign(group=pd.factorize(group)[0])
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
    frame["split"] = assign_splits(frame, fractions, settings.seed)
    frame = (
        frame[["path", "label", "split", "sha256", "group"]]
        .sort_values("path")
        .reset_index(drop=True)
    )
    return SplitManifest(
        data_dir=validation.scan.root,
        files=frame,
        dataset_hash=dataset_hash(frame),
        excluded=excluded,
        seed=settings.seed,
    )
