"""``osteo explain``: a Grad-CAM overlay of one image for a logged or registered model."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from osteo_pipeline.config import Settings
from osteo_pipeline.core.explain import grad_cam, overlay
from osteo_pipeline.core.preprocess import load_views
from osteo_pipeline.io import tracking
from osteo_pipeline.serving import load_classifier


@dataclass
class Explanation:
    path: Path
    predicted: str
    explained: str
    probability: float  # calibrated, of the predicted class


def explain_image(
    model_uri: str, image: Path, out_file: Path, target: str | None, settings: Settings
) -> Explanation:
    """Preprocess ``image`` exactly as serving does, compute Grad-CAM for ``target`` (default:
    the class the model serves for it) and write the overlay PNG (one row per knee crop)."""
    tracking.configure(settings)
    classifier = load_classifier(model_uri)
    if target is not None and target not in classifier.classes:
        raise ValueError(
            f"--class {target!r} is not one of the model's classes {classifier.classes}"
        )
    if not image.is_file():
        raise ValueError(f"no such image file: {image}")
    # each knee crop, or the film; refused as the server refuses it
    pixels = load_views(
        image, classifier.size, classifier.max_pixels, classifier.roi, classifier.bounds
    )
    proba = classifier.calibration.probabilities(classifier.predict_pixels(pixels))
    predicted = int(classifier.calibration.labels(proba)[0])
    explained = classifier.classes.index(target) if target else predicted
    heatmaps, _ = grad_cam(classifier.model, pixels, explained)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    rows = [
        np.concatenate([view, overlay(view[..., 0], heat)], axis=1)
        for view, heat in zip(pixels, heatmaps)
    ]
    Image.fromarray(np.concatenate(rows, axis=0)).save(out_file)
    return Explanation(
        out_file,
        classifier.classes[predicted],
        classifier.classes[explained],
        float(proba[0, predicted]),
    )
