"""Flow tasks called directly (``.fn``) for their logic, and the whole flow once on tiny data."""

import mlflow
import pytest
from mlflow.tracking import MlflowClient
from prefect.logging import disable_run_logger

from flows.retrain import ValidationFailed, retrain_flow, split_task, validate_flow, validate_task

pytestmark = pytest.mark.usefixtures("prefect_harness")


def test_validate_task_passes_clean_data_and_writes_the_report(synth_dir, tiny_settings):
    with disable_run_logger():
        result = validate_task.fn(str(synth_dir(per_class=12)), tiny_settings)
        manifest = split_task.fn(result, tiny_settings)
    assert result.passed and (tiny_settings.output_dir / "validation" / "validation.html").exists()
    assert (tiny_settings.output_dir / "split.json").exists() and len(manifest.files) == 24


def test_validate_task_stops_on_bad_data(synth_dir, tiny_settings):
    root = synth_dir()
    (root / "normal" / "broken.png").write_bytes(b"")
    with disable_run_logger(), pytest.raises(ValidationFailed, match="readable"):
        validate_task.fn(str(root), tiny_settings)


def test_failed_validation_stops_the_flow_before_training(synth_dir, config_file, train_settings):
    root = synth_dir()
    (root / "osteoporosis" / "notes.png").write_text("not an image")
    with pytest.raises(ValidationFailed):
        retrain_flow(str(root), str(config_file))
    mlflow.set_tracking_uri(train_settings.tracking.uri)
    assert mlflow.get_experiment_by_name(train_settings.tracking.experiment) is None  # nothing trained
    with pytest.raises(ValidationFailed):
        validate_flow(str(root), str(config_file))


@pytest.mark.slow
def test_retrain_flow_end_to_end(synth_dir, config_file, train_settings):
    result = retrain_flow(str(synth_dir(per_class=10)), str(config_file), ["registry.floors={}"])
    assert result["version"] == "1" and result["promoted"]
    mlflow.set_tracking_uri(train_settings.tracking.uri)
    aliases = MlflowClient().get_registered_model(train_settings.registry.model_name).aliases
    assert aliases == {"production": 1} or aliases == {"production": "1"}
