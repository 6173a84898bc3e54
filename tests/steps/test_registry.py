"""Registry behaviour with a real MLflow store: aliases, the gate, rollback, crash safety."""

import json

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from osteo_pipeline.core.calibration import Calibration
from osteo_pipeline.core.jsonable import dumps
from osteo_pipeline.core.metrics import metrics_with_ci
from osteo_pipeline.io import tracking
from osteo_pipeline.io.registry import PREVIOUS, PRODUCTION, STAGING, Registry, RegistryError
from osteo_pipeline.serving import log_pyfunc
from osteo_pipeline.steps.registry import list_versions, promote, register_run, rollback
from osteo_pipeline.steps.split import split_dataset
from osteo_pipeline.steps.validate import validate_folder
from osteo_pipeline.training.arrays import load_arrays, pixel_cache
from osteo_pipeline.training.fit import predict_proba
from tests.registry_helpers import brightness_model, log_candidate, non_inferiority

pytestmark = pytest.mark.slow
GOOD, CHANCE = 1.0, 0.0
OVERCALLS = 10.0  # a cut that also calls the darker normal test images osteoporosis (4 of 6)


@pytest.fixture
def env(synth_dir, train_settings):
    """Registry mechanics on a handful of test images: a non-inferiority gate (margin 0.05, any
    number of paired cases), so that an equal candidate can pass; the default gate is tested in
    ``test_equal_candidate_is_inconclusive_by_default``."""
    train_settings = non_inferiority(train_settings)
    split = split_dataset(validate_folder(synth_dir(per_class=12), train_settings), train_settings)

    def candidate(skill: float) -> str:
        return register_run(log_candidate(split, train_settings, skill), train_settings)

    return train_settings, candidate


def _aliases(settings):
    return Registry(settings.registry.model_name, MlflowClient()).aliases()


def test_first_candidate_staged_then_promoted_with_card_and_tags(env):
    settings, candidate = env
    version = candidate(GOOD)
    assert _aliases(settings) == {STAGING: version}
    decision = promote(settings)
    assert decision.passed and "no production model" in decision.summary
    assert _aliases(settings) == {PRODUCTION: version}
    mv = MlflowClient().get_model_version(settings.registry.model_name, version)
    assert (
        mv.tags["gate.decision"] == "passed"
        and mv.tags["metric.test_balanced_accuracy"] == "1.0000"
    )
    assert len(mv.tags["dataset_hash"]) == 64
    card = mlflow.artifacts.load_text(mv.tags["model_card"])
    assert "Not a diagnosis" in card and "95% CI" in card and mv.tags["dataset_hash"] in card


def test_worse_candidate_above_the_floors_is_refused_for_not_beating_production(
    synth_dir, train_settings
):
    """The comparison with production, not a floor, refuses it: the candidate clears every
    floor, but on the same held-out cases it is shown worse than production (the default gate)."""
    settings = train_settings
    split = split_dataset(validate_folder(synth_dir(per_class=40), settings), settings)
    good = register_run(log_candidate(split, settings, GOOD), settings)
    assert promote(settings).passed
    worse = register_run(log_candidate(split, settings, GOOD, shift=OVERCALLS), settings)
    decision = promote(settings, version=worse)
    assert not decision.passed and decision.verdict == "rejected"
    assert "below floor" not in decision.summary
    assert "test balanced_accuracy 0.667 >= floor 0.600" in decision.summary
    assert "test recall 1.000 >= floor 0.500" in decision.summary
    assert (
        "worse than production: balanced_accuracy candidate - production = -0.333"
        in decision.summary
    )
    assert decision.difference["high"] < 0 and decision.n_cases == 12
    assert _aliases(settings)[PRODUCTION] == good
    tags = MlflowClient().get_model_version(settings.registry.model_name, worse).tags
    assert tags["gate.decision"] == "rejected" and tags["gate.evaluated_against"] == good


def test_equal_candidate_passes_and_rollback_restores(env):
    settings, candidate = env
    first = candidate(GOOD)
    promote(settings)
    second = candidate(GOOD)
    assert promote(settings).passed  # as good as production on the same cases
    assert _aliases(settings) == {PRODUCTION: second, PREVIOUS: first}
    assert rollback(settings) == (second, first)
    assert _aliases(settings) == {PRODUCTION: first}
    with pytest.raises(RegistryError, match="nothing to roll back"):
        rollback(settings)
    rows = {str(r["version"]): r for r in list_versions(settings)}
    assert rows[first]["aliases"] == [PRODUCTION] and rows[second]["gate"] == "passed"


def test_equal_candidate_is_inconclusive_by_default(env):
    """The default gate promotes only a candidate shown better: an equal one keeps production."""
    settings, candidate = env
    first = candidate(GOOD)
    promote(settings)
    second = candidate(GOOD)
    default_gate = settings.model_copy(
        update={
            "registry": settings.registry.model_copy(update={"margin": 0.0, "min_paired_cases": 30})
        }
    )
    decision = promote(default_gate, version=second)
    assert (
        decision.verdict == "inconclusive"
        and not decision.passed
        and "production kept" in decision.summary
    )
    assert _aliases(settings)[PRODUCTION] == first
    assert (
        MlflowClient().get_model_version(settings.registry.model_name, second).tags["gate.decision"]
        == "inconclusive"
    )


def test_chance_candidate_fails_the_floors_without_production(env):
    settings, candidate = env
    candidate(CHANCE)
    decision = promote(settings)
    assert not decision.passed and "below floor" in decision.summary
    assert PRODUCTION not in _aliases(settings)


def test_crash_between_steps_leaves_production_valid_and_a_rerun_completes(env, monkeypatch):
    settings, candidate = env
    first = candidate(GOOD)
    promote(settings)
    second = candidate(GOOD)
    real = Registry.set_alias

    def crash_on_production(self, alias, version):
        if alias == PRODUCTION:
            raise KeyboardInterrupt("process killed")
        return real(self, alias, version)

    monkeypatch.setattr(Registry, "set_alias", crash_on_production)
    with pytest.raises(KeyboardInterrupt):
        promote(settings)
    assert _aliases(settings)[PRODUCTION] == first  # never dangling, never half-moved
    monkeypatch.setattr(Registry, "set_alias", real)
    assert promote(settings).passed
    assert _aliases(settings) == {PRODUCTION: second, PREVIOUS: first}


def test_missing_model_and_candidate_are_clear_errors(train_settings):
    with pytest.raises(RegistryError, match="no candidate"):
        promote(train_settings)
    with pytest.raises(RegistryError, match="no 'production'"):
        rollback(train_settings)
    with pytest.raises(RegistryError, match="no version 7"):
        promote(train_settings, version="7")
    assert list_versions(train_settings) == []


def test_evaluate_and_explain_commands_on_a_registered_model(env, synth_dir, tmp_path):
    """The CLI around `osteo evaluate` / `osteo explain`: a table for a new batch, exit 2 with a
    reason for a model Grad-CAM cannot explain or an unknown class."""
    from typer.testing import CliRunner

    from osteo_pipeline.cli import app
    from osteo_pipeline.config import settings_to_yaml

    settings, candidate = env
    version = candidate(GOOD)
    config = tmp_path / "settings.yaml"
    config.write_text(settings_to_yaml(settings))
    uri = f"models:/{settings.registry.model_name}/{version}"
    fresh = synth_dir(per_class=4, seed=11)
    runner = CliRunner()
    result = runner.invoke(app, ["evaluate", uri, str(fresh), "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert (
        "balanced_accuracy" in result.output and "(n=8)" in result.output and "ece" in result.output
    )
    image = str(next((fresh / "normal").iterdir()))
    result = runner.invoke(
        app, ["explain", uri, image, "--config", str(config), "--out", str(tmp_path / "x.png")]
    )
    assert result.exit_code == 2 and "cannot explain model" in result.output
    result = runner.invoke(
        app, ["explain", uri, image, "--config", str(config), "--class", "fracture"]
    )
    assert result.exit_code == 2 and "'fracture' is not one of the model's classes" in result.output


def test_registering_a_run_twice_returns_its_version(env, synth_dir, train_settings):
    settings, candidate = env
    split = split_dataset(validate_folder(synth_dir(per_class=12), settings), settings)
    run_id = log_candidate(split, settings, GOOD)
    first = register_run(run_id, settings)
    assert register_run(run_id, settings) == first  # a retried `register` task
    versions = MlflowClient().search_model_versions(f"name = '{settings.registry.model_name}'")
    assert [str(v.version) for v in versions] == [first]


def test_a_promotion_retried_after_it_succeeded_reports_success(env):
    settings, candidate = env
    first = candidate(GOOD)
    promote(settings)
    second = candidate(GOOD)
    done = promote(settings, version=second)
    assert done.passed
    retried = promote(settings, version=second)  # the task's retry after a lost answer
    assert retried.passed and "already promoted" in retried.summary
    assert retried.extra == {
        "candidate": second,
        "production": first,
        "evaluation_dataset": done.extra["evaluation_dataset"],
    }
    assert _aliases(settings) == {PRODUCTION: second, PREVIOUS: first}


def test_two_promotions_racing_against_one_production_cannot_both_pass(env, monkeypatch):
    """Both gates run against production v1 before either moves the alias: the compare-and-set
    lets the first through and refuses the second, whose gate compared against a stale
    production."""
    import threading

    import osteo_pipeline.steps.registry as steps_registry

    settings, candidate = env
    first = candidate(GOOD)
    promote(settings)
    racers = [candidate(GOOD), candidate(GOOD)]
    both_gated = threading.Barrier(2, timeout=120)
    real_decide = steps_registry.decide

    def decide_then_wait(*args, **kwargs):
        decision = real_decide(*args, **kwargs)
        both_gated.wait()  # neither moves the alias before both have gated
        return decision

    monkeypatch.setattr(steps_registry, "decide", decide_then_wait)
    decisions, errors = {}, {}

    def race(version: str) -> None:
        try:
            decisions[version] = promote(settings, version=version)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors[version] = exc
            both_gated.abort()

    threads = [threading.Thread(target=race, args=(v,)) for v in racers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert errors == {} and sorted(d.passed for d in decisions.values()) == [False, True], (
        errors,
        decisions,
    )
    winner = next(v for v, d in decisions.items() if d.passed)
    loser = next(v for v, d in decisions.items() if not d.passed)
    assert "production moved from" in decisions[loser].summary
    assert {k: v for k, v in _aliases(settings).items() if k != STAGING} == {
        PRODUCTION: winner,
        PREVIOUS: first,
    }
    tags = MlflowClient().get_model_version(settings.registry.model_name, loser).tags
    assert tags["gate.decision"] == "rejected" and tags["gate.evaluated_against"] == first
    assert [m.name for m in MlflowClient().search_registered_models()] == [
        settings.registry.model_name
    ]  # lock released


def test_evaluation_stops_when_the_training_manifest_cannot_be_read(train_settings, synth_dir):
    """Without the model's split manifest, images it trained on cannot be left out: a clear
    error, never an evaluation that quietly scores training images as new."""
    from osteo_pipeline.io import tracking
    from osteo_pipeline.serving import log_pyfunc
    from osteo_pipeline.steps.evaluate import evaluate_model
    from osteo_pipeline.steps.seen import TrainingManifestError
    from tests.registry_helpers import brightness_model

    tracking.configure(train_settings)
    with mlflow.start_run() as run:  # a model logged without its split manifest
        size = train_settings.model.input_size
        info = log_pyfunc(
            brightness_model(size, GOOD),
            list(train_settings.data.classes),
            size,
            train_settings.validation.max_pixels,
            run.info.run_id,
            bounds=train_settings.validation.image_bounds,
        )
    with pytest.raises(TrainingManifestError, match="cannot read the training split manifest"):
        evaluate_model(info.model_uri, synth_dir(per_class=4, seed=3), train_settings)


def _legacy_run(split, settings) -> str:
    """A training run as the code before ``io.run_artifacts`` logged it: every artifact and tag
    under its literal name."""
    tracking.configure(settings)
    size, classes = settings.model.input_size, list(settings.data.classes)
    test = load_arrays(split, settings, pixel_cache(settings))["test"]
    model = brightness_model(size, GOOD)
    proba = predict_proba(model, test.pixels, 8)
    tags = {
        "osteo.kind": "train",
        "params_source": "config",
        "backbone_weights": "legacy-double",
        "calibrated_on": "val",
        "image_grids": "not logged: they would hold patient images",
    }
    with mlflow.start_run(tags=tags) as run:
        mlflow.log_params({"data.classes": json.dumps(classes), "model.input_size": size})
        mlflow.log_params({"model.roi": "image", "chosen.learning_rate": 0.001})
        mlflow.log_text(dumps(settings.model_dump(mode="json")), "config.json")
        mlflow.log_text(dumps(split.to_dict()), "split_manifest.json")
        evaluation = {
            "metrics": metrics_with_ci(test.labels, proba, classes.index(settings.data.positive)),
            "calibration": Calibration().as_dict(),
            "positive_class": settings.data.positive,
            "n": len(test.labels),
            "predictions": [],
        }
        mlflow.log_text(dumps(evaluation), "test_evaluation.json")
        log_pyfunc(
            model,
            classes,
            size,
            settings.validation.max_pixels,
            run.info.run_id,
            bounds=settings.validation.image_bounds,
        )
    return run.info.run_id


def test_a_run_logged_with_the_legacy_layout_registers_is_promoted_and_gated_against(
    env, synth_dir
):
    """Versions registered before the run's names had one home keep working: the legacy run
    registers with its tags and card, is promoted, and a new candidate is gated against it (its
    split manifest read to leave out what it trained on)."""
    settings, candidate = env
    split = split_dataset(validate_folder(synth_dir(per_class=12), settings), settings)
    legacy_run = _legacy_run(split, settings)
    legacy = register_run(legacy_run, settings)
    tags = MlflowClient().get_model_version(settings.registry.model_name, legacy).tags
    assert tags["metric.test_balanced_accuracy"] == "1.0000" and tags["run_id"] == legacy_run
    assert (
        tags["dataset_hash"] == split.dataset_hash and tags["backbone_weights"] == "legacy-double"
    )
    card = mlflow.artifacts.load_text(tags["model_card"])
    assert f"Training run `{legacy_run}`" in card and "Backbone weights: `legacy-double`" in card
    assert "| learning_rate | 0.001 |" in card and split.dataset_hash in card
    assert promote(settings).passed and _aliases(settings) == {PRODUCTION: legacy}
    newer = candidate(GOOD)
    decision = promote(settings, version=newer)
    assert decision.passed and decision.extra["production"] == legacy
    assert "balanced_accuracy candidate - production = +0.000" in decision.summary
    newer_tags = MlflowClient().get_model_version(settings.registry.model_name, newer).tags
    assert newer_tags["gate.evaluated_against"] == legacy
    assert _aliases(settings) == {PRODUCTION: newer, PREVIOUS: legacy}
