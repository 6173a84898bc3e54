"""The seed paper's comparison networks, each with the pipeline's head (``model.classifier``):
VGG-16 (ImageNet weights, frozen or with its top block fine-tuned), ResNet-50 and ResNet-18 from
scratch, and a 3-layer CNN. Inputs are the pipeline's own (``preprocess.model_input``)."""

from __future__ import annotations

from pathlib import Path

import keras

from osteo_pipeline.core.model import BlockLayout, ModelSpec, WeightsUnavailableError, classifier

VGG_NAME = "vgg16"
VGG_BLOCKS = 5
#: VGG-16's cut points: each convolution block ends in its pooling layer. Depth 5 trains every
#: block, so it has no frozen prefix.
VGG16_LAYOUT = BlockLayout(
    VGG_NAME, tuple(f"block{VGG_BLOCKS - d}_pool" for d in range(VGG_BLOCKS))
)


def _input_scale(inputs: keras.KerasTensor) -> keras.KerasTensor:
    # caffe-preprocessed pixels span about +-128; networks without a pretrained first layer
    # train better on unit scale.
    return keras.layers.Rescaling(1 / 128.0)(inputs)


def resnet50_scratch(spec: ModelSpec) -> keras.Model:
    """ResNet-50, randomly initialised, every layer trained (BatchNorm learns its statistics)."""
    base = keras.applications.ResNet50(
        include_top=False,
        weights=None,
        input_shape=(spec.input_size, spec.input_size, 3),
        name="resnet50",
    )
    return classifier(base, spec, "resnet50_scratch", frozen_statistics=False)


def vgg16(spec: ModelSpec, weights: str) -> keras.Model:
    """VGG-16 (no top) with ``imagenet`` (Keras download) or a local no-top ``.h5``; head-only
    trainable until :func:`set_trainable_vgg_blocks`. Never falls back to random weights."""
    shape = (spec.input_size, spec.input_size, 3)
    if weights != "imagenet" and not Path(weights).expanduser().is_file():
        raise WeightsUnavailableError(
            f"VGG-16 weights file not found: {weights} "
            "(compare.vgg16_weights / OSTEO_VGG16_WEIGHTS)"
        )
    source = weights if weights == "imagenet" else str(Path(weights).expanduser())
    try:
        base = keras.applications.VGG16(
            include_top=False, weights=source, input_shape=shape, name=VGG_NAME
        )
    except Exception as exc:  # noqa: BLE001 - download or file errors of many kinds
        raise WeightsUnavailableError(
            f"VGG-16 ImageNet weights unavailable ({type(exc).__name__}: {str(exc)[:160]}); "
            "set compare.vgg16_weights (or OSTEO_VGG16_WEIGHTS) to a local "
            "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"
        ) from exc
    model = classifier(base, spec, "vgg16_tl", frozen_statistics=True)
    set_trainable_vgg_blocks(model, 0)
    return model


def set_trainable_vgg_blocks(model: keras.Model, depth: int) -> None:
    """Train the top ``depth`` of VGG-16's five convolution blocks (0: head only)."""
    if not 0 <= depth <= VGG_BLOCKS:
        raise ValueError(f"VGG-16 unfreeze depth must be in 0..{VGG_BLOCKS}, got {depth}")
    base = model.get_layer(VGG_NAME)
    base.trainable = depth > 0
    for layer in base.layers:
        block = int(layer.name[5]) if layer.name.startswith("block") else 0
        layer.trainable = block > VGG_BLOCKS - depth


def _basic_block(x: keras.KerasTensor, filters: int, stride: int, name: str) -> keras.KerasTensor:
    shortcut = x
    if stride != 1 or x.shape[-1] != filters:
        shortcut = keras.layers.Conv2D(
            filters, 1, strides=stride, use_bias=False, name=f"{name}_proj"
        )(x)
        shortcut = keras.layers.BatchNormalization(name=f"{name}_proj_bn")(shortcut)
    y = keras.layers.Conv2D(
        filters, 3, strides=stride, padding="same", use_bias=False, name=f"{name}_conv1"
    )(x)
    y = keras.layers.BatchNormalization(name=f"{name}_bn1")(y)
    y = keras.layers.ReLU(name=f"{name}_relu1")(y)
    y = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv2")(y)
    y = keras.layers.BatchNormalization(name=f"{name}_bn2")(y)
    return keras.layers.ReLU(name=f"{name}_out")(
        keras.layers.Add(name=f"{name}_add")([shortcut, y])
    )


def resnet18(spec: ModelSpec) -> keras.Model:
    """ResNet-18 (He et al., 2016: two basic blocks per stage, 64-512 filters); Keras has none.
    Trained from scratch, as in the paper's reference."""
    inputs = keras.Input(shape=(spec.input_size, spec.input_size, 3))
    x = keras.layers.Conv2D(64, 7, strides=2, padding="same", use_bias=False, name="stem_conv")(
        _input_scale(inputs)
    )
    x = keras.layers.BatchNormalization(name="stem_bn")(x)
    x = keras.layers.ReLU(name="stem_relu")(x)
    x = keras.layers.MaxPooling2D(3, strides=2, padding="same", name="stem_pool")(x)
    for stage, filters in enumerate((64, 128, 256, 512)):
        for block in range(2):
            x = _basic_block(
                x, filters, 2 if stage and not block else 1, f"stage{stage + 1}_block{block + 1}"
            )
    return classifier(
        keras.Model(inputs, x, name="resnet18"), spec, "resnet18_scratch", frozen_statistics=False
    )


def cnn3(spec: ModelSpec) -> keras.Model:
    """Three convolution layers (32, 64, 128 filters), each with BatchNorm, ReLU and pooling."""
    inputs = keras.Input(shape=(spec.input_size, spec.input_size, 3))
    x = _input_scale(inputs)
    for i, filters in enumerate((32, 64, 128), start=1):
        x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"conv{i}")(x)
        x = keras.layers.BatchNormalization(name=f"bn{i}")(x)
        x = keras.layers.ReLU(name=f"relu{i}")(x)
        x = keras.layers.MaxPooling2D(2, name=f"pool{i}")(x)
    return classifier(keras.Model(inputs, x, name="cnn3"), spec, "cnn3", frozen_statistics=False)
