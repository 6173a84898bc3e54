"""Cheap registered candidates for registry and serving tests: the real pyfunc (``OsteoClassifier``
and its preprocessing) around a tiny Keras model whose skill is set by hand, logged with the same
artifacts an ``osteo train`` run has (config, split manifest, test evaluation)."""

from __future__ import annotations

import keras
import mlflow
import numpy as np

from osteo_pipeline.config import Settings
from osteo_pipeline.core.calibration import Calibration
from osteo_pipeline.io import run_artifacts, tracking
from osteo_pipeline.serving import log_pyfunc
from osteo_pipeline.steps.evaluate import evaluate_predictions
from osteo_pipeline.steps.split import SplitManifest
from osteo_pipeline.training.arrays import load_arrays, pixel_cache
from osteo_pipeline.training.fit import predict_proba


def brightness_model(size: int, skill: float, shift: float = 0.0) -> keras.Model:
    """p(osteoporosis) rises as the image darkens when ``skill`` > 0 (the synthetic cue), falls
    when < 0 (a worse model), and is constant at 0 (chance). ``shift`` > 0 moves the cut towards
    brighter images: the darkest normal images are called osteoporosis too."""
    inputs = keras.Input((size, size, 3), name="image")
    pooled = keras.layers.GlobalAveragePooling2D()(inputs)
    outputs = keras.layers.Dense(2, activation="softmax", name="probabilities")(pooled)
    model = keras.Model(inputs, outputs)
    weight = np.zeros((3, 2), np.float32)
    weight[:, 1] = -skill / 3.0  # caffe-preprocessed channel means: darker is more negative
    model.get_layer("probabilities").set_weights(
        [weight, np.array([0.0, -skill * 34.0 + shift], np.float32)]
    )
    return model


def log_candidate(
    split: SplitManifest,
    settings: Settings,
    skill: float,
    shift: float = 0.0,
    model: keras.Model | None = None,
) -> str:
    """A finished training run with a servable model (``model``, default the brightness test
    double); returns its run id."""
    tracking.configure(settings)
    arrays = load_arrays(split, settings, pixel_cache(settings))
    model = model or brightness_model(settings.model.input_size, skill, shift)
    with mlflow.start_run(tags={"osteo.kind": "train", "backbone_weights": "test-double"}) as run:
        run_artifacts.log_settings(settings)
        run_artifacts.log_dataset(split)
        evaluate_predictions(
            arrays["test"], predict_proba(model, arrays["test"].pixels, 8), settings, Calibration()
        )
        run_artifacts.log_calibration_predictions(
            predict_proba(model, arrays["val"].pixels, 8),
            arrays["val"].labels,
            run_artifacts.VALIDATION_PREDICTIONS,
        )
        v = settings.validation
        log_pyfunc(
            model,
            list(settings.data.classes),
            settings.model.input_size,
            v.max_pixels,
            run_id=run.info.run_id,
            bounds=v.image_bounds,
        )
    return run.info.run_id


def non_inferiority(settings):
    """``settings`` with a gate that lets an equal candidate pass (margin 0.05, any number of
    paired cases): for tests of promotion and alias mechanics, not of the gate's judgement (the
    default gate calls two equal models inconclusive; tests/core/test_gate.py)."""
    return settings.model_copy(
        update={
            "registry": settings.registry.model_copy(update={"margin": 0.05, "min_paired_cases": 1})
        }
    )
