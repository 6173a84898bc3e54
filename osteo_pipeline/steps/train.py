"""``osteo train``: choose the parameters (a study's best trial, the config, or a file), refit
them on this split (``steps.refit``), and register the model as the new 'staging' version."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from osteo_pipeline.config import Settings
from osteo_pipeline.errors import OsteoError

if TYPE_CHECKING:
    from osteo_pipeline.io.split_manifest import SplitManifest
    from osteo_pipeline.steps.refit import RefitResult
log = logging.getLogger(__name__)


class ParamsError(OsteoError):
    """``--params`` names no usable source of parameters."""


@dataclass(frozen=True)
class ChosenParams:
    """The parameters a refit uses, and where they came from."""

    params: dict[str, Any]
    tags: dict[str, str] = field(default_factory=dict)  # the study trial they came from
    cv: dict[str, Any] | None = None  # that trial's cross-validation, when it had one


@dataclass(frozen=True)
class Trained:
    refit: RefitResult
    n_test: int  # images in the test split the metrics come from
    version: str | None  # the registered version; None when not registered


def train(
    split: SplitManifest,
    settings: Settings,
    *,
    params: str = "best",
    allow_other_data: bool = False,
    register: bool = True,
) -> Trained:
    """Refit the parameters ``params`` names on ``split``, evaluate once on its test images and,
    with ``register``, register the model with alias 'staging'."""
    from osteo_pipeline.steps.refit import refit_and_evaluate
    from osteo_pipeline.steps.registry import register_run

    # 1. The parameters, from the source the user named.
    chosen = choose_params(params, settings, split.dataset_hash, allow_other_data)
    # 2. Refit, calibrate, test once (an MLflow run).
    result = refit_and_evaluate(
        split, chosen.params, settings, source=params, tags=chosen.tags, cv=chosen.cv
    )
    # 3. A new registry version, 'staging' until a promotion gates it.
    version = None
    if register:
        log.info("run %s logged; registering its model", result.run_id)
        version = register_run(result.run_id, settings)
    return Trained(result, sum(split.counts()["test"].values()), version)


def choose_params(
    source: str, settings: Settings, dataset_hash: str, allow_other_data: bool = False
) -> ChosenParams:
    """``best``: the best trial of this data's study (``tune.study_name``); ``study:NAME``: of
    that study; ``config``: the config's parameters; else a JSON/YAML file of parameters, the
    config's filling in the ones it leaves out. A study run on other data is refused unless
    ``allow_other_data`` (its epochs were chosen there)."""
    from osteo_pipeline.steps.tune import best_params
    from osteo_pipeline.training.fit import TrainParams

    if source == "best" or source.startswith("study:"):
        name = source.removeprefix("study:") if source != "best" else None
        best = best_params(settings, dataset_hash, name, allow_other_data)
        return ChosenParams(best.params, best.tags(), best.cv)
    defaults = TrainParams.from_settings(settings).as_dict()
    if source == "config":
        return ChosenParams(defaults)
    return ChosenParams(defaults | _params_file(Path(source)))


def _params_file(file: Path) -> dict[str, Any]:
    import yaml

    if not file.is_file():
        raise ParamsError(
            f"--params: no such file {file} (or use 'best', 'study:NAME' or 'config')"
        )
    try:
        loaded = yaml.safe_load(file.read_text())
    except yaml.YAMLError as exc:
        raise ParamsError(f"--params file {file} is not valid YAML/JSON: {exc}") from exc
    if not isinstance(loaded, dict):
        raise ParamsError(f"--params file {file} must hold a mapping of parameter names to values")
    return loaded
