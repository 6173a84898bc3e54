"""The one settings model every step reads, one section per concern."""

from __future__ import annotations

from pathlib import Path

import yaml

from osteo_pipeline.config.base import Section
from osteo_pipeline.config.clinical import ClinicalSettings
from osteo_pipeline.config.data import (
    DataSettings,
    SplitSettings,
    SynthSettings,
    ValidationSettings,
)
from osteo_pipeline.config.operations import (
    CompareSettings,
    RegistrySettings,
    ScheduleSettings,
    ServingSettings,
    TrackingSettings,
)
from osteo_pipeline.config.scoring import ScoringSettings
from osteo_pipeline.config.training import ModelSettings, TrainSettings, TuneSettings


class Settings(Section):
    seed: int = 42
    """Seeds the split, synthetic images, augmentation, folds, samplers and initial weights."""
    data: DataSettings = DataSettings()
    """Classes, in label order, and what counts as an image in a class folder."""
    validation: ValidationSettings = ValidationSettings()
    """What every image and the batch as a whole must satisfy before anything trains on it; the
    model server refuses what validation would."""
    clinical: ClinicalSettings = ClinicalSettings()
    """Clinical manifests: T-score cut-offs, the X-ray to density-exam interval, allowed views,
    the patient-ID key."""
    split: SplitSettings = SplitSettings()
    """Train / val / test fractions; copies of one radiograph stay in one split."""
    synth: SynthSettings = SynthSettings()
    """The synthetic set of ``osteo synth``."""
    model: ModelSettings = ModelSettings()
    """The network: backbone weights, what it sees (input size, roi), head and unfreeze depth;
    a refit from a study's best trial takes these from the trial."""
    train: TrainSettings = TrainSettings()
    """The two training phases: head, then top blocks."""
    tune: TuneSettings = TuneSettings()
    """The hyperparameter study: budget, workers, storage and the search space
    (``core.search_space``)."""
    tracking: TrackingSettings = TrackingSettings()
    """Where runs are tracked (MLflow)."""
    registry: RegistrySettings = RegistrySettings()
    """The gate a candidate passes to be promoted: floors, then a paired comparison with
    production."""
    schedule: ScheduleSettings = ScheduleSettings()
    """The scheduled retrain."""
    serving: ServingSettings = ServingSettings()
    """The model server."""
    compare: CompareSettings = CompareSettings()
    """``osteo compare``'s systems and folds."""
    scoring: ScoringSettings = ScoringSettings()
    """``osteo score``: the engine, Parquet parts and the worklist's targets."""
    output_dir: Path = Path("outputs")
    """Reports and split manifests go here."""


def settings_to_yaml(settings: Settings) -> str:
    return yaml.safe_dump(settings.model_dump(mode="json"), sort_keys=False)
