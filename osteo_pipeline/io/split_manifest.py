"""The split manifest: the exact data a model sees, saved with every run and read back by
evaluation, the gate and tune workers."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from osteo_pipeline.core.splits import SPLITS
from osteo_pipeline.io.reports import write_json


@dataclass(frozen=True)
class SplitManifest:
    """The exact data a model sees: every file, its label and split, and the hash naming it all."""

    data_dir: Path
    files: pd.DataFrame  # path, label, split, sha256, group (+ patient, exam, side, sex, age)
    dataset_hash: str
    excluded: list[dict[str, str]]
    seed: int
    patient_check: dict[str, object] | None = None  # no patient or group in two splits

    def counts(self) -> dict[str, dict[str, int]]:
        table = self.files.groupby(["split", "label"]).size()
        return {s: {lab: int(n) for lab, n in table.get(s, pd.Series()).items()} for s in SPLITS}

    def subset(self, split: str) -> pd.DataFrame:
        return self.files[self.files["split"] == split].reset_index(drop=True)

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset_hash": self.dataset_hash,
            "data_dir": str(self.data_dir),
            "seed": self.seed,
            "counts": self.counts(),
            "excluded": self.excluded,
            "patient_check": self.patient_check,
            "files": self.files.to_dict(orient="records"),
        }

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> SplitManifest:
        return cls(
            data_dir=Path(payload["data_dir"]),
            files=pd.DataFrame.from_records(payload["files"]),
            dataset_hash=payload["dataset_hash"],
            excluded=payload["excluded"],
            seed=payload["seed"],
            patient_check=payload.get("patient_check"),
        )

    def file_paths(self, frame: pd.DataFrame, data_dir: Path | None = None) -> list[Path]:
        """The files of ``frame``'s rows (a subset of ``files``), under ``data_dir`` when the data
        has moved: a folder's paths, or a clinical manifest's rows."""
        from osteo_pipeline.io.sources import locate

        return locate(data_dir or self.data_dir, list(frame["path"]), list(frame["sha256"]))

    def save(self, path: Path) -> Path:
        return write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: Path) -> SplitManifest:
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
