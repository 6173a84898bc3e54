"""tf.data input pipelines: augmentation on the training split only, then the backbone's own
preprocessing. Inputs are decoded uint8 arrays (see ``io.pixels``), never files.

The per-batch work runs in NumPy and OpenCV (``tf.numpy_function``): it is all a decode-once
cache leaves each epoch, and OpenCV does it in a fraction of the CPU time of TensorFlow's image
ops (docs/performance.md)."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import keras
import numpy as np
import tensorflow as tf
from sklearn.utils.class_weight import compute_class_weight

from osteo_pipeline.config import AugmentSettings
from osteo_pipeline.core.preprocess import gray_model_input


class XrayAugment:
    """The paper's augmentation (flip p=0.5, rotation, shift, zoom, brightness, contrast) with the
    four geometric ones composed into one affine transform per image: one bilinear resampling
    instead of four.

    Its random numbers come from ``(seed, *key)`` alone, where ``key`` names the batch (an epoch's
    batch, a fixed view): the same batch is augmented the same way whichever thread gets to it
    first, so a run repeats exactly from its seed even with a parallel input pipeline."""

    def __init__(self, settings: AugmentSettings, seed: int) -> None:
        self.settings = settings
        self.seed = seed

    def __call__(self, gray: np.ndarray, key: Sequence[int]) -> np.ndarray:
        """Augmented copies (float32, N x H x W, uint8 range before clipping) of ``gray``
        (N x H x W)."""
        s, (n, height, width) = self.settings, gray.shape
        rng = np.random.default_rng([self.seed, *(int(k) for k in key)])
        span = lambda limit, centre=0.0: rng.uniform(centre - limit, centre + limit, n)  # noqa: E731
        flip = np.where(rng.uniform(size=n) < 0.5, -1.0, 1.0) if s.horizontal_flip else np.ones(n)
        angle = span(s.rotation) * 2 * np.pi
        zoom_x, zoom_y = span(s.zoom, 1.0), span(s.zoom, 1.0)
        shift_x, shift_y = span(s.shift) * width, span(s.shift) * height
        brightness, contrast = span(s.brightness) * 255.0, span(s.contrast, 1.0)
        # Output pixel -> input pixel: x_in = M (x_out - centre - shift) + centre,
        # M = flip . zoom . R(-angle)
        cos, sin = np.cos(angle), np.sin(angle)
        m00, m01, m10, m11 = flip * zoom_x * cos, flip * zoom_x * sin, -zoom_y * sin, zoom_y * cos
        cx, cy = (width - 1) / 2, (height - 1) / 2
        ox, oy = cx + shift_x, cy + shift_y
        maps = np.stack(
            [m00, m01, cx - m00 * ox - m01 * oy, m10, m11, cy - m10 * ox - m11 * oy], axis=1
        ).reshape(n, 2, 3)
        out = np.empty((n, height, width), np.float32)
        for i in range(n):
            cv2.warpAffine(
                gray[i].astype(np.float32),
                maps[i],
                (width, height),
                out[i],
                flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                borderMode=cv2.BORDER_CONSTANT,
                borderValue=0,
            )
        # brightness b, then contrast c about the brightened mean m + b: (x - m) c + m + b
        mean = out.mean(axis=(1, 2), keepdims=True)
        out -= mean
        out *= contrast.astype(np.float32)[:, None, None]
        out += mean + brightness.astype(np.float32)[:, None, None]
        return out


def augmenter(settings: AugmentSettings, seed: int) -> XrayAugment | None:
    """The training split's augmentation, or ``None`` when disabled."""
    return XrayAugment(settings, seed) if settings.enabled else None


def one_hot(labels: np.ndarray, n_classes: int) -> np.ndarray:
    return np.eye(n_classes, dtype=np.float32)[labels]


def model_batch(
    gray: np.ndarray, augment: XrayAugment | None = None, key: Sequence[int] = ()
) -> np.ndarray:
    """The model's input (float32 N x H x W x 3) from a uint8 one-channel batch (N x H x W x 1):
    augmented (when ``augment``, as batch ``key``) on the one channel, clipped to the pixel range,
    then ``gray_model_input`` (three preprocessed channels)."""
    gray = np.asarray(gray)[..., 0]
    x = np.clip(augment(gray, key), 0.0, 255.0) if augment is not None else gray.astype(np.float32)
    return gray_model_input(x)


def make_dataset(
    pixels: np.ndarray,
    labels: np.ndarray | None,
    n_classes: int,
    batch_size: int,
    augment: XrayAugment | None = None,
    shuffle_seed: int | None = None,
) -> tf.data.Dataset:
    """Batches of preprocessed images (and one-hot labels). Pass ``augment`` for training only.

    The pipeline shuffles and batches row indices and gathers each batch's rows from ``pixels``
    in parallel workers: a memory-mapped shard (``io.pixels``) is read a batch at a time, never
    copied whole into a tensor, so memory does not grow with the dataset. The order is the one
    shuffling the rows themselves would give (a shuffle's order depends only on its seed and the
    number of elements). Radiographs are gray replicated to three channels
    (``core.preprocess.load_pixels``), so only one channel is read until the last step
    (``model_batch``): a third of the reads and of the augmentation work, the same result."""
    gray = pixels[..., :1]
    targets = None if labels is None else one_hot(labels, n_classes)
    shape = (None, *gray.shape[1:])

    def rows(index: np.ndarray):  # noqa: ANN202 - a batch, or a batch and its labels
        found = np.ascontiguousarray(gray[index])
        return found if targets is None else (found, targets[index])

    def gather(index: tf.Tensor):  # noqa: ANN202
        if targets is None:
            found = tf.numpy_function(rows, [index], tf.uint8, stateful=False)
            return tf.ensure_shape(found, shape)
        found, hot = tf.numpy_function(rows, [index], (tf.uint8, tf.float32), stateful=False)
        return tf.ensure_shape(found, shape), tf.ensure_shape(hot, (None, n_classes))

    ds = tf.data.Dataset.range(len(pixels))
    if shuffle_seed is not None:
        ds = ds.shuffle(len(pixels), seed=shuffle_seed, reshuffle_each_iteration=True)
    batches = ds.batch(batch_size).map(gather, num_parallel_calls=tf.data.AUTOTUNE)
    return model_batches(batches, augment)


def model_batches(batches: tf.data.Dataset, augment: XrayAugment | None) -> tf.data.Dataset:
    """``model_batch`` on the images of every batch (the first component; labels pass through),
    in parallel and prefetched. Each batch's augmentation key is drawn from
    ``Dataset.random(augment.seed)``, which draws anew each epoch: a batch's augmentation depends
    on the seed, the epoch and its place in the epoch, not on thread timing."""
    keys = tf.data.Dataset.random(
        seed=augment.seed if augment is not None else 0, rerandomize_each_iteration=True
    )

    def prepare(key: tf.Tensor, batch):  # noqa: ANN001, ANN202 - an image batch or (images, labels)
        images, *rest = batch if isinstance(batch, tuple) else (batch,)
        x = tf.numpy_function(
            lambda g, k: model_batch(g, augment, (int(k) % 2**64,)),
            [images, key],
            tf.float32,
            stateful=False,
        )
        x = tf.ensure_shape(x, (None, *images.shape[1:3], 3))
        return (x, *rest) if rest else x

    return (
        tf.data.Dataset.zip(keys, batches)
        .map(prepare, num_parallel_calls=tf.data.AUTOTUNE)
        .prefetch(tf.data.AUTOTUNE)
    )


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
        self.sample_weights = np.array(
            [weights[int(c)] for c in labels] if weights else np.ones(len(labels)), dtype=np.float32
        )
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


class RowBatches(keras.utils.PyDataset):
    """Batches of consecutive rows of ``rows`` (an array, a memory map, or a fold's rows of one)
    with their one-hot ``labels``, in order: validation data that Keras reads a batch at a time.
    Arrays handed to ``fit`` as validation data are first copied whole into a tensor."""

    def __init__(
        self, rows: Sequence[np.ndarray], labels: np.ndarray, n_classes: int, batch_size: int
    ) -> None:
        super().__init__()
        self.rows, self.targets = rows, one_hot(labels, n_classes)
        self.batch_size = batch_size

    def __len__(self) -> int:
        return -(-len(self.targets) // self.batch_size)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        batch = slice(index * self.batch_size, (index + 1) * self.batch_size)
        return np.asarray(self.rows[batch]), self.targets[batch]
