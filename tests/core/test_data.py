import numpy as np
import pytest

from osteo_pipeline.config import AugmentSettings
from osteo_pipeline.core.data import augmenter, class_weights, make_dataset
from osteo_pipeline.core.preprocess import model_input

PIXELS = np.random.default_rng(0).integers(0, 256, (6, 32, 32, 3)).astype(np.uint8)
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
