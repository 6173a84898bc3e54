"""End to end on tiny synthetic data: a 2-trial study, resume, then a refit whose logged model
loads back and predicts. Random-init ResNet-50 at 32 px: no download."""

import base64
import io
import time
from pathlib import Path

import mlflow
import numpy as np
import optuna
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState
from PIL import Image

from osteo_pipeline.core.calibration import Calibration
from osteo_pipeline.core.model import HEAD_LAYERS, get_backbone, set_unfrozen_blocks
from osteo_pipeline.core.synth import example_radiograph
from osteo_pipeline.io.weights import BackboneWeights
from osteo_pipeline.io.weights import resolve as resolve_weights
from osteo_pipeline.serving import encode_image, load_classifier
from osteo_pipeline.steps.evaluate import evaluate_model
from osteo_pipeline.steps.explain import explain_image
from osteo_pipeline.steps.refit import refit_and_evaluate
from osteo_pipeline.steps.split import split_dataset
from osteo_pipeline.steps.tune import (
    TuneError,
    best_params,
    existing_study_name,
    open_storage,
    run_worker,
    suggest,
    tune,
)
from osteo_pipeline.steps.validate import validate_folder
from osteo_pipeline.training.arrays import load_arrays, pixel_cache
from osteo_pipeline.training.backbone import StudyBackbone
from osteo_pipeline.training.fit import TrainParams

pytestmark = pytest.mark.slow


@pytest.fixture
def split(synth_dir, train_settings):
    return split_dataset(validate_folder(synth_dir(per_class=10), train_settings), train_settings)


def _runs(settings, filter_string=""):
    mlflow.set_tracking_uri(settings.tracking.uri)
    experiment = mlflow.get_experiment_by_name(settings.tracking.experiment)
    return MlflowClient().search_runs([experiment.experiment_id], filter_string=filter_string)


def test_study_logs_parent_and_nested_runs_and_resumes(split, train_settings):
    result = tune(split, train_settings)
    assert result.study_name == f"{train_settings.tune.study_name}-{split.dataset_hash[:12]}-random"
    assert result.counts["complete"] + result.counts["pruned"] == 2 == result.new_trials
    runs = _runs(train_settings)
    parents = [r for r in runs if r.data.tags.get("osteo.kind") == "study"]
    trials = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == result.parent_run_id]
    assert len(parents) == 1 and len(trials) == 2
    assert parents[0].data.tags["dataset_hash"] == split.dataset_hash
    assert (
        "env.version.tensorflow" in parents[0].data.tags
        and "env.git_commit" in parents[0].data.tags
    )
    assert parents[0].inputs.dataset_inputs[0].dataset.digest == split.dataset_hash[:32]
    trial = trials[0]
    assert {
        "learning_rate",
        "unfreeze_depth",
        "head_units",
        "dropout",
        "seed",
        "sampler_seed",
        "worker",
    } <= set(trial.data.params)
    history = MlflowClient().get_metric_history(trial.info.run_id, "val_loss")
    assert [m.step for m in history] == list(range(len(history))) and len(history) >= 1

    # A worker killed mid-trial leaves a RUNNING trial whose heartbeat stops. The next session
    # fails it for its stale heartbeat (and its MLflow run), runs it again, and adds 1 new trial.
    settings = train_settings.model_copy(
        update={
            "tune": train_settings.tune.model_copy(
                update={"heartbeat_interval_s": 1, "heartbeat_grace_s": 2}
            )
        }
    )
    storage = open_storage(settings)
    study = optuna.load_study(study_name=result.study_name, storage=storage)
    stale = study.ask()
    suggest(stale, settings)
    storage.record_heartbeat(stale._trial_id)
    orphan = MlflowClient().create_run(
        trials[0].info.experiment_id, tags={"mlflow.parentRunId": result.parent_run_id}
    )
    stale.set_user_attr("mlflow_run_id", orphan.info.run_id)
    time.sleep(3)
    resumed = tune(split, settings, trials=1)
    trials_now = optuna.load_study(study_name=result.study_name, storage=storage).trials
    assert trials_now[stale.number].state == TrialState.FAIL
    retried = [t for t in trials_now if t.system_attrs.get("failed_trial") == stale.number]
    assert (
        len(retried) == 1
        and retried[0].params == trials_now[stale.number].params
        and retried[0].state in (TrialState.COMPLETE, TrialState.PRUNED)
    )
    assert sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials_now) == 3
    assert resumed.parent_run_id == result.parent_run_id and resumed.new_trials == 1
    assert MlflowClient().get_run(orphan.info.run_id).info.status == "FAILED"
    assert best_params(train_settings, split.dataset_hash).params["head_epochs"] >= 1


def test_new_data_gets_its_own_study_and_the_same_data_resumes_without_repeating_proposals(
    synth_dir, train_settings, caplog
):
    settings = train_settings.model_copy(
        update={"tune": train_settings.tune.model_copy(update={"warm_start_trials": 1})}
    )
    first, second = (
        split_dataset(validate_folder(synth_dir(per_class=10, seed=seed), settings), settings)
        for seed in (0, 1)
    )
    a = tune(first, settings)
    b = tune(second, settings)
    assert a.study_name != b.study_name and b.new_trials == 2
    storage = open_storage(settings)
    study_a, study_b = (optuna.load_study(study_name=r.study_name, storage=storage) for r in (a, b))
    assert study_b.user_attrs["dataset_hash"] == second.dataset_hash
    finished = (TrialState.COMPLETE, TrialState.PRUNED)
    trials_b = study_b.get_trials(states=finished)
    assert len(trials_b) == 2 and trials_b[0].user_attrs["warm_start_from"].startswith(
        a.study_name + "#"
    )
    assert (
        best_params(settings, second.dataset_hash).study_name == b.study_name
    )  # a refit on B uses B's study
    with pytest.raises(TuneError, match="was run on dataset"):
        best_params(settings, second.dataset_hash, study_name=a.study_name)
    assert (
        best_params(
            settings, second.dataset_hash, study_name=a.study_name, allow_other_data=True
        ).study_name
        == a.study_name
    )

    again = tune(
        first, settings, workers=2
    )  # the same data: resume, 2 more trials on 2 local workers
    assert again.study_name == a.study_name and again.new_trials == 2
    assert (
        "exited with an error" not in caplog.text
    )  # the spawned `osteo tune-worker` ended cleanly
    trials_a = optuna.load_study(study_name=a.study_name, storage=storage).get_trials(
        states=finished
    )
    proposals = [(t.params["learning_rate"], t.params["dropout"]) for t in trials_a]
    assert len(trials_a) == 4 and len(set(proposals)) == 4  # none proposed before

    changed = settings.model_copy(
        update={"train": settings.train.model_copy(update={"head_epochs": 3})}
    )
    with pytest.raises(TuneError, match=r"other settings \(train.head_epochs\)"):
        tune(first, changed)  # trials of one study must be comparable


def test_each_backbone_gets_its_own_study_and_a_worker_with_another_backbone_is_refused(
    split, train_settings, tmp_path
):
    """The same data tuned from a random init, then from a weights file: two studies (the second
    warm-started from the first), named by the weights' hash, never their path; `best_params`
    reads this machine's backbone's study; a worker of another backbone cannot join."""
    import keras

    weights_file = tmp_path / "some" / "where" / "resnet50-notop.weights.h5"
    weights_file.parent.mkdir(parents=True)
    keras.utils.set_random_seed(7)
    keras.applications.ResNet50(
        include_top=False, weights=None, input_shape=(32, 32, 3)
    ).save_weights(weights_file)
    settings = train_settings.model_copy(
        update={"tune": train_settings.tune.model_copy(update={"warm_start_trials": 1})}
    )
    pretrained = settings.model_copy(
        update={"model": settings.model.model_copy(update={"weights": str(weights_file)})}
    )
    random_study = tune(split, settings)
    file_study = tune(split, pretrained)
    digest = resolve_weights(str(weights_file), False).identity.removeprefix("sha256:")
    assert (
        file_study.study_name
        == f"{settings.tune.study_name}-{split.dataset_hash[:12]}-{digest[:12]}"
        != random_study.study_name
    )
    study = optuna.load_study(study_name=file_study.study_name, storage=open_storage(settings))
    assert study.user_attrs["backbone_identity"] == f"sha256:{digest}" and "where" not in str(
        study.user_attrs
    )
    assert (
        study.get_trials()[0]
        .user_attrs["warm_start_from"]
        .startswith(random_study.study_name + "#")
    )
    assert best_params(pretrained, split.dataset_hash).study_name == file_study.study_name
    assert best_params(settings, split.dataset_hash).study_name == random_study.study_name
    with pytest.raises(
        TuneError, match=r"this worker's backbone is random-init .* was run with sha256:"
    ):
        run_worker(file_study.study_name, split, settings)


def test_a_study_made_before_backbones_named_studies_is_still_resumed_and_read(
    split, train_settings
):
    """``<base>-<dataset hash[:12]>``, the old name, holds a random-init study: the same kind of
    backbone resumes it and reads its best trial; a pretrained backbone starts its own."""
    storage = open_storage(train_settings)
    legacy = f"{train_settings.tune.study_name}-{split.dataset_hash[:12]}"
    old = optuna.create_study(study_name=legacy, storage=storage)
    old.set_user_attr("backbone", "random-init")
    old.set_user_attr("dataset_hash", split.dataset_hash)
    old.add_trial(
        optuna.trial.create_trial(
            params={"learning_rate": 1e-3},
            distributions={
                "learning_rate": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)
            },
            value=0.5,
        )
    )
    assert best_params(train_settings, split.dataset_hash).study_name == legacy
    assert (
        existing_study_name(
            storage,
            train_settings.tune.study_name,
            split.dataset_hash,
            resolve_weights("none", False),
        )
        == legacy
    )
    sha = BackboneWeights(Path("w.h5"), "sha256:" + "ab" * 32, "file w.h5")
    assert (
        existing_study_name(storage, train_settings.tune.study_name, split.dataset_hash, sha)
        == f"{legacy}-{'ab' * 6}"
    )


def test_refit_logs_a_servable_calibrated_model_that_evaluate_and_explain_use(
    split, train_settings, synth_dir, tmp_path
):
    params = TrainParams.from_settings(train_settings).as_dict() | {"unfreeze_depth": 1}
    result = refit_and_evaluate(split, params, train_settings)
    run = MlflowClient().get_run(result.run_id)
    for name in (
        "test_accuracy",
        "test_balanced_accuracy",
        "test_precision",
        "test_recall",
        "test_specificity",
        "test_f1",
        "test_ece",
        "test_ece_uncalibrated",
    ):
        assert name in run.data.metrics
    artifacts = {a.path for a in MlflowClient().list_artifacts(result.run_id, "figures")}
    expected = (
        "training_curves.png",
        "confusion_matrix.png",
        "roc_curve.png",
        "reliability_diagram.png",
    )
    assert artifacts == {f"figures/{n}" for n in expected}  # no image grids unless the config asks
    assert run.data.tags["image_grids"].startswith("not logged")

    # The model's input example is the pipeline's own synthetic radiograph, never a patient image.
    example = mlflow.models.Model.load(result.model_uri).load_input_example(
        mlflow.artifacts.download_artifacts(result.model_uri)
    )
    decoded = np.asarray(Image.open(io.BytesIO(base64.b64decode(example["image"][0]))))
    np.testing.assert_array_equal(decoded, example_radiograph(train_settings.model.input_size))

    # Calibration was fitted on val (never trained on) and travels with the served model.
    evaluation = mlflow.artifacts.load_dict(f"runs:/{result.run_id}/test_evaluation.json")
    classifier = load_classifier(result.model_uri)
    assert classifier.calibration == Calibration.from_dict(evaluation["calibration"])
    assert classifier.calibration.threshold is not None and classifier.calibration.temperature > 0
    assert float(run.data.params["calibration.temperature"]) == pytest.approx(
        classifier.calibration.temperature, abs=1e-4
    )
    pixels = load_arrays(split, train_settings, pixel_cache(train_settings))["test"].pixels
    served = mlflow.pyfunc.load_model(result.model_uri).predict(
        pd.DataFrame({"image": [encode_image(p) for p in pixels]})
    )
    calibrated = classifier.calibration.probabilities(classifier.predict_pixels(pixels))
    assert np.allclose(served[["p_normal", "p_osteoporosis"]].to_numpy(), calibrated, atol=1e-5)
    assert list(served["label"]) == [
        ["normal", "osteoporosis"][k] for k in classifier.calibration.labels(calibrated)
    ]

    # `osteo evaluate` on a new batch, leaving out images the model has seen.
    fresh = synth_dir(per_class=5, seed=7)
    grids = train_settings.model_copy(
        update={"tracking": train_settings.tracking.model_copy(update={"log_image_grids": True})}
    )
    evaluated = evaluate_model(result.model_uri, fresh, grids)
    assert evaluated.n_images == 10 and evaluated.skipped_seen == []
    assert {"balanced_accuracy", "roc_auc", "ece"} <= set(evaluated.metrics)
    on_own_data = evaluate_model(result.model_uri, split.data_dir, train_settings)
    seen = split.files[split.files["split"] != "test"]
    assert sorted(on_own_data.skipped_seen) == sorted(seen["path"]) and on_own_data.n_images == len(
        split.subset("test")
    )
    eval_artifacts = {a.path for a in MlflowClient().list_artifacts(evaluated.run_id, "figures")}
    assert {
        "figures/reliability_diagram.png",
        "figures/test_predictions.png",
        "figures/test_gradcam.png",
    } <= eval_artifacts

    # `osteo explain`: the overlay PNG beside the image, as preprocessed for the model.
    image = next((fresh / "osteoporosis").iterdir())
    explanation = explain_image(result.model_uri, image, tmp_path / "cam.png", None, train_settings)
    with Image.open(explanation.path) as written:
        assert written.size == (
            2 * train_settings.model.input_size,
            train_settings.model.input_size,
        )
    assert explanation.explained == explanation.predicted and 0 <= explanation.probability <= 1
    model = mlflow.pyfunc.load_model(result.model_uri)
    assert model.metadata.signature.inputs.input_names() == ["image"]
    image = encode_image(np.full((48, 40, 3), 128, np.uint8))
    out = model.predict(pd.DataFrame({"image": [image, image]}))
    assert list(out.columns) == ["label", "p_normal", "p_osteoporosis", "model_version"]
    assert set(out["label"]) <= {"normal", "osteoporosis"}
    assert np.allclose(out[["p_normal", "p_osteoporosis"]].sum(axis=1), 1, atol=1e-4)


def _head(model):
    return [w for name in HEAD_LAYERS for w in model.get_layer(name).get_weights()]


def test_study_backbone_is_built_once_reset_each_trial_and_heads_depend_only_on_the_seed(
    train_settings,
):
    params = TrainParams(1e-3, 1, 8, 0.0)
    pixels = np.random.default_rng(0).integers(0, 255, (4, 32, 32, 3), dtype=np.uint8)
    backbones = StudyBackbone(train_settings, pixels)
    first = backbones.model(params, seed=1)
    start = [w.copy() for w in get_backbone(first).get_weights()]
    set_unfrozen_blocks(first, 1)
    for variable in get_backbone(first).trainable_variables:  # what a trial's fine-tuning does
        variable.assign(variable + 1.0)
    second = backbones.model(params, seed=2)
    assert get_backbone(second) is get_backbone(first)
    for got, want in zip(get_backbone(second).get_weights(), start):
        np.testing.assert_array_equal(got, want)
    assert not get_backbone(second).trainable  # head-only again until a phase unfreezes blocks
    again = StudyBackbone(train_settings, pixels).model(params, seed=2)
    for got, want in zip(_head(again), _head(second)):
        np.testing.assert_array_equal(got, want)
    assert not all(np.array_equal(a, b) for a, b in zip(_head(first), _head(second)))


def test_small_data_search_cross_validates_and_the_refit_leads_with_the_oof_estimate(
    synth_dir, train_settings, tmp_path, caplog
):
    """tune.cv on: each trial is 3-fold CV on train+val over one shared activation cache (head
    units, l2, input size and roi searched), the best trial's OOF predictions calibrate the refit
    on train+val, and the registered model's card leads with the CV estimate and its interval."""
    from osteo_pipeline.steps.registry import register_run

    tune_settings = train_settings.tune.model_copy(
        update={
            "cv": "on",
            "cv_folds": 3,
            "head_units": [0, 4],
            "l2": (1e-5, 1e-1),
            "input_sizes": [32, 40],
            "rois": ["image", "knees"],
            "trials": 3,
        }
    )
    settings = train_settings.model_copy(update={"tune": tune_settings})
    data = split_dataset(validate_folder(synth_dir(per_class=9), settings), settings)
    result = tune(data, settings)
    assert result.best_cv is not None
    again = tune(
        data, settings, trials=2, workers=2
    )  # the second run, on two workers: each builds its own cache
    assert again.study_name == result.study_name and again.new_trials == 2
    study = optuna.load_study(study_name=result.study_name, storage=open_storage(settings))
    assert study.user_attrs["objective"] == "cv3_log_loss"
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert (
        "exited with an error" not in caplog.text
    )  # the spawned `osteo tune-worker` ran CV trials and ended cleanly
    n_cv = int(data.files["split"].isin(["train", "val"]).sum())
    for trial in complete:
        cv = trial.user_attrs["cv"]
        assert (
            len(cv["oof"]) == n_cv
            and sorted(set(cv["fold"])) == [0, 1, 2]
            and len(cv["fold_scores"]) == 3
        )
        assert {"l2", "input_size", "roi"} <= set(trial.params)
    runs = _runs(settings, f"tags.`osteo.trial` = '{complete[0].number}'")
    assert [
        m.step for m in MlflowClient().get_metric_history(runs[0].info.run_id, "cv_fold_log_loss")
    ] == [0, 1, 2]

    best = best_params(settings, data.dataset_hash)
    refit = refit_and_evaluate(
        data, best.params, settings, source="best", tags=best.tags(), cv=best.cv
    )
    run = MlflowClient().get_run(refit.run_id)
    assert run.data.tags["calibrated_on"] == "out-of-fold predictions"
    assert (
        run.data.params["model.input_size"] == str(best.params["input_size"])
        and run.data.params["model.roi"] == best.params["roi"]
    )
    estimate = mlflow.artifacts.load_dict(f"runs:/{refit.run_id}/cv_estimate.json")
    assert (
        estimate["folds"] == 3
        and estimate["n"] == n_cv
        and "cv_balanced_accuracy" in run.data.metrics
    )
    version = register_run(refit.run_id, settings)
    card = mlflow.artifacts.load_text(
        MlflowClient().get_model_version(settings.registry.model_name, version).tags["model_card"]
    )
    assert (
        "Headline: cross-validated estimate (3-fold" in card and "out-of-fold predictions" in card
    )
    served = mlflow.pyfunc.load_model(refit.model_uri).predict(
        pd.DataFrame({"image": [encode_image(example_radiograph(64))]})
    )
    assert served.shape[0] == 1  # one row per image, whatever the number of crops
