"""Two-phase fine-tuning (head, then top blocks) and prediction: what tuning, cross-validation,
refitting and the comparison all train with. A :class:`FitPlan` says what each phase runs; the
fit runs it on whole images or on an activation cache (``training.activations``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import keras
import numpy as np
import tensorflow as tf

from osteo_pipeline.config import ConfigError, Settings
from osteo_pipeline.core.data import RowBatches, ViewBatches, augmenter, class_weights, make_dataset
from osteo_pipeline.core.model import set_unfrozen_blocks, top_model
from osteo_pipeline.core.preprocess import ROI_MODES
from osteo_pipeline.training.activations import ActivationCache, FoldActivations
from osteo_pipeline.training.arrays import Arrays


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
        network = ("unfreeze_depth", "head_units", "dropout", "l2", "input_size", "roi")
        m = settings.model
        return cls(settings.train.learning_rate, **{name: getattr(m, name) for name in network})

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


#: Sets what trains for an unfreeze depth (``core.model.set_unfrozen_blocks`` for ResNet-50).
Unfreeze = Callable[[keras.Model, int], object]
#: What a phase trains on: the whole model on images, or its top on cached activations.
DataPath = Literal["images", "activations"]
#: What a phase does with validation data: stop early on its loss and keep the best weights,
#: keep the per-image probabilities after every epoch (cross-validation), or none (no data).
Validation = Literal["early_stopping", "every_epoch", "none"]


@dataclass(frozen=True)
class Phase:
    """One phase as it runs: for how long, how fast, what trains, on what, watched how."""

    name: Literal["head", "finetune"]
    epochs: int  # at most: early stopping may end the phase sooner
    learning_rate: float
    depth: int  # top backbone blocks that train with the head (0: the head alone)
    data: DataPath
    validation: Validation
    jit: bool  # XLA-compile the training step
    eager: bool  # run the training step eagerly (never together with jit)
    callbacks: tuple[keras.callbacks.Callback, ...]  # the caller's, the same objects every phase


@dataclass(frozen=True)
class FitPlan:
    """What a caller asks of a fit; :meth:`phases` turns it into the phases that run.

    ``epochs`` (head, finetune) default to the settings'. ``unfreeze(model, depth)`` sets what
    trains in each phase (ResNet-50 residual blocks by default; ``steps.compare`` passes VGG-16's,
    or a no-op for networks trained from scratch). ``fixed_epochs`` (cross-validation): every
    epoch runs, with no early stopping and no return to the head phase's weights, and the
    per-image validation probabilities after each epoch are kept (``FitResult.val_proba``), so
    that one epoch count can be chosen across folds."""

    settings: Settings  # batch size, class weights, augmentation, seed, patience, head rate
    params: TrainParams  # the fine-tune phase's learning rate and unfreeze depth
    epochs: tuple[int, int] | None = None
    callbacks: Sequence[keras.callbacks.Callback] = ()
    jit: bool = False
    fixed_epochs: bool = False
    unfreeze: Unfreeze = set_unfrozen_blocks

    def phases(self, data: DataPath, validated: bool) -> tuple[Phase, ...]:
        """The phases with epochs to run, head first: the head alone at the settings' head
        learning rate, then the top ``unfreeze_depth`` blocks with it at the trial's rate. The
        head alone on cached activations runs eagerly: its step is a few small matrix products,
        cheaper to run than to trace."""
        t = self.settings.train
        head_epochs, finetune_epochs = self.epochs or (t.head_epochs, t.finetune_epochs)
        validation: Validation = "none"
        if validated:
            validation = "every_epoch" if self.fixed_epochs else "early_stopping"
        planned = (
            ("head", head_epochs, t.head_learning_rate, 0),
            ("finetune", finetune_epochs, self.params.learning_rate, self.params.unfreeze_depth),
        )
        phases = []
        for name, epochs, learning_rate, depth in planned:
            eager = data == "activations" and depth == 0
            jit = self.jit and not eager
            callbacks = tuple(self.callbacks)
            phases.append(
                Phase(name, epochs, learning_rate, depth, data, validation, jit, eager, callbacks)
            )
        return tuple(phase for phase in phases if phase.epochs)


def fit_two_phase(
    model: keras.Model,
    train: Arrays,
    val: Arrays | None,
    plan: FitPlan,
    *,
    cache: ActivationCache | FoldActivations | None = None,
) -> FitResult:
    """Phase 1 trains the head (backbone frozen); phase 2 unfreezes the top ``unfreeze_depth``
    residual blocks at ``learning_rate``. With ``val``, each phase stops early on val loss and
    keeps its best weights, and the model ends on the head phase's best when fine-tuning never
    beat it; without, the planned epochs run as given.

    Without ``cache``, each phase trains the whole model on freshly augmented images. With one
    (the search, and ``osteo compare``'s pretrained systems), each phase trains only its
    trainable top of ``model`` on cached frozen-prefix outputs of fixed augmented views; the
    weights it updates are ``model``'s own.

    Epoch numbers run on across phases, so per-epoch logs and pruning see one sequence."""
    validated = val is not None and len(val.labels) > 0
    if cache is None:
        return _fit_on_images(model, train, val if validated else None, plan)
    return _fit_on_activations(model, cache, train, val if validated else None, plan)


def _fit_on_images(
    model: keras.Model, train: Arrays, val: Arrays | None, plan: FitPlan
) -> FitResult:
    """Every phase trains ``model`` on one dataset of augmented, shuffled training images and
    is validated on the plain validation images."""
    settings, t = plan.settings, plan.settings.train
    n_classes = len(settings.data.classes)
    weights = class_weights(train.labels, n_classes, t.class_weight)
    train_ds = make_dataset(
        train.pixels,
        train.row_labels,
        n_classes,
        t.batch_size,
        augmenter(t.augment, settings.seed),
        shuffle_seed=settings.seed,
    )
    val_ds = None
    if val is not None:
        val_ds = make_dataset(val.pixels, val.row_labels, n_classes, t.batch_size)
    runner = _PhaseRunner(model, val, settings)
    for phase in plan.phases("images", validated=val is not None):
        plan.unfreeze(model, phase.depth)
        runner.run(phase, model, train_ds, val_ds, class_weight=weights)
    return runner.result()


def _fit_on_activations(
    model: keras.Model,
    cache: ActivationCache | FoldActivations,
    train: Arrays,
    val: Arrays | None,
    plan: FitPlan,
) -> FitResult:
    """Every phase trains the top of ``model`` it unfreezes (``core.model.top_model``, sharing
    ``model``'s layers) on the cache's activations at that depth: epoch ``e`` on view ``e mod K``,
    class weights as sample weights."""
    settings, t = plan.settings, plan.settings.train
    n_classes = len(settings.data.classes)
    weights = class_weights(train.labels, n_classes, t.class_weight)
    phases = plan.phases("activations", validated=val is not None)
    cache.attach(model, [phase.depth for phase in phases])
    runner = _PhaseRunner(model, val, settings)
    for phase in phases:
        plan.unfreeze(model, phase.depth)
        top = top_model(model, phase.depth, cache.layout)
        batches = ViewBatches(
            cache.train(phase.depth),
            train.row_labels,
            n_classes,
            t.batch_size,
            weights,
            settings.seed,
            first_epoch=runner.epochs_run,
        )
        validation = None
        if val is not None:
            validation = RowBatches(cache.val(phase.depth), val.row_labels, n_classes, t.batch_size)
        runner.run(phase, top, batches, validation, batch_size=t.batch_size)
    return runner.result()


class _PhaseRunner:
    """Runs the phases of one fit in turn and keeps what they reached: one history, epoch
    numbers running on across phases, the epochs up to each phase's best validation loss, and
    the head phase's best weights for when fine-tuning never beats them."""

    def __init__(self, model: keras.Model, val: Arrays | None, settings: Settings) -> None:
        self.model, self.val, self.train_settings = model, val, settings.train
        self.history: dict[str, list[float]] = {}
        self.epochs_run = 0
        self.to_best = {"head": 0, "finetune": 0}
        self.head_best: tuple[float, list[np.ndarray]] | None = None
        self.val_proba: list[np.ndarray] = []

    def run(
        self,
        phase: Phase,
        trained: keras.Model,
        data: tf.data.Dataset | ViewBatches,
        validation: tf.data.Dataset | RowBatches | None,
        **fit_options: Any,
    ) -> None:
        """Compile ``trained`` (``model`` or its top) for ``phase`` and fit it on ``data``;
        ``fit_options``: what else ``keras.Model.fit`` needs for this kind of data."""
        _compile(trained, phase)
        callbacks = list(phase.callbacks)
        if phase.validation == "every_epoch":
            batch_size = self.train_settings.batch_size
            callbacks.append(_EpochPredictions(validation, self.val, self.val_proba, batch_size))
        elif phase.validation == "early_stopping":
            patience = self.train_settings.early_stopping_patience
            stop = keras.callbacks.EarlyStopping(
                "val_loss", patience=patience, restore_best_weights=True
            )
            callbacks.append(stop)
        result = trained.fit(
            data,
            validation_data=validation,
            epochs=self.epochs_run + phase.epochs,
            initial_epoch=self.epochs_run,
            callbacks=callbacks,
            verbose=0,
            **fit_options,
        )
        self._record(phase, result.history)

    def _record(self, phase: Phase, history: dict[str, list[float]]) -> None:
        ran = len(history.get("loss", []))
        self.epochs_run += ran
        for key, values in history.items():
            self.history.setdefault(key, []).extend(float(v) for v in values)
        val_losses = history.get("val_loss") if phase.validation == "early_stopping" else None
        self.to_best[phase.name] = int(np.argmin(val_losses)) + 1 if val_losses else ran
        if val_losses and phase.name == "head":
            self.head_best = (min(val_losses), self.model.get_weights())
        elif val_losses and self.head_best is not None and min(val_losses) >= self.head_best[0]:
            # Fine-tuning never beat the head phase: end on the head phase's best weights (the
            # ones the objective scored), and a refit skips fine-tuning.
            self.model.set_weights(self.head_best[1])
            self.to_best["finetune"] = 0

    def result(self) -> FitResult:
        head, finetune = self.to_best["head"], self.to_best["finetune"]
        return FitResult(self.history, head, finetune, self.val_proba)


def _compile(model: keras.Model, phase: Phase) -> None:
    """Compile with every variable the step needs already made: the optimizer's slots (built on
    the trainable variables, so after unfreezing) and a metric object rather than the string
    "accuracy", which Keras resolves inside the first trace. A variable made during a trace makes
    TensorFlow trace the step a second time."""
    model.compile(
        optimizer=keras.optimizers.Adam(phase.learning_rate),
        loss="categorical_crossentropy",
        metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
        jit_compile=phase.jit,
        run_eagerly=phase.eager,
    )
    model.optimizer.build(model.trainable_variables)


class _EpochPredictions(keras.callbacks.Callback):
    """After each epoch, the per-image probabilities on the fit's validation data (an image
    dataset, or batches of cached activations for the trained top), appended to ``into``."""

    def __init__(
        self,
        validation: tf.data.Dataset | RowBatches,
        val: Arrays,
        into: list[np.ndarray],
        batch_size: int,
    ) -> None:
        super().__init__()
        self.validation, self.val, self.into, self.batch_size = validation, val, into, batch_size

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        if isinstance(self.validation, RowBatches):
            rows = _call_in_batches(self.model, self.validation.rows, self.batch_size)
        else:
            rows = np.asarray(self.model.predict(self.validation, verbose=0))
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
    than tracing ``predict``)."""
    if cache is None:
        return predict_images(model, val, batch_size)
    return val.image_proba(
        _call_in_batches(top_model(model, depth, cache.layout), cache.val(depth), batch_size)
    )


def _call_in_batches(model: keras.Model, x: Sequence[np.ndarray], batch_size: int) -> np.ndarray:
    """``model``'s float32 outputs on ``x`` (an array or a fold's rows of one), called eagerly
    batch by batch."""
    batches = [
        keras.ops.convert_to_numpy(model(np.asarray(x[i : i + batch_size]), training=False))
        for i in range(0, len(x), batch_size)
    ]
    if not batches:
        return np.zeros((0, model.output_shape[-1]), np.float32)
    return np.concatenate(batches).astype(np.float32)


def predict_images(model: keras.Model, arrays: Arrays, batch_size: int) -> np.ndarray:
    """Per-image probabilities: the mean over each image's views."""
    return arrays.image_proba(predict_proba(model, arrays.pixels, batch_size))


def predict_proba(model: keras.Model, pixels: np.ndarray, batch_size: int) -> np.ndarray:
    if len(pixels) == 0:
        return np.zeros((0, model.output_shape[-1]), dtype=np.float32)
    dataset = make_dataset(pixels, None, model.output_shape[-1], batch_size)
    return np.asarray(model.predict(dataset, verbose=0), dtype=np.float32)
