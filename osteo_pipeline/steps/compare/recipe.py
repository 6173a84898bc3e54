"""``compare.recipe: best``: the pipeline's own tuned recipe for ``resnet50-tl``, found in this
data's study, and, when the search cross-validated, trained in each fold by the pipeline's
protocol (``NestedRecipe``): k group folds of the fold's whole training part (train + val) give
out-of-fold predictions for the temperature and threshold, then the test part is scored both by
a refit on the whole training part (what the pipeline serves) and by the ensemble of the k fold
models: the refit-or-ensemble choice, measured. Its fits share one activation cache, so they
train on K fixed augmented views of each image as the search's folds do (``osteo run``'s refit
augments afresh every epoch)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from osteo_pipeline.config import Settings
from osteo_pipeline.core.compare_systems import Predictions
from osteo_pipeline.core.metrics import fold_interval
from osteo_pipeline.core.model import MAX_UNFREEZE_DEPTH
from osteo_pipeline.core.splits import Fold
from osteo_pipeline.steps.compare.cache import close_cache, seen_text
from osteo_pipeline.steps.compare.data import Data
from osteo_pipeline.steps.split import split_dataset
from osteo_pipeline.steps.tune import best_params
from osteo_pipeline.training.activations import activation_cache
from osteo_pipeline.training.backbone import StudyBackbone
from osteo_pipeline.training.cv import final_models, rows_of
from osteo_pipeline.training.fit import (
    FitPlan,
    TrainParams,
    fit_two_phase,
    predict_images,
    predict_val,
)

#: How a nested recipe's test part is scored: row suffix by variant.
FINAL_MODELS = {"refit": "refit", "ensemble": "fold ensemble"}


@dataclass(frozen=True)
class Recipe:
    """The pipeline's own tuned parameters for ``resnet50-tl``: the best trial of this data's
    study."""

    params: TrainParams  # input size and roi included
    # (head, finetune) epochs as the search chose them (run without early stopping)
    epochs: tuple[int, int] | None
    source: str
    # the search's k when it cross-validated: each fold then trains as the pipeline does
    cv_folds: int | None = None

    @property
    def size(self) -> int:
        return int(self.params.input_size or 0)

    @property
    def roi(self) -> str:
        return str(self.params.roi or "image")

    @property
    def nested(self) -> bool:
        """Whether each fold trains it by the pipeline's protocol (``NestedRecipe``)."""
        return self.cv_folds is not None and self.epochs is not None

    def note(self) -> str:
        """The report's note: where the recipe comes from and what it trains."""
        p = self.params
        head = f"{p.head_units}-unit head" if p.head_units else "linear head"
        epochs = (
            f"{self.epochs[0]}+{self.epochs[1]} epochs without early stopping"
            if self.epochs
            else "config epochs, early stopping on val"
        )
        text = (
            f"{p.input_size} px {p.roi}, unfreeze {p.unfreeze_depth}, {head},"
            f" lr {p.learning_rate:.1e}, dropout {p.dropout:.2f}, l2 {p.l2:.0e}, {epochs}"
        )
        if self.cv_folds:
            text += (
                f"; in each fold by the pipeline's protocol: {self.cv_folds}-fold CV of the"
                " fold's whole training part gives out-of-fold predictions for temperature and"
                " threshold, then a refit on the whole training part (what the pipeline serves)"
                " is scored on the test part"
            )
        return (
            f"the pipeline's recipe from {self.source}: {text}; tuned by CV on this data,"
            " so its folds are not fully unseen"
        )


def resolve_recipe(data: Data, settings: Settings) -> Recipe | None:
    """``compare.recipe: best``: the best trial of the study of this folder's split (what
    ``osteo train --params best`` would refit); ``config``: None (the config's parameters). The
    search saw the images the folds later test: the row is marked as tuned on this data."""
    if settings.compare.recipe == "config":
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
        # the deepest part any fit trains
        self.depth = recipe.params.unfreeze_depth if self.epochs[1] else 0
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
        return seen_text(self.cache, self.settings)

    def close(self) -> dict[str, float]:
        """Free the cache; its size and cost (see ``cache.close_cache``)."""
        return close_cache(self.cache)


def paired_difference(
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
        f"fold ensemble minus refit on the same folds: ROC AUC {d['mean']:+.3f}{interval}; the"
        " ensemble's temperature and threshold come from single fold models' out-of-fold"
        " predictions, so its threshold metrics and ECE lean against it"
    )
