"""A training run's artifacts and tags: the reader reads runs written before the names had one
home (every name a literal here, as that code wrote them), and the writers still write those
names, so versions registered before load and are gated against."""

import json
import subprocess
import sys

import mlflow
import pytest

from osteo_pipeline.core.model_card import CvEstimate
from osteo_pipeline.io import run_artifacts, tracking
from osteo_pipeline.io.run_artifacts import GateRecord, TrainingRun, tagged_metrics
from osteo_pipeline.io.split_manifest import SplitManifest

FILES = [
    {"path": f"{label}/{label}_{i}.png", "label": label, "split": split, "sha256": f"{label}{i}"}
    for label in ("normal", "osteoporosis")
    for i, split in enumerate(("train", "train", "val", "test"))
]
SPLIT = {
    "dataset_hash": "d" * 64,
    "data_dir": "/data/knees",
    "seed": 7,
    "counts": {"train": {"normal": 2, "osteoporosis": 2}},
    "excluded": [{"path": "normal/dup.png", "why": "label conflict"}],
    "files": FILES,
}
METRICS = {
    "balanced_accuracy": {"value": 0.75, "low": 0.5, "high": 1.0},
    "recall": {"value": 1.0, "low": None, "high": None},
}


@pytest.fixture
def store(tiny_settings, tmp_path):
    settings = tiny_settings.model_copy(
        update={
            "tracking": tiny_settings.tracking.model_copy(
                update={
                    "uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
                    "artifact_root": str(tmp_path / "mlruns"),
                }
            )
        }
    )
    tracking.configure(settings)
    return settings


def _legacy_run(settings, cross_validated: bool) -> str:
    """A training run as the code before ``io.run_artifacts`` logged it, names written out."""
    tags = {
        "osteo.kind": "train",
        "params_source": "study",
        "backbone_weights": "imagenet (weights sha256 abc)",
        "image_grids": "not logged: they would hold patient images",
        "calibrated_on": "out-of-fold predictions" if cross_validated else "val",
    }
    with mlflow.start_run(tags=tags) as run:
        mlflow.log_params({"chosen.learning_rate": 0.001, "model.input_size": 224})
        mlflow.log_params({"model.roi": "knees", "data.classes": '["normal", "osteoporosis"]'})
        mlflow.log_text(json.dumps(settings.model_dump(mode="json")), "config.json")
        mlflow.log_text(json.dumps(SPLIT), "split_manifest.json")
        evaluation = {
            "metrics": METRICS,
            "calibration": {"temperature": 1.5, "threshold": 0.4, "positive": 1},
            "positive_class": "osteoporosis",
            "n": 2,
            "predictions": [],
        }
        mlflow.log_text(json.dumps(evaluation), "test_evaluation.json")
        if cross_validated:
            estimate = {"metrics": METRICS, "folds": 5, "n": 6, "epochs": [3, 1]}
            mlflow.log_text(json.dumps(estimate), "cv_estimate.json")
    return run.info.run_id


def test_the_reader_reads_a_run_written_with_the_legacy_names(store):
    run = TrainingRun(_legacy_run(store, cross_validated=True))
    assert run.classes == ["normal", "osteoporosis"]
    assert run.split.dataset_hash == "d" * 64 and str(run.split.data_dir) == "/data/knees"
    assert run.split.subset("test")["path"].tolist() == [
        "normal/normal_3.png",
        "osteoporosis/osteoporosis_3.png",
    ]
    assert run.split.counts()["train"] == {"normal": 2, "osteoporosis": 2}
    assert run.evaluation.positive_class == "osteoporosis"
    assert run.evaluation.metrics == METRICS
    assert run.evaluation.calibration == {"temperature": 1.5, "threshold": 0.4, "positive": 1}
    assert run.cv_estimate == CvEstimate(METRICS, folds=5, n=6) and run.cross_validated
    assert run.backbone_weights == "imagenet (weights sha256 abc)"
    assert run.image_grids == "not logged: they would hold patient images"
    assert (run.input_size, run.roi, run.chosen_params) == (
        224,
        "knees",
        {"learning_rate": "0.001"},
    )
    assert run.version_tags() == {
        "metric.test_balanced_accuracy": "0.7500",
        "metric.test_recall": "1.0000",
        "dataset_hash": "d" * 64,
        "run_id": run.run_id,
        "backbone_weights": "imagenet (weights sha256 abc)",
    }


def test_a_run_calibrated_on_val_has_no_cv_estimate(store):
    run = TrainingRun(_legacy_run(store, cross_validated=False))
    assert run.cv_estimate is None and not run.cross_validated


def test_the_writers_write_the_names_runs_have_always_had(store):
    """Read back with the literal names: a renamed file or tag would strand every version
    registered before."""
    split = SplitManifest.from_dict(SPLIT)
    with mlflow.start_run() as run:
        run_artifacts.log_settings(store)
        run_artifacts.log_dataset(split)
        run_artifacts.log_backbone("imagenet (weights sha256 abc)", "abc")
        run_artifacts.log_cv_estimate(CvEstimate(METRICS, folds=5, n=6), {"epochs": [3, 1]})
    run_id = run.info.run_id
    stored = mlflow.get_run(run_id).data
    assert mlflow.artifacts.load_dict(f"runs:/{run_id}/config.json")["seed"] == store.seed
    manifest = mlflow.artifacts.load_dict(f"runs:/{run_id}/split_manifest.json")
    assert manifest["dataset_hash"] == "d" * 64 and manifest["files"] == FILES
    estimate = mlflow.artifacts.load_dict(f"runs:/{run_id}/cv_estimate.json")
    assert estimate == {"metrics": METRICS, "folds": 5, "n": 6, "epochs": [3, 1]}
    assert stored.tags["calibrated_on"] == "out-of-fold predictions"
    assert stored.tags["cv_folds"] == "5" and stored.tags["dataset_hash"] == "d" * 64
    assert stored.tags["backbone_weights"] == "imagenet (weights sha256 abc)"
    assert stored.tags["backbone_identity"] == "abc"
    assert stored.params["model.input_size"] == str(store.model.input_size)
    assert json.loads(stored.params["data.classes"]) == list(store.data.classes)
    assert run_artifacts.evaluation_file(run_artifacts.TEST_PREFIX) == "test_evaluation.json"
    with mlflow.start_run() as val_run:
        run_artifacts.log_calibrated_on_val()
    assert mlflow.get_run(val_run.info.run_id).data.tags["calibrated_on"] == "val"


def test_the_model_card_is_logged_where_its_version_tag_points(store):
    with mlflow.start_run() as run:
        pass
    uri = run_artifacts.log_model_card(run.info.run_id, "3", "# card")
    assert uri == f"runs:/{run.info.run_id}/model_card_v3.md"
    assert mlflow.artifacts.load_text(uri) == "# card"


def test_version_tags_written_before_read_back():
    legacy = {
        "gate.decision": "passed",
        "gate.reason": "PASSED: test recall 1.000 >= floor 0.500",
        "gate.evaluated_against": "none",
        "gate.evaluation_dataset": "d" * 64,
        "metric.test_recall": "1.0000",
        "metric.test_roc_auc": "nan",
        "dataset_hash": "d" * 64,
    }
    record = GateRecord.from_tags(legacy)
    assert record == GateRecord("passed", legacy["gate.reason"], None, "d" * 64)
    assert record.as_tags() == {k: v for k, v in legacy.items() if k.startswith("gate.")}
    assert GateRecord("rejected", "x" * 6000, "2", "h").as_tags() == {
        "gate.decision": "rejected",
        "gate.reason": "x" * 5000,
        "gate.evaluated_against": "2",
        "gate.evaluation_dataset": "h",
    }
    assert GateRecord.from_tags({"dataset_hash": "d"}) is None  # never gated
    assert tagged_metrics(legacy) == {"recall": 1.0, "roc_auc": None}


def test_tracking_and_the_run_reader_import_without_tensorflow():
    """`osteo models` and the registry read runs; neither may pay for TensorFlow's import."""
    code = (
        "import sys; import osteo_pipeline.io.tracking, osteo_pipeline.io.run_artifacts, "
        "osteo_pipeline.steps.registry; "
        "print(sorted(m for m in ('tensorflow', 'keras') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stderr[-2000:]
