"""What the promotion gate judges on: the candidate's held-out test images (from its split
manifest), without copies of images either compared model trained on, and the answers each model
serves on them, through its pyfunc exactly as clients get them."""

from __future__ import annotations

import base64
from dataclasses import dataclass, field, replace
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd

from osteo_pipeline.config import Settings
from osteo_pipeline.core.gate import Answers
from osteo_pipeline.io.copies import Content
from osteo_pipeline.io.registry import RegistryError
from osteo_pipeline.io.run_artifacts import TrainingRun
from osteo_pipeline.serving import IMAGE_COLUMN, probability_column
from osteo_pipeline.steps.seen import seen_images, training_images


@dataclass
class EvaluationSet:
    y_true: np.ndarray
    images: list[str]  # base64 file bytes, as a client would send them
    classes: list[str]
    positive: int
    dataset_hash: str
    contents: list[Content]  # the files, by content hash
    left_out: dict[str, str] = field(default_factory=dict)  # path -> why it was left out


def evaluation_set(run: TrainingRun, data_dir: Path | None) -> EvaluationSet:
    """The candidate's held-out test images (from its logged split manifest), read from disk."""
    split, classes = run.split, run.classes
    root = Path(data_dir or split.data_dir)
    test = split.subset("test")
    missing = [path for path in test["path"] if not (root / path).is_file()]
    if missing:
        raise RegistryError(
            f"evaluation images missing under {root} (pass --data-dir): {missing[:5]}"
        )
    return EvaluationSet(
        y_true=np.array([classes.index(label) for label in test["label"]]),
        images=[base64.b64encode((root / p).read_bytes()).decode("ascii") for p in test["path"]],
        classes=classes,
        positive=classes.index(run.evaluation.positive_class),
        dataset_hash=split.dataset_hash,
        contents=[Content(sha, root / p, None) for sha, p in zip(test["sha256"], test["path"])],
    )


def without_seen(data: EvaluationSet, model_uris: list[str], settings: Settings) -> EvaluationSet:
    """``data`` without the images that are copies (identical or derived) of images any of the
    models trained or was calibrated on: production may have trained on a derived copy of a new
    test image, and that would flatter it."""
    seen = [content for uri in model_uris for content in training_images(uri)]
    reasons = seen_images(data.contents, seen, settings)
    keep = [i for i, c in enumerate(data.contents) if c.sha256 not in reasons]
    if not keep:
        raise RegistryError(
            "every test image of the candidate is a copy of an image "
            f"{' or '.join(model_uris)} trained on: nothing left to gate on"
        )
    return replace(
        data,
        y_true=data.y_true[keep],
        images=[data.images[i] for i in keep],
        contents=[data.contents[i] for i in keep],
        left_out={str(c.path): reasons[c.sha256] for c in data.contents if c.sha256 in reasons},
    )


def predict_set(model_uri: str, data: EvaluationSet, batch: int = 16) -> Answers:
    """The served probabilities and labels (class indices), exactly as clients would get them."""
    model = mlflow.pyfunc.load_model(model_uri)
    frames = [
        model.predict(pd.DataFrame({IMAGE_COLUMN: data.images[i : i + batch]}))
        for i in range(0, len(data.images), batch)
    ]
    result = pd.concat(frames, ignore_index=True)
    columns = [probability_column(c) for c in data.classes]
    if not set(columns) <= set(result.columns):
        raise RegistryError(
            f"{model_uri} predicts {list(result.columns)}, not the classes {data.classes}"
        )
    unknown = set(result["label"]) - set(data.classes)
    if unknown:
        raise RegistryError(
            f"{model_uri} predicts labels {sorted(unknown)} outside the classes {data.classes}"
        )
    return Answers(
        result[columns].to_numpy(dtype=np.float64),
        result["label"].map(data.classes.index).to_numpy(dtype=np.int64),
    )
