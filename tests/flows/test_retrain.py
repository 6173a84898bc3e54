"""Flow tasks called directly (``.fn``) for their logic; the whole flow on the demo's data with
the demo config's real floors (shared by two tests: a first and a second retrain), and on a blind
batch whose candidate those floors refuse."""

import os
import re
from dataclasses import dataclass
from pathlib import Path

import mlflow
import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState
from prefect.logging import disable_run_logger

from flows.retrain import ValidationFailed, retrain_flow, split_task, validate_flow, validate_task
from osteo_pipeline.config import Settings, cli_overrides, load_settings
from osteo_pipeline.steps.synth import write_synthetic_dataset
from tests.small import clear_user_env, write_blind_dataset

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
    assert (
        mlflow.get_experiment_by_name(train_settings.tracking.experiment) is None
    )  # nothing trained
    with pytest.raises(ValidationFailed):
        validate_flow(str(root), str(config_file))


@dataclass(frozen=True)
class DemoRetrain:
    """The demo's first scheduled retrain: ``osteo synth``'s data, the packaged demo config with
    its real floors, offline (a random-init backbone), stores under ``root``."""

    root: Path
    overrides: list[str]  # what points the demo config's stores and outputs under root
    settings: Settings
    result: dict
    aliases: dict[str, int]  # the registry right after it, before any other test runs
    version_tags: dict[str, str]


@pytest.fixture(scope="module")
def demo_retrain(prefect_harness, tmp_path_factory: pytest.TempPathFactory) -> DemoRetrain:
    root = tmp_path_factory.mktemp("demo")
    overrides = [
        "model.weights=none",  # what the demo trains on offline, without trying a download
        f"tracking.uri=sqlite:///{root / 'mlflow.db'}",
        f"tracking.artifact_root={root / 'mlruns'}",
        f"tune.storage=sqlite:///{root / 'optuna.db'}",
        f"output_dir={root / 'outputs'}",
    ]
    settings = load_settings("demo", overrides=cli_overrides(overrides), environ={})
    assert settings.registry.floors == {"balanced_accuracy": 0.6, "recall": 0.5}  # the real ones
    write_synthetic_dataset(root / "first", list(settings.data.classes), 24, 256, 42)  # make demo
    with pytest.MonkeyPatch.context() as environment:  # before the per-test clean environment
        clear_user_env(environment, root)
        result = retrain_flow(str(root / "first"), "demo", overrides)
    mlflow.set_tracking_uri(settings.tracking.uri)
    client, name = MlflowClient(), settings.registry.model_name
    aliases = client.get_registered_model(name).aliases
    return DemoRetrain(
        root, overrides, settings, result, aliases, client.get_model_version(name, "1").tags
    )


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_the_demo_retrain_promotes_its_first_version_through_the_real_floors(demo_retrain):
    """The scheduled retrain's first run on the demo data: version 1 clears the configured floors
    (the gate says so, floor by floor) and becomes production."""
    first = demo_retrain.result
    assert first["version"] == "1" and first["promoted"], first["reasons"]
    assert re.fullmatch(r"test balanced_accuracy \d\.\d{3} >= floor 0\.600", first["reasons"][0])
    assert re.fullmatch(r"test recall \d\.\d{3} >= floor 0\.500", first["reasons"][1])
    assert first["reasons"][2:] == ["no production model: floors decide"]
    assert demo_retrain.aliases == {"production": 1}
    tags = demo_retrain.version_tags
    assert tags["gate.decision"] == "passed" and tags["gate.evaluated_against"] == "none"
    assert (Path(first["run_dir"]) / "split.json").is_file() and (
        Path(first["run_dir"]) / "validation" / "validation.html"
    ).is_file()


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_a_second_retrain_on_new_data_tunes_a_study_of_its_own(demo_retrain):
    """The next scheduled run, on a new batch, tunes a study of its own and refits with that
    study's best trial (not the first's), and its version is gated against production."""
    first, settings = demo_retrain.result, demo_retrain.settings
    data = demo_retrain.root / "second"
    write_synthetic_dataset(data, list(settings.data.classes), 24, 256, 5)
    second = retrain_flow(str(data), "demo", [*demo_retrain.overrides, "tune.trials=1"])
    assert second["dataset_hash"] != first["dataset_hash"] and second["run_dir"] != first["run_dir"]
    assert second["version"] == "2"
    # gated against version 1 on the same images, whatever the verdict
    assert any("balanced_accuracy candidate - production = " in r for r in second["reasons"])
    storage = settings.tune.storage
    study_name = f"{settings.tune.study_name}-{second['dataset_hash'][:12]}-random"
    study = optuna.load_study(study_name=study_name, storage=storage)
    assert study.user_attrs["dataset_hash"] == second["dataset_hash"]
    assert (
        len(study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))) == 1
    )  # tune.trials=1: its own trial
    mlflow.set_tracking_uri(settings.tracking.uri)
    run = MlflowClient().get_run(second["run_id"])
    assert run.data.tags["osteo.study"] == study_name
    best = study.best_trial
    assert (
        run.data.tags["osteo.study_trial"] == str(best.number)
        and run.data.tags["osteo.study_trial_run_id"] == best.user_attrs["mlflow_run_id"]
    )
    for name in ("learning_rate", "unfreeze_depth", "head_units", "dropout"):
        assert float(run.data.params[f"chosen.{name}"]) == pytest.approx(best.params[name])
    tags = MlflowClient().get_model_version(settings.registry.model_name, "2").tags
    assert tags["gate.evaluated_against"] == "1"


@pytest.mark.slow
def test_the_floors_refuse_a_candidate_that_cannot_tell_the_classes_apart(
    tmp_path, config_file, train_settings
):
    """A retrain on a batch where one picture is filed under both classes: its candidate gives
    every test image one label (balanced accuracy 0.5), the real floors refuse it, and nothing
    becomes production; the version stays staged with the gate's decision on it."""
    assert train_settings.registry.floors == {"balanced_accuracy": 0.6, "recall": 0.5}
    write_blind_dataset(tmp_path / "blind", list(train_settings.data.classes), 10)
    result = retrain_flow(str(tmp_path / "blind"), str(config_file), ["tune.trials=1"])
    assert result["version"] == "1" and not result["promoted"]
    assert "test balanced_accuracy 0.500 below floor 0.600" in result["reasons"], result["reasons"]
    mlflow.set_tracking_uri(train_settings.tracking.uri)
    client = MlflowClient()
    assert client.get_registered_model(train_settings.registry.model_name).aliases == {"staging": 1}
    tags = client.get_model_version(train_settings.registry.model_name, "1").tags
    assert tags["gate.decision"] == "rejected"
    assert "test balanced_accuracy 0.500 below floor 0.600" in tags["gate.reason"]


@pytest.mark.slow
@pytest.mark.timeout(1200)  # the worker flow run alone may take 600 s
def test_tune_task_fans_the_study_out_to_worker_flow_runs(
    synth_dir, train_settings, config_file, monkeypatch, tmp_path
):
    """With ``tune.worker_deployment``, the search runs in this flow and in runs of the tune-worker
    deployment. Here the deployment's run is a real `tune_worker_flow` run in its own process (as a
    Prefect worker would start it), given the parameters `run_deployment` receives, and awaited
    before the flow's own worker starts: so it runs every trial, and the flow's worker none."""
    import subprocess
    import sys
    from types import SimpleNamespace

    import prefect.deployments

    from flows.retrain import tune_task

    started: list[subprocess.Popen] = []
    requests: list[dict] = []

    def run_deployment(name, parameters, timeout):  # noqa: ANN001, ANN202 - Prefect's signature
        assert name == "tune-worker/tune-worker" and timeout == 0
        requests.append(parameters)
        from prefect.settings import PREFECT_API_URL

        code = f"from flows.retrain import tune_worker_flow; tune_worker_flow(**{parameters!r})"
        started.append(
            subprocess.Popen(
                [sys.executable, "-c", code],
                env=os.environ | {"PREFECT_API_URL": PREFECT_API_URL.value()},
            )
        )  # the same Prefect server
        assert started[-1].wait(timeout=600) == 0
        return SimpleNamespace(name=f"worker-{len(started)}")

    monkeypatch.setattr(prefect.deployments, "run_deployment", run_deployment)
    overrides = [
        "tune.worker_deployment=tune-worker/tune-worker",
        "tune.workers=2",
        "tune.trials=4",
        "tune.heartbeat_interval_s=1",
        "tune.poll_s=0.5",
    ]
    settings = load_settings(config_file, overrides=cli_overrides(overrides), environ={})
    data = synth_dir(per_class=10)
    split = split_task.fn(validate_task.fn(str(data), settings), settings)
    with disable_run_logger():
        best = tune_task.fn(split, settings, str(data), str(config_file), overrides)
    assert len(started) == 1 and requests[0]["data_dir"] == str(data) and requests[0]["worker"] == 1
    study = optuna.load_study(study_name=requests[0]["study"], storage=settings.tune.storage)
    finished = study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
    assert len(finished) == 4 and {t.user_attrs["worker"].rsplit(":", 1)[1] for t in finished} == {
        str(started[0].pid)
    }
    assert (
        best["tags"]["osteo.study"] == study.study_name
        and best["params"]["head_epochs"] is not None
    )


def test_prefect_logs_no_traceback_for_an_error_the_user_caused():
    """A task or flow that fails on bad input (an OsteoError) ends the run with the CLI's one line:
    the engine's record of it, traceback and all, is dropped; a bug's traceback is kept."""
    import logging
    import sys

    import flows.retrain  # noqa: F401 - installs the filter
    from osteo_pipeline.core.model import WeightsUnavailableError

    for name in ("prefect.task_runs", "prefect.flow_runs"):
        engine = logging.getLogger(name)
        for error, shown in (
            (WeightsUnavailableError("backbone weights file not found: w.h5"), False),
            (RuntimeError("a bug"), True),
        ):
            try:
                raise error
            except Exception:
                record = engine.makeRecord(
                    name,
                    logging.ERROR,
                    __file__,
                    1,
                    "Task run failed with exception: %r",
                    (error,),
                    sys.exc_info(),
                )
            assert bool(engine.filter(record)) is shown, (name, error)
