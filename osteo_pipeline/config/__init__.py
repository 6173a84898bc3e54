"""One typed settings model for every step.

Precedence, lowest to highest: the model's defaults (mirrored in
``osteo_pipeline/configs/default.yaml``), a YAML file (or a packaged example config by name:
``knee-3class``), ``OSTEO_*`` environment variables (``OSTEO_VALIDATION__MIN_WIDTH=512``; nested
keys joined by ``__``), then CLI overrides (``--set validation.min_width=512``). Values from the
environment and the CLI are parsed as YAML scalars, so ``true``, ``0.2`` and ``[a, b]`` keep their
types; a field that expects text keeps the words as typed (``tune.cv=off`` stays ``"off"``, not
false).

Where things are: ``settings`` (the root model), one module per group of sections (``data``,
``training``, ``operations``), ``base`` (what sections share, the bounds), ``loading`` (files,
environment, overrides). Importing this package imports neither TensorFlow nor Optuna.
"""

from osteo_pipeline.config.base import (
    MAX_BATCH_SIZE,
    MAX_EPOCHS,
    MAX_FOLDS,
    MAX_TRIALS,
    MAX_WORKERS,
    ConfigError,
)
from osteo_pipeline.config.clinical import ClinicalSettings
from osteo_pipeline.config.data import (
    DataSettings,
    SplitSettings,
    SynthSettings,
    ValidationSettings,
)
from osteo_pipeline.config.loading import (
    CONFIGS_PACKAGE,
    ENV_ALIASES,
    ENV_PREFIX,
    cli_overrides,
    config_file,
    env_overrides,
    load_settings,
    merge_overrides,
    packaged_configs,
)
from osteo_pipeline.config.operations import (
    CompareSettings,
    RegistrySettings,
    ScheduleSettings,
    ServingSettings,
    TrackingSettings,
)
from osteo_pipeline.config.settings import Settings, settings_to_yaml
from osteo_pipeline.config.training import (
    AugmentSettings,
    ModelSettings,
    TrainSettings,
    TuneSettings,
)
from osteo_pipeline.core.search_space import (
    MAX_HEAD_UNITS,
    MAX_INPUT_SIZE,
    MAX_UNFREEZE_DEPTH,
    MIN_INPUT_SIZE,
)

__all__ = [
    "CONFIGS_PACKAGE",
    "ENV_ALIASES",
    "ENV_PREFIX",
    "MAX_BATCH_SIZE",
    "MAX_EPOCHS",
    "MAX_FOLDS",
    "MAX_HEAD_UNITS",
    "MAX_INPUT_SIZE",
    "MAX_TRIALS",
    "MAX_UNFREEZE_DEPTH",
    "MAX_WORKERS",
    "MIN_INPUT_SIZE",
    "AugmentSettings",
    "ClinicalSettings",
    "CompareSettings",
    "ConfigError",
    "DataSettings",
    "ModelSettings",
    "RegistrySettings",
    "ScheduleSettings",
    "ServingSettings",
    "Settings",
    "SplitSettings",
    "SynthSettings",
    "TrackingSettings",
    "TrainSettings",
    "TuneSettings",
    "ValidationSettings",
    "cli_overrides",
    "config_file",
    "env_overrides",
    "load_settings",
    "merge_overrides",
    "packaged_configs",
    "settings_to_yaml",
]
