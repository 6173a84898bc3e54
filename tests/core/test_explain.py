"""Grad-CAM points at the evidence: a hand-set model whose osteoporosis score is the brightness
of the image must highlight the bright patch, wherever it is."""

import keras
import numpy as np
import pytest

from osteo_pipeline.core.explain import grad_cam, overlay
from osteo_pipeline.core.model import BACKBONE_NAME, ModelSpec, build_model, classifier
from osteo_pipeline.core.preprocess import model_input

SIZE = 64


def _brightness_model() -> keras.Model:
    base = keras.Sequential(
        [keras.Input((SIZE, SIZE, 3)), keras.layers.Conv2D(4, 8, strides=8, activation="relu")],
        name=BACKBONE_NAME,
    )
    model = classifier(
        base, ModelSpec(("normal", "osteoporosis"), SIZE, 4, 0.0), "test", frozen_statistics=True
    )
    conv = base.layers[0]
    conv.set_weights(
        [np.full(conv.kernel.shape, 1 / (8 * 8 * 3 * 128), np.float32), np.zeros(4, np.float32)]
    )
    dense = model.get_layer("head_dense")
    dense.set_weights([np.eye(4, dtype=np.float32), np.zeros(4, np.float32)])
    out = model.get_layer("probabilities")
    out.set_weights(
        [
            np.stack([-np.ones(4), np.ones(4)], axis=1).astype(np.float32) * 5,
            np.zeros(2, np.float32),
        ]
    )
    return model


@pytest.mark.parametrize("corner", [(0, 0), (32, 32), (0, 40)])
def test_heatmap_peaks_on_the_evidence(corner):
    pixels = np.zeros((1, SIZE, SIZE, 3), np.uint8)
    y, x = corner
    pixels[0, y : y + 16, x : x + 16] = 255
    heatmap, proba = grad_cam(_brightness_model(), pixels, class_index=1)
    assert heatmap.shape == (1, SIZE, SIZE) and heatmap.max() == pytest.approx(1.0)
    inside = heatmap[0, y : y + 16, x : x + 16].mean()
    outside = (heatmap[0].sum() - heatmap[0, y : y + 16, x : x + 16].sum()) / (SIZE * SIZE - 256)
    assert inside > 3 * outside
    assert proba.shape == (1, 2)


def test_real_backbone_heatmaps_are_normalised_per_image_and_overlay_is_rgb():
    model = build_model(ModelSpec(("normal", "osteoporosis"), SIZE, 8, 0.0), None)
    pixels = np.random.default_rng(0).integers(0, 255, (2, SIZE, SIZE, 3), dtype=np.uint8)
    heatmaps, proba = grad_cam(model, pixels)
    assert heatmaps.shape == (2, SIZE, SIZE) and heatmaps.min() >= 0 and heatmaps.max() <= 1
    assert np.allclose(proba, model(model_input(pixels), training=False), atol=1e-5)
    image = overlay(pixels[0, ..., 0], heatmaps[0])
    assert image.shape == (SIZE, SIZE, 3) and image.dtype == np.uint8
