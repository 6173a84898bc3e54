"""Bone-texture features: rough noise and smooth fields differ the way the literature reads them
(a Hurst exponent near 0 against near 1; LBP histograms that sum to one per scale)."""

import numpy as np
from scipy import ndimage

from osteo_pipeline.core.texture import (
    GLCM_PROPERTIES,
    LBP_SCALES,
    hurst_exponents,
    lbp_histograms,
    texture_features,
)


def _fields():
    rng = np.random.default_rng(0)
    rough = rng.integers(0, 256, (128, 128)).astype(np.uint8)
    smooth = (
        ndimage.gaussian_filter(rng.normal(128, 40, (128, 128)), 4).clip(0, 255).astype(np.uint8)
    )
    return rough, smooth


def test_hurst_exponent_orders_roughness():
    rough, smooth = _fields()
    assert np.all(np.abs(hurst_exponents(rough)) < 0.1)
    assert np.all(hurst_exponents(smooth) > 0.5)


def test_feature_vector_layout_and_lbp_histograms_are_distributions():
    rough, smooth = _fields()
    histograms = lbp_histograms(rough)
    start = 0
    for points, _ in LBP_SCALES:
        assert np.isclose(histograms[start : start + points + 2].sum(), 1.0)
        start += points + 2
    features = texture_features(smooth)
    assert features.shape == (start + 3 * len(GLCM_PROPERTIES) + 2,) and np.isfinite(features).all()
    assert not np.allclose(features, texture_features(rough))
