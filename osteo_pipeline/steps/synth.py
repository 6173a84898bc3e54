"""Write a synthetic labeled X-ray folder: the embedded default for the demo and for tests."""

from __future__ import annotations

from pathlib import Path

from osteo_pipeline.core.synth import generate
from osteo_pipeline.errors import OsteoError


def write_synthetic_dataset(
    out_dir: str | Path, classes: list[str], per_class: int, size: int, seed: int
) -> dict[str, int]:
    """``OUT_DIR/<class>/<class>_NNN.(jpg|png)``; deterministic for ``seed``. Returns counts."""
    root = Path(out_dir)
    if root.exists() and not root.is_dir():
        raise OsteoError(f"cannot write synthetic images into {root}: it is a file, not a folder")
    counts: dict[str, int] = {c: 0 for c in classes}
    for item in generate(classes, per_class, size, seed):
        folder = root / item.label
        name = f"{item.label}_{counts[item.label]:03d}{item.suffix}"
        options = {"quality": 92} if item.format == "JPEG" else {}
        try:
            folder.mkdir(parents=True, exist_ok=True)
            item.image.save(folder / name, format=item.format, **options)
        except OSError as exc:
            raise OsteoError(f"cannot write {folder / name}: {exc.strerror or exc}") from exc
        counts[item.label] += 1
    return counts
