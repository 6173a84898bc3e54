"""One typed settings model for every step.

Precedence, lowest to highest: the model's defaults (mirrored in ``osteo_pipeline/configs/default.yaml``), a YAML
file (or a packaged example config by name: ``knee-3class``), ``OSTEO_*`` environment variables
(``OSTEO_VALIDATION__MIN_WIDTH=512``; nested keys joined by ``__``), then CLI overrides
(``--set validation.min_width=512``). Values from the environment and the CLI are parsed as YAML
scalars, so ``true``, ``0.2`` and ``[a, b]`` keep their types; a field that expects text keeps the
words as typed (``tune.cv=off`` stays ``"off"``, not false).
"""

from __future__ import annotations

import os
import types
from collections.abc import Iterable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from osteo_pipeline.core.compare_systems import check_system_names, system_names
from osteo_pipeline.core.image_bounds import ImageBounds
from osteo_pipeline.errors import OsteoError

ENV_PREFIX = "OSTEO_"
CONFIGS_PACKAGE = "osteo_pipeline.configs"  # the example configs, shipped as package data
#: Short environment names documented for users, mapped onto their nested keys.
ENV_ALIASES = {
    "OSTEO_BACKBONE_WEIGHTS": "model.weights",
    "OSTEO_SEED": "seed",
    "OSTEO_VGG16_WEIGHTS": "compare.vgg16_weights",
}


#: Upper bounds that keep a typo (an extra zero or three) from reaching training as an hours-long
#: run or an out-of-memory traceback: config loading names the field instead.
MAX_INPUT_SIZE = 1024  # px per side; knee crops decode films at three times this
MAX_BATCH_SIZE = 1024
MAX_EPOCHS = 1000
MAX_TRIALS = 10_000
MAX_WORKERS = 256
MAX_FOLDS = 50
MAX_HEAD_UNITS = 8192
MAX_UNFREEZE_DEPTH = 16  # ResNet-50's residual blocks


class ConfigError(OsteoError, ValueError):
    """A config file, variable or override is invalid; the message names the field."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _sizes_in_bounds(sizes: list[int]) -> bool:
    """Every input size is one the model accepts (``model.input_size``'s bounds)."""
    return all(32 <= size <= MAX_INPUT_SIZE for size in sizes)


class DataSettings(_Section):
    classes: list[str] = Field(
        default=["normal", "osteoporosis"],
        min_length=2,
        description="Class folder names, in label order.",
    )
    positive_class: str | None = Field(
        default=None,
        description="Class whose sensitivity/specificity are reported (default: the last class).",
    )
    extensions: list[str] = Field(
        default=[".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".dcm"],
        description="File suffixes (case-insensitive) treated as images inside class folders.",
    )
    ignore_unlisted_classes: bool = Field(
        default=False,
        description=(
            "Class folders not in data.classes are left out of training and class checks instead "
            "of failing validation; their files still count when looking for label conflicts."
        ),
    )

    @model_validator(mode="after")
    def _unique_classes(self) -> DataSettings:
        if len(set(self.classes)) != len(self.classes):
            raise ValueError(f"data.classes has repeated names: {self.classes}")
        if self.positive_class is not None and self.positive_class not in self.classes:
            raise ValueError(
                f"data.positive_class {self.positive_class!r} is not one of {self.classes}"
            )
        return self

    @property
    def positive(self) -> str:
        return self.positive_class or self.classes[-1]


class ValidationSettings(_Section):
    min_width: int = Field(default=224, ge=1)
    min_height: int = Field(default=224, ge=1)
    allowed_modes: list[str] = Field(
        default=["L", "RGB", "P", "I;16", "I;16B", "I", "F"],
        description=(
            "Pillow modes accepted: gray 8/16/32-bit, float, RGB and palette (all converted to gray); "
            "DICOM reports L or I;16. RGBA/LA (transparency) and CMYK are rejected."
        ),
    )
    max_pixels: int = Field(
        default=40_000_000,
        ge=1,
        description="Decompression-bomb guard: larger images are rejected unread.",
    )
    min_class_share: float = Field(default=0.10, ge=0, le=1)
    max_class_share: float = Field(default=0.80, ge=0, le=1)
    min_images_per_class: int = Field(default=5, ge=0)
    derived_copies: bool = Field(
        default=True,
        description="Find derived copies (resized, re-encoded, contrast-changed, padded, mirrored, rotated, cropped), not only identical files.",
    )
    copy_threshold: float = Field(
        default=0.5,
        gt=0,
        lt=1,
        description="Correlation of high-passed pixels, after fitting a pair, from which it is a derived copy.",
    )
    copies_cache_dir: Path | None = Field(
        default=None,
        description="Derived-copy features and matches, by content hash (default $XDG_CACHE_HOME/osteo/copies, else ~/.cache/osteo/copies; 'none' in YAML: memory only).",
    )
    fail_on_label_conflicts: bool = Field(
        default=True,
        description="Fail the batch on copies of one radiograph (identical or derived) filed under different classes, or only exclude them from the split.",
    )
    fail_on_duplicates: bool = Field(
        default=False,
        description="Copies of one radiograph (identical or derived) with one label are reported; fail the batch too?",
    )
    suites_dir: Path | None = Field(
        default=None,
        description="Folder of GX suite JSON files; default: the suites shipped in the package (osteo_pipeline/expectations).",
    )

    @property
    def image_bounds(self) -> ImageBounds:
        """The size and mode every image must have, for the GX suite and the model's door."""
        return ImageBounds(self.min_width, self.min_height, tuple(self.allowed_modes))

    @model_validator(mode="after")
    def _share_bounds(self) -> ValidationSettings:
        if self.min_class_share > self.max_class_share:
            raise ValueError(
                "validation.min_class_share must not exceed validation.max_class_share"
            )
        return self


class SplitSettings(_Section):
    train: float = Field(default=0.70, gt=0, lt=1)
    val: float = Field(default=0.15, gt=0, lt=1)
    test: float = Field(default=0.15, gt=0, lt=1)
    group_derived_copies: bool = Field(
        default=True,
        description="Keep derived copies in one split, like identical ones (false: identical copies only).",
    )

    @model_validator(mode="after")
    def _fractions_sum_to_one(self) -> SplitSettings:
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"split fractions must sum to 1, got {total:.4f}")
        return self


class SynthSettings(_Section):
    per_class: int = Field(default=24, ge=1, le=100_000)
    size: int = Field(
        default=256,
        ge=32,
        le=4 * MAX_INPUT_SIZE,
        description="Shortest side in px; images vary up to +15%/+40%.",
    )


class ModelSettings(_Section):
    weights: str = Field(
        default="imagenet",
        description=(
            "Backbone weights: 'imagenet' (Keras's cache: downloaded, or `osteo weights install`), "
            "'none' (random init) or a local no-top .h5 path (also OSTEO_BACKBONE_WEIGHTS)."
        ),
    )
    allow_random_init_fallback: bool = Field(
        default=False,
        description="Demo only: if ImageNet weights cannot be loaded, train from random init (tagged loudly).",
    )
    input_size: int = Field(
        default=224,
        ge=32,
        le=MAX_INPUT_SIZE,
        description="Square input side in px (bone texture needs resolution).",
    )
    roi: Literal["image", "knees"] = Field(
        default="image",
        description="image: the whole film resized; knees: each knee cropped square around its joint line (two per film; the image's probability is their mean).",
    )
    head_units: int = Field(
        default=256,
        ge=0,
        le=MAX_HEAD_UNITS,
        description="Hidden units of the head; 0: a linear head (logistic regression on the pooled features).",
    )
    dropout: float = Field(default=0.3, ge=0, lt=1)
    l2: float = Field(default=0.0, ge=0, description="L2 penalty on the head's weights.")
    unfreeze_depth: int = Field(
        default=2,
        ge=0,
        le=MAX_UNFREEZE_DEPTH,
        description="Top residual blocks trained in phase 2 (0 = head only).",
    )


class AugmentSettings(_Section):
    """Training-split augmentation as in the paper; factors are fractions (rotation of a full turn)."""

    enabled: bool = True
    horizontal_flip: bool = True
    rotation: float = Field(default=10 / 360, ge=0, le=0.5, description="±10 degrees")
    shift: float = Field(default=0.10, ge=0, lt=1)
    zoom: float = Field(default=0.10, ge=0, lt=1)
    brightness: float = Field(default=0.10, ge=0, le=1)
    contrast: float = Field(default=0.10, ge=0, le=1)


class TrainSettings(_Section):
    batch_size: int = Field(default=16, ge=1, le=MAX_BATCH_SIZE)
    head_epochs: int = Field(
        default=4, ge=0, le=MAX_EPOCHS, description="Phase 1: head only, backbone frozen."
    )
    finetune_epochs: int = Field(
        default=8, ge=0, le=MAX_EPOCHS, description="Phase 2: top unfreeze_depth blocks + head."
    )
    head_learning_rate: float = Field(default=1e-3, gt=0)
    learning_rate: float = Field(
        default=1e-4, gt=0, description="Phase 2 learning rate (searched by tune)."
    )
    early_stopping_patience: int = Field(default=3, ge=1, le=MAX_EPOCHS)
    class_weight: Literal["balanced", "none"] = "balanced"
    mixed_precision: Literal["auto", "on", "off"] = Field(
        default="auto", description="auto: on with a GPU."
    )
    xla: Literal["auto", "on", "off"] = Field(default="auto", description="auto: on with a GPU.")
    distribute: Literal["auto", "on", "off"] = Field(
        default="auto",
        description=(
            "Data-parallel training (tf.distribute.MirroredStrategy). auto: over all GPUs when there are "
            "two or more; on: over every logical device of one kind (GPUs, else CPUs); off: one device. "
            "batch_size is per device: the global batch is batch_size x devices."
        ),
    )
    cache_dir: Path | None = Field(
        default=None,
        description="On-disk decoded-image cache (default $XDG_CACHE_HOME/osteo/pixels, else ~/.cache/osteo/pixels; 'none' in YAML: memory only).",
    )
    augment: AugmentSettings = AugmentSettings()


class TuneSettings(_Section):
    trials: int = Field(
        default=8,
        ge=1,
        le=MAX_TRIALS,
        description="New trials each `osteo tune` call (and each retrain) adds to its study.",
    )
    max_trials: int | None = Field(
        default=None,
        ge=1,
        le=MAX_TRIALS,
        description="Cap on the finished (complete or pruned) trials of one study, over all calls and workers.",
    )
    timeout_s: float | None = Field(
        default=None, gt=0, description="A worker starts no new trial after this many seconds."
    )
    study_name: str = Field(
        default="osteo-knee",
        description=(
            "Base name: a study belongs to one dataset version and is named <study_name>-<first 12 hex "
            "digits of the dataset hash>. New data starts a new study; the same data resumes its study."
        ),
    )
    storage: str = Field(
        default="sqlite:///optuna.db",
        description="Optuna RDB storage URL (SQLite on one machine; PostgreSQL for workers on several). Passwords are never logged.",
    )
    n_startup_trials: int = Field(
        default=4,
        ge=1,
        le=MAX_TRIALS,
        description="Random trials before TPE models the results (capped below the study's budget).",
    )
    workers: int = Field(
        default=1,
        ge=1,
        le=MAX_WORKERS,
        description="Local worker processes running trials of the one study at once.",
    )
    worker_deployment: str | None = Field(
        default=None,
        description=(
            "Prefect deployment ('tune-worker/<name>') the retrain flow starts `workers - 1` times on its work "
            "pool, instead of local processes: workers on other machines."
        ),
    )
    heartbeat_interval_s: int = Field(
        default=30, ge=1, description="A running trial's worker writes a heartbeat this often."
    )
    heartbeat_grace_s: int = Field(
        default=120,
        ge=1,
        description="A running trial without a heartbeat for this long is failed (its worker died) and retried.",
    )
    max_retries: int = Field(
        default=2,
        ge=0,
        description="Times a trial whose worker died is run again by another worker.",
    )
    warm_start_trials: int = Field(
        default=2,
        ge=0,
        le=MAX_TRIALS,
        description="Best trials of the previous study (same base name, other data) enqueued first in a new study.",
    )
    poll_s: float = Field(
        default=5.0,
        gt=0,
        description="How often an idle worker checks whether the study's budget is reached.",
    )

    @model_validator(mode="after")
    def _grace_after_heartbeats(self) -> TuneSettings:
        if self.heartbeat_grace_s < 2 * self.heartbeat_interval_s:
            raise ValueError(
                "tune.heartbeat_grace_s must be at least twice tune.heartbeat_interval_s, or a live trial could be failed"
            )
        return self

    @model_validator(mode="after")
    def _search_space(self) -> TuneSettings:
        for name in ("learning_rate", "l2"):
            if getattr(self, name) is None:
                continue
            low, high = getattr(self, name)
            if not 0 < low <= high:
                raise ValueError(
                    f"tune.{name} must be a range 0 < low <= high (searched on a log scale), got {[low, high]}"
                )
        low, high = self.unfreeze_depth
        if not 0 <= low <= high <= MAX_UNFREEZE_DEPTH:
            raise ValueError(
                f"tune.unfreeze_depth must be a range 0 <= low <= high <= {MAX_UNFREEZE_DEPTH} "
                f"(ResNet-50's blocks), got {[low, high]}"
            )
        if any(units < 0 for units in self.head_units):
            raise ValueError(
                f"tune.head_units must be >= 0 (0: a linear head), got {self.head_units}"
            )
        sizes = self.input_sizes
        if sizes is not None and (not sizes or not _sizes_in_bounds(sizes)):
            raise ValueError(
                f"tune.input_sizes must list sizes of 32 to {MAX_INPUT_SIZE} px, got {sizes}"
            )
        if any(units > MAX_HEAD_UNITS for units in self.head_units):
            raise ValueError(
                f"tune.head_units must be at most {MAX_HEAD_UNITS}, got {self.head_units}"
            )
        if self.rois is not None and not self.rois:
            raise ValueError("tune.rois must list at least one of image, knees (or be unset)")
        return self

    learning_rate: tuple[float, float] = (1e-5, 1e-3)
    unfreeze_depth: tuple[int, int] = (0, 6)
    head_units: list[int] = Field(
        default=[0, 64, 128, 256],
        min_length=1,
        description="Head sizes searched; 0 is a linear head (a probe on the frozen features when unfreeze depth is 0).",
    )
    dropout: tuple[float, float] = (0.1, 0.5)
    l2: tuple[float, float] | None = Field(
        default=None,
        description="L2 penalty range of the head's weights (log scale), e.g. [1e-6, 0.1]; unset: model.l2 only.",
    )
    input_sizes: list[int] | None = Field(
        default=None,
        description="Input sizes searched (e.g. [224, 384, 512]); unset: model.input_size only.",
    )
    rois: list[Literal["image", "knees"]] | None = Field(
        default=None, description="Input modes searched (model.roi); unset: model.roi only."
    )
    cv: Literal["auto", "on", "off"] = Field(
        default="auto",
        description="Score each trial by group-aware k-fold CV on train+val instead of the val split. auto: when train+val has fewer than cv_below_images images.",
    )
    cv_below_images: int = Field(
        default=500,
        ge=0,
        description="tune.cv auto: cross-validate when train+val has fewer images than this.",
    )
    cv_folds: int = Field(
        default=5, ge=2, le=MAX_FOLDS, description="k of the CV search's stratified group k-fold."
    )
    objective: Literal["log_loss", "roc_auc", "balanced_accuracy"] = Field(
        default="log_loss",
        description="CV search: the mean fold metric minimised (log loss) or maximised (the others).",
    )
    pruner: Literal["median", "hyperband", "none"] = "median"
    pruner_warmup_epochs: int = Field(
        default=1,
        ge=0,
        description="Step from which a trial can be pruned: epochs, or folds in a CV search (1: hopeless trials stop after two).",
    )
    pruner_startup_trials: int = Field(
        default=2, ge=0, description="Trials that always run to the end, to compare against."
    )
    activation_cache: bool = Field(
        default=True,
        description="Search trials and osteo compare's pretrained systems train on cached frozen-backbone outputs of fixed augmented views (fast); false: full images every epoch.",
    )
    cache_views: int = Field(
        default=8,
        ge=1,
        le=100,
        description="Augmented views of each training image in the activation cache.",
    )
    cache_memory_mb: float = Field(
        default=4096,
        gt=0,
        description="Activation cache held in memory up to this; the rest spills to disk.",
    )
    cache_spill_dir: Path | None = Field(
        default=None,
        description="Where spilled activations go (a private temp folder inside; default: system temp).",
    )


class TrackingSettings(_Section):
    uri: str = Field(
        default="sqlite:///mlflow.db", description="MLflow tracking URI; MLFLOW_TRACKING_URI wins."
    )
    artifact_root: str = Field(
        default="mlruns", description="Artifact location for new experiments (local path or s3://)."
    )
    experiment: str = "osteo-knee"
    http_retries: int = Field(
        default=3,
        ge=0,
        description="Retries of a failed request to a tracking server, then a clear failure.",
    )
    http_backoff_s: int = Field(
        default=1,
        ge=0,
        description="Backoff factor between those retries, whole seconds (1: waits 1, 2, 4 s); MLflow takes integers.",
    )
    http_timeout_s: float = Field(
        default=60, gt=0, description="Timeout of one request to a tracking server."
    )
    log_image_grids: bool = Field(
        default=False,
        description=(
            "Log figures that show the evaluated images themselves (the prediction and Grad-CAM grids). "
            "Off by default: they are patient images, and run artifacts get shared. Curves, confusion "
            "matrix, ROC and reliability diagrams are always logged."
        ),
    )


class RegistrySettings(_Section):
    model_name: str = "osteo-knee"
    floors: dict[str, float] = Field(
        default={"balanced_accuracy": 0.6, "recall": 0.5},
        description="Absolute minimums on the evaluation set (metric name -> value) a candidate must reach.",
    )
    compare_metric: str = Field(
        default="balanced_accuracy",
        description="Metric of the paired candidate-vs-production comparison.",
    )
    margin: float = Field(
        default=0.0,
        ge=0,
        description="Promote when the 95% CI of candidate - production lies above -margin (0: the candidate must be shown better); a CI spanning it is inconclusive and keeps production.",
    )
    min_paired_cases: int = Field(
        default=30,
        ge=1,
        description="Fewer paired held-out cases than this: the comparison with production is inconclusive.",
    )
    floors_on: Literal["cv_lower", "test"] = Field(
        default="cv_lower",
        description="Floors always apply to a candidate's test metrics; with cv_lower, also to the lower ends of its cross-validated estimate when it has one.",
    )
    bootstrap_resamples: int = Field(default=1000, ge=100, le=1_000_000)

    @model_validator(mode="after")
    def _known_metrics(self) -> RegistrySettings:
        from osteo_pipeline.core.metrics import METRIC_NAMES

        for name in [*self.floors, self.compare_metric]:
            if name not in METRIC_NAMES:
                raise ValueError(f"unknown metric {name!r}; choose from {list(METRIC_NAMES)}")
        return self


class ServingSettings(_Section):
    """``osteo serve``: the model server that follows a registry alias."""

    alias: str = Field(
        default="production",
        description="Registry alias whose version is served; the server follows it when it moves.",
    )
    host: str = "127.0.0.1"
    port: int = Field(default=5055, ge=1, le=65535)
    workers: int = Field(
        default=1, ge=1, le=MAX_WORKERS, description="Scoring-server worker processes."
    )
    poll_s: float = Field(
        default=30.0,
        gt=0,
        description="How often the alias is checked; a move restarts the server on the new version.",
    )


class ScheduleSettings(_Section):
    deployment: str = "scheduled-retrain"
    cron: str = Field(
        default="0 3 * * 1", description="When the retrain deployment runs (default Mondays 03:00)."
    )
    timezone: str = "UTC"
    data_dir: str = Field(
        default="data/incoming",
        description="The folder (DATA_DIR/<class>/*) a scheduled run trains on.",
    )


class CompareSettings(_Section):
    """``osteo compare``: every system on the same repeated stratified group folds."""

    systems: list[str] = Field(
        default=system_names(),
        min_length=1,
        description=f"Systems to run, from {system_names()}.",
    )
    folds: int = Field(
        default=5, ge=2, le=MAX_FOLDS, description="k of the stratified group k-fold."
    )
    repeats: int = Field(
        default=3, ge=1, le=100, description="Repeats of the k-fold, each with a new shuffle."
    )
    sizes: list[int] = Field(
        default=[224],
        min_length=1,
        description="Input sizes (px) each system runs at (the metadata probe needs none).",
    )
    val_fraction: float = Field(
        default=0.2,
        gt=0,
        lt=0.5,
        description="Share of each fold's training part kept for early stopping, calibration and the threshold.",
    )
    scratch_epochs: int = Field(
        default=10,
        ge=1,
        le=MAX_EPOCHS,
        description="Epochs of the networks trained from scratch (early stopping on val).",
    )
    scratch_learning_rate: float = Field(default=1e-3, gt=0)
    vgg16_weights: str = Field(
        default="imagenet",
        description="VGG-16 weights: 'imagenet' (Keras download) or a local no-top .h5 (also OSTEO_VGG16_WEIGHTS); never random.",
    )
    vgg16_finetune_blocks: int = Field(
        default=1, ge=1, le=5, description="Top VGG-16 convolution blocks trained by vgg16-ft."
    )
    recipe: Literal["config", "best"] = Field(
        default="config",
        description="resnet50-tl's parameters: the config's, or the best trial of this data's study (its size, roi, head and epochs), as `osteo train --params best` refits.",
    )
    probe_c: list[float] = Field(
        default=[0.001, 0.01, 0.1, 1.0],
        min_length=1,
        description="Logistic-regression C values; the probe keeps the best on val.",
    )

    @model_validator(mode="after")
    def _known_systems(self) -> CompareSettings:
        check_system_names(self.systems)
        if not _sizes_in_bounds(self.sizes):
            raise ValueError(f"compare.sizes must be 32 to {MAX_INPUT_SIZE} px, got {self.sizes}")
        return self


class Settings(_Section):
    seed: int = 42
    data: DataSettings = DataSettings()
    validation: ValidationSettings = ValidationSettings()
    split: SplitSettings = SplitSettings()
    synth: SynthSettings = SynthSettings()
    model: ModelSettings = ModelSettings()
    train: TrainSettings = TrainSettings()
    tune: TuneSettings = TuneSettings()
    tracking: TrackingSettings = TrackingSettings()
    registry: RegistrySettings = RegistrySettings()
    schedule: ScheduleSettings = ScheduleSettings()
    serving: ServingSettings = ServingSettings()
    compare: CompareSettings = CompareSettings()
    output_dir: Path = Field(
        default=Path("outputs"), description="Reports and split manifests go here."
    )


def _deep_merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        # An empty mapping replaces (``--set registry.floors={}`` clears the floors).
        if isinstance(value, Mapping) and value and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _nest(dotted_key: str, value: Any) -> dict[str, Any]:
    parts = [p for p in dotted_key.split(".") if p]
    if not parts:
        raise ConfigError(f"empty config key in override {dotted_key!r}")
    nested: dict[str, Any] = {parts[-1]: value}
    for part in reversed(parts[:-1]):
        nested = {part: nested}
    return nested


def _parse_scalar(raw: str) -> Any:
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw


def _field_type(dotted_key: str) -> Any:
    """The declared type of the settings field ``dotted_key`` names, or None for an unknown key."""
    section: Any = Settings
    annotation = None
    for part in dotted_key.split("."):
        fields = getattr(section, "model_fields", None)
        if not isinstance(section, type) or fields is None or part not in fields:
            return None
        annotation = section = fields[part].annotation
    return annotation


def _holds_text(annotation: Any) -> bool:
    """Whether a field of this type takes words as typed: text, a path, a Literal of strings, a
    list of those, or one of them or None."""
    origin, args = get_origin(annotation), get_args(annotation)
    if annotation in (str, Path):
        return True
    if origin is Literal:
        return all(isinstance(arg, str) for arg in args)
    if origin is list:
        return _holds_text(args[0])
    if origin in (Union, types.UnionType):
        options = [arg for arg in args if arg is not type(None)]
        return bool(options) and all(_holds_text(arg) for arg in options)
    return False


def _parse_value(dotted_key: str, raw: str) -> Any:
    """``raw`` parsed as YAML, except that a field expecting text keeps words YAML would turn into
    booleans or numbers (``tune.cv=off``, ``model.weights=none``, ``data.classes=[no, yes]``);
    ``null`` still clears a field that may be None."""
    value = _parse_scalar(raw)
    annotation = _field_type(dotted_key)
    if not _holds_text(annotation) or (value is None and type(None) in get_args(annotation)):
        return value
    try:
        return yaml.load(raw, Loader=yaml.BaseLoader)  # YAML's structure, every scalar a string
    except yaml.YAMLError:
        return raw


def env_overrides(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Nested overrides from ``OSTEO_*`` variables (``OSTEO_SPLIT__TEST=0.2``)."""
    environ = os.environ if environ is None else environ
    result: dict[str, Any] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or name == "OSTEO_CONFIG":
            continue
        dotted = ENV_ALIASES.get(name) or name[len(ENV_PREFIX) :].lower().replace("__", ".")
        result = _deep_merge(result, _nest(dotted, _parse_value(dotted, raw)))
    return result


def cli_overrides(pairs: Iterable[str]) -> dict[str, Any]:
    """Nested overrides from ``key.sub=value`` strings."""
    result: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep:
            raise ConfigError(f"override {pair!r} is not of the form key.sub=value")
        result = _deep_merge(result, _nest(key.strip(), _parse_value(key.strip(), raw)))
    return result


def merge_overrides(base: dict[str, Any], dotted: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``{"section.key": value}`` pairs merged in (values keep their Python types)."""
    for key, value in dotted.items():
        base = _deep_merge(base, _nest(key, value))
    return base


def _known_top_level(overrides: dict[str, Any]) -> dict[str, Any]:
    # Unknown OSTEO_* variables (e.g. OSTEO_HOME of another tool) must not break loading.
    return {k: v for k, v in overrides.items() if k in Settings.model_fields}


def packaged_configs() -> dict[str, Path]:
    """The example configs shipped in the package, by name (``knee-3class``: its file)."""
    folder = resources.files(CONFIGS_PACKAGE)
    return {
        Path(entry.name).stem: Path(str(entry))
        for entry in folder.iterdir()
        if entry.name.endswith(".yaml")
    }


def config_file(path: str | Path) -> Path:
    """The config file ``path`` names: a file, else a packaged example config by name
    (``--config knee-3class``), so a message can name one that works from an installed wheel."""
    file = Path(path)
    if file.is_file():
        return file
    packaged = packaged_configs()
    found = packaged.get(file.name.removesuffix(".yaml")) if file.name == str(path) else None
    if found is None:
        names = ", ".join(sorted(packaged))
        raise ConfigError(f"config file not found: {file} (packaged configs by name: {names})")
    return found


def load_settings(
    path: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Build the settings from defaults, ``path`` (or ``$OSTEO_CONFIG``), environment and overrides."""
    environ = os.environ if environ is None else environ
    path = path or environ.get("OSTEO_CONFIG")
    data: dict[str, Any] = {}
    if path:
        file = config_file(path)
        try:
            loaded = yaml.safe_load(file.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {file} is not valid YAML: {exc}") from exc
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {file} must hold a mapping at the top level")
        data = loaded
    data = _deep_merge(data, _known_top_level(env_overrides(environ)))
    data = _deep_merge(data, overrides or {})
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}"
            for err in exc.errors()
        )
        source = f" (from {path})" if path else ""
        raise ConfigError(f"invalid configuration{source}: {problems}") from exc


def settings_to_yaml(settings: Settings) -> str:
    return yaml.safe_dump(settings.model_dump(mode="json"), sort_keys=False)
