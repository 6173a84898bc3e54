"""The comparison's probes: fixed features (frozen ImageNet ResNet-50, bone texture of the knee
crops, file metadata) and a classical model fitted per fold, C or trees chosen on the fold's val."""

from __future__ import annotations

import keras
import numpy as np
import pandas as pd
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from osteo_pipeline.config import Settings
from osteo_pipeline.core.data import make_dataset
from osteo_pipeline.core.model import backbone
from osteo_pipeline.core.preprocess import per_image
from osteo_pipeline.core.splits import Fold
from osteo_pipeline.core.texture import texture_features
from osteo_pipeline.io.weights import pretrained_file
from osteo_pipeline.training.zoo import pretrained

#: Knee crops the texture probe reads (px): the bone's texture needs resolution.
TEXTURE_SIZE = 256


def resnet50_features(pixels: np.ndarray, settings: Settings, size: int) -> np.ndarray:
    """Globally pooled frozen ImageNet ResNet-50 features (N x 2048), computed once per size."""
    base = pretrained(
        lambda: backbone(pretrained_file(settings.model.weights), size), "ResNet-50 ImageNet"
    )
    extractor = keras.Sequential([base, keras.layers.GlobalAveragePooling2D()])
    dataset = make_dataset(pixels, None, 2, settings.train.batch_size)
    return np.asarray(extractor.predict(dataset, verbose=0), dtype=np.float64)


def metadata_features(frame: pd.DataFrame) -> np.ndarray:
    """What a file says about its scanner and export path, nothing about the bone."""
    numeric = pd.DataFrame(
        {
            "width": frame["width"].astype(float),
            "height": frame["height"].astype(float),
            "aspect": frame["width"].astype(float) / frame["height"].astype(float),
            "log_bytes": np.log1p(frame["bytes"].astype(float)),
            "bytes_per_pixel": frame["bytes"].astype(float)
            / (frame["width"].astype(float) * frame["height"].astype(float)),
        }
    )
    categorical = pd.get_dummies(frame[["mode", "format"]].astype(str), dtype=float)
    return pd.concat([numeric, categorical], axis=1).to_numpy(dtype=np.float64)


def fit_logistic(
    features: np.ndarray, labels: np.ndarray, fold: Fold, c_values: list[float], seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Standardised, class-balanced logistic regression; C chosen on val log loss."""
    best, best_loss = None, np.inf
    n_classes = len(np.unique(labels))
    for c in c_values:
        model = make_pipeline(
            StandardScaler(),
            LogisticRegression(C=c, class_weight="balanced", max_iter=5000, random_state=seed),
        )
        model.fit(features[fold.train], labels[fold.train])
        loss = log_loss(
            labels[fold.val], model.predict_proba(features[fold.val]), labels=list(range(n_classes))
        )
        if loss < best_loss:
            best, best_loss = model, loss
    return best.predict_proba(features[fold.val]), best.predict_proba(features[fold.test])


def fit_forest(
    features: np.ndarray, labels: np.ndarray, fold: Fold, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    model = RandomForestClassifier(
        n_estimators=300, min_samples_leaf=2, class_weight="balanced", random_state=seed, n_jobs=-1
    )
    model.fit(features[fold.train], labels[fold.train])
    return model.predict_proba(features[fold.val]), model.predict_proba(features[fold.test])


def knee_texture_features(crops: np.ndarray, views: int) -> np.ndarray:
    """Texture features per image: the mean over its knee crops'
    (rows of (N x views) x S x S x 3)."""
    return per_image(np.stack([texture_features(crop[..., 0]) for crop in crops]), views)
