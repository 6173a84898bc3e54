"""tf.data input pipelines: augmentation on the training split only, then the backbone's own
preprocessing. Inputs are decoded uint8 arrays (see ``io.pixels``), never files."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf
from sklearn.utils.class_weight import compute_class_weight

from osteo_pipeline.config import AugmentSettings
from osteo_pipeline.core.preprocess import model_input


def augmenter(settings: AugmentSettings, seed: int) -> keras.Sequential | None:
    """The paper's augmentation as Keras preprocessing layers (flip p=0.5, rotation ±10°, shift,
    zoom, brightness and contrast ±10%), on uint8-range pixels; ``None`` when disabled."""
    if not settings.enabled:
        return None
    layers: list[keras.layers.Layer] = []
    if settings.horizontal_flip:
        layers.append(keras.layers.RandomFlip("horizontal", seed=seed))
    if settings.rotation:
        layers.append(keras.layers.RandomRotation(settings.rotation, fill_mode="constant", seed=seed + 1))
    if settings.shift:
        layers.append(keras.layers.RandomTranslation(settings.shift, settings.shift, fill_mode="constant", seed=seed + 2))
    if settings.zoom:
        layers.append(keras.layers.RandomZoom(settings.zoom, settings.zoom, fill_mode="constant", seed=seed + 3))
    if settings.brightness:
        layers.append(keras.layers.RandomBrightness(settings.brightness, value_range=(0, 255), seed=seed + 4))
    if settings.contrast:
        layers.append(keras.layers.RandomContrast(settings.contrast, value_range=(0, 255), seed=seed + 5))
    return keras.Sequential(layers, name="augment") if layers else None


def one_hot(labels: np.ndarray, n_classes: int) -> np.ndarray:
    return np.eye(n_classes, dtype=np.float32)[labels]


def make_dataset(
    pixels: np.ndarray,
    labels: np.ndarray | None,
    n_classes: int,
    batch_size: int,
    augment: keras.Sequential | None = None,
    shuffle_seed: int | None = None,
) -> tf.data.Dataset:
    """Batches of preprocessed images (and one-hot labels). Pass ``augment`` for training only."""
    tensors = pixels if labels is None else (pixels, one_hot(labels, n_classes))
    ds = tf.data.Dataset.from_tensor_slices(tensors)
    if shuffle_seed is not None:
        ds = ds.shuffle(len(pixels), seed=shuffle_seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size)

    def prepare(x: tf.Tensor, *y: tf.Tensor):
        x = tf.cast(x, tf.float32)
        if augment is not None:
            x = tf.clip_by_value(augment(x, training=True), 0.0, 255.0)
        return (model_input(x), *y)

    return ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def class_weights(labels: np.ndarray, n_classes: int, mode: str) -> dict[int, float] | None:
    """Balanced weights from the training labels (``None`` for mode 'none')."""
    if mode == "none":
        return None
    present = np.unique(labels)
    weights = compute_class_weight("balanced", classes=present, y=labels)
    result = {int(c): 1.0 for c in range(n_classes)}
    result.update({int(c): float(w) for c, w in zip(present, weights)})
    return result
