"""One registered model version turned into rows of scores, the same way in every engine: file
bytes in, a content hash, calibrated probabilities, the label, the risk (the calibrated
probability of the positive class) or the error that kept a file from being scored."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pandas as pd

from osteo_pipeline.core.preprocess import ImageDecodeError, load_views
from osteo_pipeline.io.pixels import decode_workers
from osteo_pipeline.io.score_store import COLUMNS, TRAILING
from osteo_pipeline.serving import OsteoClassifier, probability_column


def content_hash(content: bytes | None) -> str | None:
    """The SHA-256 a row records (``None`` for a file that could not be read)."""
    return hashlib.sha256(content).hexdigest() if content is not None else None


@dataclass(frozen=True)
class ModelRef:
    """The model a scoring run uses: where it loads from, and the registered name and version
    every row records (for a run's model: its URI and an empty version)."""

    uri: str
    name: str
    version: str


class Scorer:
    """A loaded classifier that turns file bytes into rows of scores."""

    def __init__(
        self, classifier: OsteoClassifier, ref: ModelRef, positive_class: str, batch_size: int
    ) -> None:
        self.classifier = classifier
        self.ref = ref
        self.positive = classifier.classes.index(positive_class)
        self.batch_size = batch_size

    @classmethod
    def load(cls, location: str, ref: ModelRef, positive_class: str, batch_size: int) -> Scorer:
        """The classifier at ``location`` (a model URI, or a local copy of one)."""
        import mlflow

        from osteo_pipeline.serving import served_as

        config = served_as(ref.name, ref.version) if ref.version else None
        model = mlflow.pyfunc.load_model(location, model_config=config).unwrap_python_model()
        return cls(model, ref, positive_class, batch_size)

    @property
    def probability_columns(self) -> list[str]:
        return [probability_column(c) for c in self.classifier.classes]

    @property
    def output_columns(self) -> dict[str, str]:
        """What ``rows`` computes per file beyond its path, by kind (``double`` or ``string``)."""
        numbers = ["risk", *self.probability_columns]
        return {"sha256": "string", "label": "string", **dict.fromkeys(numbers, "double")} | {
            "error": "string"
        }

    def _decode(self, raw: bytes | None) -> np.ndarray | str:
        model = self.classifier
        if raw is None:
            return "cannot read the file"
        try:
            return load_views(raw, model.size, model.max_pixels, model.roi, model.bounds)
        except ImageDecodeError as exc:
            return str(exc)

    def decode(self, contents: Sequence[bytes | None]) -> list[np.ndarray | str]:
        """Each file's model input, or why it has none; in threads."""
        with ThreadPoolExecutor(decode_workers()) as pool:
            return list(pool.map(self._decode, contents))

    def rows(
        self,
        paths: Sequence[str],
        contents: Sequence[bytes | None],
        decoded: list[np.ndarray | str] | None = None,
        hashes: Sequence[str | None] | None = None,
    ) -> pd.DataFrame:
        """One row per file: its hash and scores, or its error (hash too when it was read).
        ``decoded`` and ``hashes``: what ``decode`` and ``content_hash`` gave for ``contents``,
        when the caller has them already."""
        decoded = self.decode(contents) if decoded is None else decoded
        hashes = [content_hash(c) for c in contents] if hashes is None else hashes
        good = [i for i, d in enumerate(decoded) if not isinstance(d, str)]
        proba = np.full((len(paths), len(self.classifier.classes)), np.nan)
        for start in range(0, len(good), self.batch_size):
            chunk = good[start : start + self.batch_size]
            raw = self.classifier.predict_pixels(np.concatenate([decoded[i] for i in chunk]))
            proba[chunk] = self.classifier.calibration.probabilities(raw)
        labels = np.full(len(paths), None, dtype=object)
        if good:
            chosen = self.classifier.calibration.labels(proba[good])
            labels[good] = [self.classifier.classes[k] for k in chosen]
        frame = pd.DataFrame(
            {
                "path": list(paths),
                "sha256": list(hashes),
                "label": labels,
                "risk": proba[:, self.positive],
            }
        )
        for k, column in enumerate(self.probability_columns):
            frame[column] = proba[:, k]
        frame["error"] = [d if isinstance(d, str) else None for d in decoded]
        return frame

    def finish(self, rows: pd.DataFrame, patients: dict[str, str]) -> pd.DataFrame:
        """``rows`` with their patient (from the manifest, else empty), the model's name and
        version and the time, in the stored column order."""
        rows = rows.copy()
        rows["patient_id"] = [patients.get(p, "") for p in rows["path"]]
        rows["model_name"], rows["model_version"] = self.ref.name, self.ref.version
        rows["scored_at"] = pd.Timestamp.now(tz="UTC")
        rows["label"] = rows["label"].astype(object).where(rows["label"].notna(), None)
        rows["error"] = rows["error"].astype(object).where(rows["error"].notna(), None)
        return rows[[*COLUMNS, *self.probability_columns, *TRAILING]]
