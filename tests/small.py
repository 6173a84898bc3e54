"""Settings and data sets sized for tests, as plain functions: the function-scoped fixtures in
``conftest.py`` and the module- or session-scoped ones that share a trained candidate or a
server build on the same ones."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from osteo_pipeline.config import Settings, load_settings
from osteo_pipeline.core.synth import render


def clear_user_env(monkeypatch: pytest.MonkeyPatch, root: Path) -> None:
    """A developer's OSTEO_* or MLflow variables must not change test outcomes, and tests must
    not fill the developer's caches: theirs go under ``root``."""
    for name in list(os.environ):
        if name.startswith("OSTEO_") or name == "MLFLOW_TRACKING_URI":
            monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(root / "xdg-cache"))


def small_settings(root: Path) -> Settings:
    """Validation sized for the tiny synthetic images; outputs under ``root``."""
    return load_settings(
        overrides={
            "validation": {"min_width": 32, "min_height": 32, "min_images_per_class": 2},
            "output_dir": str(root / "outputs"),
        },
        environ={},
    )


def small_training_settings(root: Path) -> Settings:
    """Tiny, fast training settings with a private MLflow store and Optuna study under ``root``."""
    small = small_settings(root)
    return small.model_copy(
        update={
            "model": small.model.model_copy(
                update={"weights": "none", "input_size": 32, "head_units": 8}
            ),
            "train": small.train.model_copy(
                update={
                    "batch_size": 8,
                    "head_epochs": 1,
                    "finetune_epochs": 1,
                    "cache_dir": root / "pixels",
                }
            ),
            "tune": small.tune.model_copy(
                # A validation split, not CV: the lifecycle tests count epochs and trials
                # (tests/training/test_cv.py covers CV).
                update={
                    "trials": 2,
                    "storage": f"sqlite:///{root / 'optuna.db'}",
                    "unfreeze_depth": (0, 1),
                    "head_units": [4, 8],
                    "cv": "off",
                }
            ),
            "tracking": small.tracking.model_copy(
                update={
                    "uri": f"sqlite:///{root / 'mlflow.db'}",
                    "artifact_root": str(root / "mlruns"),
                }
            ),
        },
        deep=True,
    )


def write_blind_dataset(root: Path, classes: list[str], per_class: int, size: int = 64) -> None:
    """One synthetic radiograph filed ``per_class`` times under every class: each file other
    bytes (a PNG text chunk), so neither a duplicate nor a copy of another, but the same pixels.
    No model can tell the classes apart: every test image gets the same label, so its balanced
    accuracy is exactly 0.5, below any floor above it."""
    gray = (render(classes[0], 0.0, size, np.random.default_rng(0)) * 255).round()
    picture = Image.fromarray(gray.astype(np.uint8), mode="L")
    for label in classes:
        (root / label).mkdir(parents=True)
        for index in range(per_class):
            info = PngInfo()
            info.add_text("copy", f"{label} {index}")
            picture.save(root / label / f"{label}_{index:03d}.png", pnginfo=info)
