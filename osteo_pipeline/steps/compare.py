"""``osteo compare``: the seed paper's comparison run on the user's data under one protocol: the
cross-validation loop and its MLflow logging (systems in ``training.zoo`` and ``training.probes``,
tables in ``core.compare_report``).

Every system sees the same repeated stratified group folds (duplicate groups within one part,
label conflicts excluded). In each fold a system trains on the training part, uses the val part
for early stopping, temperature scaling and the decision threshold, and is scored once on the
test part. Pretrained networks (ResNet-50, VGG-16) train on cached outputs of their frozen part,
computed once per image and augmented view for all folds (``SystemCache``), as the search's folds
do. Results are the mean over folds with a corrected resampled t interval, logged to
MLflow as one parent run, a nested run per system and, under it, one per fold.

The pipeline's own recipe from a cross-validated search (``compare.recipe: best``) trains in each
fold by the pipeline's protocol: k group folds of the fold's whole training part (train + val) give
out-of-fold predictions for the temperature and threshold, then the test part is scored both by a
refit on the whole training part (what the pipeline serves) and by the ensemble of the k fold
models: the refit-or-ensemble choice, measured. Its fits share one activation cache, so they train
on K fixed augmented views of each image as the search's folds do (``osteo run``'s refit augments
afresh every epoch)."""

from __future__ import annotations

import gc
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import matplotlib.pyplot as plt
import mlflow
import numpy as np
import pandas as pd

from osteo_pipeline.config import Settings
from osteo_pipeline.core import plots
from osteo_pipeline.core.calibration import expected_calibration_error, fit_calibration
from osteo_pipeline.core.compare_report import REPORTED, SYSTEMS, markdown_report
from osteo_pipeline.core.metrics import classification_metrics, fold_interval
from osteo_pipeline.core.model import MAX_UNFREEZE_DEPTH, WeightsUnavailableError
from osteo_pipeline.core.preprocess import ImageDecodeError
from osteo_pipeline.core.splits import Fold, dataset_hash, group_folds
from osteo_pipeline.io import tracking
from osteo_pipeline.io.reports import write_json
from osteo_pipeline.steps.split import split_dataset, usable_images
from osteo_pipeline.steps.tune import best_params
from osteo_pipeline.steps.validate import validate_folder
from osteo_pipeline.training.activations import ActivationCache, FoldActivations, activation_cache
from osteo_pipeline.training.arrays import Arrays, pixel_cache
from osteo_pipeline.training.backbone import StudyBackbone
from osteo_pipeline.training.cv import final_models, rows_of
from osteo_pipeline.training.fit import (
    FitPlan,
    TrainParams,
    fit_two_phase,
    predict_images,
    predict_val,
)
from osteo_pipeline.training.probes import (
    TEXTURE_SIZE,
    fit_forest,
    fit_logistic,
    knee_texture_features,
    metadata_features,
    resnet50_features,
)
from osteo_pipeline.training.runtime import configure_runtime
from osteo_pipeline.training.zoo import KerasSystem, keras_system, require_weights

log = logging.getLogger(__name__)

#: Systems with no input size of their own (one row, not one per size).
SIZE_FREE = {"metadata-probe", "texture-probe"}


@dataclass
class Data:
    """Everything the folds index into: one row per usable image."""

    root: Path
    frame: pd.DataFrame  # path, label, sha256, group + manifest metadata
    labels: np.ndarray
    excluded: list[dict[str, str]]
    identity: str
    pixels: dict[tuple[int, str], Arrays]  # every image by (input size, roi), filled on first use
    validation: Any = (
        None  # the folder's ValidationResult (the recipe's study is found from its split)
    )

    def arrays(self, size: int, rows: np.ndarray, roi: str = "image") -> Arrays:
        return self.pixels[(size, roi)].select(rows)


@dataclass(frozen=True)
class Recipe:
    """The pipeline's own tuned parameters for ``resnet50-tl``: the best trial of this data's study."""

    params: TrainParams  # input size and roi included
    epochs: (
        tuple[int, int] | None
    )  # (head, finetune) as the search chose them (run without early stopping)
    source: str
    cv_folds: int | None = (
        None  # the search's k when it cross-validated: each fold then trains as the pipeline does
    )

    @property
    def size(self) -> int:
        return int(self.params.input_size or 0)

    @property
    def roi(self) -> str:
        return str(self.params.roi or "image")


#: How a nested recipe's test part is scored (see the module docstring): row suffix by variant.
FINAL_MODELS = {"refit": "refit", "ensemble": "fold ensemble"}

#: Per variant of a system (one, or a nested recipe's two): calibration probabilities, their
#: labels, test probabilities.
Predictions = dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]


@dataclass
class CompareResult:
    rows: list[dict[str, Any]]
    folds: list[dict[str, Any]]
    markdown: str
    parent_run_id: str
    files: dict[str, Path]
    seconds: float


# The run --------------------------------------------------------------------------------------


def system_roi(name: str, recipe: Recipe | None, settings: Settings) -> str:
    """What a system sees: the pipeline's model sees what it is configured (or tuned) to see,
    the paper's networks the whole film."""
    return recipe.roi if recipe else settings.model.roi if name == "resnet50-tl" else "image"


class SystemCache:
    """One activation cache of every image for all folds of a pretrained system, cut at its
    deepest trained boundary: the frozen prefix (most of ResNet-50 or VGG-16) runs once per image
    and augmented view instead of every epoch of every fold, as the search's folds share one.
    Made on the first fold, when the system's network says where it can be cut, and valid for
    later folds because every fold builds the same network from the same weights file. ``fold``
    gives ``None`` (full images) for networks with nothing frozen or no epochs, or when
    ``tune.activation_cache`` is off."""

    def __init__(self, arrays: Arrays, settings: Settings) -> None:
        self.arrays, self.settings = arrays, settings
        self.cache: ActivationCache | None = None
        self.trained = False

    def fold(
        self, system: KerasSystem, train: np.ndarray, predict: np.ndarray
    ) -> FoldActivations | None:
        """The cache's view of a fold: ``train`` images' augmented views, ``predict`` images plain."""
        trains = sum(system.epochs) > 0
        self.trained |= trains
        if not (trains and system.frozen_prefix and self.settings.tune.activation_cache):
            return None
        if self.cache is None:
            self.cache = activation_cache(
                self.settings, self.arrays, floor_depth=system.depth, layout=system.layout
            )
        assert self.cache is not None
        if self.cache.layout != system.layout:
            raise ValueError(
                f"this cache holds {self.cache.layout.backbone}'s activations, not {system.layout and system.layout.backbone}'s"
            )
        views = self.arrays.views
        return self.cache.fold(rows_of(train, views), rows_of(predict, views))

    @property
    def seen(self) -> str | None:
        """What the system's fits trained on; ``None`` when they trained nothing (0 epochs)."""
        return _seen(self.cache, self.settings) if self.trained else None

    def close(self) -> None:
        if self.cache is not None:
            self.cache.close()


def _seen(cache: ActivationCache | None, settings: Settings) -> str:
    """What a system's fits trained on, for the report."""
    if cache is not None:
        return cache.describe()
    return "freshly augmented images" if settings.train.augment.enabled else "unaugmented images"


def fit_keras(
    name: str,
    data: Data,
    fold: Fold,
    size: int,
    settings: Settings,
    jit: bool,
    recipe: Recipe | None = None,
    shared: SystemCache | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Train a Keras system on the fold's training part (early stopping on val; a recipe runs
    the epochs its search chose, as the pipeline's refit does), on ``shared``'s cached views where
    the network has a frozen prefix; per-image val and test probabilities."""
    keras.backend.clear_session()
    gc.collect()
    keras.utils.set_random_seed(settings.seed + 100 * fold.repeat + fold.fold)
    roi = system_roi(name, recipe, settings)
    system = keras_system(
        name, settings, size, recipe.params if recipe else None, recipe.epochs if recipe else None
    )
    train, val, test = (data.arrays(size, rows, roi) for rows in (fold.train, fold.val, fold.test))
    fixed = recipe is not None and recipe.epochs is not None
    cache = shared.fold(system, fold.train, fold.val) if shared is not None else None
    fit_two_phase(
        system.model,
        train,
        None if fixed else val,
        FitPlan(settings, system.params, epochs=system.epochs, jit=jit, unfreeze=system.unfreeze),
        cache=cache,
    )
    batch = settings.train.batch_size
    if cache is None:
        return predict_images(system.model, val, batch), predict_images(system.model, test, batch)
    assert shared is not None
    test_cache = shared.fold(system, fold.train, fold.test)
    return predict_val(system.model, val, system.depth, batch, cache), predict_val(
        system.model, test, system.depth, batch, test_cache
    )


def load_data(data_dir: Path, settings: Settings) -> Data:
    """Validate the folder and collect its usable images (conflicts excluded) with metadata."""
    validation = validate_folder(data_dir, settings)
    frame, excluded = usable_images(validation, settings)
    manifest = validation.scan.manifest.drop_duplicates("path").set_index("path")
    frame = (
        frame.join(manifest[["width", "height", "mode", "format", "bytes"]], on="path")
        .sort_values("path")
        .reset_index(drop=True)
    )
    index = {c: i for i, c in enumerate(settings.data.classes)}
    labels = frame["label"].map(index).to_numpy(dtype=np.int64)
    identity = dataset_hash(frame.assign(split="all"))
    return Data(validation.scan.root, frame, labels, excluded, identity, {}, validation)


def _ensure_pixels(data: Data, size: int, settings: Settings, roi: str = "image") -> None:
    if (size, roi) not in data.pixels:
        cache = pixel_cache(settings, size, roi)
        pixels = cache.load([data.root / p for p in data.frame["path"]], list(data.frame["sha256"]))
        data.pixels[(size, roi)] = Arrays(
            pixels, data.labels, list(data.frame["path"]), cache.views
        )


def resolve_recipe(data: Data, settings: Settings) -> Recipe | None:
    """``compare.recipe: best``: the best trial of the study of this folder's split (what
    ``osteo train --params best`` would refit); ``config``: None (the config's parameters). The
    search saw the images the folds later test: the row is marked as tuned on this data."""
    if settings.compare.recipe == "config" or "resnet50-tl" not in settings.compare.systems:
        return None
    split = split_dataset(data.validation, settings)
    best = best_params(settings, split.dataset_hash)
    head, finetune = best.params.get("head_epochs"), best.params.get("finetune_epochs")
    epochs = (int(head), int(finetune)) if head is not None and finetune is not None else None
    k = int(np.max(best.cv["fold"])) + 1 if best.cv and epochs is not None else None
    return Recipe(
        TrainParams.from_dict(best.params, settings),
        epochs,
        f"study {best.study_name} trial {best.number}",
        k,
    )


class NestedRecipe:
    """A cross-validated recipe trained as the pipeline trains it (``training.cv.final_models``):
    one backbone and one activation cache of every image, shared by all its fits in all folds, as
    the search shares them between trials and folds."""

    def __init__(self, data: Data, recipe: Recipe, settings: Settings, jit: bool) -> None:
        assert recipe.epochs is not None and recipe.cv_folds is not None
        self.recipe, self.epochs, self.k, self.jit = recipe, recipe.epochs, recipe.cv_folds, jit
        self.settings = recipe.params.apply(settings)
        self.arrays = data.pixels[(recipe.size, recipe.roi)]
        self.depth = (
            recipe.params.unfreeze_depth if self.epochs[1] else 0
        )  # the deepest part any fit trains
        # Cached from the recipe's own boundary (depth 16 has no frozen prefix: full images then).
        self.cache = (
            activation_cache(self.settings, self.arrays, floor_depth=self.depth)
            if self.depth < MAX_UNFREEZE_DEPTH
            else None
        )
        self.backbone = StudyBackbone(self.settings, self.arrays.pixels)
        self.fits = 0

    def fit_predict(self, train: np.ndarray, predict: list[np.ndarray]) -> list[np.ndarray]:
        """One model from the backbone's weights on ``train`` for the recipe's epochs; its
        per-image probabilities for each list of ``predict``."""
        params, views, batch = self.recipe.params, self.arrays.views, self.settings.train.batch_size
        model = self.backbone.model(params, self.settings.seed + self.fits)
        self.fits += 1
        targets = np.concatenate(predict)
        fold = (
            self.cache.fold(rows_of(train, views), rows_of(targets, views))
            if self.cache is not None
            else None
        )
        fit_two_phase(
            model,
            self.arrays.select(train),
            None,
            FitPlan(self.settings, params, epochs=self.epochs, jit=self.jit),
            cache=fold,
        )
        proba = (
            predict_val(model, self.arrays.select(targets), self.depth, batch, fold)
            if fold is not None
            else predict_images(model, self.arrays.select(targets), batch)
        )
        return np.split(proba, np.cumsum([len(p) for p in predict])[:-1])

    def predictions(self, data: Data, fold: Fold) -> Predictions:
        outer = np.concatenate([fold.train, fold.val])
        final = final_models(
            data.labels,
            data.frame["group"].to_numpy(),
            outer,
            fold.test,
            self.k,
            self.settings.seed + 100 * fold.repeat + fold.fold,
            self.fit_predict,
        )
        calibration = (final.oof, data.labels[outer])
        return {"refit": (*calibration, final.refit), "ensemble": (*calibration, final.ensemble)}

    @property
    def seen(self) -> str:
        return _seen(self.cache, self.settings)

    def close(self) -> None:
        if self.cache is not None:
            self.cache.close()


def score_fold(
    calibration_proba: np.ndarray,
    calibration_labels: np.ndarray,
    test_proba: np.ndarray,
    test_labels: np.ndarray,
    positive: int,
) -> dict[str, float]:
    """Test metrics after temperature and threshold fitted on the calibration predictions (the
    fold's val part, or a nested recipe's out-of-fold predictions)."""
    calibration = fit_calibration(calibration_proba, calibration_labels, positive)
    calibrated = calibration.probabilities(test_proba)
    scores = classification_metrics(
        test_labels, calibrated, positive, calibration.labels(calibrated)
    )
    scores["ece"] = expected_calibration_error(calibrated, test_labels)
    return scores | {
        "temperature": calibration.temperature,
        "threshold": calibration.threshold if calibration.threshold is not None else float("nan"),
    }


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def _recipe_text(recipe: Recipe) -> str:
    p = recipe.params
    head = f"{p.head_units}-unit head" if p.head_units else "linear head"
    epochs = (
        f"{recipe.epochs[0]}+{recipe.epochs[1]} epochs without early stopping"
        if recipe.epochs
        else "config epochs, early stopping on val"
    )
    text = f"{p.input_size} px {p.roi}, unfreeze {p.unfreeze_depth}, {head}, lr {p.learning_rate:.1e}, dropout {p.dropout:.2f}, l2 {p.l2:.0e}, {epochs}"
    if recipe.cv_folds:
        text += (
            f"; in each fold by the pipeline's protocol: {recipe.cv_folds}-fold CV of the fold's whole training part gives out-of-fold"
            " predictions for temperature and threshold, then a refit on the whole training part (what the pipeline serves) is scored"
            " on the test part"
        )
    return text


def _fold_predictions(
    name: str,
    size: int | None,
    data: Data,
    fold: Fold,
    settings: Settings,
    jit: bool,
    recipe: Recipe | None,
    features: np.ndarray | None,
    nested: NestedRecipe | None,
    shared: SystemCache | None,
) -> Predictions:
    if nested is not None:
        return nested.predictions(data, fold)
    if name == "metadata-probe":
        val_proba, test_proba = fit_forest(features, data.labels, fold, settings.seed + fold.repeat)
    elif name in ("resnet50-probe", "texture-probe"):
        val_proba, test_proba = fit_logistic(
            features, data.labels, fold, settings.compare.probe_c, settings.seed
        )
    else:
        assert size is not None
        val_proba, test_proba = fit_keras(name, data, fold, size, settings, jit, recipe, shared)
    return {"": (val_proba, data.labels[fold.val], test_proba)}


def _paired_difference(
    fold_rows: list[dict[str, Any]], ensemble: str, refit: str, n_train: int, n_test: int
) -> str:
    """Fold ensemble minus refit ROC AUC on the same folds, with the corrected interval: whether
    the ensemble is worth k models at serving time. ROC AUC only: both are calibrated on single
    fold models' out-of-fold predictions, which suit the refit better than the flatter mean of k
    models, so threshold metrics would be biased against the ensemble."""
    a = np.array([r["roc_auc"] for r in fold_rows if r["system"] == ensemble])
    b = np.array([r["roc_auc"] for r in fold_rows if r["system"] == refit])
    d = fold_interval(a - b, n_train, n_test)
    if not np.isfinite(d["mean"]):
        return "no paired ROC AUC difference (too few folds with both classes)"
    interval = f" [{d['low']:+.3f}, {d['high']:+.3f}]" if np.isfinite(d["low"]) else ""
    return (
        f"fold ensemble minus refit on the same folds: ROC AUC {d['mean']:+.3f}{interval}; the ensemble's temperature and threshold come"
        " from single fold models' out-of-fold predictions, so its threshold metrics and ECE lean against it"
    )


def run_system(
    name: str,
    size: int | None,
    data: Data,
    folds: list[Fold],
    settings: Settings,
    jit: bool,
    recipe: Recipe | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """All folds of one system at one size, each a nested MLflow run; its summary rows (one, or
    a nested recipe's refit and fold ensemble)."""
    label = name if size is None else f"{name}@{size}"
    if name == "resnet50-tl" and recipe is None and settings.model.roi != "image":
        label += f" {settings.model.roi}"
    note = SYSTEMS[name]
    if recipe is not None:
        label += f" {recipe.roi} (tuned)"
        note = f"the pipeline's recipe from {recipe.source}: {_recipe_text(recipe)}; tuned by CV on this data, so its folds are not fully unseen"
    nested_protocol = (
        recipe is not None and recipe.cv_folds is not None and recipe.epochs is not None
    )
    variants = (
        {key: label.replace("(tuned)", f"(tuned, {text})") for key, text in FINAL_MODELS.items()}
        if nested_protocol
        else {"": label}
    )
    positive = settings.data.classes.index(settings.data.positive)
    fold_rows: list[dict[str, Any]] = []
    started = time.perf_counter()
    nested: NestedRecipe | None = None
    shared: SystemCache | None = None
    with mlflow.start_run(
        run_name=label, nested=True, tags={"osteo.kind": "compare-system", "system": name}
    ):
        mlflow.log_params(
            {"system": name, "input_size": size or "none", "description": SYSTEMS[name]}
        )
        features: np.ndarray | None = None
        try:
            require_weights(name, settings)
            if name == "metadata-probe":
                features = metadata_features(data.frame)
            elif name == "resnet50-probe":
                assert size is not None
                features = resnet50_features(data.pixels[(size, "image")].pixels, settings, size)
            elif name == "texture-probe":
                crops = pixel_cache(settings, TEXTURE_SIZE, "knees")
                features = knee_texture_features(
                    crops.load(
                        [data.root / p for p in data.frame["path"]], list(data.frame["sha256"])
                    ),
                    crops.views,
                )
            elif nested_protocol:
                assert recipe is not None
                keras.backend.clear_session()
                nested = NestedRecipe(data, recipe, settings, jit)
            else:
                assert size is not None
                shared = SystemCache(
                    data.pixels[(size, system_roi(name, recipe, settings))], settings
                )
            for fold in folds:
                fold_started = time.perf_counter()
                with mlflow.start_run(
                    run_name=f"{label} {fold.name}",
                    nested=True,
                    tags={"osteo.kind": "compare-fold", "system": name, "fold": fold.name},
                ):
                    predictions = _fold_predictions(
                        name, size, data, fold, settings, jit, recipe, features, nested, shared
                    )
                    seconds = time.perf_counter() - fold_started
                    trained = (
                        {
                            "n_train": len(fold.train) + len(fold.val),
                            "n_val": 0,
                            "inner_folds": nested.k,
                        }
                        if nested
                        else {"n_train": len(fold.train), "n_val": len(fold.val)}
                    )
                    mlflow.log_params({"fold": fold.name, **trained, "n_test": len(fold.test)})
                    for key, (
                        calibration_proba,
                        calibration_labels,
                        test_proba,
                    ) in predictions.items():
                        scores = score_fold(
                            calibration_proba,
                            calibration_labels,
                            test_proba,
                            data.labels[fold.test],
                            positive,
                        )
                        prefix = f"{key}." if key else ""
                        mlflow.log_metrics(
                            {f"{prefix}{k}": v for k, v in scores.items() if np.isfinite(v)}
                            | {"seconds": seconds}
                        )
                        fold_rows.append(
                            {
                                "system": variants[key],
                                "fold": fold.name,
                                **scores,
                                "seconds": seconds,
                            }
                        )
                        log.info(
                            "%s %s: balanced accuracy %.3f (%.0f s)",
                            variants[key],
                            fold.name,
                            scores["balanced_accuracy"],
                            seconds,
                        )
        except WeightsUnavailableError as exc:
            mlflow.set_tag("unavailable", str(exc)[:5000])
            return [
                _unavailable(
                    label,
                    name,
                    size,
                    f"unavailable: {_one_line(exc)}",
                    "unavailable: no pretrained weights (see note)",
                )
            ], []
        except (
            ImageDecodeError,
            OSError,
        ) as exc:  # a file changed or went away after validation: this row fails, the others stand
            mlflow.set_tag("failed", str(exc)[:5000])
            return [
                _unavailable(
                    label,
                    name,
                    size,
                    f"failed: {_one_line(exc)}",
                    "failed: a file could not be read or written (see note)",
                )
            ], []
        finally:
            for holder in (nested, shared):
                if holder is not None:
                    try:
                        if holder.cache is not None:
                            mlflow.log_metrics(
                                holder.cache.report()
                            )  # on the system's run: the cache's size and cost
                    finally:
                        holder.close()
        n_train = int(np.mean([len(f.train) + len(f.val) for f in folds]))
        n_test = int(np.mean([len(f.test) for f in folds]))
        seconds_per_fold = (time.perf_counter() - started) / len(folds)
        mlflow.log_metric("seconds_per_fold", seconds_per_fold)
        seen = (
            nested.seen if nested else shared.seen if shared else None
        )  # what a network trained on; probes: None
        rows = []
        for key, system in variants.items():
            row: dict[str, Any] = {
                "system": system,
                "name": name,
                "size": size,
                "available": True,
                "note": note,
                "seconds_per_fold": seconds_per_fold,
                "seen": seen,
            }
            if recipe is not None and seen:
                row["note"] += f"; trained on {seen}"
            if key == "ensemble":
                assert recipe is not None and recipe.cv_folds is not None
                row["note"] = (
                    f"the mean of the {recipe.cv_folds} fold models of the refit row's recipe, scored on the same test parts; {_paired_difference(fold_rows, system, variants['refit'], n_train, n_test)}"
                )
            prefix = f"{key}." if key else ""
            for metric in REPORTED:
                row[metric] = fold_interval(
                    np.array([r[metric] for r in fold_rows if r["system"] == system]),
                    n_train,
                    n_test,
                    bounds=(0.0, 1.0),
                )
                mlflow.log_metrics(
                    {
                        f"{prefix}{metric}_{k}": v
                        for k, v in row[metric].items()
                        if k != "folds" and np.isfinite(v)
                    }
                )
            rows.append(row)
    return rows, fold_rows


def _unavailable(label: str, name: str, size: int | None, why: str, reason: str) -> dict[str, Any]:
    return {
        "system": label,
        "name": name,
        "size": size,
        "available": False,
        "note": why,
        "reason": reason,
    }


def compare(
    data_dir: Path, settings: Settings, command: str = "osteo compare", out_dir: Path | None = None
) -> CompareResult:
    """Run every configured system at every configured size on identical folds."""
    started = time.perf_counter()
    runtime = configure_runtime(settings)
    tracking.configure(settings)
    data = load_data(data_dir, settings)
    c = settings.compare
    folds = group_folds(
        data.labels,
        data.frame["group"].to_numpy(),
        c.folds,
        c.repeats,
        c.val_fraction,
        settings.seed,
    )
    rows, fold_rows = [], []
    with mlflow.start_run(
        run_name=f"compare-{data.identity[:8]}", tags={"osteo.kind": "compare"}
    ) as parent:
        tracking.log_settings(settings)
        tracking.log_environment()
        mlflow.log_params(
            {
                "dataset_hash": data.identity,
                "n_images": len(data.frame),
                "cv": f"{c.folds}x{c.repeats}",
            }
        )
        tracking.log_json(
            {
                "files": data.frame[["path", "label", "sha256", "group"]].to_dict(orient="records"),
                "excluded": data.excluded,
                "folds": {
                    f.name: {
                        "train": f.train.tolist(),
                        "val": f.val.tolist(),
                        "test": f.test.tolist(),
                    }
                    for f in folds
                },
            },
            "compare_folds.json",
        )
        recipe = resolve_recipe(data, settings)
        for name in c.systems:
            tuned = recipe if name == "resnet50-tl" else None
            sizes = [None] if name in SIZE_FREE else [tuned.size] if tuned else c.sizes
            roi = system_roi(name, tuned, settings)
            for size in sizes:
                if size is not None:
                    _ensure_pixels(data, size, settings, roi)
                system_rows, per_fold = run_system(
                    name, size, data, folds, settings, runtime["xla"], tuned
                )
                rows.extend(system_rows)
                fold_rows.extend(per_fold)
        seconds = time.perf_counter() - started
        markdown = markdown_report(rows, data, folds, settings, command, seconds)
        target = out_dir or settings.output_dir / "compare"
        target.mkdir(parents=True, exist_ok=True)
        files = {
            "markdown": target / "comparison.md",
            "json": target / "comparison.json",
            "plot": target / "comparison.png",
        }
        files["markdown"].write_text(markdown)
        write_json(
            files["json"],
            {
                "rows": rows,
                "folds": fold_rows,
                "dataset_hash": data.identity,
                "command": command,
                "seconds": seconds,
            },
        )
        figure = plots.comparison_chart(
            rows, ["balanced_accuracy", "recall", "specificity", "roc_auc"]
        )
        figure.savefig(files["plot"], dpi=120)
        plt.close(figure)
        for path in files.values():
            mlflow.log_artifact(str(path))
        return CompareResult(rows, fold_rows, markdown, parent.info.run_id, files, seconds)
