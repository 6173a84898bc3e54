"""Settings of the model and its training: the network, augmentation, the two training phases
and the hyperparameter search."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from osteo_pipeline.config.base import (
    MAX_BATCH_SIZE,
    MAX_EPOCHS,
    MAX_FOLDS,
    MAX_TRIALS,
    MAX_WORKERS,
    Section,
)
from osteo_pipeline.core.search_space import (
    MAX_HEAD_UNITS,
    MAX_INPUT_SIZE,
    MAX_UNFREEZE_DEPTH,
    MIN_INPUT_SIZE,
    Roi,
    SearchSpace,
)


class ModelSettings(Section):
    weights: str = "imagenet"
    """Backbone weights: 'imagenet' (Keras's cache: downloaded, or `osteo weights install`),
    'none' (random init) or a local no-top .h5 path (also OSTEO_BACKBONE_WEIGHTS)."""
    allow_random_init_fallback: bool = False
    """Demo only: if ImageNet weights cannot be loaded, train from random init (tagged loudly)."""
    input_size: int = Field(default=224, ge=MIN_INPUT_SIZE, le=MAX_INPUT_SIZE)
    """Square input side in px (bone texture needs resolution)."""
    roi: Roi = "image"
    """image: the whole film resized; knees: each knee cropped square around its joint line (two
    per film; the image's probability is their mean)."""
    head_units: int = Field(default=256, ge=0, le=MAX_HEAD_UNITS)
    """Hidden units of the head; 0: a linear head (logistic regression on the pooled features)."""
    dropout: float = Field(default=0.3, ge=0, lt=1)
    l2: float = Field(default=0.0, ge=0)
    """L2 penalty on the head's weights."""
    unfreeze_depth: int = Field(default=2, ge=0, le=MAX_UNFREEZE_DEPTH)
    """Top residual blocks trained in phase 2 (0 = head only)."""


class AugmentSettings(Section):
    """Training-split augmentation as in the paper; factors are fractions (rotation of a full
    turn)."""

    enabled: bool = True
    horizontal_flip: bool = True
    rotation: float = Field(default=10 / 360, ge=0, le=0.5)
    """±10 degrees"""
    shift: float = Field(default=0.10, ge=0, lt=1)
    zoom: float = Field(default=0.10, ge=0, lt=1)
    brightness: float = Field(default=0.10, ge=0, le=1)
    contrast: float = Field(default=0.10, ge=0, le=1)


class TrainSettings(Section):
    batch_size: int = Field(default=16, ge=1, le=MAX_BATCH_SIZE)
    head_epochs: int = Field(default=4, ge=0, le=MAX_EPOCHS)
    """Phase 1: head only, backbone frozen."""
    finetune_epochs: int = Field(default=8, ge=0, le=MAX_EPOCHS)
    """Phase 2: top unfreeze_depth blocks + head."""
    head_learning_rate: float = Field(default=1e-3, gt=0)
    learning_rate: float = Field(default=1e-4, gt=0)
    """Phase 2 learning rate (searched by tune)."""
    early_stopping_patience: int = Field(default=3, ge=1, le=MAX_EPOCHS)
    class_weight: Literal["balanced", "none"] = "balanced"
    mixed_precision: Literal["auto", "on", "off"] = "auto"
    """auto: on with a GPU."""
    xla: Literal["auto", "on", "off"] = "auto"
    """auto: on with a GPU."""
    distribute: Literal["auto", "on", "off"] = "auto"
    """Data-parallel training (tf.distribute.MirroredStrategy). auto: over all GPUs when there are
    two or more; on: over every logical device of one kind (GPUs, else CPUs); off: one device.
    batch_size is per device: the global batch is batch_size x devices."""
    cache_dir: Path | None = None
    """On-disk decoded-image cache (default $XDG_CACHE_HOME/osteo/pixels, else
    ~/.cache/osteo/pixels; 'none' in YAML: memory only)."""
    augment: AugmentSettings = AugmentSettings()


class TuneSettings(Section):
    """The study: its budget, its workers and storage, and the space it searches."""

    trials: int = Field(default=8, ge=1, le=MAX_TRIALS)
    """New trials each `osteo tune` call (and each retrain) adds to its study."""
    max_trials: int | None = Field(default=None, ge=1, le=MAX_TRIALS)
    """Cap on the finished (complete or pruned) trials of one study, over all calls and
    workers."""
    timeout_s: float | None = Field(default=None, gt=0)
    """A worker starts no new trial after this many seconds."""
    study_name: str = "osteo-knee"
    """Base name: a study belongs to one dataset version and one backbone, and is named
    <study_name>-<first 12 hex digits of the dataset hash>-<random|first 12 of the weights'
    sha256>. New data starts a new study; the same data and weights resume theirs."""
    storage: str = "sqlite:///optuna.db"
    """Optuna RDB storage URL (SQLite on one machine; PostgreSQL for workers on several).
    Passwords are never logged."""
    n_startup_trials: int = Field(default=4, ge=1, le=MAX_TRIALS)
    """Random trials before TPE models the results (capped below the study's budget)."""
    workers: int = Field(default=1, ge=1, le=MAX_WORKERS)
    """Local worker processes running trials of the one study at once."""
    worker_deployment: str | None = None
    """Prefect deployment ('tune-worker/<name>') the retrain flow starts `workers - 1` times on
    its work pool, instead of local processes: workers on other machines."""
    heartbeat_interval_s: int = Field(default=30, ge=1)
    """A running trial's worker writes a heartbeat this often."""
    heartbeat_grace_s: int = Field(default=120, ge=1)
    """A running trial without a heartbeat for this long is failed (its worker died) and
    retried."""
    max_retries: int = Field(default=2, ge=0)
    """Times a trial whose worker died is run again by another worker."""
    warm_start_trials: int = Field(default=2, ge=0, le=MAX_TRIALS)
    """Best trials of the previous study (same base name, other data) enqueued first in a new
    study."""
    poll_s: float = Field(default=5.0, gt=0)
    """How often an idle worker checks whether the study's budget is reached."""

    learning_rate: tuple[float, float] = (1e-5, 1e-3)
    unfreeze_depth: tuple[int, int] = (0, 6)
    head_units: list[int] = Field(default=[0, 64, 128, 256], min_length=1)
    """Head sizes searched; 0 is a linear head (a probe on the frozen features when unfreeze
    depth is 0)."""
    dropout: tuple[float, float] = (0.1, 0.5)
    l2: tuple[float, float] | None = None
    """L2 penalty range of the head's weights (log scale), e.g. [1e-6, 0.1]; unset: model.l2
    only."""
    input_sizes: list[int] | None = None
    """Input sizes searched (e.g. [224, 384, 512]); unset: model.input_size only."""
    rois: list[Roi] | None = None
    """Input modes searched (model.roi); unset: model.roi only."""
    cv: Literal["auto", "on", "off"] = "auto"
    """Score each trial by group-aware k-fold CV on train+val instead of the val split. auto:
    when train+val has fewer than cv_below_images images."""
    cv_below_images: int = Field(default=500, ge=0)
    """tune.cv auto: cross-validate when train+val has fewer images than this."""
    cv_folds: int = Field(default=5, ge=2, le=MAX_FOLDS)
    """k of the CV search's stratified group k-fold."""
    objective: Literal["log_loss", "roc_auc", "balanced_accuracy"] = "log_loss"
    """CV search: the mean fold metric minimised (log loss) or maximised (the others)."""
    pruner: Literal["median", "hyperband", "none"] = "median"
    pruner_warmup_epochs: int = Field(default=1, ge=0)
    """Step from which a trial can be pruned: epochs, or folds in a CV search (1: hopeless trials
    stop after two)."""
    pruner_startup_trials: int = Field(default=2, ge=0)
    """Trials that always run to the end, to compare against."""
    activation_cache: bool = True
    """Search trials and osteo compare's pretrained systems train on cached frozen-backbone
    outputs of fixed augmented views (fast); false: full images every epoch."""
    cache_views: int = Field(default=8, ge=1, le=100)
    """Augmented views of each training image in the activation cache."""
    cache_memory_mb: float = Field(default=1024, gt=0)
    """Activation cache held in the process's memory up to this; the rest spills to memory-mapped
    files, which the page cache holds while they fit (as fast) and drops under pressure."""
    cache_disk_mb: float = Field(default=19456, gt=0)
    """Disk the cache may spill to. When the boundaries a search can ask for could outgrow memory
    and disk together (large sets), fewer augmented views are cached (logged, and reported as
    ``activation_cache_views``)."""
    cache_spill_dir: Path | None = None
    """Where spilled activations go (a private temp folder inside; default: system temp)."""

    @property
    def search_space(self) -> SearchSpace:
        """The ranges and choices above, as the one object that checks and draws them."""
        return SearchSpace(
            learning_rate=self.learning_rate,
            unfreeze_depth=self.unfreeze_depth,
            head_units=tuple(self.head_units),
            dropout=self.dropout,
            l2=self.l2,
            input_sizes=None if self.input_sizes is None else tuple(self.input_sizes),
            rois=None if self.rois is None else tuple(self.rois),
        )

    @model_validator(mode="after")
    def _grace_after_heartbeats(self) -> TuneSettings:
        if self.heartbeat_grace_s < 2 * self.heartbeat_interval_s:
            raise ValueError(
                "tune.heartbeat_grace_s must be at least twice tune.heartbeat_interval_s, "
                "or a live trial could be failed"
            )
        return self

    @model_validator(mode="after")
    def _search_space(self) -> TuneSettings:
        self.search_space.check()
        return self
