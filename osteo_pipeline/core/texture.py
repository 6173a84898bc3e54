"""Classical bone-texture features of a knee crop: what the radiograph-texture literature fits on
small sets, and the reference a CNN must beat (``osteo compare``'s ``texture-probe``).

- **LBP**: rotation-invariant uniform local binary pattern histograms at two radii (fine
  trabeculae and coarser structure).
- **GLCM**: grey-level co-occurrence statistics (contrast, dissimilarity, homogeneity, energy,
  correlation) at three distances, averaged over four directions.
- **Hurst exponent**: from the variogram, E|I(x + h) - I(x)|^2 ~ h^(2H), along rows and columns
  separately (trabeculae are oriented). Osteoporotic bone is rougher, with a lower H; the
  fractal dimension is 3 - H.

Pure functions of a uint8 gray crop; scikit-image does the LBP and GLCM arithmetic."""

from __future__ import annotations

import numpy as np
from skimage.feature import graycomatrix, graycoprops, local_binary_pattern

LBP_SCALES = ((8, 1.0), (16, 2.0))
GLCM_DISTANCES = (1, 2, 4)
GLCM_ANGLES = (0.0, np.pi / 4, np.pi / 2, 3 * np.pi / 4)
GLCM_PROPERTIES = ("contrast", "dissimilarity", "homogeneity", "energy", "correlation")
GLCM_LEVELS = 32
HURST_LAGS = (1, 2, 4, 8, 16)


def lbp_histograms(gray: np.ndarray) -> np.ndarray:
    """Normalised uniform LBP histograms, P + 2 bins per (P, R) scale."""
    histograms = []
    for points, radius in LBP_SCALES:
        codes = local_binary_pattern(gray, points, radius, method="uniform")
        counts = np.bincount(codes.astype(np.int64).ravel(), minlength=points + 2)
        histograms.append(counts / max(1, counts.sum()))
    return np.concatenate(histograms)


def glcm_statistics(gray: np.ndarray) -> np.ndarray:
    """GLCM properties per distance, averaged over directions (on ``GLCM_LEVELS`` grey levels,
    after stretching the crop's 1-99 percentile range, so exposure does not set the texture)."""
    low, high = np.percentile(gray, [1, 99])
    levels = (
        np.clip(
            (gray.astype(np.float64) - low) / max(high - low, 1.0) * (GLCM_LEVELS - 1),
            0,
            GLCM_LEVELS - 1,
        )
        .round()
        .astype(np.uint8)
    )
    matrix = graycomatrix(
        levels, GLCM_DISTANCES, GLCM_ANGLES, levels=GLCM_LEVELS, symmetric=True, normed=True
    )
    return np.concatenate([graycoprops(matrix, name).mean(axis=1) for name in GLCM_PROPERTIES])


def hurst_exponents(gray: np.ndarray) -> np.ndarray:
    """Hurst exponent along rows and along columns: half the slope of log variogram on log lag."""
    image = gray.astype(np.float64)
    logs = np.log(HURST_LAGS)
    exponents = []
    for axis in (1, 0):
        variogram = [
            np.mean(np.diff(image[:, ::lag] if axis == 1 else image[::lag], axis=axis) ** 2) + 1e-9
            for lag in HURST_LAGS
        ]
        slope = np.polyfit(logs, np.log(variogram), 1)[0]
        exponents.append(slope / 2)
    return np.array(exponents)


def texture_features(gray: np.ndarray) -> np.ndarray:
    """All of the above for one crop (uint8, 2-D): one feature vector."""
    gray = np.asarray(gray, dtype=np.uint8)
    return np.concatenate([lbp_histograms(gray), glcm_statistics(gray), hurst_exponents(gray)])
