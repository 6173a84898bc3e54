"""Grad-CAM for the pipeline's ResNet-50 classifier: where in the radiograph the evidence for a
class lies (Selvaraju et al., 2017), on the backbone's last convolutional output (7x7 at 224 px).

A heatmap on the joint space is what one hopes for; one on a label, a border or a marker says
the model learned the scanner, not the bone."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf
from matplotlib import colormaps

from osteo_pipeline.core.model import BACKBONE_NAME, REQUIRED_HEAD_LAYERS, head_layers
from osteo_pipeline.core.preprocess import model_input


def explainable(model: keras.Model) -> bool:
    """Whether ``model`` has the pipeline's layout (backbone, then the head layers)."""
    names = {layer.name for layer in model.layers}
    return BACKBONE_NAME in names and set(REQUIRED_HEAD_LAYERS) <= names


def grad_cam(
    model: keras.Model, pixels: np.ndarray, class_index: int | np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Heatmaps (N x S x S in [0, 1], S the input size) for ``class_index`` (default: each image's
    predicted class), and the model's probabilities. ``pixels``: N x S x S x 3 uint8."""
    if not explainable(model):
        raise ValueError(
            f"cannot explain model {model.name!r}: Grad-CAM needs the pipeline's layout "
            f"({BACKBONE_NAME} backbone, then {', '.join(REQUIRED_HEAD_LAYERS)})"
        )
    base = model.get_layer(BACKBONE_NAME)
    head = head_layers(model)
    inputs = tf.convert_to_tensor(model_input(pixels))
    with tf.GradientTape() as tape:
        features = base(inputs, training=False)
        tape.watch(features)
        proba = features
        for layer in head:
            proba = layer(proba, training=False)
        targets = (
            np.argmax(proba.numpy(), axis=1)
            if class_index is None
            else np.broadcast_to(class_index, (len(pixels),))
        )
        score = tf.gather(proba, tf.constant(targets, dtype=tf.int32), axis=1, batch_dims=1)
    gradients = tape.gradient(score, features)
    channel_weights = tf.reduce_mean(gradients, axis=(1, 2), keepdims=True)
    cams = tf.nn.relu(tf.reduce_sum(channel_weights * features, axis=-1))[..., None]
    cams = tf.image.resize(cams, pixels.shape[1:3], method="bilinear")[..., 0].numpy()
    peak = cams.reshape(len(cams), -1).max(axis=1).reshape(-1, 1, 1)
    return np.where(peak > 0, cams / np.where(peak > 0, peak, 1), 0.0).astype(
        np.float32
    ), proba.numpy()


def overlay(gray: np.ndarray, heatmap: np.ndarray, alpha: float = 0.4) -> np.ndarray:
    """The radiograph (S x S gray uint8) with a jet-coloured heatmap blended in: S x S x 3 uint8."""
    colour = colormaps["jet"](heatmap)[..., :3] * 255.0
    base = np.repeat(gray[..., None].astype(np.float64), 3, axis=2)
    return np.clip((1 - alpha) * base + alpha * colour, 0, 255).astype(np.uint8)
