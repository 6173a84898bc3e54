"""``osteo compare``'s built-in systems, one class per registry entry (``core.compare_systems``),
each following its ``System`` protocol: the pipeline's model and the seed paper's networks
(``KerasNetwork``: trained in each fold by the pipeline's two-phase fit), and probes (``Probe``:
fixed features and a classical model). ``plan`` makes a registry entry's systems, one per input
size."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from osteo_pipeline.config import Settings
from osteo_pipeline.core import baselines
from osteo_pipeline.core.compare_systems import Predictions, System, describe
from osteo_pipeline.core.splits import Fold
from osteo_pipeline.steps.compare.cache import SystemCache
from osteo_pipeline.steps.compare.data import Data
from osteo_pipeline.steps.compare.recipe import (
    FINAL_MODELS,
    NestedRecipe,
    Recipe,
    paired_difference,
    resolve_recipe,
)
from osteo_pipeline.training import zoo
from osteo_pipeline.training.arrays import pixel_cache
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


@dataclass(frozen=True)
class Setup:
    """What every system of one comparison shares."""

    data: Data
    settings: Settings
    jit: bool  # XLA, as the runtime chose it


def plan(name: str, setup: Setup) -> list[System]:
    """The systems a registry entry runs: its class (``implementation``) decides how many."""
    module, _, attribute = describe(name).implementation.partition(":")
    systems = getattr(importlib.import_module(module), attribute).plan(name, setup)
    for system in systems:
        if not isinstance(system, System):
            raise TypeError(f"compare system {name!r}: {system!r} is not a System")
    return systems


class SystemBase:
    """A system's defaults: one row per ``compare.sizes`` (one row if size-free), seeing the
    whole film, trained on each fold's training part and calibrated on its val part."""

    roi = "image"

    def __init__(self, name: str, setup: Setup, size: int | None) -> None:
        self.name, self.setup, self.size = name, setup, size
        self.description = describe(name)

    @classmethod
    def plan(cls, name: str, setup: Setup) -> list[System]:
        sizes = [None] if describe(name).size_free else setup.settings.compare.sizes
        return [cls(name, setup, size) for size in sizes]

    @property
    def label(self) -> str:
        return self.name if self.size is None else f"{self.name}@{self.size}"

    @property
    def variants(self) -> dict[str, str]:
        return {"": self.label}

    @property
    def seen(self) -> str | None:
        return None

    def prepare(self) -> None:
        """Nothing shared between folds."""

    def fold_params(self, fold: Fold) -> dict[str, int]:
        return {"n_train": len(fold.train), "n_val": len(fold.val)}

    def notes(self, fold_rows: list[dict[str, Any]], n_train: int, n_test: int) -> dict[str, str]:
        return {"": self.description.note}

    def close(self) -> dict[str, float]:
        return {}


# Networks -------------------------------------------------------------------------------------


class KerasNetwork(SystemBase):
    """A network trained in each fold on the fold's training part (early stopping on val), on
    one activation cache shared by all folds where the network has a frozen prefix."""

    shared: SystemCache | NestedRecipe | None = None  # what its folds share, made by prepare
    early_stopping = True

    def require_weights(self) -> None:
        """Fail fast, before any fold runs, when pretrained weights cannot be had."""

    def network(self) -> zoo.KerasSystem:
        """A freshly built network and how it trains."""
        raise NotImplementedError

    def prepare(self) -> None:
        self.require_weights()
        assert self.size is not None
        self.shared = SystemCache(
            self.setup.data.pixels[(self.size, self.roi)], self.setup.settings
        )

    def fold_predictions(self, fold: Fold) -> Predictions:
        """Per-image val and test probabilities, from cached activations where the fit used them."""
        data, settings, shared = self.setup.data, self.setup.settings, self.shared
        assert self.size is not None and isinstance(shared, SystemCache)
        zoo.fresh_session(settings.seed + 100 * fold.repeat + fold.fold)
        system = self.network()
        train, val, test = (
            data.arrays(self.size, rows, self.roi) for rows in (fold.train, fold.val, fold.test)
        )
        cache = shared.fold(system, fold.train, fold.val)
        fit_two_phase(
            system.model,
            train,
            val if self.early_stopping else None,
            FitPlan(
                settings,
                system.params,
                epochs=system.epochs,
                jit=self.setup.jit,
                unfreeze=system.unfreeze,
            ),
            cache=cache,
        )
        batch = settings.train.batch_size
        if cache is None:
            val_proba = predict_images(system.model, val, batch)
            test_proba = predict_images(system.model, test, batch)
        else:
            test_cache = shared.fold(system, fold.train, fold.test)
            val_proba = predict_val(system.model, val, system.depth, batch, cache)
            test_proba = predict_val(system.model, test, system.depth, batch, test_cache)
        return {"": (val_proba, data.labels[fold.val], test_proba)}

    @property
    def seen(self) -> str | None:
        return self.shared.seen if self.shared is not None else None

    def close(self) -> dict[str, float]:
        return self.shared.close() if self.shared is not None else {}


class PipelineModel(KerasNetwork):
    """``resnet50-tl``: the pipeline's model, seeing what the config (or its tuned recipe) says,
    with the config's parameters or, with ``compare.recipe: best``, its study's best trial."""

    def __init__(self, name: str, setup: Setup, size: int | None, recipe: Recipe | None = None):
        super().__init__(name, setup, size)
        self.recipe = recipe
        self.roi = recipe.roi if recipe else setup.settings.model.roi
        self.early_stopping = recipe is None or recipe.epochs is None

    @classmethod
    def plan(cls, name: str, setup: Setup) -> list[System]:
        recipe = resolve_recipe(setup.data, setup.settings)
        if recipe is None:
            return super().plan(name, setup)
        kind = CrossValidatedRecipe if recipe.nested else cls
        return [kind(name, setup, recipe.size, recipe)]

    @property
    def label(self) -> str:
        if self.recipe is not None:
            return f"{super().label} {self.roi} (tuned)"
        return super().label + (f" {self.roi}" if self.roi != "image" else "")

    def require_weights(self) -> None:
        zoo.require_resnet50(self.setup.settings)

    def network(self) -> zoo.KerasSystem:
        assert self.size is not None
        settings, t = self.setup.settings, self.setup.settings.train
        params = self.recipe.params if self.recipe else TrainParams.from_settings(settings)
        epochs = (t.head_epochs, t.finetune_epochs)
        if self.recipe is not None and self.recipe.epochs is not None:
            epochs = self.recipe.epochs
        return zoo.pipeline_resnet50(settings, self.size, params, epochs)

    def notes(self, fold_rows: list[dict[str, Any]], n_train: int, n_test: int) -> dict[str, str]:
        if self.recipe is None:
            return super().notes(fold_rows, n_train, n_test)
        trained = f"; trained on {self.seen}" if self.seen else ""
        return {key: self.recipe.note() + trained for key in self.variants}


class CrossValidatedRecipe(PipelineModel):
    """``resnet50-tl`` with a cross-validated recipe, trained in each fold as the pipeline trains
    it (``recipe.NestedRecipe``): a refit row and a fold-ensemble row."""

    @property
    def variants(self) -> dict[str, str]:
        return {
            key: self.label.replace("(tuned)", f"(tuned, {text})")
            for key, text in FINAL_MODELS.items()
        }

    def prepare(self) -> None:
        assert self.recipe is not None
        self.require_weights()
        zoo.fresh_session()
        self.shared = NestedRecipe(
            self.setup.data, self.recipe, self.setup.settings, self.setup.jit
        )

    def fold_predictions(self, fold: Fold) -> Predictions:
        assert isinstance(self.shared, NestedRecipe)
        return self.shared.predictions(self.setup.data, fold)

    def fold_params(self, fold: Fold) -> dict[str, int]:
        assert self.recipe is not None and self.recipe.cv_folds is not None
        trained = len(fold.train) + len(fold.val)
        return {"n_train": trained, "n_val": 0, "inner_folds": self.recipe.cv_folds}

    def notes(self, fold_rows: list[dict[str, Any]], n_train: int, n_test: int) -> dict[str, str]:
        notes = super().notes(fold_rows, n_train, n_test)
        rows = self.variants
        difference = paired_difference(fold_rows, rows["ensemble"], rows["refit"], n_train, n_test)
        assert self.recipe is not None
        notes["ensemble"] = (
            f"the mean of the {self.recipe.cv_folds} fold models of the refit row's recipe,"
            f" scored on the same test parts; {difference}"
        )
        return notes


class Vgg16FineTuned(KerasNetwork):
    """``vgg16-ft``: ImageNet VGG-16, the head, then its top ``compare.vgg16_finetune_blocks``."""

    def require_weights(self) -> None:
        zoo.require_vgg16(self.setup.settings)

    def network(self) -> zoo.KerasSystem:
        assert self.size is not None
        s = self.setup.settings
        params = TrainParams(
            s.train.learning_rate,
            s.compare.vgg16_finetune_blocks,
            s.model.head_units,
            s.model.dropout,
        )
        return zoo.vgg16(s, self.size, params, (s.train.head_epochs, s.train.finetune_epochs))


class Vgg16Frozen(Vgg16FineTuned):
    """``vgg16-frozen``: ImageNet VGG-16 frozen, the head trained for both phases' epochs."""

    def network(self) -> zoo.KerasSystem:
        assert self.size is not None
        s = self.setup.settings
        epochs = (s.train.head_epochs + s.train.finetune_epochs, 0)
        return zoo.vgg16(s, self.size, TrainParams.from_settings(s), epochs)


class ScratchNetwork(KerasNetwork):
    """A network from ``core.baselines``, randomly initialised, every layer trained."""

    build: zoo.ScratchBuilder  # each subclass's network, as a staticmethod

    def network(self) -> zoo.KerasSystem:
        assert self.size is not None
        return zoo.from_scratch(self.build, self.setup.settings, self.size)


class ResNet50Scratch(ScratchNetwork):
    build = staticmethod(baselines.resnet50_scratch)


class ResNet18(ScratchNetwork):
    build = staticmethod(baselines.resnet18)


class Cnn3(ScratchNetwork):
    build = staticmethod(baselines.cnn3)


# Probes ---------------------------------------------------------------------------------------


class Probe(SystemBase):
    """Fixed features of every image, computed once; a standardised logistic regression per
    fold, C chosen on the fold's val part."""

    features: np.ndarray

    def fit(self, fold: Fold) -> tuple[np.ndarray, np.ndarray]:
        s = self.setup.settings
        return fit_logistic(self.features, self.setup.data.labels, fold, s.compare.probe_c, s.seed)

    def fold_predictions(self, fold: Fold) -> Predictions:
        val_proba, test_proba = self.fit(fold)
        return {"": (val_proba, self.setup.data.labels[fold.val], test_proba)}


class ResNet50Probe(Probe):
    """``resnet50-probe``: pooled features of the frozen ImageNet ResNet-50 at each size."""

    def prepare(self) -> None:
        assert self.size is not None
        settings = self.setup.settings
        zoo.require_resnet50(settings)
        pixels = self.setup.data.pixels[(self.size, "image")].pixels
        self.features = resnet50_features(pixels, settings, self.size)


class TextureProbe(Probe):
    """``texture-probe``: bone texture of the knee crops, at the crop size texture needs."""

    def prepare(self) -> None:
        data = self.setup.data
        crops = pixel_cache(self.setup.settings, TEXTURE_SIZE, "knees")
        pixels = crops.load(data.images(), list(data.frame["sha256"]))
        self.features = knee_texture_features(pixels, crops.views)


class MetadataProbe(Probe):
    """``metadata-probe``: file metadata only, a random forest per fold: a shortcut detector."""

    def prepare(self) -> None:
        self.features = metadata_features(self.setup.data.frame)

    def fit(self, fold: Fold) -> tuple[np.ndarray, np.ndarray]:
        seed = self.setup.settings.seed + fold.repeat
        return fit_forest(self.features, self.setup.data.labels, fold, seed)
