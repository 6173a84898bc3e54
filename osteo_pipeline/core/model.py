"""ResNet-50 transfer-learning model: build, (un)freeze by residual block, strip for serving."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np

from osteo_pipeline.errors import OsteoError

#: ResNet-50's residual blocks, bottom to top: conv2 x3, conv3 x4, conv4 x6, conv5 x3.
RESIDUAL_BLOCKS = [
    f"conv{stage}_block{b}"
    for stage, n in ((2, 3), (3, 4), (4, 6), (5, 3))
    for b in range(1, n + 1)
]
MAX_UNFREEZE_DEPTH = len(RESIDUAL_BLOCKS)
BACKBONE_NAME = "resnet50"
#: The head's layers in order; ``head_dense`` is absent from a linear head (``head_units`` 0),
#: ``feature_standardization`` from a head on a pretrained backbone (see ``FeatureStatistics``).
HEAD_LAYERS = ("gap", "feature_standardization", "head_dense", "head_dropout", "probabilities")
REQUIRED_HEAD_LAYERS = ("gap", "head_dropout", "probabilities")
_BLOCK = re.compile(r"^(conv\d_block\d+)_")


class WeightsUnavailableError(OsteoError, RuntimeError):
    """ImageNet weights could not be loaded and no fallback was allowed."""


@dataclass(frozen=True)
class ModelSpec:
    classes: tuple[str, ...]
    input_size: int
    head_units: int  # 0: a linear head on the pooled features
    dropout: float
    l2: float = 0.0


@dataclass(frozen=True)
class FeatureStatistics:
    """Per-channel mean and variance of a backbone's pooled features on training images.

    A randomly initialised ResNet-50 keeps BatchNorm in inference mode with its initial statistics
    (mean 0, variance 1), so its pooled features share a large common offset and the class signal
    is a small variation around it: a head trained on them with Adam oscillates instead of
    learning. Standardised, the same features are linearly separable on the demo set. A
    pretrained backbone's features are already on ImageNet's scale and get no standardisation."""

    mean: np.ndarray
    variance: np.ndarray


def pooled_feature_statistics(
    base: keras.Model, pixels: np.ndarray, batch_size: int
) -> FeatureStatistics:
    """``FeatureStatistics`` of ``base`` on ``pixels`` (uint8 model inputs, not augmented). The
    variance is floored at a thousandth of the mean variance, so that a channel nearly constant
    on these images does not blow up on others. The forward pass is one traced function: calling
    the model eagerly would hold gigabytes of intermediate tensors (bench/scale.py)."""
    import tensorflow as tf

    from osteo_pipeline.core.preprocess import model_input

    pool = tf.function(
        lambda x: tf.reduce_mean(base(x, training=False), axis=(1, 2)), reduce_retracing=True
    )

    pooled = np.concatenate(
        [
            np.asarray(pool(model_input(pixels[i : i + batch_size])))
            for i in range(0, len(pixels), batch_size)
        ]
    ).astype(np.float64)
    variance = pooled.var(axis=0)
    return FeatureStatistics(
        pooled.mean(axis=0), np.maximum(variance, 1e-3 * variance.mean() + 1e-12)
    )


def backbone(weights: str | None, input_size: int) -> keras.Model:
    """ResNet-50 without its top: ``imagenet`` (Keras download), a local ``.h5`` path, or
    ``None``."""
    shape = (input_size, input_size, 3)
    if weights is None or weights == "imagenet":
        return keras.applications.ResNet50(
            include_top=False, weights=weights, input_shape=shape, name=BACKBONE_NAME
        )
    path = Path(weights).expanduser()
    if not path.is_file():
        raise WeightsUnavailableError(
            f"backbone weights file not found: {path} (model.weights / OSTEO_BACKBONE_WEIGHTS)"
        )
    return keras.applications.ResNet50(
        include_top=False, weights=str(path), input_shape=shape, name=BACKBONE_NAME
    )


def classifier(
    base: keras.Model,
    spec: ModelSpec,
    name: str,
    frozen_statistics: bool,
    standardize: FeatureStatistics | None = None,
) -> keras.Model:
    """``base`` (a no-top feature extractor) + GAP + Dense(relu) + dropout + softmax: the head
    every CNN here shares; with ``head_units`` 0 the hidden layer is left out, a linear head (a
    logistic regression on the pooled features: what a few dozen images can afford). ``l2``
    penalises the head's weights. ``frozen_statistics`` keeps BatchNorm in inference mode
    (pretrained backbones); trained-from-scratch ones need their batch statistics. ``standardize``
    puts a fixed standardisation of the pooled features in front of the dense layers."""
    inputs = keras.Input(shape=(spec.input_size, spec.input_size, 3), name="image")
    features = base(inputs, training=False) if frozen_statistics else base(inputs)
    penalty = keras.regularizers.L2(spec.l2) if spec.l2 > 0 else None
    x = keras.layers.GlobalAveragePooling2D(name=HEAD_LAYERS[0])(features)
    if standardize is not None:
        x = keras.layers.Normalization(
            mean=standardize.mean, variance=standardize.variance, name=HEAD_LAYERS[1]
        )(x)
    if spec.head_units:
        x = keras.layers.Dense(
            spec.head_units, activation="relu", kernel_regularizer=penalty, name=HEAD_LAYERS[2]
        )(x)
    x = keras.layers.Dropout(spec.dropout, name=HEAD_LAYERS[3])(x)
    outputs = keras.layers.Dense(
        len(spec.classes),
        activation="softmax",
        dtype="float32",
        kernel_regularizer=penalty,
        name=HEAD_LAYERS[4],
    )(x)
    return keras.Model(inputs, outputs, name=name)


def build_model(spec: ModelSpec, weights: str | None) -> keras.Model:
    """The pipeline's model: ResNet-50 (BatchNorm always in inference mode, so its ImageNet
    statistics survive fine-tuning on a few dozen images) + the shared head; head-only trainable."""
    return with_head(backbone(weights, spec.input_size), spec)


def with_head(
    base: keras.Model, spec: ModelSpec, standardize: FeatureStatistics | None = None
) -> keras.Model:
    """``build_model`` on an existing ResNet-50 ``base`` (its layers and weights are shared, not
    copied): a new head, head-only trainable."""
    model = classifier(
        base, spec, "osteo_resnet50", frozen_statistics=True, standardize=standardize
    )
    set_unfrozen_blocks(model, 0)
    return model


def get_backbone(model: keras.Model) -> keras.Model:
    return model.get_layer(BACKBONE_NAME)


def head_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """The head's layers of ``model``, in order (a linear head has no hidden layer)."""
    names = {layer.name for layer in model.layers}
    return [model.get_layer(name) for name in HEAD_LAYERS if name in names]


def set_unfrozen_blocks(model: keras.Model, depth: int) -> list[str]:
    """Make the top ``depth`` residual blocks trainable (0 = head only, 16 = every block; the
    stem ``conv1`` then too). BatchNormalization layers stay frozen. Returns trainable layer
    names."""
    if not 0 <= depth <= MAX_UNFREEZE_DEPTH:
        raise ValueError(f"unfreeze_depth must be in 0..{MAX_UNFREEZE_DEPTH}, got {depth}")
    base = get_backbone(model)
    unfrozen = set(RESIDUAL_BLOCKS[MAX_UNFREEZE_DEPTH - depth :]) if depth else set()
    base.trainable = depth > 0
    trainable = []
    for layer in base.layers:
        match = _BLOCK.match(layer.name)
        block = (
            match.group(1)
            if match
            else ("stem" if layer.name.startswith(("conv1", "pool1")) else None)
        )
        wanted = block in unfrozen or (block == "stem" and depth == MAX_UNFREEZE_DEPTH)
        layer.trainable = wanted and not isinstance(layer, keras.layers.BatchNormalization)
        if layer.trainable and layer.weights:
            trainable.append(layer.name)
    return trainable


@dataclass(frozen=True)
class BlockLayout:
    """Where a pretrained backbone nested in a classifier can be cut into a frozen prefix and the
    part a fit trains: ``boundaries[d]`` is the backbone layer whose output feeds its top ``d``
    trainable blocks (0: the backbone's own output, the input of the head). A depth with no entry
    trains the first layers too, so it has no frozen prefix."""

    backbone: str  # the nested backbone's layer name in the classifier
    boundaries: tuple[str, ...]

    def boundary_layer(self, depth: int) -> str:
        if not 0 <= depth < len(self.boundaries):
            raise ValueError(
                f"no frozen prefix for unfreeze depth {depth} of {self.backbone} "
                f"(0..{len(self.boundaries) - 1} have one)"
            )
        return self.boundaries[depth]


#: ResNet-50's cut points: the output of each residual block, top down. Depth 16 also trains the
#: stem, so it has no frozen prefix.
RESNET50_LAYOUT = BlockLayout(
    BACKBONE_NAME,
    tuple(f"{RESIDUAL_BLOCKS[MAX_UNFREEZE_DEPTH - 1 - d]}_out" for d in range(MAX_UNFREEZE_DEPTH)),
)


def backbone_segment(
    model: keras.Model,
    from_depth: int | None,
    to_depths: list[int],
    layout: BlockLayout = RESNET50_LAYOUT,
) -> keras.Model:
    """The backbone layers from one block boundary (or the image, for ``None``) up to others, with
    one output per depth in ``to_depths`` (in that order), sharing weights with ``model``: computes
    the frozen prefix a trial never updates."""
    base = model.get_layer(layout.backbone)
    start = (
        base.input
        if from_depth is None
        else base.get_layer(layout.boundary_layer(from_depth)).output
    )
    outputs = [base.get_layer(layout.boundary_layer(depth)).output for depth in to_depths]
    return keras.Model(start, outputs, name=f"segment_{from_depth}_{'_'.join(map(str, to_depths))}")


def top_model(model: keras.Model, depth: int, layout: BlockLayout = RESNET50_LAYOUT) -> keras.Model:
    """The top ``depth`` blocks plus the head, as a model on the boundary activation: the part of
    ``model`` a trial with that unfreeze depth trains. Layers (and weights) are shared with
    ``model``."""
    base = model.get_layer(layout.backbone)
    boundary = base.get_layer(layout.boundary_layer(depth)).output
    inputs = keras.Input(shape=tuple(boundary.shape[1:]), name="activation")
    features = keras.Model(boundary, base.output)(inputs, training=False) if depth else inputs
    x = features
    for layer in head_layers(model):
        x = layer(x)
    return keras.Model(inputs, x, name=f"top_{depth}")


def _float32_policies(config: Any) -> Any:
    """A model config with every mixed-precision dtype policy replaced by float32."""
    if isinstance(config, dict):
        if config.get("class_name") == "DTypePolicy" and str(
            config.get("config", {}).get("name", "")
        ).startswith("mixed_"):
            return {**config, "config": {**config["config"], "name": "float32"}}
        return {key: _float32_policies(value) for key, value in config.items()}
    if isinstance(config, list):
        return [_float32_policies(value) for value in config]
    return config


def inference_copy(model: keras.Model) -> keras.Model:
    """The same architecture and weights in float32, uncompiled: saved without optimizer state (a
    third of the size), and without a mixed-precision policy a GPU run trained under, which a CPU
    server would otherwise compute in float16 (slow, and not what was validated)."""
    # Rebuilt from config: ``clone_model`` keeps the nested backbone's training state.
    copy = keras.Model.from_config(_float32_policies(model.get_config()))
    copy.set_weights(model.get_weights())
    return copy
