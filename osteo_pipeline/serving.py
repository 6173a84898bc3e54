"""The MLflow pyfunc: base64 PNG/JPEG images in, a label and a probability per class out.

It reuses ``core.preprocess`` (the function training used), so the served model and the trainer
cannot disagree about preprocessing. Bad rows raise an MLflow INVALID_PARAMETER_VALUE error that
names each row and reason, which the scoring server turns into HTTP 400, not 500. A model records
the image bounds its training data was validated with (``meta.json``'s ``image_bounds``) and
refuses an image below its minimum size or of a mode validation does not allow; versions logged
before the bounds were recorded have none (their bundled code never checked) and load as they
are."""

from __future__ import annotations

import base64
import binascii
import io
import json
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.tracking import MlflowClient
from mlflow.types import ColSpec, Schema

from osteo_pipeline.core.calibration import Calibration
from osteo_pipeline.core.image_bounds import ImageBounds
from osteo_pipeline.core.jsonable import dumps
from osteo_pipeline.core.preprocess import (
    ImageDecodeError,
    load_views,
    model_input,
    per_image,
    views_per_image,
)
from osteo_pipeline.io.registry import registered_version

IMAGE_COLUMN = "image"
PACKAGE_DIR = Path(__file__).resolve().parent
MAX_ERRORS_LISTED = 20
#: The model config that names the registered version a loaded model is (``model_version`` in
#: its answers). Declared empty when the model is logged, since a run is registered after that
#: (and may be registered under several names); set when it is loaded: by ``osteo serve`` through
#: MLflow's ``SERVING_MODEL_CONFIG``, in a process by ``load_registered``.
REGISTERED_MODEL, REGISTERED_VERSION = "registered_model", "registered_version"


def served_as(name: str, version: str) -> dict[str, str]:
    """The model config that tells a model, as it loads, which registered version it is."""
    return {REGISTERED_MODEL: name, REGISTERED_VERSION: str(version)}


def probability_column(label: str) -> str:
    return f"p_{label}"


def signature(classes: list[str]) -> ModelSignature:
    outputs = [
        ColSpec("string", "label"),
        *(ColSpec("double", probability_column(c)) for c in classes),
        ColSpec("string", "model_version"),
    ]
    return ModelSignature(inputs=Schema([ColSpec("string", IMAGE_COLUMN)]), outputs=Schema(outputs))


def encode_image(pixels: np.ndarray, image_format: str = "PNG") -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=image_format)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _bad_request(message: str) -> MlflowException:
    return MlflowException(message, error_code=INVALID_PARAMETER_VALUE)


def decode_rows(
    frame: pd.DataFrame,
    size: int,
    max_pixels: int,
    roi: str = "image",
    bounds: ImageBounds | None = None,
) -> np.ndarray:
    """(N x views) x size x size x 3 uint8 model inputs for the ``image`` column (each image's
    views in a row: the film, or its knee crops), or one error naming every bad row: unreadable,
    over ``max_pixels``, or (with ``bounds``) one that validation would refuse for size or mode."""
    if IMAGE_COLUMN not in frame.columns:
        raise _bad_request(
            f"request needs a column named {IMAGE_COLUMN!r} (base64 PNG/JPEG); "
            f"got columns {list(frame.columns)}"
        )
    if len(frame) == 0:
        raise _bad_request("empty batch: send at least one row")
    pixels, errors = [], []
    for row, value in enumerate(frame[IMAGE_COLUMN].tolist()):
        try:
            if value is None or (isinstance(value, float) and np.isnan(value)):
                raise ImageDecodeError("empty or missing image string")
            if not isinstance(value, str | bytes):
                raise ImageDecodeError(f"expected a base64 string, got {type(value).__name__}")
            if len(value) == 0:
                raise ImageDecodeError("empty or missing image string")
            try:
                raw = base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError) as exc:
                raise ImageDecodeError(f"not valid base64 ({exc})") from exc
            pixels.append(load_views(raw, size, max_pixels, roi, bounds))
        except ImageDecodeError as exc:
            errors.append(f"row {row}: {exc}")
    if errors:
        listed = "; ".join(errors[:MAX_ERRORS_LISTED]) + (
            " …" if len(errors) > MAX_ERRORS_LISTED else ""
        )
        raise _bad_request(f"{len(errors)} of {len(frame)} rows are not usable images: {listed}")
    return np.concatenate(pixels)


def compiled_forward(model: Any) -> Any:
    """The model's inference forward pass, traced once (TensorFlow backend) instead of run eagerly
    op by op or through ``model.predict``'s per-call pipeline set-up: the serving fast path."""
    import keras

    if keras.backend.backend() != "tensorflow":
        return lambda x: model(x, training=False)
    import tensorflow as tf

    return tf.function(lambda x: model(x, training=False), reduce_retracing=True)


class OsteoClassifier(mlflow.pyfunc.PythonModel):
    """Keras ResNet-50 classifier behind an image-in, label-out interface."""

    def load_context(self, context: Any) -> None:
        import keras

        meta = json.loads(Path(context.artifacts["meta"]).read_text())
        self.classes: list[str] = meta["classes"]
        self.size: int = meta["input_size"]
        self.max_pixels: int = meta["max_pixels"]
        served = context.model_config or {}
        name, version = served.get(REGISTERED_MODEL), served.get(REGISTERED_VERSION)
        # Empty when loaded without being told (a run's model, `mlflow models serve` by hand).
        self.model_version = f"{name}/{version}" if name and version else ""
        self.roi: str = meta.get("roi", "image")
        self.bounds = ImageBounds.from_dict(meta.get("image_bounds"))
        self.views = views_per_image(self.roi)
        self.calibration = Calibration.from_dict(meta.get("calibration"))
        self.model = keras.saving.load_model(context.artifacts["keras_model"], compile=False)
        self._forward = compiled_forward(self.model)
        self._forward(
            model_input(np.zeros((1, self.size, self.size, 3), np.uint8))
        )  # trace before the first request

    def predict_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """The network's own (uncalibrated) probabilities per image, from its views' rows
        (``decode_rows``' layout): the mean over each image's views."""
        return per_image(
            np.asarray(self._forward(model_input(pixels)), dtype=np.float64), self.views
        )

    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        """Temperature-scaled probabilities and the label by the validation-chosen threshold."""
        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        pixels = decode_rows(frame, self.size, self.max_pixels, self.roi, self.bounds)
        proba = self.calibration.probabilities(self.predict_pixels(pixels))
        result = pd.DataFrame(
            {probability_column(c): proba[:, i] for i, c in enumerate(self.classes)}
        )
        result.insert(0, "label", [self.classes[i] for i in self.calibration.labels(proba)])
        result["model_version"] = self.model_version
        return result


def requirements() -> list[str]:
    wanted = (
        "mlflow",
        "tensorflow",
        "keras",
        "numpy",
        "pandas",
        "pillow",
        "opencv-python-headless",
        "pydicom",
    )
    pins = []
    for name in wanted:
        try:
            pins.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            pins.append(name)
    return pins


def log_pyfunc(
    keras_model: Any,
    classes: list[str],
    input_size: int,
    max_pixels: int,
    run_id: str,
    calibration: Calibration | None = None,
    roi: str = "image",
    *,
    bounds: ImageBounds,
) -> Any:
    """Log the model (no optimizer state) as the ``model`` pyfunc of the active run ``run_id``,
    with the calibration (temperature, threshold) fitted on validation and the image ``bounds``
    its data was validated with (requests outside them are refused). Its input example is a
    synthetic radiograph (``core.synth``), never one of the training or test images."""
    from osteo_pipeline.core.model import inference_copy
    from osteo_pipeline.core.synth import example_radiograph

    with tempfile.TemporaryDirectory() as tmp:
        keras_path = Path(tmp) / "model.keras"
        inference_copy(keras_model).save(keras_path)
        meta_path = Path(tmp) / "meta.json"
        meta = {
            "classes": classes,
            "input_size": input_size,
            "max_pixels": max_pixels,
            "run_id": run_id,
            "calibration": (calibration or Calibration()).as_dict(),
            "roi": roi,
            "image_bounds": bounds.as_dict(),
        }
        meta_path.write_text(dumps(meta))
        example_side = max(input_size, bounds.min_width, bounds.min_height)  # an example it accepts
        example = pd.DataFrame({IMAGE_COLUMN: [encode_image(example_radiograph(example_side))]})
        return mlflow.pyfunc.log_model(
            name="model",
            python_model=OsteoClassifier(),
            artifacts={"keras_model": str(keras_path), "meta": str(meta_path)},
            signature=signature(classes),
            input_example=example,
            code_paths=[str(PACKAGE_DIR)],
            pip_requirements=requirements(),
            model_config=served_as("", ""),
        )


def load_registered(model_uri: str) -> mlflow.pyfunc.PyFuncModel:
    """The pyfunc at ``model_uri``. A URI naming a registered version (``models:/NAME/VERSION``,
    or ``models:/NAME@ALIAS`` resolved once, here) loads that exact version, told which it is."""
    found = registered_version(model_uri, MlflowClient())
    if found is None:
        return mlflow.pyfunc.load_model(model_uri)
    name, version = found
    return mlflow.pyfunc.load_model(
        f"models:/{name}/{version}", model_config=served_as(name, version)
    )


def load_classifier(model_uri: str) -> OsteoClassifier:
    """The logged classifier itself (Keras model, classes, input size, calibration), for
    evaluation and explanation that need more than the pyfunc's table output."""
    model = mlflow.pyfunc.load_model(model_uri).unwrap_python_model()
    if not isinstance(model, OsteoClassifier):
        raise MlflowException(
            f"{model_uri} is not an osteo-pipeline classifier ({type(model).__name__})",
            error_code=INVALID_PARAMETER_VALUE,
        )
    return model
