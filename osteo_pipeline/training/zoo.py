"""The comparison's Keras networks: the seed paper's networks, built with the pipeline's head and
trained by the same two-phase fit (``training.fit``). Which system uses which network is the
system's own business (``steps.compare.systems``); this module only builds them."""

from __future__ import annotations

import gc
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

#: A network trained from scratch, from its spec (``core.baselines``).
ScratchBuilder = Callable[[ModelSpec], keras.Model]


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


def fresh_session(seed: int | None = None) -> None:
    """Drop the graphs of earlier fits (and seed the next one): every fold starts alike."""
    keras.backend.clear_session()
    gc.collect()
    if seed is not None:
        keras.utils.set_random_seed(seed)


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
        """Whether every phase leaves a frozen prefix of the backbone that an activation cache
        can hold."""
        return self.layout is not None and self.depth < len(self.layout.boundaries)


def pipeline_resnet50(
    settings: Settings, size: int, params: TrainParams, epochs: tuple[int, int]
) -> KerasSystem:
    """The pipeline's own model: ImageNet ResNet-50 (``model.weights``) with ``params``' head."""
    spec = ModelSpec(
        tuple(settings.data.classes), size, params.head_units, params.dropout, params.l2
    )
    model = pretrained(
        lambda: build_model(spec, pretrained_file(settings.model.weights)), "ResNet-50 ImageNet"
    )
    return KerasSystem(model, params, epochs, set_unfrozen_blocks, RESNET50_LAYOUT)


def vgg16(
    settings: Settings, size: int, params: TrainParams, epochs: tuple[int, int]
) -> KerasSystem:
    """ImageNet VGG-16 (``compare.vgg16_weights``) with the pipeline's head."""
    model = pretrained(
        lambda: baselines.vgg16(_spec(settings, size), settings.compare.vgg16_weights), "VGG-16"
    )
    return KerasSystem(
        model, params, epochs, baselines.set_trainable_vgg_blocks, baselines.VGG16_LAYOUT
    )


def from_scratch(build: ScratchBuilder, settings: Settings, size: int) -> KerasSystem:
    """A randomly initialised network, every layer trained for ``compare.scratch_epochs``."""
    spec, c = _spec(settings, size), settings.compare
    params = TrainParams(c.scratch_learning_rate, 0, spec.head_units, spec.dropout)
    return KerasSystem(build(spec), params, (0, c.scratch_epochs), _keep_all_trainable)


def require_resnet50(settings: Settings) -> None:
    """Fail fast, before any fold runs, when ImageNet ResNet-50 weights cannot be had."""
    pretrained_file(settings.model.weights)


def require_vgg16(settings: Settings) -> None:
    """Fail fast, before any fold runs, when VGG-16's weights cannot be had."""
    pretrained(
        lambda: baselines.vgg16(_spec(settings, 32), settings.compare.vgg16_weights), "VGG-16"
    )
