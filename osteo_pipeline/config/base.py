"""What every settings section shares: its base class, the config error, and the upper bounds
that keep a typo (an extra zero or three) from reaching training as an hours-long run or an
out-of-memory traceback: config loading names the field instead. The model's own bounds (input
size, head units, unfreeze depth) come with the search space, ``core.search_space``."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from osteo_pipeline.errors import OsteoError

MAX_BATCH_SIZE = 1024
MAX_EPOCHS = 1000
MAX_TRIALS = 10_000
MAX_WORKERS = 256
MAX_FOLDS = 50


class ConfigError(OsteoError, ValueError):
    """A config file, variable or override is invalid; the message names the field."""


class Section(BaseModel):
    """A settings section: unknown keys are refused, assignments validated, and each field's
    docstring is its description."""

    model_config = ConfigDict(
        extra="forbid", validate_assignment=True, use_attribute_docstrings=True
    )
