"""Write a synthetic labeled X-ray folder: the embedded default for the demo and for tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from osteo_pipeline.core.synth import generate
from osteo_pipeline.core.synth_copies import COPY_KINDS, derived_copy
from osteo_pipeline.errors import OsteoError

#: Where the planted derived copies are listed (hidden: scans skip it).
PLANTED = ".planted_copies.json"
#: Share of planted copies filed under another class (planted label conflicts).
MISFILED = 0.25


def save_image(image: Image.Image, path: Path, format_: str) -> None:
    """Save as ``format_`` (a Pillow format; ``JPEG-60`` sets the quality), with a clear error."""
    quality = int(format_.split("-")[1]) if "-" in format_ else 92
    options = {"quality": quality} if format_.startswith("JPEG") else {}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path, format=format_.split("-")[0], **options)
    except OSError as exc:
        raise OsteoError(f"cannot write {path}: {exc.strerror or exc}") from exc


def write_synthetic_dataset(
    out_dir: str | Path,
    classes: list[str],
    per_class: int,
    size: int,
    seed: int,
    bilateral: bool = False,
    copies: float = 0.0,
) -> dict[str, int]:
    """``OUT_DIR/<class>/<class>_NNN.(jpg|png)``; deterministic for ``seed``. Returns counts.

    ``copies``: the share of images that also get one derived copy of every kind in
    :data:`~osteo_pipeline.core.synth_copies.COPY_KINDS` (a quarter of them filed under another
    class), listed in ``OUT_DIR/.planted_copies.json`` with the change of aspect ratio each was
    given: a corpus for testing copy detection."""
    root = Path(out_dir)
    if root.exists() and not root.is_dir():
        raise OsteoError(f"cannot write synthetic images into {root}: it is a file, not a folder")
    counts: dict[str, int] = {c: 0 for c in classes}
    rng = np.random.default_rng([seed, 1_000_003])
    planted = []
    for item in generate(classes, per_class, size, seed, bilateral):
        source = f"{item.label}/{item.label}_{counts[item.label]:03d}{item.suffix}"
        save_image(item.image, root / source, item.format)
        counts[item.label] += 1
        if rng.random() >= copies:
            continue
        pixels = np.asarray(item.image.convert("L"))
        for kind in COPY_KINDS:
            planted_copy = derived_copy(pixels, kind, rng)
            others = [c for c in classes if c != item.label]
            label = str(rng.choice(others)) if others and rng.random() < MISFILED else item.label
            name = (
                f"{label}/{Path(source).stem}_{kind}."
                f"{'jpg' if planted_copy.format.startswith('JPEG') else 'png'}"
            )
            save_image(planted_copy.image, root / name, planted_copy.format)
            counts[label] += 1
            planted.append(
                {"source": source, "copy": name, "kind": kind, "squash": planted_copy.squash}
            )
    if copies:
        (root / PLANTED).write_text(json.dumps(planted, indent=1), encoding="utf-8")
    return counts
