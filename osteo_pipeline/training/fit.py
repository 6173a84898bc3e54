"""Two-phase fine-tuning (head, then top blocks) and prediction: what tuning, cross-validation,
refitting and the comparison all train with."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import keras
import numpy as np

from osteo_pipeline.config import ConfigError, Settings
from osteo_pipeline.core.data import ViewBatches, augmenter, class_weights, make_dataset, one_hot
from osteo_pipeline.core.model import (
    MAX_UNFREEZE_DEPTH,
    RESNET50_LAYOUT,
    BlockLayout,
    FeatureStatistics,
    ModelSpec,
    WeightsUnavailableError,
    backbone,
    pooled_feature_statistics,
    set_unfrozen_blocks,
    top_model,
    with_head,
)
from osteo_pipeline.core.preprocess import ROI_MODES
from osteo_pipeline.io.weights import BackboneWeights
from osteo_pipeline.io.weights import resolve as resolve_weights
from osteo_pipeline.training.activations import ActivationCache, FoldActivations
from osteo_pipeline.training.arrays import Arrays

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainParams:
    """The hyperparameters a trial searches and a refit uses: the network's and, since the bone
    needs resolution, what the network sees (input size, whole film or knee crops)."""

    learning_rate: float
    unfreeze_depth: int
    head_units: int
    dropout: float
    l2: float = 0.0
    input_size: int | None = None  # None: the settings' model.input_size
    roi: str | None = None  # None: the settings' model.roi

    @classmethod
    def from_settings(cls, settings: Settings) -> TrainParams:
        m = settings.model
        return cls(
            settings.train.learning_rate,
            m.unfreeze_depth,
            m.head_units,
            m.dropout,
            m.l2,
            m.input_size,
            m.roi,
        )

    @classmethod
    def from_dict(cls, values: dict[str, Any], settings: Settings | None = None) -> TrainParams:
        """Parameters from a study or file; ``l2``, ``input_size`` and ``roi``, which older
        studies did not search, default to ``settings``' (or the defaults)."""
        required = ("learning_rate", "unfreeze_depth", "head_units", "dropout")
        missing = set(required) - set(values)
        if missing:
            raise ConfigError(f"parameters missing: {sorted(missing)}")
        defaults = cls.from_settings(settings) if settings is not None else cls(0.0, 0, 0, 0.0)
        merged = {
            name: values.get(name, getattr(defaults, name)) for name in cls.__dataclass_fields__
        }
        try:
            params = cls(
                float(merged["learning_rate"]),
                int(merged["unfreeze_depth"]),
                int(merged["head_units"]),
                float(merged["dropout"]),
                float(merged["l2"]),
                None if merged["input_size"] is None else int(merged["input_size"]),
                merged["roi"],
            )
        except (TypeError, ValueError) as exc:
            raise ConfigError(
                f"parameters {dict(sorted(merged.items()))} are not all numbers: {exc}"
            ) from exc
        if params.roi is not None and params.roi not in ROI_MODES:
            raise ConfigError(f"parameter roi {params.roi!r} is not one of {ROI_MODES}")
        return params

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def apply(self, settings: Settings) -> Settings:
        """``settings`` with these parameters as its model and learning rate, so everything that
        reads the settings (pixel cache, backbone, logged model) sees the same input."""
        update = {
            "unfreeze_depth": self.unfreeze_depth,
            "head_units": self.head_units,
            "dropout": self.dropout,
            "l2": self.l2,
        }
        update |= {"input_size": self.input_size} if self.input_size is not None else {}
        update |= {"roi": self.roi} if self.roi is not None else {}
        model = settings.model.model_copy(update=update)
        train = settings.train.model_copy(update={"learning_rate": self.learning_rate})
        return settings.model_copy(update={"model": model, "train": train})


@dataclass
class FitResult:
    history: dict[str, list[float]]  # per epoch run, both phases in sequence
    # Epochs up to each phase's best validation loss (all epochs run without validation): what a
    # refit replays. finetune_epochs is 0 when fine-tuning never beat the head phase.
    head_epochs: int
    finetune_epochs: int
    # With ``fixed_epochs``: per-image validation probabilities after every epoch run.
    val_proba: list[np.ndarray] = field(default_factory=list)


def model_spec(settings: Settings, params: TrainParams) -> ModelSpec:
    return ModelSpec(
        tuple(settings.data.classes),
        params.input_size or settings.model.input_size,
        params.head_units,
        params.dropout,
        params.l2,
    )


def build(
    settings: Settings, params: TrainParams, train_pixels: np.ndarray
) -> tuple[keras.Model, BackboneWeights]:
    """The model with its backbone weights, and which weights those are. ``train_pixels`` (model
    inputs of training images) standardise a random-init backbone's features (``FeatureStatistics``)."""
    settings = params.apply(settings)
    base, weights = load_backbone(settings)
    return with_head(
        base,
        model_spec(settings, params),
        feature_statistics(base, weights, train_pixels, settings),
    ), weights


def load_backbone(settings: Settings) -> tuple[keras.Model, BackboneWeights]:
    """ResNet-50 with the configured weights (``io.weights.resolve``), and which weights those are."""
    weights = resolve_weights(settings.model.weights, settings.model.allow_random_init_fallback)
    try:
        return backbone(
            None if weights.random_init else str(weights.path), settings.model.input_size
        ), weights
    except WeightsUnavailableError:
        raise
    except Exception as exc:  # a truncated or foreign .h5 file
        raise WeightsUnavailableError(
            f"cannot load backbone weights {weights.described}: {str(exc)[:200]}"
        ) from exc


#: Training images a random-init backbone's feature statistics are measured on, at most.
STATISTICS_SAMPLE = 512


def feature_statistics(
    base: keras.Model, weights: BackboneWeights, train_pixels: np.ndarray, settings: Settings
) -> FeatureStatistics | None:
    """The standardisation a random-init backbone's head needs, from (up to ``STATISTICS_SAMPLE``)
    training images spread over the set; none for pretrained weights."""
    if not weights.random_init:
        return None
    rows = (
        np.linspace(0, len(train_pixels) - 1, min(len(train_pixels), STATISTICS_SAMPLE))
        .round()
        .astype(int)
    )
    return pooled_feature_statistics(base, train_pixels[rows], settings.train.batch_size)


def _compile(model: keras.Model, learning_rate: float, jit: bool, eager: bool = False) -> None:
    """Compile with every variable the step needs already made: the optimizer's slots (built on
    the trainable variables, so after unfreezing) and a metric object rather than the string
    "accuracy", which Keras resolves inside the first trace. A variable made during a trace makes
    TensorFlow trace the step a second time (about 5 s for a fine-tune step on the CPU)."""
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss="categorical_crossentropy",
        metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
        jit_compile=jit and not eager,
        run_eagerly=eager,
    )
    model.optimizer.build(model.trainable_variables)


def fit_two_phase(
    model: keras.Model,
    train: Arrays,
    val: Arrays | None,
    params: TrainParams,
    settings: Settings,
    callbacks: list[keras.callbacks.Callback] | None = None,
    epochs: tuple[int, int] | None = None,
    jit: bool = False,
    cache: ActivationCache | FoldActivations | None = None,
    unfreeze: Callable[[keras.Model, int], object] = set_unfrozen_blocks,
    fixed_epochs: bool = False,
) -> FitResult:
    """Phase 1 trains the head (backbone frozen); phase 2 unfreezes the top ``unfreeze_depth``
    residual blocks at ``learning_rate``. With ``val``, each phase stops early on val loss and
    keeps its best weights, and the model ends on the head phase's best when fine-tuning never
    beat it; without, ``epochs`` (head, finetune) are run as given.

    With ``cache`` (the search, and ``osteo compare``'s pretrained systems), each phase trains
    only its trainable top of ``model`` on cached frozen-prefix outputs of fixed augmented views
    instead of running the whole backbone on freshly augmented images; the weights it updates
    are ``model``'s own.

    ``unfreeze(model, depth)`` sets what trains in each phase (ResNet-50 residual blocks by
    default; ``steps.compare`` passes VGG-16's, or a no-op for networks trained from scratch).

    ``fixed_epochs`` (cross-validation): every epoch runs, with no early stopping and no
    return to the head phase's weights, and the per-image validation probabilities after each
    epoch are kept (``FitResult.val_proba``), so that one epoch count can be chosen across folds.

    Epoch numbers run on across phases, so per-epoch logs and pruning see one sequence."""
    t = settings.train
    n_classes = len(settings.data.classes)
    has_val = val is not None and len(val.labels) > 0
    weights = class_weights(train.labels, n_classes, t.class_weight)
    train_labels, val_labels = train.row_labels, val.row_labels if has_val else None
    head_epochs, finetune_epochs = epochs or (t.head_epochs, t.finetune_epochs)
    phases = [
        (n, depth, lr)
        for n, depth, lr in (
            (head_epochs, 0, t.head_learning_rate),
            (finetune_epochs, params.unfreeze_depth, params.learning_rate),
        )
    ]
    if cache is not None:
        cache.attach(model, [depth for n, depth, _ in phases if n])
    else:
        train_ds = make_dataset(
            train.pixels,
            train_labels,
            n_classes,
            t.batch_size,
            augmenter(t.augment, settings.seed),
            shuffle_seed=settings.seed,
        )
        val_ds = make_dataset(val.pixels, val_labels, n_classes, t.batch_size) if has_val else None
    history: dict[str, list[float]] = {}
    done = [0, 0]  # epochs run per phase: epoch numbers run on across phases
    useful = [0, 0]  # epochs up to each phase's best validation loss
    head_best: tuple[float, list[np.ndarray]] | None = None
    val_proba: list[np.ndarray] = []

    for phase, (n_epochs, depth, lr) in enumerate(phases):
        if n_epochs == 0:
            continue
        unfreeze(model, depth)
        start = sum(done)
        if cache is None:
            trained, data, validation, class_weight = model, train_ds, val_ds, weights
        else:
            trained = top_model(model, depth, cache.layout)
            data = ViewBatches(
                cache.train(depth),
                train_labels,
                n_classes,
                t.batch_size,
                weights,
                settings.seed,
                first_epoch=start,
            )
            validation = (cache.val(depth), one_hot(val_labels, n_classes)) if has_val else None
            class_weight = None  # carried by ViewBatches as sample weights
        # The head alone on cached backbone outputs is a few small matrix products a step: tracing
        # its step (about 1.5 s on CPU) costs more than running the whole phase eagerly.
        _compile(trained, lr, jit, eager=cache is not None and depth == 0)
        phase_callbacks = list(callbacks or [])
        if has_val and fixed_epochs:
            inputs = validation[0] if cache is not None else val_ds
            phase_callbacks.append(_EpochPredictions(inputs, val, val_proba, t.batch_size))
        elif has_val:
            phase_callbacks.append(
                keras.callbacks.EarlyStopping(
                    "val_loss", patience=t.early_stopping_patience, restore_best_weights=True
                )
            )
        result = trained.fit(
            data,
            validation_data=validation,
            batch_size=t.batch_size if cache is not None else None,
            epochs=start + n_epochs,
            initial_epoch=start,
            class_weight=class_weight,
            callbacks=phase_callbacks,
            verbose=0,
        )
        done[phase] = len(result.history.get("loss", []))
        for key, values in result.history.items():
            history.setdefault(key, []).extend(float(v) for v in values)
        val_losses = result.history.get("val_loss") if not fixed_epochs else None
        useful[phase] = int(np.argmin(val_losses)) + 1 if val_losses else done[phase]
        if val_losses and phase == 0:
            head_best = (min(val_losses), model.get_weights())
        elif val_losses and head_best is not None and min(val_losses) >= head_best[0]:
            # Fine-tuning never beat the head phase: end on the head phase's best weights (the
            # ones the objective scored), and a refit skips fine-tuning.
            model.set_weights(head_best[1])
            useful[1] = 0
    return FitResult(history, head_epochs=useful[0], finetune_epochs=useful[1], val_proba=val_proba)


class _EpochPredictions(keras.callbacks.Callback):
    """After each epoch, the per-image probabilities on the validation inputs (cached
    activations for the trained top, or an image dataset), appended to ``into``."""

    def __init__(self, inputs, val: Arrays, into: list[np.ndarray], batch_size: int) -> None:  # noqa: ANN001 - array or tf.data.Dataset
        super().__init__()
        self.inputs, self.val, self.into, self.batch_size = inputs, val, into, batch_size

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        if isinstance(self.inputs, np.ndarray):
            x = self.inputs
            rows = np.concatenate(
                [
                    keras.ops.convert_to_numpy(
                        self.model(x[i : i + self.batch_size], training=False)
                    )
                    for i in range(0, len(x), self.batch_size)
                ]
            )
        else:
            rows = np.asarray(self.model.predict(self.inputs, verbose=0))
        self.into.append(self.val.image_proba(rows.astype(np.float64)))


def predict_val(
    model: keras.Model,
    val: Arrays,
    depth: int,
    batch_size: int,
    cache: ActivationCache | FoldActivations | None,
) -> np.ndarray:
    """Per-image validation probabilities: from the cached boundary activations when there is a
    cache, by calling the top of the model eagerly (a trial's few validation batches cost less
    than tracing ``predict``, about 1 s)."""
    if cache is None:
        return predict_images(model, val, batch_size)
    top, x = top_model(model, depth, cache.layout), cache.val(depth)
    batches = [
        keras.ops.convert_to_numpy(top(x[i : i + batch_size], training=False))
        for i in range(0, len(x), batch_size)
    ]
    rows = (
        np.concatenate(batches).astype(np.float32)
        if batches
        else np.zeros((0, model.output_shape[-1]), np.float32)
    )
    return val.image_proba(rows)


def predict_images(model: keras.Model, arrays: Arrays, batch_size: int) -> np.ndarray:
    """Per-image probabilities: the mean over each image's views."""
    return arrays.image_proba(predict_proba(model, arrays.pixels, batch_size))


def predict_proba(model: keras.Model, pixels: np.ndarray, batch_size: int) -> np.ndarray:
    if len(pixels) == 0:
        return np.zeros((0, model.output_shape[-1]), dtype=np.float32)
    dataset = make_dataset(pixels, None, model.output_shape[-1], batch_size)
    return np.asarray(model.predict(dataset, verbose=0), dtype=np.float32)


def activation_cache(
    settings: Settings,
    train: Arrays,
    val: Arrays | None = None,
    *,
    floor_depth: int | None = None,
    layout: BlockLayout = RESNET50_LAYOUT,
) -> ActivationCache | None:
    """The frozen-prefix cache, or ``None`` when disabled in config: augmented views of ``train``
    and plain ``val``; without ``val`` (cross-validation), every row of ``train`` both ways, for
    the folds to select from. ``floor_depth`` is the deepest boundary its fits will ask for
    (default: the search space's deepest with a frozen prefix), ``layout`` the backbone's cut points."""
    t = settings.tune
    if not t.activation_cache:
        return None
    rows = np.arange(len(train.pixels))
    pixels = train.pixels if val is None else np.concatenate([train.pixels, val.pixels])
    val_rows = rows if val is None else np.arange(len(train.pixels), len(pixels))
    return ActivationCache(
        pixels,
        rows,
        val_rows,
        views=min(
            t.cache_views, settings.train.head_epochs + settings.train.finetune_epochs
        ),  # epoch e uses view e mod K
        augment=augmenter(settings.train.augment, settings.seed),
        batch_size=settings.train.batch_size,
        floor_depth=min(t.unfreeze_depth[1], MAX_UNFREEZE_DEPTH - 1)
        if floor_depth is None
        else floor_depth,
        budget_bytes=int(t.cache_memory_mb * 2**20),
        spill_dir=t.cache_spill_dir,
        layout=layout,
    )


class StudyBackbone:
    """The study's one ResNet-50, built and its weights read on the first trial only (about 2 s
    a trial). Each trial gets it back reset to those weights, under a new head initialised from the
    trial's own seed: trials stay independent of each other and of their order, and every trial
    starts from the backbone weights the activation cache was computed with. ``train_pixels``
    standardise a random-init backbone's features, once for every trial."""

    def __init__(self, settings: Settings, train_pixels: np.ndarray) -> None:
        self._settings = settings
        self._train_pixels = train_pixels
        self._base: keras.Model | None = None
        self._weights: list[np.ndarray] = []
        self._statistics: FeatureStatistics | None = None
        # Which weights (for each trial's tags), known before the backbone is built.
        self.weights = resolve_weights(
            settings.model.weights, settings.model.allow_random_init_fallback
        )

    def model(self, params: TrainParams, seed: int) -> keras.Model:
        if self._base is None:
            self._base, self.weights = load_backbone(self._settings)
            self._weights = self._base.get_weights()
            self._statistics = feature_statistics(
                self._base, self.weights, self._train_pixels, self._settings
            )
        else:
            self._base.set_weights(self._weights)
        keras.utils.set_random_seed(seed)
        return with_head(self._base, model_spec(self._settings, params), self._statistics)
