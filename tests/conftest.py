"""Shared fixtures: tiny synthetic X-ray folders and settings sized for them. No network, no
shared data: every image a test needs is generated here."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from osteo_pipeline.config import Settings, load_settings
from osteo_pipeline.steps.synth import write_synthetic_dataset

TINY = 64  # px: large enough for every check, small enough for fast tests


@pytest.fixture(autouse=True)
def _no_user_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A developer's OSTEO_* or MLflow variables and caches must not change test outcomes (and
    tests must not fill the developer's caches)."""
    for name in list(os.environ):
        if name.startswith("OSTEO_") or name == "MLFLOW_TRACKING_URI":
            monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))


@pytest.fixture
def tiny_settings(tmp_path: Path) -> Settings:
    return load_settings(
        overrides={
            "validation": {"min_width": 32, "min_height": 32, "min_images_per_class": 2},
            "output_dir": str(tmp_path / "outputs"),
        },
        environ={},
    )


@pytest.fixture
def synth_dir(tmp_path: Path):
    """Factory: a synthetic DATA_DIR with ``per_class`` images per class."""

    def make(
        per_class: int = 6, classes: tuple[str, ...] = ("normal", "osteoporosis"), seed: int = 0
    ) -> Path:
        root = tmp_path / f"data-{seed}-{per_class}"
        write_synthetic_dataset(root, list(classes), per_class, TINY, seed)
        return root

    return make


@pytest.fixture
def train_settings(tiny_settings: Settings, tmp_path: Path) -> Settings:
    """Tiny, fast training settings with a private MLflow store and Optuna study."""
    return tiny_settings.model_copy(
        update={
            "model": tiny_settings.model.model_copy(
                update={"weights": "none", "input_size": 32, "head_units": 8}
            ),
            "train": tiny_settings.train.model_copy(
                update={
                    "batch_size": 8,
                    "head_epochs": 1,
                    "finetune_epochs": 1,
                    "cache_dir": tmp_path / "pixels",
                }
            ),
            "tune": tiny_settings.tune.model_copy(
                # A validation split, not CV: the lifecycle tests count epochs and trials
                # (tests/training/test_cv.py covers CV).
                update={
                    "trials": 2,
                    "storage": f"sqlite:///{tmp_path / 'optuna.db'}",
                    "unfreeze_depth": (0, 1),
                    "head_units": [4, 8],
                    "cv": "off",
                }
            ),
            "tracking": tiny_settings.tracking.model_copy(
                update={
                    "uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
                    "artifact_root": str(tmp_path / "mlruns"),
                }
            ),
        },
        deep=True,
    )


@pytest.fixture(scope="session")
def prefect_harness():
    """One temporary Prefect API for the tests that run flows (started once: it takes seconds)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def config_file(train_settings: Settings, tmp_path: Path) -> Path:
    """The tiny training settings as a YAML file, the way flows and deployments receive them."""
    import yaml

    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(train_settings.model_dump(mode="json")))
    return path
