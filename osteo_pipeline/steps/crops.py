"""``osteo crops``: the knee crops ``model.roi: knees`` would train on, drawn on films of a folder
for a person to check. Written locally only: the figure shows patient images."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from osteo_pipeline.config import Settings
from osteo_pipeline.core import plots
from osteo_pipeline.core.preprocess import ImageDecodeError, load_gray
from osteo_pipeline.core.quality import readable
from osteo_pipeline.core.roi import knee_boxes
from osteo_pipeline.io.sources import scan_data

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class KneeCrops:
    path: Path  # the PNG written
    films: int  # films drawn
    crops: int  # knee boxes found on them
    skipped: int  # chosen films that could not be decoded


def draw_knee_crops(data_dir: Path, out_file: Path, settings: Settings, limit: int) -> KneeCrops:
    """Draw the knee boxes on up to ``limit`` readable films spread over ``data_dir`` (in path
    order) and save the grid as ``out_file``."""
    # 1. The films: readable ones, spread evenly over the folder.
    scan = scan_data(data_dir, settings)
    chosen = _spread(sorted(readable(scan.manifest)["path"]), limit)
    # 2. Their knee boxes, found on pixels decoded as training decodes them for crops.
    films, skipped = [], 0
    for path in chosen:
        try:
            gray = load_gray(
                scan.file(path), 3 * settings.model.input_size, settings.validation.max_pixels
            )
        except ImageDecodeError as exc:
            log.warning("%s: skipped (%s)", path, exc)
            skipped += 1
            continue
        films.append((path, gray, [(b.left, b.top, b.side) for b in knee_boxes(gray)]))
    # 3. The figure.
    out_file.parent.mkdir(parents=True, exist_ok=True)
    plots.knee_crop_grid(films).savefig(out_file, dpi=100)
    return KneeCrops(out_file, len(films), sum(len(boxes) for _, _, boxes in films), skipped)


def _spread(paths: list[str], limit: int) -> list[str]:
    """At most ``limit`` of ``paths``, evenly spaced from the first to the last."""
    if not paths:
        return []
    picks = np.linspace(0, len(paths) - 1, min(limit, len(paths))).round().astype(int)
    return [paths[i] for i in picks]
