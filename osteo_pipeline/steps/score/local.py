"""The local engine of ``osteo score``: this process, reading and decoding the next part of the
archive in threads while the model scores the current one."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import NamedTuple

import pandas as pd

from osteo_pipeline.io.archive import ArchiveFile
from osteo_pipeline.io.pixels import decode_workers
from osteo_pipeline.io.score_store import ScoreStore
from osteo_pipeline.steps.score.scorer import Scorer, content_hash

Progress = Callable[[int, int], None]  # (files handled so far, files in the archive)


@dataclass
class Tally:
    """What an engine has done so far, kept as it writes each part."""

    store: ScoreStore
    scorer: Scorer
    patients: dict[str, str]  # path -> the manifest's patient, for the worklist
    total: int  # files in the archive
    progress: Progress | None = None
    scored: int = 0
    skipped: int = 0
    errors: int = 0
    handled: int = 0

    def part(self, rows: pd.DataFrame, files: int) -> None:
        """``rows`` scored out of ``files`` handled (the rest skipped), written as one part."""
        if len(rows):
            self.store.write_part(self.scorer.finish(rows, self.patients))
            self.errors += int(rows["error"].notna().sum())
        self.scored += len(rows)
        self.skipped += files - len(rows)
        self.handled += files
        if self.progress:
            self.progress(self.handled, self.total)


class _Read(NamedTuple):
    """One archive file as read: its bytes and their hash, or why it could not be read."""

    file: ArchiveFile
    raw: bytes | None
    problem: str
    digest: str | None


def _read(file: ArchiveFile) -> _Read:
    if file.file is None:
        return _Read(file, None, file.problem, None)
    try:
        raw = file.file.read_bytes()
    except OSError as exc:
        return _Read(file, None, f"cannot read the file: {exc.strerror or exc}", None)
    return _Read(file, raw, "", content_hash(raw))


def score_locally(
    tally: Tally, files: list[ArchiveFile], done: set[tuple[str, str]], part_size: int
) -> None:
    """Score ``files`` part by part in this process, skipping ``done``, into ``tally``; the next
    part is read and decoded while the model scores this one."""
    scorer = tally.scorer
    parts = [files[i : i + part_size] for i in range(0, len(files), part_size)]

    def prepare(part: list[ArchiveFile]) -> tuple[list[_Read], list]:
        with ThreadPoolExecutor(decode_workers()) as pool:
            read = list(pool.map(_read, part))
        todo = [r for r in read if r.raw is None or (r.file.path, r.digest) not in done]
        return todo, scorer.decode([r.raw for r in todo])

    with ThreadPoolExecutor(1) as ahead:
        upcoming = ahead.submit(prepare, parts[0]) if parts else None
        for k, part in enumerate(parts):
            todo, decoded = upcoming.result()
            upcoming = ahead.submit(prepare, parts[k + 1]) if k + 1 < len(parts) else None
            rows = scorer.rows(
                [r.file.path for r in todo],
                [r.raw for r in todo],
                decoded,
                [r.digest for r in todo],
            )
            unread = {r.file.path: r.problem for r in todo if r.raw is None}
            rows.loc[rows["path"].isin(unread), "error"] = rows["path"].map(unread)
            tally.part(rows, len(part))
