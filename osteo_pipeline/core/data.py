"""tf.data input pipelines: augmentation on the training split only, then the backbone's own
preprocessing. Inputs are decoded uint8 arrays (see ``io.pixels``), never files."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf
from sklearn.utils.class_weight import compute_class_weight

from osteo_pipeline.config import AugmentSettings
from osteo_pipeline.core.preprocess import gray_model_input


class XrayAugment(keras.layers.Layer):
    """The paper's augmentation (flip p=0.5, rotation, shift, zoom, brightness, contrast) with the
    four geometric ones composed into one affine transform per image: one bilinear resampling
    instead of four (Keras' RandomFlip/Rotation/Translation/Zoom each warp), so the per-epoch
    work a decode-once cache leaves is as small as it can be. Input: uint8-range floats, NHWC."""

    def __init__(self, settings: AugmentSettings, seed: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.settings = settings
        self.seed_generator = keras.random.SeedGenerator(seed)

    def _uniform(self, n, low: float, high: float):  # noqa: ANN001, ANN202
        return keras.random.uniform((n,), low, high, seed=self.seed_generator)

    def call(self, images, training: bool = True):  # noqa: ANN001, ANN201
        if not training:
            return images
        s, ops = self.settings, keras.ops
        n = ops.shape(images)[0]
        height, width = float(images.shape[1]), float(images.shape[2])
        flip = ops.where(self._uniform(n, 0, 1) < 0.5, -1.0, 1.0) if s.horizontal_flip else ops.ones((n,))
        angle = self._uniform(n, -s.rotation, s.rotation) * (2 * np.pi)
        zoom_x, zoom_y = self._uniform(n, 1 - s.zoom, 1 + s.zoom), self._uniform(n, 1 - s.zoom, 1 + s.zoom)
        shift_x, shift_y = self._uniform(n, -s.shift, s.shift) * width, self._uniform(n, -s.shift, s.shift) * height
        # Output pixel -> input pixel: x_in = M (x_out - centre - shift) + centre, M = flip . zoom . R(-angle)
        cos, sin = ops.cos(angle), ops.sin(angle)
        m00, m01, m10, m11 = flip * zoom_x * cos, flip * zoom_x * sin, -zoom_y * sin, zoom_y * cos
        cx, cy = (width - 1) / 2, (height - 1) / 2
        ox, oy = cx + shift_x, cy + shift_y
        transform = ops.stack([m00, m01, cx - m00 * ox - m01 * oy, m10, m11, cy - m10 * ox - m11 * oy, ops.zeros((n,)), ops.zeros((n,))], axis=1)
        x = ops.image.affine_transform(images, transform, interpolation="bilinear", fill_mode="constant", fill_value=0)
        if s.brightness:
            x = x + ops.reshape(self._uniform(n, -s.brightness, s.brightness) * 255.0, (-1, 1, 1, 1))
        if s.contrast:
            mean = ops.mean(x, axis=(1, 2), keepdims=True)
            x = (x - mean) * ops.reshape(self._uniform(n, 1 - s.contrast, 1 + s.contrast), (-1, 1, 1, 1)) + mean
        return x


def augmenter(settings: AugmentSettings, seed: int) -> XrayAugment | None:
    """The training split's augmentation, or ``None`` when disabled."""
    return XrayAugment(settings, seed, name="augment") if settings.enabled else None


def one_hot(labels: np.ndarray, n_classes: int) -> np.ndarray:
    return np.eye(n_classes, dtype=np.float32)[labels]


def model_batch(gray: tf.Tensor | np.ndarray, augment: keras.layers.Layer | None) -> tf.Tensor:
    """The model's input from a uint8 one-channel batch: augmented (when ``augment``) on the one
    channel, clipped to the pixel range, then ``gray_model_input`` (three preprocessed channels)."""
    x = tf.cast(gray, tf.float32)
    if augment is not None:
        x = tf.clip_by_value(augment(x, training=True), 0.0, 255.0)
    return gray_model_input(x)


def make_dataset(
    pixels: np.ndarray,
    labels: np.ndarray | None,
    n_classes: int,
    batch_size: int,
    augment: keras.layers.Layer | None = None,
    shuffle_seed: int | None = None,
) -> tf.data.Dataset:
    """Batches of preprocessed images (and one-hot labels). Pass ``augment`` for training only.

    Radiographs are gray replicated to three channels (``core.preprocess.load_pixels``), so the
    pipeline keeps one channel until the last step (``model_batch``): a third of the memory and of
    the augmentation work, the same result."""
    gray = pixels[..., :1]
    tensors = gray if labels is None else (gray, one_hot(labels, n_classes))
    ds = tf.data.Dataset.from_tensor_slices(tensors)
    if shuffle_seed is not None:
        ds = ds.shuffle(len(pixels), seed=shuffle_seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size)

    def prepare(x: tf.Tensor, *y: tf.Tensor):
        return (model_batch(x, augment), *y)

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


class ViewBatches(keras.utils.PyDataset):
    """Training batches from cached activations of K fixed augmented views (K x N x ...): epoch
    ``e`` sees view ``e mod K`` of every image, in a shuffle seeded by ``seed`` and ``e``. Class
    weights travel as per-sample weights, which is what ``fit(class_weight=...)`` does too."""

    def __init__(
        self,
        activations: np.ndarray,
        labels: np.ndarray,
        n_classes: int,
        batch_size: int,
        weights: dict[int, float] | None,
        seed: int,
        first_epoch: int = 0,
    ) -> None:
        super().__init__()
        self.activations = activations
        self.targets = one_hot(labels, n_classes)
        self.sample_weights = np.array([weights[int(c)] for c in labels] if weights else np.ones(len(labels)), dtype=np.float32)
        self.batch_size = batch_size
        self.seed = seed
        self.first_epoch = first_epoch
        self.epochs_begun = 0
        self.epoch = first_epoch
        self._order = self._shuffle()

    def _shuffle(self) -> np.ndarray:
        return np.random.default_rng([self.seed, self.epoch]).permutation(len(self.targets))

    def __len__(self) -> int:
        return -(-len(self.targets) // self.batch_size)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        rows = np.sort(self._order[index * self.batch_size : (index + 1) * self.batch_size])
        view = self.activations[self.epoch % len(self.activations)]
        return np.asarray(view[rows]), self.targets[rows], self.sample_weights[rows]

    def on_epoch_begin(self) -> None:
        # Counted from epoch starts: Keras also calls ``on_epoch_end`` once before the first epoch.
        self.epoch = self.first_epoch + self.epochs_begun
        self.epochs_begun += 1
        self._order = self._shuffle()
