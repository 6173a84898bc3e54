import keras
import numpy as np
import pytest

from osteo_pipeline.core.model import WeightsUnavailableError
from osteo_pipeline.core.preprocess import model_input
from osteo_pipeline.training import fit as train_step
from osteo_pipeline.training.arrays import Arrays
from osteo_pipeline.training.fit import TrainParams, build, fit_two_phase

pytestmark = pytest.mark.slow


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """An empty Keras cache, and Keras' download fails as it does without network."""
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras-home"))

    def fake(*args, **kwargs):
        raise Exception(
            "URL fetch failure on https://storage.googleapis.com/...: None -- [Errno -3]"
        )

    monkeypatch.setattr(keras.utils, "get_file", fake)


def test_imagenet_unavailable_fails_clearly(train_settings, offline):
    settings = train_settings.model_copy(
        update={"model": train_settings.model.model_copy(update={"weights": "imagenet"})}
    )
    with pytest.raises(WeightsUnavailableError, match="OSTEO_BACKBONE_WEIGHTS"):
        build(settings, TrainParams.from_settings(settings), np.zeros((2, 32, 32, 3), np.uint8))


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
    fit = fit_two_phase(
        model, train, val, TrainParams.from_settings(train_settings), train_settings
    )
    assert calls == [
        {"n": 6, "augment": True, "shuffle": True},
        {"n": 3, "augment": False, "shuffle": False},
    ]
    assert fit.head_epochs == 1 and fit.finetune_epochs in (
        0,
        1,
    )  # 0: the fine-tune epoch did not help
    assert len(fit.history["val_loss"]) == 2


def test_fine_tuning_that_never_beats_the_head_phase_is_undone_and_not_replayed(train_settings):
    rng = np.random.default_rng(0)
    gray = np.repeat(
        rng.integers(0, 255, (12, 16, 16, 1), dtype=np.uint8), 3, axis=3
    )  # radiographs are gray
    train, val = Arrays(gray[:8], np.array([0, 1] * 4)), Arrays(gray[8:], np.array([0, 1] * 2))
    model = keras.Sequential(
        [
            keras.Input((16, 16, 3)),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(2, activation="softmax"),
        ]
    )
    ruinous = TrainParams(
        learning_rate=100.0, unfreeze_depth=1, head_units=8, dropout=0.0
    )  # fine-tuning at lr 100 only gets worse
    fit = fit_two_phase(
        model, train, val, ruinous, train_settings, epochs=(2, 2), unfreeze=lambda m, depth: None
    )
    head, finetune = fit.history["val_loss"][:2], fit.history["val_loss"][2:]
    assert len(finetune) == 2 and min(finetune) > min(head)
    assert fit.finetune_epochs == 0 and fit.head_epochs == int(np.argmin(head)) + 1
    x = np.asarray(model_input(val.pixels.astype(np.float32)))
    restored = model.evaluate(
        x, keras.utils.to_categorical(val.labels, 2), verbose=0, return_dict=True
    )["loss"]
    assert restored == pytest.approx(min(head), rel=1e-4)


MIRRORED = """
import json, sys
import numpy as np
import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
from osteo_pipeline.config import load_settings
from osteo_pipeline.training.arrays import Arrays
from osteo_pipeline.training.fit import TrainParams, build, fit_two_phase, predict_proba
from osteo_pipeline.training.runtime import distribution, global_batch

rng = np.random.default_rng(0)
pixels = rng.integers(0, 255, (32, 32, 32, 3), dtype=np.uint8)
train = Arrays(pixels, np.arange(32) % 2)
results = {}
# One step an epoch (global batch = all 32 images): the two runs draw their shuffles through
# different dataset iterators, so with several steps an epoch their batches would differ.
for mode, per_device in (("off", 32), ("on", 16)):
    settings = load_settings(overrides={
        "model": {"weights": "none", "input_size": 32, "head_units": 8, "dropout": 0.0},
        "train": {"batch_size": per_device, "head_epochs": 1, "finetune_epochs": 1, "distribute": mode, "augment": {"enabled": False}},
    }, environ={})
    keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    strategy = distribution(settings)
    params = TrainParams(1e-3, 1, 8, 0.0)
    with strategy.scope():
        model, _ = build(settings, params, train.pixels)
        fit = fit_two_phase(model, train, None, params, global_batch(settings, strategy))
    results[mode] = {
        "replicas": strategy.num_replicas_in_sync,
        "loss": fit.history["loss"],
        "proba": predict_proba(model, pixels, 16).tolist(),
    }
json.dump(results, sys.stdout)
"""


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
