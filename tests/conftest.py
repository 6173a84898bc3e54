"""Shared fixtures: tiny synthetic X-ray folders and settings sized for them. No network, no
shared data: every image a test needs is generated here."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from osteo_pipeline.config import Settings
from osteo_pipeline.steps.synth import write_synthetic_dataset
from tests.small import clear_user_env, small_settings, small_training_settings

TINY = 64  # px: large enough for every check, small enough for fast tests


@pytest.fixture(autouse=True)
def _no_user_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A developer's OSTEO_* or MLflow variables and caches must not change test outcomes (and
    tests must not fill the developer's caches)."""
    clear_user_env(monkeypatch, tmp_path)


@pytest.fixture
def tiny_settings(tmp_path: Path) -> Settings:
    return small_settings(tmp_path)


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
def train_settings(tmp_path: Path) -> Settings:
    """Tiny, fast training settings with a private MLflow store and Optuna study."""
    return small_training_settings(tmp_path)


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


@dataclass(frozen=True)
class ServedModel:
    """A registered, promoted classifier behind the real scoring server."""

    url: str  # the server's /invocations
    version: str  # the registered version the production alias points at
    data: Path  # the synthetic images its candidate was split from
    settings: Settings


@pytest.fixture(scope="session")
def served_production(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedModel]:
    """One test-double candidate (the real pyfunc around a hand-set model that reads the synthetic
    cue), registered, promoted and served by `mlflow models serve` with two workers: shared by
    the serving tests, which only send requests (started once: it takes tens of seconds)."""
    from osteo_pipeline.steps.registry import promote, register_run
    from osteo_pipeline.steps.split import split_dataset
    from osteo_pipeline.steps.validate import validate_folder
    from tests.registry_helpers import log_candidate
    from tests.servers import free_port, model_server

    root = tmp_path_factory.mktemp("served")
    settings = small_training_settings(root)
    data = root / "data"
    write_synthetic_dataset(data, list(settings.data.classes), 12, TINY, 0)
    with pytest.MonkeyPatch.context() as environment:  # before the per-test clean environment
        clear_user_env(environment, root)
        split = split_dataset(validate_folder(data, settings), settings)
        version = register_run(log_candidate(split, settings, 1.0), settings)
        assert promote(settings).passed
    port = free_port()
    with model_server(
        f"models:/{settings.registry.model_name}@production",
        port,
        settings.tracking.uri,
        log=root / "serve.log",
        workers=2,
    ):
        yield ServedModel(f"http://127.0.0.1:{port}/invocations", version, data, settings)
