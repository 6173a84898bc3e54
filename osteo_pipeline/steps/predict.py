"""``osteo predict``: classify image files with a logged or registered model, through the same
pyfunc the server runs."""

from __future__ import annotations

import base64
from pathlib import Path

import pandas as pd

from osteo_pipeline.config import Settings
from osteo_pipeline.errors import OsteoError


class PredictError(OsteoError):
    """An image that cannot be read or classified, or a model that cannot be loaded."""


def predict_files(model_uri: str, images: list[Path], settings: Settings) -> pd.DataFrame:
    """One row per image: ``file``, ``label`` and ``p_<class>`` per class. A refused image is
    named by its file, not by its row."""
    from mlflow.exceptions import MlflowException

    from osteo_pipeline.io import tracking
    from osteo_pipeline.serving import load_registered

    tracking.configure(settings)
    payload = []
    for image in images:
        try:
            payload.append(base64.b64encode(image.read_bytes()).decode("ascii"))
        except OSError as exc:
            raise PredictError(f"cannot read {image}: {exc.strerror or exc}") from exc
    try:
        model = load_registered(model_uri)
        result = model.predict(pd.DataFrame({"image": payload}))
    except MlflowException as exc:
        message = str(exc.message)
        for row, image in enumerate(images):
            message = message.replace(f"row {row}:", f"{image}:")
        raise PredictError(message) from exc
    result.insert(0, "file", [str(i) for i in images])
    return result
