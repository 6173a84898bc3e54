"""Write a synthetic labeled X-ray folder: the embedded default for the demo and for tests."""

from __future__ import annotations

from pathlib import Path

from osteo_pipeline.core.synth import generate


def write_synthetic_dataset(
    out_dir: str | Path, classes: list[str], per_class: int, size: int, seed: int
) -> dict[str, int]:
    """``OUT_DIR/<class>/<class>_NNN.(jpg|png)``; deterministic for ``seed``. Returns counts."""
    root = Path(out_dir)
    counts: dict[str, int] = {c: 0 for c in classes}
    for item in generate(classes, per_class, size, seed):
        folder = root / item.label
        folder.mkdir(parents=True, exist_ok=True)
        name = f"{item.label}_{counts[item.label]:03d}{item.suffix}"
        options = {"quality": 92} if item.format == "JPEG" else {}
        item.image.save(folder / name, format=item.format, **options)
        counts[item.label] += 1
    return counts
