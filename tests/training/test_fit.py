import dataclasses
import re

import keras
import numpy as np
import pytest

from osteo_pipeline.core.data import augmenter
from osteo_pipeline.core.model import (
    MAX_UNFREEZE_DEPTH,
    RESIDUAL_BLOCKS,
    ModelSpec,
    WeightsUnavailableError,
    build_model,
)
from osteo_pipeline.core.preprocess import model_input
from osteo_pipeline.training import fit as train_step
from osteo_pipeline.training.activations import ActivationCache
from osteo_pipeline.training.arrays import Arrays
from osteo_pipeline.training.backbone import build
from osteo_pipeline.training.fit import FitPlan, Phase, TrainParams, fit_two_phase


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """An empty Keras cache, and Keras' download fails as it does without network."""
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras-home"))

    def fake(*args, **kwargs):
        raise Exception(
            "URL fetch failure on https://storage.googleapis.com/...: None -- [Errno -3]"
        )

    monkeypatch.setattr(keras.utils, "get_file", fake)


@pytest.mark.slow
def test_imagenet_unavailable_fails_clearly(train_settings, offline):
    settings = train_settings.model_copy(
        update={"model": train_settings.model.model_copy(update={"weights": "imagenet"})}
    )
    with pytest.raises(WeightsUnavailableError, match="OSTEO_BACKBONE_WEIGHTS"):
        build(settings, TrainParams.from_settings(settings), np.zeros((2, 32, 32, 3), np.uint8))


@pytest.mark.slow
def test_random_init_fallback_only_when_allowed(train_settings, offline):
    model_settings = train_settings.model.model_copy(
        update={"weights": "imagenet", "allow_random_init_fallback": True}
    )
    settings = train_settings.model_copy(update={"model": model_settings})
    model, used = build(
        settings, TrainParams.from_settings(settings), np.zeros((2, 32, 32, 3), np.uint8)
    )
    assert used.random_init and used.identity == "random-init" and "demo fallback" in used.described
    assert model.output_shape == (None, 2)


@pytest.mark.slow
def test_augmentation_is_applied_to_training_data_only(train_settings, monkeypatch):
    calls = []
    real = train_step.make_dataset

    def spy(pixels, labels, n_classes, batch_size, augment=None, shuffle_seed=None):
        calls.append(
            {"n": len(pixels), "augment": augment is not None, "shuffle": shuffle_seed is not None}
        )
        return real(pixels, labels, n_classes, batch_size, augment, shuffle_seed)

    monkeypatch.setattr(train_step, "make_dataset", spy)
    rng = np.random.default_rng(0)
    train = Arrays(rng.integers(0, 255, (6, 32, 32, 3), dtype=np.uint8), np.array([0, 1] * 3))
    val = Arrays(rng.integers(0, 255, (3, 32, 32, 3), dtype=np.uint8), np.array([0, 1, 0]))
    model, _ = build(train_settings, TrainParams.from_settings(train_settings), train.pixels)
    plan = FitPlan(train_settings, TrainParams.from_settings(train_settings))
    fit = fit_two_phase(model, train, val, plan)
    assert calls == [
        {"n": 6, "augment": True, "shuffle": True},
        {"n": 3, "augment": False, "shuffle": False},
    ]
    # finetune_epochs 0: the fine-tune epoch did not help
    assert fit.head_epochs == 1 and fit.finetune_epochs in (0, 1)
    assert len(fit.history["val_loss"]) == 2


@pytest.mark.slow
def test_fine_tuning_that_never_beats_the_head_phase_is_undone_and_not_replayed(train_settings):
    train, val = _gray_split(np.random.default_rng(0))
    model = _pooled_model()
    # fine-tuning at lr 100 only gets worse
    ruinous = TrainParams(learning_rate=100.0, unfreeze_depth=1, head_units=8, dropout=0.0)
    plan = FitPlan(train_settings, ruinous, epochs=(2, 2), unfreeze=lambda m, depth: None)
    fit = fit_two_phase(model, train, val, plan)
    head, finetune = fit.history["val_loss"][:2], fit.history["val_loss"][2:]
    assert len(finetune) == 2 and min(finetune) > min(head)
    assert fit.finetune_epochs == 0 and fit.head_epochs == int(np.argmin(head)) + 1
    x = np.asarray(model_input(val.pixels.astype(np.float32)))
    restored = model.evaluate(
        x, keras.utils.to_categorical(val.labels, 2), verbose=0, return_dict=True
    )["loss"]
    assert restored == pytest.approx(min(head), rel=1e-4)


def _gray_split(rng: np.random.Generator) -> tuple[Arrays, Arrays]:
    """12 small gray images (radiographs are gray): 8 to train on, 4 to validate on."""
    gray = np.repeat(rng.integers(0, 255, (12, 16, 16, 1), dtype=np.uint8), 3, axis=3)
    return Arrays(gray[:8], np.array([0, 1] * 4)), Arrays(gray[8:], np.array([0, 1] * 2))


def _pooled_model() -> keras.Model:
    """No backbone: the pooled image into a softmax layer, for fits that unfreeze nothing."""
    layers = [keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(2, activation="softmax")]
    return keras.Sequential([keras.Input((16, 16, 3)), *layers])


def _with_train(settings, **train):
    return settings.model_copy(update={"train": settings.train.model_copy(update=train)})


PARAMS = TrainParams(learning_rate=5e-4, unfreeze_depth=1, head_units=8, dropout=0.0)


def test_a_two_phase_plan_trains_the_head_then_the_top_blocks(train_settings):
    settings = _with_train(
        train_settings, head_epochs=3, finetune_epochs=2, head_learning_rate=2e-3
    )
    logger = keras.callbacks.Callback()
    plan = FitPlan(settings, PARAMS, callbacks=[logger])
    head, finetune = plan.phases("images", validated=True)
    stopping, off = "early_stopping", dict(jit=False, eager=False, callbacks=(logger,))
    assert head == Phase("head", 3, 2e-3, 0, "images", stopping, **off)
    assert finetune == Phase("finetune", 2, 5e-4, 1, "images", stopping, **off)


def test_given_epochs_win_and_a_phase_without_epochs_is_left_out(train_settings):
    (head,) = FitPlan(train_settings, PARAMS, epochs=(4, 0)).phases("images", validated=False)
    assert (head.name, head.epochs, head.depth, head.validation) == ("head", 4, 0, "none")
    plan = FitPlan(train_settings, PARAMS, epochs=(0, 5))
    (finetune,) = plan.phases("activations", validated=True)
    assert (finetune.name, finetune.epochs, finetune.depth) == ("finetune", 5, 1)


def test_on_activations_the_head_alone_runs_eagerly_and_never_jit_compiled(train_settings):
    head, finetune = FitPlan(train_settings, PARAMS, jit=True).phases("activations", True)
    assert (head.eager, head.jit, finetune.eager, finetune.jit) == (True, False, False, True)
    head_only = dataclasses.replace(PARAMS, unfreeze_depth=0)
    plan = FitPlan(train_settings, head_only, jit=True)
    assert [(p.depth, p.eager, p.jit) for p in plan.phases("activations", True)] == [
        (0, True, False),
        (0, True, False),
    ]
    assert [(p.eager, p.jit) for p in plan.phases("images", True)] == [(False, True)] * 2


def test_fixed_epochs_keep_each_epochs_predictions_instead_of_stopping_early(train_settings):
    plan = FitPlan(train_settings, PARAMS, fixed_epochs=True)
    assert [p.validation for p in plan.phases("images", True)] == ["every_epoch"] * 2
    assert [p.validation for p in plan.phases("images", False)] == ["none"] * 2


class PhaseRecorder(keras.callbacks.Callback):
    """What each phase's fit ran: the trained model's input and trainable residual blocks, the
    optimizer's learning rate, how the step runs, and the epoch numbers."""

    def __init__(self) -> None:
        super().__init__()
        self.phases: list[dict] = []

    def on_train_begin(self, logs=None):
        paths = [variable.path for variable in self.model.trainable_weights]
        blocks = {match.group(1) for p in paths if (match := re.match(r"(conv\d_block\d+)_", p))}
        rate = self.model.optimizer.learning_rate
        self.phases.append(
            {
                "input": tuple(self.model.input_shape[1:]),
                "blocks": blocks,
                "head trains": "probabilities/kernel" in paths,
                "learning_rate": float(keras.ops.convert_to_numpy(rate)),
                "eager": self.model.run_eagerly,
                "jit": bool(self.model.jit_compile),
                "epochs": [],
            }
        )

    def on_epoch_begin(self, epoch, logs=None):
        self.phases[-1]["epochs"].append(epoch)


MODES = {
    # mode: (data path, validated, FitPlan options, the phases it plans)
    "images, two phases": ("images", False, {"epochs": (1, 2)}, ["head", "finetune"]),
    "images, head only, fixed epochs": (
        "images", True, {"epochs": (2, 0), "fixed_epochs": True}, ["head"],
    ),
    "activations, two phases, jit": (
        "activations", False, {"epochs": (1, 2), "jit": True}, ["head", "finetune"],
    ),
    "activations of a fold, fine-tuning only, fixed epochs": (
        "activations", True, {"epochs": (0, 2), "fixed_epochs": True}, ["finetune"],
    ),
}  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("mode", list(MODES))
def test_each_path_runs_the_phases_its_plan_lists(train_settings, mode):
    """The plan is what runs: per phase, the model the path trains (whole, on images, or its top,
    on cached activations), what trains, at which rate, how, for which epochs."""
    data, validated, options, names = MODES[mode]
    settings = _with_train(train_settings, head_learning_rate=2e-3)
    rng = np.random.default_rng(0)
    gray = np.repeat(rng.integers(0, 256, (9, 32, 32, 1), dtype=np.uint8), 3, axis=3)
    train, val = Arrays(gray[:6], np.array([0, 1] * 3)), Arrays(gray[6:], np.array([0, 1, 1]))
    keras.utils.set_random_seed(0)
    model = build_model(ModelSpec(("normal", "osteoporosis"), 32, 8, 0.0), None)
    cache = None
    if data == "activations":  # every image cached both ways, as cross-validation does
        augment = augmenter(settings.train.augment, settings.seed)
        every = np.arange(len(gray))
        shared = ActivationCache(
            gray, every, every, views=2, augment=augment, batch_size=4, floor_depth=1,
            budget_bytes=2**30,
        )  # fmt: skip
        cache = shared.fold(np.arange(6), np.arange(6, 9))
    recorder = PhaseRecorder()
    plan = FitPlan(settings, PARAMS, callbacks=[recorder], **options)

    fit = fit_two_phase(model, train, val if validated else None, plan, cache=cache)

    phases = plan.phases(data, validated)
    assert [phase.name for phase in phases] == names
    expected, first = [], 0
    for phase in phases:
        trains = RESIDUAL_BLOCKS[MAX_UNFREEZE_DEPTH - phase.depth :] if phase.depth else []
        inputs = (32, 32, 3) if cache is None else cache.val(phase.depth).shape[1:]
        expected.append(
            {
                "input": tuple(inputs),
                "blocks": set(trains),
                "head trains": True,
                "learning_rate": pytest.approx(phase.learning_rate),
                "eager": phase.eager,
                "jit": phase.jit,
                "epochs": list(range(first, first + phase.epochs)),
            }
        )
        first += phase.epochs
    assert recorder.phases == expected
    assert len(fit.history["loss"]) == first
    assert len(fit.val_proba) == (first if plan.fixed_epochs and validated else 0)


@pytest.mark.slow
def test_early_stopping_ends_a_phase_that_stops_improving(train_settings):
    """A phase at learning rate 0 never improves its validation loss: with patience 1 it stops
    after its second epoch, whatever its planned epochs, and its best epoch is its first."""
    settings = _with_train(train_settings, early_stopping_patience=1)
    train, val = _gray_split(np.random.default_rng(0))
    still = TrainParams(learning_rate=0.0, unfreeze_depth=1, head_units=8, dropout=0.0)
    recorder = PhaseRecorder()
    plan = FitPlan(
        settings, still, epochs=(0, 5), callbacks=[recorder], unfreeze=lambda m, depth: None
    )
    fit = fit_two_phase(_pooled_model(), train, val, plan)
    assert [phase["epochs"] for phase in recorder.phases] == [[0, 1]]
    assert fit.finetune_epochs == 1 and len(fit.history["val_loss"]) == 2


MIRRORED = """
import json, sys
import numpy as np
import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
from osteo_pipeline.config import load_settings
from osteo_pipeline.training.arrays import Arrays
from osteo_pipeline.training.backbone import build
from osteo_pipeline.training.fit import FitPlan, TrainParams, fit_two_phase, predict_proba
from osteo_pipeline.training.runtime import distribution, global_batch

rng = np.random.default_rng(0)
pixels = rng.integers(0, 255, (32, 32, 32, 3), dtype=np.uint8)
train = Arrays(pixels, np.arange(32) % 2)
results = {}
# One step an epoch (global batch = all 32 images): the two runs draw their shuffles through
# different dataset iterators, so with several steps an epoch their batches would differ.
for mode, per_device in (("off", 32), ("on", 16)):
    train_settings = {
        "batch_size": per_device, "head_epochs": 1, "finetune_epochs": 1, "distribute": mode,
        "augment": {"enabled": False},
    }
    settings = load_settings(overrides={
        "model": {"weights": "none", "input_size": 32, "head_units": 8, "dropout": 0.0},
        "train": train_settings,
    }, environ={})
    keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    strategy = distribution(settings)
    params = TrainParams(1e-3, 1, 8, 0.0)
    with strategy.scope():
        model, _ = build(settings, params, train.pixels)
        fit = fit_two_phase(model, train, None, FitPlan(global_batch(settings, strategy), params))
    results[mode] = {
        "replicas": strategy.num_replicas_in_sync,
        "loss": fit.history["loss"],
        "proba": predict_proba(model, pixels, 16).tolist(),
    }
json.dump(results, sys.stdout)
"""


@pytest.mark.slow
def test_mirrored_training_on_two_logical_devices_matches_one_device():
    """``train.distribute``: the CPU split into two logical devices trains under MirroredStrategy
    (per-device batch 16, global 32) to the same model as one device with batch 32."""
    import json
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", MIRRORED], capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout)
    assert results["off"]["replicas"] == 1 and results["on"]["replicas"] == 2
    np.testing.assert_allclose(results["on"]["loss"], results["off"]["loss"], rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(results["on"]["proba"], results["off"]["proba"], atol=1e-3)


@pytest.mark.slow
def test_the_served_copy_of_a_mixed_precision_model_runs_in_float32():
    """A model trained under mixed precision (on a GPU) is served in float32: the saved copy must
    not carry the float16 policy to a CPU server."""
    from osteo_pipeline.core.model import ModelSpec, build_model, inference_copy

    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = build_model(ModelSpec(("normal", "osteoporosis"), 32, 8, 0.0), None)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert any(layer.dtype_policy.name == "mixed_float16" for layer in model.layers)
    served = inference_copy(model)
    policies = {layer.dtype_policy.name for layer in served.layers} | {
        layer.dtype_policy.name for layer in served.get_layer("resnet50").layers
    }
    assert policies == {"float32"}
    x = model_input(np.random.default_rng(0).integers(0, 255, (2, 32, 32, 3), dtype=np.uint8))
    np.testing.assert_allclose(served(x).numpy(), model(x).numpy().astype(np.float32), atol=2e-2)
    assert served(x).dtype == "float32"
