import keras
import numpy as np
import pytest

from osteo_pipeline.config import AugmentSettings
from osteo_pipeline.core.data import ViewBatches, augmenter, class_weights, make_dataset
from osteo_pipeline.core.preprocess import model_input

PIXELS = np.repeat(np.random.default_rng(0).integers(0, 256, (6, 32, 32, 1)).astype(np.uint8), 3, axis=3)  # gray, as decoded
LABELS = np.array([0, 1, 0, 1, 0, 0])


def _batches(ds):
    return np.concatenate([np.asarray(x) for x, *_ in ds])


def test_without_augmentation_the_pipeline_is_exactly_the_backbone_preprocessing():
    out = _batches(make_dataset(PIXELS, LABELS, 2, 4))
    assert np.allclose(out, model_input(PIXELS))


def test_augmentation_changes_images_and_stays_in_pixel_range():
    out = _batches(make_dataset(PIXELS, LABELS, 2, 6, augment=augmenter(AugmentSettings(), seed=1)))
    assert not np.allclose(out, model_input(PIXELS))
    restored = out[..., ::-1] + np.array([123.68, 116.779, 103.939])
    assert restored.min() >= -1e-3 and restored.max() <= 255 + 1e-3


def test_augmenter_follows_settings():
    names = [layer.__class__.__name__ for layer in augmenter(AugmentSettings(), 0).layers]
    assert names == ["RandomFlip", "RandomRotation", "RandomTranslation", "RandomZoom", "RandomBrightness", "RandomContrast"]
    assert augmenter(AugmentSettings(enabled=False), 0) is None
    rotation = augmenter(AugmentSettings(), 0).layers[1]
    assert rotation.factor == pytest.approx((-10 / 360, 10 / 360)) or rotation.lower == pytest.approx(-10 / 360)


def test_balanced_class_weights():
    weights = class_weights(LABELS, 2, "balanced")
    assert weights[1] == pytest.approx(6 / (2 * 2)) and weights[0] == pytest.approx(6 / (2 * 4))
    assert class_weights(LABELS, 2, "none") is None
    assert class_weights(np.array([0, 0]), 3, "balanced")[2] == 1.0


def test_view_batches_walk_the_views_epoch_by_epoch_across_fits():
    activations = np.stack([np.full((5, 3), k, np.float32) for k in range(3)])  # view k is all k
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, activation="softmax")])
    model.compile(optimizer="sgd", loss="categorical_crossentropy")
    seen = []
    record = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: seen.append((epoch, data.epoch)))
    data = ViewBatches(activations, np.array([0, 1, 0, 1, 1]), 2, 2, {0: 1.5, 1: 0.75}, seed=0)
    model.fit(data, epochs=4, verbose=0, callbacks=[record])
    data = ViewBatches(activations, np.array([0, 1, 0, 1, 1]), 2, 2, None, seed=0, first_epoch=4)
    model.fit(data, initial_epoch=4, epochs=5, verbose=0, callbacks=[record])
    assert seen == [(e, e) for e in range(5)]
    x, y, w = data[0]
    assert x.shape == (2, 3) and np.all(x == 4 % 3) and y.shape == (2, 2) and np.all(w == 1)
