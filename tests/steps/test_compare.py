"""``osteo compare`` on tiny synthetic folders: identical folds for every system, unavailable
pretrained systems reported as such, one MLflow parent with nested system and fold runs, and a
metadata probe that finds a planted scanner shortcut."""

import json

import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image
from typer.testing import CliRunner

from osteo_pipeline.cli import app
from osteo_pipeline.steps.compare import compare
from osteo_pipeline.steps.synth import write_synthetic_dataset


def _settings(train_settings, tmp_path, systems, folds=3):
    return train_settings.model_copy(
        update={
            "compare": train_settings.compare.model_copy(
                update={
                    "systems": systems,
                    "folds": folds,
                    "repeats": 1,
                    "sizes": [32],
                    "scratch_epochs": 1,
                    "vgg16_weights": str(tmp_path / "no-vgg16.h5"),
                }
            )
        },
        deep=True,
    )


def _runs(settings, filter_string):
    mlflow.set_tracking_uri(settings.tracking.uri)
    experiment = mlflow.get_experiment_by_name(settings.tracking.experiment)
    return MlflowClient().search_runs([experiment.experiment_id], filter_string=filter_string)


@pytest.mark.slow
def test_systems_share_folds_and_unavailable_ones_say_why(synth_dir, train_settings, tmp_path):
    settings = _settings(
        train_settings, tmp_path, ["cnn3", "vgg16-frozen", "resnet50-probe", "metadata-probe"]
    )
    result = compare(synth_dir(per_class=8), settings, out_dir=tmp_path / "cmp")

    rows = {row["system"]: row for row in result.rows}
    assert list(rows) == ["cnn3@32", "vgg16-frozen@32", "resnet50-probe@32", "metadata-probe"]
    assert (
        not rows["vgg16-frozen@32"]["available"]
        and "VGG-16 weights file not found" in rows["vgg16-frozen@32"]["note"]
    )
    assert (
        not rows["resnet50-probe@32"]["available"]
        and "model.weights is 'none'" in rows["resnet50-probe@32"]["note"]
    )
    for name in ("cnn3@32", "metadata-probe"):
        folds = [f for f in result.folds if f["system"] == name]
        assert [f["fold"] for f in folds] == ["r0f0", "r0f1", "r0f2"]
        for metric in ("balanced_accuracy", "recall", "specificity", "f1", "roc_auc", "ece"):
            values = [f[metric] for f in folds if np.isfinite(f[metric])]
            assert rows[name][metric]["mean"] == pytest.approx(np.mean(values))
            assert (
                0
                <= rows[name][metric]["low"]
                <= rows[name][metric]["mean"]
                <= rows[name][metric]["high"]
                <= 1
            )

    markdown = (tmp_path / "cmp" / "comparison.md").read_text()
    assert (
        "| cnn3@32 |" in markdown
        and "unavailable" in markdown
        and "3-fold stratified group CV x 1" in markdown
    )
    assert json.loads((tmp_path / "cmp" / "comparison.json").read_text())["dataset_hash"]
    assert (tmp_path / "cmp" / "comparison.png").stat().st_size > 0

    parent = _runs(settings, "tags.`osteo.kind` = 'compare'")
    assert [r.info.run_id for r in parent] == [result.parent_run_id]
    systems = _runs(settings, f"tags.`mlflow.parentRunId` = '{result.parent_run_id}'")
    assert sorted(r.info.run_name for r in systems) == sorted(rows)
    cnn3 = next(r for r in systems if r.info.run_name == "cnn3@32")
    fold_runs = _runs(settings, f"tags.`mlflow.parentRunId` = '{cnn3.info.run_id}'")
    assert sorted(r.data.tags["fold"] for r in fold_runs) == ["r0f0", "r0f1", "r0f2"]
    assert "balanced_accuracy_mean" in cnn3.data.metrics
    folds_logged = mlflow.artifacts.load_dict(f"runs:/{result.parent_run_id}/compare_folds.json")
    assert len(folds_logged["folds"]) == 3


@pytest.mark.slow
@pytest.mark.parametrize("cached", [True, False], ids=["cached", "fresh-augmentation"])
def test_pretrained_systems_train_every_fold_on_one_activation_cache(
    synth_dir, train_settings, tmp_path, monkeypatch, cached
):
    """vgg16-ft and vgg16-frozen (here from a local file of random weights: no download) run the
    frozen part of VGG-16 once per image and view for all their folds, cut at the deepest block
    they train; with ``tune.activation_cache`` off, every epoch sees freshly augmented images."""
    import keras

    import osteo_pipeline.steps.compare.cache as compare_step

    weights = tmp_path / "vgg16_notop.weights.h5"
    keras.applications.VGG16(include_top=False, weights=None, input_shape=(32, 32, 3)).save_weights(
        weights
    )
    settings = _settings(train_settings, tmp_path, ["vgg16-ft", "vgg16-frozen"])
    settings = settings.model_copy(
        update={
            "compare": settings.compare.model_copy(update={"vgg16_weights": str(weights)}),
            "tune": settings.tune.model_copy(update={"activation_cache": cached}),
        }
    )
    made = []
    real = compare_step.activation_cache
    monkeypatch.setattr(
        compare_step,
        "activation_cache",
        lambda *args, **kwargs: (
            made.append((kwargs["layout"].backbone, kwargs["floor_depth"])) or real(*args, **kwargs)
        ),
    )
    result = compare(synth_dir(per_class=8), settings, out_dir=tmp_path / "cmp")

    assert [(row["system"], row["available"]) for row in result.rows] == [
        ("vgg16-ft@32", True),
        ("vgg16-frozen@32", True),
    ]
    assert made == (
        [("vgg16", 1), ("vgg16", 0)] if cached else []
    )  # one cache per system for its 3 folds, or none
    for row in result.rows:
        folds = [f for f in result.folds if f["system"] == row["system"]]
        assert [f["fold"] for f in folds] == ["r0f0", "r0f1", "r0f2"]
        assert all(0 <= f["balanced_accuracy"] <= 1 for f in folds)
    seen = "2 cached augmented views per image" if cached else "freshly augmented images"
    assert [row["seen"] for row in result.rows] == [seen, seen]
    assert f"transfer 1+1 on {seen}" in result.markdown
    systems = _runs(settings, f"tags.`mlflow.parentRunId` = '{result.parent_run_id}'")
    boundaries = {
        r.info.run_name: r.data.metrics.get("activation_cache_boundaries", 0) for r in systems
    }
    # logged on each system's run: the head's cut, and for vgg16-ft also the top block's
    assert boundaries == (
        {"vgg16-ft@32": 2, "vgg16-frozen@32": 1}
        if cached
        else {"vgg16-ft@32": 0, "vgg16-frozen@32": 0}
    )


@pytest.mark.slow
def test_a_cached_system_predicts_val_and_test_as_its_whole_model_would(
    synth_dir, train_settings, tmp_path, monkeypatch
):
    """resnet50-tl on knee crops (two views of each radiograph, averaged) trains on its cache;
    its val and test probabilities from cached activations then equal the whole trained model's
    on those very images: each fold reads its own rows of the shared cache. (A local file of
    random weights: every fold's network starts from it, as from ImageNet's.)"""
    import keras

    import osteo_pipeline.steps.compare.systems as compare_step

    weights = tmp_path / "resnet50_notop.weights.h5"
    keras.applications.ResNet50(
        include_top=False, weights=None, input_shape=(32, 32, 3)
    ).save_weights(weights)
    settings = _settings(train_settings, tmp_path, ["resnet50-tl"])
    settings = settings.model_copy(
        update={
            "model": settings.model.model_copy(
                update={"weights": str(weights), "roi": "knees", "unfreeze_depth": 1}
            )
        }
    )
    checked = []
    predict_val = compare_step.predict_val

    def checked_predict_val(model, arrays, depth, batch, cache):
        proba = predict_val(model, arrays, depth, batch, cache)
        assert cache is not None and arrays.views == 2 and proba.shape == (len(arrays.labels), 2)
        np.testing.assert_allclose(
            proba, compare_step.predict_images(model, arrays, batch), atol=1e-4
        )
        checked.append(float(np.ptp(proba[:, 1])))
        return proba

    monkeypatch.setattr(compare_step, "predict_val", checked_predict_val)
    result = compare(synth_dir(per_class=8), settings, out_dir=tmp_path / "cmp")

    assert (
        result.rows[0]["system"] == "resnet50-tl@32 knees"
        and result.rows[0]["seen"] == "2 cached augmented views per image"
    )
    assert len(checked) == 2 * 3  # val and test of each of 3 folds
    assert max(checked) > 1e-3  # the images get different probabilities: swapped rows would show


def test_a_system_without_epochs_or_frozen_prefix_gets_no_cache(train_settings):
    """A network that trains nothing (0+0 epochs) or everything (no frozen prefix) predicts from
    full images: there is nothing its cache could save, and a cache would never be attached."""
    from types import SimpleNamespace

    from osteo_pipeline.steps.compare.cache import SystemCache

    shared = SystemCache(None, train_settings)  # never reaches the arrays: no cache is made
    rows = np.arange(4)
    assert shared.fold(SimpleNamespace(frozen_prefix=True, epochs=(0, 0)), rows, rows) is None
    assert (
        shared.cache is None and shared.seen is None
    )  # the report says what it trained on only when it trained
    assert shared.fold(SimpleNamespace(frozen_prefix=False, epochs=(1, 1)), rows, rows) is None
    assert shared.cache is None and shared.seen == "freshly augmented images"


def test_the_report_says_once_what_transfer_systems_trained_on_or_each_when_they_differ():
    from osteo_pipeline.core.compare_report import trained_on

    row = {"available": True, "seen": "8 cached augmented views per image"}
    same = [
        row | {"name": "vgg16-ft"},
        row | {"name": "vgg16-frozen"},
        {"name": "resnet50-tl", "available": False},
    ]
    assert (
        trained_on(same, ["vgg16-ft", "vgg16-frozen", "resnet50-tl"])
        == " on 8 cached augmented views per image"
    )
    mixed = [
        row | {"name": "vgg16-frozen"},
        {"name": "resnet50-tl", "available": True, "seen": "freshly augmented images"},
    ]
    assert (
        trained_on(mixed, ["vgg16-frozen", "resnet50-tl"])
        == " (vgg16-frozen on 8 cached augmented views per image;"
        " resnet50-tl on freshly augmented images)"
    )
    assert trained_on([{"name": "vgg16-ft", "available": False}], ["vgg16-ft"]) == ""


def test_metadata_probe_finds_a_planted_scanner_shortcut(train_settings, tmp_path):
    """One class exported as large PNGs, the other as small JPEGs: the metadata alone separates
    them, which is what the probe is there to reveal."""
    data = tmp_path / "shortcut"
    write_synthetic_dataset(data, ["normal", "osteoporosis"], 10, 64, seed=5)
    for path in sorted(data.rglob("*.*")):
        with Image.open(path) as image:
            gray = image.convert("L")
        path.unlink()
        if path.parent.name == "osteoporosis":
            gray.resize((96, 96)).save(path.with_suffix(".png"))
        else:
            gray.save(path.with_suffix(".jpg"), quality=80)
    settings = _settings(train_settings, tmp_path, ["metadata-probe"], folds=5)
    result = compare(data, settings, out_dir=tmp_path / "cmp")
    assert result.rows[0]["balanced_accuracy"]["mean"] == pytest.approx(1.0)


def test_cli_rejects_a_malformed_cv(tmp_path):
    result = CliRunner().invoke(app, ["compare", str(tmp_path), "--cv", "5by3"])
    assert result.exit_code == 2 and "FOLDSxREPEATS" in result.output


def test_the_cli_table_keeps_every_cell_whole_through_a_pipe(
    synth_dir, train_settings, tmp_path, monkeypatch
):
    """``osteo compare ... | cat`` (stdout not a terminal) prints each interval whole; rich alone
    would squeeze the table into 80 columns and cut cells to "[0.2…"."""
    from osteo_pipeline.config import settings_to_yaml

    monkeypatch.delenv("COLUMNS", raising=False)
    config = tmp_path / "config.yaml"
    config.write_text(settings_to_yaml(train_settings))
    result = CliRunner().invoke(
        app,
        [
            "compare",
            str(synth_dir(per_class=8)),
            "-c",
            str(config),
            "--cv",
            "3x1",
            "--systems",
            "metadata-probe",
            "--out",
            str(tmp_path / "cmp"),
        ],
    )
    assert result.exit_code == 0, result.output
    row = next(line for line in result.stdout.splitlines() if "metadata-probe" in line)
    assert "…" not in result.stdout and row.count("[") == 8 and row.count("]") == 8, result.stdout


def test_every_configurable_system_is_implemented():
    """The config's systems are the registry's, and each entry names a class that plans
    systems (``tests/steps/test_compare_systems.py`` runs them through the protocol)."""
    import importlib

    from osteo_pipeline.config import Settings
    from osteo_pipeline.core.compare_systems import SYSTEMS

    assert Settings().compare.systems == list(SYSTEMS)
    for description in SYSTEMS.values():
        module, _, name = description.implementation.partition(":")
        assert callable(getattr(importlib.import_module(module), name).plan)


@pytest.mark.slow
def test_texture_probe_reads_knee_crops_and_separates_synthetic_bone(
    synth_dir, train_settings, tmp_path
):
    """Synthetic osteoporotic bone has sparser trabeculae and a thinner cortex: the texture probe
    (LBP, GLCM and Hurst features of the knee crops, logistic regression) must see it."""
    settings = _settings(train_settings, tmp_path, ["texture-probe"])
    result = compare(synth_dir(per_class=9), settings, out_dir=tmp_path / "cmp")
    (row,) = result.rows
    assert row["system"] == "texture-probe" and row["available"]
    assert row["roc_auc"]["mean"] > 0.7


@pytest.mark.slow
def test_resnet50_tl_can_run_the_pipelines_own_tuned_recipe(
    synth_dir, train_settings, tmp_path, monkeypatch
):
    """compare.recipe: best takes the best trial of this data's study (here a CV search over
    input size and roi), with its size, knee crops, head and epochs, and trains it in each fold as
    the pipeline does: inner CV for calibration, then a refit and the fold ensemble, both scored
    on the same test parts. (No ImageNet weights in tests: the weights check is bypassed and the
    backbone is random.)"""
    from osteo_pipeline.steps.compare import recipe as compare_step
    from osteo_pipeline.steps.compare.systems import PipelineModel

    monkeypatch.setattr(PipelineModel, "require_weights", lambda self: None)
    from osteo_pipeline.steps.split import split_dataset
    from osteo_pipeline.steps.tune import tune
    from osteo_pipeline.steps.validate import validate_folder

    data_dir = synth_dir(per_class=8)
    searched = train_settings.tune.model_copy(
        update={"cv": "on", "cv_folds": 3, "input_sizes": [40], "rois": ["knees"], "trials": 1}
    )
    settings = _settings(train_settings, tmp_path, ["resnet50-tl"]).model_copy(
        update={"tune": searched}
    )
    tune(split_dataset(validate_folder(data_dir, settings), settings), settings)
    recipe = settings.model_copy(
        update={"compare": settings.compare.model_copy(update={"recipe": "best"})}
    )
    fits = []
    fit_predict = compare_step.NestedRecipe.fit_predict
    monkeypatch.setattr(
        compare_step.NestedRecipe,
        "fit_predict",
        lambda self, train, predict: fits.append(len(train)) or fit_predict(self, train, predict),
    )
    result = compare(data_dir, recipe, out_dir=tmp_path / "cmp")
    refit, ensemble = result.rows
    assert (
        refit["system"] == "resnet50-tl@40 knees (tuned, refit)"
        and ensemble["system"] == "resnet50-tl@40 knees (tuned, fold ensemble)"
    )
    assert refit["available"] and ensemble["available"]
    assert (
        "40 px knees" in refit["note"]
        and "not fully unseen" in refit["note"]
        and "3-fold CV of the fold's whole training part" in refit["note"]
    )
    assert refit["note"].endswith("; trained on " + refit["seen"]) and "cached" in refit["seen"]
    assert (
        "fold ensemble minus refit on the same folds: ROC AUC" in ensemble["note"]
        and "lean against it" in ensemble["note"]
    )
    folds = len([f for f in result.folds if f["system"] == refit["system"]])
    assert folds == 3 and len([f for f in result.folds if f["system"] == ensemble["system"]]) == 3
    assert len(fits) == folds * (
        3 + 1
    )  # per fold: 3 inner fold models, then the refit on the whole training part
    outer = [n for n in fits[3::4]]
    inner = [n for i, n in enumerate(fits) if i % 4 != 3]
    assert all(
        max(inner[3 * f : 3 * f + 3]) < outer[f] <= sum(inner[3 * f : 3 * f + 3])
        for f in range(folds)
    )
    assert {f["fold"] for f in result.folds if f["system"] == refit["system"]} == {
        f["fold"] for f in result.folds if f["system"] == ensemble["system"]
    }
    markdown = (tmp_path / "cmp" / "comparison.md").read_text()
    assert (
        "not fully unseen" in markdown
        and "without early stopping" in markdown
        and "A tuned recipe trains as its note says" in markdown
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    ("epochs", "depth"),
    [((1, 0), 1), ((1, 1), 1), ((1, 1), 16)],
    ids=["head-only", "fine-tuned", "whole-network"],
)
def test_a_nested_recipe_predicts_from_the_boundary_it_trained(
    synth_dir, train_settings, epochs, depth
):
    """Head-only, fine-tuned and whole-network recipes (the last has no frozen prefix to cache)
    all give one probability row per image for the inner folds and the test part."""
    from osteo_pipeline.core.splits import group_folds
    from osteo_pipeline.steps.compare.data import ensure_pixels, load_data
    from osteo_pipeline.steps.compare.recipe import NestedRecipe, Recipe
    from osteo_pipeline.training.fit import TrainParams

    data = load_data(synth_dir(per_class=12), train_settings)
    recipe = Recipe(TrainParams(1e-3, depth, 0, 0.1, 1e-4, 32, "image"), epochs, "test", cv_folds=2)
    ensure_pixels(data, 32, train_settings, "image")
    fold = group_folds(data.labels, data.frame["group"].to_numpy(), 3, 1, 0.2, 0)[0]
    nested = NestedRecipe(data, recipe, train_settings, jit=False)
    try:
        assert (nested.cache is None) == (depth == 16)
        predictions = nested.predictions(data, fold)
    finally:
        nested.close()
    assert set(predictions) == {"refit", "ensemble"} and nested.fits == 3
    for oof, labels, test in predictions.values():
        assert oof.shape == (len(fold.train) + len(fold.val), 2) and len(labels) == len(oof)
        assert test.shape == (len(fold.test), 2) and np.allclose(test.sum(axis=1), 1.0, atol=1e-4)
