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
from osteo_pipeline.steps.seen import seen_images, training_images, training_patients


@dataclass
class EvaluationSet:
    y_true: np.ndarray
    images: list[str]  # base64 file bytes, as a client would send them
    classes: list[str]
    positive: int
    dataset_hash: str
    contents: list[Content]  # the files, by content hash
    names: list[str]  # how the split manifest names them (a path, or a manifest's ``row N``)
    left_out: dict[str, str] = field(default_factory=dict)  # name -> why it was left out
    patients: list[str] | None = None  # pseudonyms (a clinical manifest): the resampling unit

    @property
    def groups(self) -> np.ndarray | None:
        """The patient of each image as a number, for the bootstrap; None: images are resampled."""
        return None if self.patients is None else pd.factorize(np.asarray(self.patients))[0]


def evaluation_set(run: TrainingRun, data_dir: Path | None) -> EvaluationSet:
    """The candidate's held-out test images (from its logged split manifest), read from disk."""
    split, classes = run.split, run.classes
    root = Path(data_dir or split.data_dir)
    test = split.subset("test")
    files = split.file_paths(test, root)
    missing = [path for path, file in zip(test["path"], files) if not file.is_file()]
    if missing:
        raise RegistryError(
            f"evaluation images missing under {root} (pass --data-dir): {missing[:5]}"
        )
    return EvaluationSet(
        y_true=np.array([classes.index(label) for label in test["label"]]),
        images=[base64.b64encode(file.read_bytes()).decode("ascii") for file in files],
        classes=classes,
        positive=classes.index(run.evaluation.positive_class),
        dataset_hash=split.dataset_hash,
        contents=[
            Content(sha, file, None, name)
            for sha, file, name in zip(test["sha256"], files, test["path"])
        ],
        names=list(test["path"]),
        patients=list(test["patient"]) if "patient" in test else None,
    )


def without_seen(data: EvaluationSet, model_uris: list[str], settings: Settings) -> EvaluationSet:
    """``data`` without the images that are copies (identical or derived) of images any of the
    models trained or was calibrated on: production may have trained on a derived copy of a new
    test image, and that would flatter it."""
    seen = [content for uri in model_uris for content in training_images(uri)]
    copies = seen_images(data.contents, seen, settings)
    reasons = {i: copies[c.sha256] for i, c in enumerate(data.contents) if c.sha256 in copies}
    if data.patients is not None:
        known = set().union(*(training_patients(uri, settings) for uri in model_uris))
        reasons |= {
            i: "patient seen in training"
            for i, patient in enumerate(data.patients)
            if patient in known and i not in reasons
        }
    keep = [i for i in range(len(data.contents)) if i not in reasons]
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
        names=[data.names[i] for i in keep],
        patients=None if data.patients is None else [data.patients[i] for i in keep],
        left_out={data.names[i]: why for i, why in sorted(reasons.items())},
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
