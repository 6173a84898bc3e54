"""Settings of what happens around training: tracking, the registry's gate, serving, the
schedule, and ``osteo compare``."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from osteo_pipeline.config.base import MAX_EPOCHS, MAX_FOLDS, MAX_WORKERS, Section
from osteo_pipeline.core.compare_systems import check_system_names, system_names
from osteo_pipeline.core.search_space import MAX_INPUT_SIZE, MIN_INPUT_SIZE, sizes_in_bounds


class TrackingSettings(Section):
    uri: str = "sqlite:///mlflow.db"
    """MLflow tracking URI; MLFLOW_TRACKING_URI wins."""
    artifact_root: str = "mlruns"
    """Artifact location for new experiments (local path or s3://)."""
    experiment: str = "osteo-knee"
    http_retries: int = Field(default=3, ge=0)
    """Retries of a failed request to a tracking server, then a clear failure."""
    http_backoff_s: int = Field(default=1, ge=0)
    """Backoff factor between those retries, whole seconds (1: waits 1, 2, 4 s); MLflow takes
    integers."""
    http_timeout_s: float = Field(default=60, gt=0)
    """Timeout of one request to a tracking server."""
    log_image_grids: bool = False
    """Log figures that show the evaluated images themselves (the prediction and Grad-CAM grids).
    Off by default: they are patient images, and run artifacts get shared. Curves, confusion
    matrix, ROC and reliability diagrams are always logged."""


class RegistrySettings(Section):
    model_name: str = "osteo-knee"
    floors: dict[str, float] = {"balanced_accuracy": 0.6, "recall": 0.5}
    """Absolute minimums on the evaluation set (metric name -> value) a candidate must reach."""
    compare_metric: str = "balanced_accuracy"
    """Metric of the paired candidate-vs-production comparison."""
    margin: float = Field(default=0.0, ge=0)
    """Promote when the 95% CI of candidate - production lies above -margin (0: the candidate must
    be shown better); a CI spanning it is inconclusive and keeps production."""
    min_paired_cases: int = Field(default=30, ge=1)
    """Fewer paired held-out cases than this: the comparison with production is inconclusive."""
    floors_on: Literal["cv_lower", "test"] = "cv_lower"
    """Floors always apply to a candidate's test metrics; with cv_lower, also to the lower ends of
    its cross-validated estimate when it has one."""
    bootstrap_resamples: int = Field(default=1000, ge=100, le=1_000_000)

    @model_validator(mode="after")
    def _known_metrics(self) -> RegistrySettings:
        from osteo_pipeline.core.metrics import METRIC_NAMES

        for name in [*self.floors, self.compare_metric]:
            if name not in METRIC_NAMES:
                raise ValueError(f"unknown metric {name!r}; choose from {list(METRIC_NAMES)}")
        return self


class ServingSettings(Section):
    """``osteo serve``: the model server that follows a registry alias."""

    alias: str = "production"
    """Registry alias whose version is served; the server follows it when it moves."""
    host: str = "127.0.0.1"
    port: int = Field(default=5055, ge=1, le=65535)
    workers: int = Field(default=1, ge=1, le=MAX_WORKERS)
    """Scoring-server worker processes."""
    poll_s: float = Field(default=30.0, gt=0)
    """How often the alias is checked; a move restarts the server on the new version."""


class ScheduleSettings(Section):
    deployment: str = "scheduled-retrain"
    cron: str = "0 3 * * 1"
    """When the retrain deployment runs (default Mondays 03:00)."""
    timezone: str = "UTC"
    data_dir: str = "data/incoming"
    """The folder (DATA_DIR/<class>/*) a scheduled run trains on."""


class CompareSettings(Section):
    """``osteo compare``: every system on the same repeated stratified group folds."""

    systems: list[str] = Field(
        default=system_names(),
        min_length=1,
        description=f"Systems to run, from {system_names()}.",
    )
    folds: int = Field(default=5, ge=2, le=MAX_FOLDS)
    """k of the stratified group k-fold."""
    repeats: int = Field(default=3, ge=1, le=100)
    """Repeats of the k-fold, each with a new shuffle."""
    sizes: list[int] = Field(default=[224], min_length=1)
    """Input sizes (px) each system runs at (the metadata probe needs none)."""
    val_fraction: float = Field(default=0.2, gt=0, lt=0.5)
    """Share of each fold's training part kept for early stopping, calibration and the
    threshold."""
    scratch_epochs: int = Field(default=10, ge=1, le=MAX_EPOCHS)
    """Epochs of the networks trained from scratch (early stopping on val)."""
    scratch_learning_rate: float = Field(default=1e-3, gt=0)
    vgg16_weights: str = "imagenet"
    """VGG-16 weights: 'imagenet' (Keras download) or a local no-top .h5 (also
    OSTEO_VGG16_WEIGHTS); never random."""
    vgg16_finetune_blocks: int = Field(default=1, ge=1, le=5)
    """Top VGG-16 convolution blocks trained by vgg16-ft."""
    recipe: Literal["config", "best"] = "config"
    """resnet50-tl's parameters: the config's, or the best trial of this data's study (its size,
    roi, head and epochs), as `osteo train --params best` refits."""
    probe_c: list[float] = Field(default=[0.001, 0.01, 0.1, 1.0], min_length=1)
    """Logistic-regression C values; the probe keeps the best on val."""

    @model_validator(mode="after")
    def _known_systems(self) -> CompareSettings:
        check_system_names(self.systems)
        if not sizes_in_bounds(self.sizes):
            raise ValueError(
                f"compare.sizes must be {MIN_INPUT_SIZE} to {MAX_INPUT_SIZE} px, got {self.sizes}"
            )
        return self
