"""The comparison's Keras systems: the seed paper's networks, built with the pipeline's head and
trained by the same two-phase fit (``training.fit``)."""

from __future__ import annotations

from collections.abc import Callable

import keras

from osteo_pipeline.config import Settings
from osteo_pipeline.core import baselines
from osteo_pipeline.core.model import (
    ModelSpec,
    WeightsUnavailableError,
    build_model,
    set_unfrozen_blocks,
)
from osteo_pipeline.training.fit import TrainParams


def _spec(settings: Settings, size: int) -> ModelSpec:
    return ModelSpec(tuple(settings.data.classes), size, settings.model.head_units, settings.model.dropout, settings.model.l2)


def pretrained(build: Callable[[], keras.Model], what: str) -> keras.Model:
    """Build a model with pretrained weights; any failure to get them is 'unavailable', never a
    silent random init."""
    try:
        return build()
    except WeightsUnavailableError:
        raise
    except Exception as exc:  # noqa: BLE001 - a failed download surfaces as many exception types
        raise WeightsUnavailableError(f"{what} weights unavailable: {type(exc).__name__}: {str(exc)[:160]}") from exc


def _keep_all_trainable(model: keras.Model, depth: int) -> None:
    """Networks trained from scratch train every layer in every phase."""


def keras_system(
    name: str, settings: Settings, size: int, recipe: TrainParams | None = None, recipe_epochs: tuple[int, int] | None = None
) -> tuple[keras.Model, TrainParams, tuple[int, int], Callable[[keras.Model, int], object]]:
    """The network of a Keras system, the parameters and (head, finetune) epochs it trains with,
    and how each phase sets what trains. ``recipe`` (with its epochs): the pipeline's own tuned
    parameters for ``resnet50-tl`` instead of the config's."""
    spec, t, c = _spec(settings, size), settings.train, settings.compare
    config = TrainParams.from_settings(settings)
    scratch = (TrainParams(c.scratch_learning_rate, 0, spec.head_units, spec.dropout), (0, c.scratch_epochs), _keep_all_trainable)
    if name == "resnet50-tl":
        params = recipe or config
        tuned = ModelSpec(spec.classes, size, params.head_units, params.dropout, params.l2)
        model = pretrained(lambda: build_model(tuned, settings.model.weights_source), "ResNet-50 ImageNet")
        return model, params, recipe_epochs or (t.head_epochs, t.finetune_epochs), set_unfrozen_blocks
    if name == "vgg16-ft":
        model = pretrained(lambda: baselines.vgg16(spec, c.vgg16_weights), "VGG-16")
        params = TrainParams(t.learning_rate, c.vgg16_finetune_blocks, spec.head_units, spec.dropout)
        return model, params, (t.head_epochs, t.finetune_epochs), baselines.set_trainable_vgg_blocks
    if name == "vgg16-frozen":
        model = pretrained(lambda: baselines.vgg16(spec, c.vgg16_weights), "VGG-16")
        return model, config, (t.head_epochs + t.finetune_epochs, 0), baselines.set_trainable_vgg_blocks
    builders = {"resnet50-scratch": baselines.resnet50_scratch, "resnet18": baselines.resnet18, "cnn3": baselines.cnn3}
    if name in builders:
        return (builders[name](spec), *scratch)
    raise ValueError(f"{name} is not a Keras system")


def require_weights(name: str, settings: Settings) -> None:
    """Fail fast, before any fold runs, when a pretrained system's weights cannot be had."""
    if name.startswith("vgg16"):
        pretrained(lambda: baselines.vgg16(_spec(settings, 32), settings.compare.vgg16_weights), "VGG-16")
    elif name.startswith("resnet50-") and name != "resnet50-scratch" and settings.model.weights_source is None:
        raise WeightsUnavailableError(f"model.weights is 'none': {name} needs ImageNet weights")
