"""What a run holds in MLflow, named in this one place: a training run's artifact files, tags and
params, the writers that put them there, and ``TrainingRun``, the reader that registration, the
gate, the seen-image checks and the model card use; then what a registered version carries (its
test metrics, its model card, the gate's decision). The names are the ones runs have always had,
so versions registered before load, serve and are gated against as they are."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import mlflow
import numpy as np
from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from osteo_pipeline.config import Settings
from osteo_pipeline.core.jsonable import dumps
from osteo_pipeline.core.model_card import CvEstimate, Intervals
from osteo_pipeline.core.redact import is_secret_key, redact
from osteo_pipeline.io.split_manifest import SplitManifest
from osteo_pipeline.io.tracking import environment, log_json

# Artifact files of a run (config, split manifest and environment also on study and compare runs).
CONFIG = "config.json"
SPLIT_MANIFEST = "split_manifest.json"
ENVIRONMENT = "environment.json"
CV_ESTIMATE = "cv_estimate.json"
CALIBRATION_PREDICTIONS = "calibration_predictions.json"
TEST_PREFIX = "test_"  # a training run's test metrics (test_<metric>) and evaluation file


def evaluation_file(prefix: str) -> str:
    """The evaluation summary of the metrics named ``<prefix><metric>``."""
    return f"{prefix}evaluation.json"


TEST_EVALUATION = evaluation_file(TEST_PREFIX)

# Tags and params of a training run.
KIND_TAG, TRAINING_KIND = "osteo.kind", "train"
PARAMS_SOURCE_TAG = "params_source"
DATASET_HASH_TAG = "dataset_hash"
BACKBONE_WEIGHTS_TAG, BACKBONE_IDENTITY_TAG = "backbone_weights", "backbone_identity"
IMAGE_GRIDS_TAG = "image_grids"
CALIBRATED_ON_TAG, CV_FOLDS_TAG = "calibrated_on", "cv_folds"
CALIBRATED_ON_VAL, CALIBRATED_ON_OOF = "val", "out-of-fold predictions"
VALIDATION_PREDICTIONS = "validation predictions"  # what the thresholds of a worklist come from
CHOSEN_PREFIX = "chosen."  # params: the training parameters the run used
PATIENT_CHECK_TAG = "osteo.patient_overlap_check"  # the split's check that no patient crosses it
INPUT_SIZE_PARAM, ROI_PARAM = "model.input_size", "model.roi"  # logged settings (log_settings)
LOGGED_SECTIONS = (
    "seed",
    "data",
    "clinical",
    "split",
    "model",
    "train",
    "tune",
)  # settings logged as params

# Tags of a registered version.
RUN_ID_TAG, MODEL_CARD_TAG, METRIC_TAG_PREFIX = "run_id", "model_card", "metric.test_"
TAGGED_METRICS = ("accuracy", "balanced_accuracy", "recall", "specificity", "f1", "roc_auc")
GATE_DECISION_TAG, GATE_REASON_TAG = "gate.decision", "gate.reason"
GATE_AGAINST_TAG, GATE_DATASET_TAG = "gate.evaluated_against", "gate.evaluation_dataset"
REASON_LIMIT = 5000  # characters of the gate's reasons kept in a tag


def safe_params(params: dict[str, Any]) -> dict[str, Any]:
    """Params fit for the tracking store: credential-named keys dropped, URL passwords masked."""
    return {k: redact(v) for k, v in params.items() if not is_secret_key(k)}


def log_settings(settings: Settings) -> None:
    """Every setting as a param, and ``config.json``: both with URL passwords masked."""
    flat: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                walk(f"{prefix}.{key}" if prefix else key, item)
        else:
            flat[prefix] = dumps(value, indent=None) if isinstance(value, list | tuple) else value

    dumped = redact(settings.model_dump(mode="json"))
    walk("", {k: dumped[k] for k in LOGGED_SECTIONS})
    mlflow.log_params(safe_params(flat))
    log_json(dumped, CONFIG)


def log_dataset(split: SplitManifest, context: str = "training") -> None:
    """The split manifest as an MLflow dataset input: its hash is the digest, counts are params."""
    dataset = mlflow.data.from_pandas(
        split.files,
        source=str(split.data_dir),
        name=f"knee-xray-{split.dataset_hash[:12]}",
        digest=split.dataset_hash[:32],
    )
    mlflow.log_input(dataset, context=context)
    mlflow.set_tag(DATASET_HASH_TAG, split.dataset_hash)
    if split.patient_check is not None:
        check = split.patient_check
        mlflow.set_tag(
            PATIENT_CHECK_TAG,
            f"passed, {check['what']}: {check['patients']} in {check['parts']} parts, none in two",
        )
    counts = split.counts()
    mlflow.log_params(
        {f"n_{name}": sum(c.values()) for name, c in counts.items()}
        | {DATASET_HASH_TAG: split.dataset_hash}
    )
    log_json(split.to_dict(), SPLIT_MANIFEST)


def log_environment() -> None:
    """The versions and machine facts (``tracking.environment``) as tags and a JSON file."""
    facts = environment()
    mlflow.set_tags({f"env.{k}": v for k, v in facts.items()})
    log_json(facts, ENVIRONMENT)


def log_backbone(described: str, identity: str) -> None:
    """Which backbone weights the model started from: their description and content identity."""
    mlflow.set_tags({BACKBONE_WEIGHTS_TAG: described, BACKBONE_IDENTITY_TAG: identity})


def log_calibrated_on_val() -> None:
    """The temperature and threshold were fitted on the validation split."""
    mlflow.set_tag(CALIBRATED_ON_TAG, CALIBRATED_ON_VAL)


def log_cv_estimate(estimate: CvEstimate, details: dict[str, Any]) -> None:
    """The out-of-fold estimate the model was calibrated on, as ``cv_estimate.json`` (with
    ``details`` such as the epochs and the objective) and the tags that say so."""
    mlflow.set_tags({CALIBRATED_ON_TAG: CALIBRATED_ON_OOF, CV_FOLDS_TAG: str(estimate.folds)})
    log_json(
        {"metrics": estimate.metrics, "folds": estimate.folds, "n": estimate.n} | details,
        CV_ESTIMATE,
    )


def log_calibration_predictions(proba: np.ndarray, labels: np.ndarray, source: str) -> None:
    """The calibrated probabilities the temperature and threshold were fitted on (``source``:
    out-of-fold or validation predictions) with their label indices, and no path: what a
    screening worklist's thresholds are later chosen on (``osteo score``)."""
    log_json(
        {
            "source": source,
            "labels": [int(label) for label in labels],
            "proba": np.round(np.asarray(proba, dtype=np.float64), 6).tolist(),
        },
        CALIBRATION_PREDICTIONS,
    )


def log_model_card(run_id: str, version: str, card: str) -> str:
    """The model card of ``version`` on its training run; returns its URI."""
    name = f"model_card_v{version}.md"
    MlflowClient().log_text(run_id, card, name)
    return f"runs:/{run_id}/{name}"


@dataclass(frozen=True)
class EvaluationSummary:
    """The refit's one look at the test split: metrics with CIs, at its calibration."""

    metrics: Intervals
    positive_class: str
    calibration: dict[str, Any] | None
    clinical: dict[str, Any] | None = None  # per exam and per subgroup (clinical manifests)


class TrainingRun:
    """One ``osteo train`` run, as its artifacts, tags and params describe it. Each artifact is
    read when first used; a missing one raises MLflow's error (or ``OSError``), except the CV
    estimate, which only cross-validated runs have."""

    def __init__(self, run_id: str, client: MlflowClient | None = None) -> None:
        self.run_id = run_id
        self.client = client or MlflowClient()

    @classmethod
    def of_model(cls, model_uri: str) -> TrainingRun:
        """The run that logged the model at ``model_uri`` (a ``runs:/`` or ``models:/`` URI)."""
        return cls(mlflow.models.get_model_info(model_uri).run_id)

    def _artifact(self, name: str) -> dict[str, Any]:
        return mlflow.artifacts.load_dict(f"runs:/{self.run_id}/{name}")

    @cached_property
    def run(self) -> Run:
        return self.client.get_run(self.run_id)

    @cached_property
    def split(self) -> SplitManifest:
        return SplitManifest.from_dict(self._artifact(SPLIT_MANIFEST))

    @cached_property
    def evaluation(self) -> EvaluationSummary:
        found = self._artifact(TEST_EVALUATION)
        clinical = {k: found[k] for k in ("per_exam", "subgroups") if k in found}
        return EvaluationSummary(
            found["metrics"], found["positive_class"], found.get("calibration"), clinical or None
        )

    @cached_property
    def test_predictions(self) -> list[dict[str, Any]]:
        """The test split's calibrated predictions (``path``, ``true``, ``p_<class>``)."""
        return list(self._artifact(TEST_EVALUATION)["predictions"])

    @cached_property
    def calibration_predictions(self) -> dict[str, Any] | None:
        """What ``log_calibration_predictions`` logged; ``None`` for runs from before it."""
        try:
            return self._artifact(CALIBRATION_PREDICTIONS)
        except (MlflowException, OSError):
            return None

    @cached_property
    def classes(self) -> list[str]:
        return list(self._artifact(CONFIG)["data"]["classes"])

    @cached_property
    def cv_estimate(self) -> CvEstimate | None:
        """The out-of-fold estimate, when the parameters were chosen by cross-validation."""
        try:
            found = self._artifact(CV_ESTIMATE)
        except (MlflowException, OSError):
            return None
        return CvEstimate(found["metrics"], int(found["folds"]), int(found["n"]))

    @property
    def cross_validated(self) -> bool:
        """Calibrated on out-of-fold predictions: a CV estimate must exist."""
        return self.run.data.tags.get(CALIBRATED_ON_TAG) == CALIBRATED_ON_OOF

    @property
    def backbone_weights(self) -> str | None:
        return self.run.data.tags.get(BACKBONE_WEIGHTS_TAG)

    @property
    def image_grids(self) -> str | None:
        """Whether the figures showing evaluated images were logged, and why."""
        return self.run.data.tags.get(IMAGE_GRIDS_TAG)

    @property
    def input_size(self) -> int:
        return int(self.run.data.params.get(INPUT_SIZE_PARAM, 0))

    @property
    def roi(self) -> str:
        return self.run.data.params.get(ROI_PARAM, "image")

    @property
    def chosen_params(self) -> dict[str, str]:
        return {
            k.removeprefix(CHOSEN_PREFIX): v
            for k, v in self.run.data.params.items()
            if k.startswith(CHOSEN_PREFIX)
        }

    def version_tags(self) -> dict[str, str]:
        """What a version registered from this run is tagged with: its test metrics, data,
        run and backbone weights."""
        metrics = self.evaluation.metrics
        tags = {
            f"{METRIC_TAG_PREFIX}{k}": f"{metrics[k]['value']:.4f}"
            for k in TAGGED_METRICS
            if metrics.get(k, {}).get("value") is not None
        }
        return tags | {
            DATASET_HASH_TAG: self.split.dataset_hash,
            RUN_ID_TAG: self.run_id,
            BACKBONE_WEIGHTS_TAG: self.backbone_weights or "",
        }


def tagged_metrics(tags: dict[str, str]) -> dict[str, float | None]:
    """A version's test metrics from its tags; ``None`` for a value that is not a finite number."""

    def number(text: str) -> float | None:
        try:
            value = float(text)
        except ValueError:
            return None
        return value if math.isfinite(value) else None

    return {
        k.removeprefix(METRIC_TAG_PREFIX): number(v)
        for k, v in tags.items()
        if k.startswith(METRIC_TAG_PREFIX)
    }


@dataclass(frozen=True)
class GateRecord:
    """The gate's decision as tagged on the candidate version: passed, rejected or inconclusive,
    the reasons, the production version it was compared with, and the data it was judged on."""

    decision: str
    reason: str
    evaluated_against: str | None
    evaluation_dataset: str | None

    def as_tags(self) -> dict[str, str]:
        return {
            GATE_DECISION_TAG: self.decision,
            GATE_REASON_TAG: self.reason[:REASON_LIMIT],
            GATE_AGAINST_TAG: self.evaluated_against or "none",
            GATE_DATASET_TAG: self.evaluation_dataset or "",
        }

    @classmethod
    def from_tags(cls, tags: dict[str, str]) -> GateRecord | None:
        """The recorded decision; ``None`` for a version never gated."""
        if GATE_DECISION_TAG not in tags:
            return None
        against = tags.get(GATE_AGAINST_TAG, "none")
        return cls(
            tags[GATE_DECISION_TAG],
            tags.get(GATE_REASON_TAG, ""),
            None if against == "none" else against,
            tags.get(GATE_DATASET_TAG),
        )
