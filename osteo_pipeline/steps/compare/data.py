"""What every system of a comparison indexes into: the folder's usable images with their labels
and file metadata, and their pixels per (input size, roi), decoded once and cached."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from osteo_pipeline.config import Settings
from osteo_pipeline.core.splits import dataset_hash
from osteo_pipeline.io.sources import locate
from osteo_pipeline.steps.split import usable_images
from osteo_pipeline.steps.validate import ValidationResult, validate_folder
from osteo_pipeline.training.arrays import Arrays, pixel_cache


@dataclass
class Data:
    """Everything the folds index into: one row per usable image."""

    root: Path
    frame: pd.DataFrame  # path, label, sha256, group + manifest metadata
    labels: np.ndarray
    excluded: list[dict[str, str]]
    identity: str
    # every image by (input size, roi), filled by ``ensure_pixels`` before a system needs it
    pixels: dict[tuple[int, str], Arrays] = field(default_factory=dict)
    validation: ValidationResult | None = None  # the recipe's study is found from its split

    def arrays(self, size: int, rows: np.ndarray, roi: str = "image") -> Arrays:
        return self.pixels[(size, roi)].select(rows)

    def images(self) -> list[Path]:
        """Every usable image's file, in row order."""
        return locate(self.root, list(self.frame["path"]))


def load_data(data_dir: Path, settings: Settings) -> Data:
    """Validate the folder and collect its usable images (conflicts excluded) with metadata."""
    validation = validate_folder(data_dir, settings)
    frame, excluded = usable_images(validation, settings)
    manifest = validation.scan.manifest.drop_duplicates("path").set_index("path")
    frame = (
        frame.join(manifest[["width", "height", "mode", "format", "bytes"]], on="path")
        .sort_values("path")
        .reset_index(drop=True)
    )
    index = {c: i for i, c in enumerate(settings.data.classes)}
    labels = frame["label"].map(index).to_numpy(dtype=np.int64)
    identity = dataset_hash(frame.assign(split="all"))
    return Data(validation.scan.root, frame, labels, excluded, identity, {}, validation)


def ensure_pixels(data: Data, size: int, settings: Settings, roi: str = "image") -> None:
    """Decode every image at ``size`` px as ``roi`` once (through the pixel cache)."""
    if (size, roi) not in data.pixels:
        cache = pixel_cache(settings, size, roi)
        pixels = cache.load(data.images(), list(data.frame["sha256"]))
        data.pixels[(size, roi)] = Arrays(
            pixels, data.labels, list(data.frame["path"]), cache.views
        )
