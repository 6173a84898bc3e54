"""The registry of ``osteo compare``'s systems: every name the config accepts, what each system is
(the report's footnote and grouping), the class that runs it, and the ``System`` protocol that
class follows.

Plain data, importable without TensorFlow or the config: the config validates ``compare.systems``
against these keys, the report describes its rows from them, and the compare step loads each
system's class from its ``implementation`` only when it runs it. Adding a system is one class
(``steps.compare.systems`` has the built-in ones and their base classes) and one entry here."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

if TYPE_CHECKING:
    import numpy as np

    from osteo_pipeline.core.splits import Fold

#: How the report groups a system: pretrained and fine-tuned, trained from scratch, or fixed
#: features with a classical model (no network trained).
Family = Literal["transfer", "scratch", "probe"]

_IMPLEMENTATIONS = "osteo_pipeline.steps.compare.systems"


@dataclass(frozen=True)
class SystemDescription:
    """What a compare system is, without building it."""

    note: str  # what it is, as the report's footnote says it
    family: Family
    implementation: str  # "module:Class" of the class that runs it
    size_free: bool = False  # no input size of its own: one row, not one per compare.sizes


def _builtin(note: str, family: Family, cls: str, size_free: bool = False) -> SystemDescription:
    return SystemDescription(note, family, f"{_IMPLEMENTATIONS}:{cls}", size_free)


#: Every system ``osteo compare`` knows, in the order the report lists them.
SYSTEMS: dict[str, SystemDescription] = {
    "resnet50-tl": _builtin(
        "the pipeline's model: ImageNet ResNet-50, head then top blocks fine-tuned (config params)",
        "transfer",
        "PipelineModel",
    ),
    "resnet50-scratch": _builtin(
        "ResNet-50, random init, all layers trained", "scratch", "ResNet50Scratch"
    ),
    "vgg16-ft": _builtin(
        "ImageNet VGG-16, head then top conv block(s) fine-tuned", "transfer", "Vgg16FineTuned"
    ),
    "vgg16-frozen": _builtin("ImageNet VGG-16 frozen, head only", "transfer", "Vgg16Frozen"),
    "resnet18": _builtin(
        "ResNet-18 built here, random init, all layers trained", "scratch", "ResNet18"
    ),
    "cnn3": _builtin("3-layer CNN, random init", "scratch", "Cnn3"),
    "resnet50-probe": _builtin(
        "frozen ImageNet ResNet-50 pooled features + logistic regression (C chosen on val)",
        "probe",
        "ResNet50Probe",
    ),
    "texture-probe": _builtin(
        "bone texture of the knee crops (LBP histograms, GLCM statistics, Hurst exponents)"
        " + logistic regression (C chosen on val)",
        "probe",
        "TextureProbe",
        size_free=True,
    ),
    "metadata-probe": _builtin(
        "random forest on file metadata only (width, height, aspect, bytes, bytes/pixel, mode,"
        " format): a shortcut detector",
        "probe",
        "MetadataProbe",
        size_free=True,
    ),
}


def system_names() -> list[str]:
    """The registry's keys, in report order."""
    return list(SYSTEMS)


def check_system_names(names: Iterable[str]) -> None:
    """Refuse names the registry does not hold, naming them and the choices."""
    unknown = sorted(set(names) - set(SYSTEMS))
    if unknown:
        raise ValueError(f"unknown compare systems {unknown}; choose from {system_names()}")


def describe(name: str) -> SystemDescription:
    """The registry's entry for ``name``; an unknown name is refused as the config refuses it."""
    check_system_names([name])
    return SYSTEMS[name]


#: A system's predictions on one fold, per variant ("" for a system's one row; a cross-validated
#: recipe has a refit and a fold ensemble): calibration probabilities, their labels, test
#: probabilities.
Predictions = dict[str, tuple["np.ndarray", "np.ndarray", "np.ndarray"]]


@runtime_checkable
class System(Protocol):
    """One system at one input size, as ``osteo compare`` runs it: ``prepare`` once, then
    ``fold_predictions`` on every fold (each scored and logged by the compare step), then
    ``close``. A class whose ``plan(name, setup)`` gives these is what a registry entry names."""

    name: str  # the registry key
    description: SystemDescription
    size: int | None  # input size in px; None for a size-free system
    roi: str  # what its pixels show: "image" (the whole film) or "knees"

    @property
    def label(self) -> str:
        """Its MLflow run's name and, unless it has several variants, its row's."""

    @property
    def variants(self) -> dict[str, str]:
        """Each prediction variant's row name (one variant, "", for most systems)."""

    def prepare(self) -> None:
        """Everything its folds share (weights check, features, caches), before the first fold;
        ``WeightsUnavailableError`` makes its row 'unavailable'."""

    def fold_predictions(self, fold: Fold) -> Predictions:
        """Train on the fold's training part; calibration and test probabilities per variant."""

    def fold_params(self, fold: Fold) -> dict[str, int]:
        """What a fold trained on (image counts), logged on the fold's run."""

    def notes(self, fold_rows: list[dict[str, Any]], n_train: int, n_test: int) -> dict[str, str]:
        """Each variant's note for the report, once every fold has run."""

    @property
    def seen(self) -> str | None:
        """What its networks trained on (cached views or fresh images); None for no network."""

    def close(self) -> dict[str, float]:
        """Free what ``prepare`` made; metrics about it (an activation cache's size and cost)."""
