"""``osteo score``: scoring an archive with a registered model, and the screening worklist."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from osteo_pipeline.config.base import Section


class ScoringSettings(Section):
    model_uri: str | None = None
    """The model that scores (default: ``models:/<registry.model_name>@<serving.alias>``, the
    production version); the version used is recorded on every row."""
    engine: Literal["local", "spark"] = "local"
    """``local``: one process, decoding in threads while the model runs; ``spark``: Apache Spark
    (the ``spark`` extra), on ``spark_master``."""
    spark_master: str = "local[*]"
    """Spark master URL: ``local[*]`` (every core of this machine) or a cluster's."""
    batch_size: int = Field(default=16, ge=1, le=4096)
    """Images per forward pass."""
    part_size: int = Field(default=256, ge=1)
    """Images per Parquet part written under OUT/parts: a kill loses at most one part's work."""
    target_sensitivity: float = Field(default=0.9, gt=0, le=1)
    """The rule-out threshold keeps at least this share of positives above it (on the model's
    out-of-fold or validation predictions): below it, no density exam is suggested."""
    target_specificity: float = Field(default=0.9, gt=0, le=1)
    """The rule-in threshold keeps at least this share of negatives below it: above it, the
    patient is flagged as likely low bone density."""
    experiment_suffix: str = "-scoring"
    """Scoring runs go to the MLflow experiment ``<tracking.experiment><suffix>``."""
