"""The comparison's Keras systems: the seed paper's networks, built with the pipeline's head and
trained by the same two-phase fit (``training.fit``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import keras

from osteo_pipeline.config import Settings
from osteo_pipeline.core import baselines
from osteo_pipeline.core.model import (
    RESNET50_LAYOUT,
    BlockLayout,
    ModelSpec,
    WeightsUnavailableError,
    build_model,
    set_unfrozen_blocks,
)
from osteo_pipeline.io.weights import pretrained_file
from osteo_pipeline.training.fit import TrainParams


def _spec(settings: Settings, size: int) -> ModelSpec:
    return ModelSpec(
        tuple(settings.data.classes),
        size,
        settings.model.head_units,
        settings.model.dropout,
        settings.model.l2,
    )


def pretrained(build: Callable[[], keras.Model], what: str) -> keras.Model:
    """Build a model with pretrained weights; any failure to get them is 'unavailable', never a
    silent random init."""
    try:
        return build()
    except WeightsUnavailableError:
        raise
    except Exception as exc:  # noqa: BLE001 - a failed download surfaces as many exception types
        raise WeightsUnavailableError(
            f"{what} weights unavailable: {type(exc).__name__}: {str(exc)[:160]}"
        ) from exc


def _keep_all_trainable(model: keras.Model, depth: int) -> None:
    """Networks trained from scratch train every layer in every phase."""


@dataclass
class KerasSystem:
    """A comparison network and how it trains: parameters, (head, finetune) epochs, how each
    phase sets what trains, and, for a pretrained backbone, where it can be cut (``None``: trained
    from scratch, nothing is frozen)."""

    model: keras.Model
    params: TrainParams
    epochs: tuple[int, int]
    unfreeze: Callable[[keras.Model, int], object]
    layout: BlockLayout | None = None

    @property
    def depth(self) -> int:
        """The deepest unfreeze depth any phase trains."""
        return self.params.unfreeze_depth if self.epochs[1] else 0

    @property
    def frozen_prefix(self) -> bool:
        """Whether every phase leaves a frozen prefix of the backbone that an activation cache can hold."""
        return self.layout is not None and self.depth < len(self.layout.boundaries)


def keras_system(
    name: str,
    settings: Settings,
    size: int,
    recipe: TrainParams | None = None,
    recipe_epochs: tuple[int, int] | None = None,
) -> KerasSystem:
    """The network of a Keras system and how it trains. ``recipe`` (with its epochs): the
    pipeline's own tuned parameters for ``resnet50-tl`` instead of the config's."""
    spec, t, c = _spec(settings, size), settings.train, settings.compare
    config = TrainParams.from_settings(settings)
    if name == "resnet50-tl":
        params = recipe or config
        tuned = ModelSpec(spec.classes, size, params.head_units, params.dropout, params.l2)
        model = pretrained(
            lambda: build_model(tuned, pretrained_file(settings.model.weights)),
            "ResNet-50 ImageNet",
        )
        return KerasSystem(
            model,
            params,
            recipe_epochs or (t.head_epochs, t.finetune_epochs),
            set_unfrozen_blocks,
            RESNET50_LAYOUT,
        )
    if name == "vgg16-ft":
        model = pretrained(lambda: baselines.vgg16(spec, c.vgg16_weights), "VGG-16")
        params = TrainParams(
            t.learning_rate, c.vgg16_finetune_blocks, spec.head_units, spec.dropout
        )
        return KerasSystem(
            model,
            params,
            (t.head_epochs, t.finetune_epochs),
            baselines.set_trainable_vgg_blocks,
            baselines.VGG16_LAYOUT,
        )
    if name == "vgg16-frozen":
        model = pretrained(lambda: baselines.vgg16(spec, c.vgg16_weights), "VGG-16")
        return KerasSystem(
            model,
            config,
            (t.head_epochs + t.finetune_epochs, 0),
            baselines.set_trainable_vgg_blocks,
            baselines.VGG16_LAYOUT,
        )
    builders = {
        "resnet50-scratch": baselines.resnet50_scratch,
        "resnet18": baselines.resnet18,
        "cnn3": baselines.cnn3,
    }
    if name in builders:
        scratch = TrainParams(c.scratch_learning_rate, 0, spec.head_units, spec.dropout)
        return KerasSystem(
            builders[name](spec), scratch, (0, c.scratch_epochs), _keep_all_trainable
        )
    raise ValueError(f"{name} is not a Keras system")


def require_weights(name: str, settings: Settings) -> None:
    """Fail fast, before any fold runs, when a pretrained system's weights cannot be had."""
    if name.startswith("vgg16"):
        pretrained(
            lambda: baselines.vgg16(_spec(settings, 32), settings.compare.vgg16_weights), "VGG-16"
        )
    elif name.startswith("resnet50-") and name != "resnet50-scratch":
        pretrained_file(settings.model.weights)
