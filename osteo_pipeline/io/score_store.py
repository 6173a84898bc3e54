"""Where ``osteo score`` keeps its rows: ``OUT/parts/*.parquet``, one part per batch of images,
each written to a temporary name and renamed, so a kill leaves whole parts only and a resumed
run skips what they hold; ``OUT/scores.parquet`` is every part's rows in one table, rewritten at
the end of each run."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pandas as pd

SCORES = "scores.parquet"
#: The columns every row has, ahead of its ``p_<class>`` columns (in the model's class order).
COLUMNS = ("path", "sha256", "patient_id", "label", "risk")
TRAILING = ("model_name", "model_version", "scored_at", "error")


class ScoreStore:
    """The rows of one output folder, from every run and model version that wrote there."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self.parts = out_dir / "parts"

    def rows(self) -> pd.DataFrame:
        """Every row of every part (empty, without columns, before the first part)."""
        files = sorted(self.parts.glob("*.parquet")) if self.parts.is_dir() else []
        if not files:
            return pd.DataFrame()
        return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)

    def done(self, model_name: str, model_version: str) -> set[tuple[str, str]]:
        """The (path, content hash) pairs this model version has already scored or found
        undecodable; a file that could not be read at all (no hash) is tried again."""
        rows = self.rows()
        if rows.empty:
            return set()
        mine = rows[
            (rows["model_name"] == model_name)
            & (rows["model_version"] == model_version)
            & rows["sha256"].notna()
        ]
        return set(zip(mine["path"], mine["sha256"]))

    def write_part(self, rows: pd.DataFrame) -> Path:
        """One part, atomically: a reader never sees half of it."""
        self.parts.mkdir(parents=True, exist_ok=True)
        name = f"part-{pd.Timestamp.now(tz='UTC'):%Y%m%dT%H%M%S%f}-{uuid.uuid4().hex[:8]}"
        tmp = self.parts / f".{name}.tmp"
        rows.to_parquet(tmp, index=False)
        os.replace(tmp, self.parts / f"{name}.parquet")
        return self.parts / f"{name}.parquet"

    def write_scores(self) -> tuple[Path, pd.DataFrame]:
        """``scores.parquet``: every part's rows sorted by path, then time, one per (path,
        content hash, model version): a file that could not be read is tried again by each
        run, and its latest error kept."""
        rows = self.rows()
        if not rows.empty:
            rows = (
                rows.sort_values(["path", "scored_at"], kind="stable")
                .drop_duplicates(["path", "sha256", "model_name", "model_version"], keep="last")
                .reset_index(drop=True)
            )
        path = self.out_dir / SCORES
        tmp = self.out_dir / f".{SCORES}.tmp"
        self.out_dir.mkdir(parents=True, exist_ok=True)
        rows.to_parquet(tmp, index=False)
        os.replace(tmp, path)
        return path, rows
