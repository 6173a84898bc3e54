"""Where and how training runs: seeds, precision, XLA, data-parallel devices."""

from __future__ import annotations

import logging
import os

import keras

from osteo_pipeline.config import Settings


def configure_runtime(settings: Settings) -> dict[str, bool]:
    """Seed everything; mixed precision and XLA when a GPU is present (or forced by config)."""
    import tensorflow as tf

    tf.get_logger().setLevel(logging.ERROR)  # retracing notices between trials are expected
    keras.utils.set_random_seed(settings.seed)
    os.environ.setdefault("TF_DETERMINISTIC_OPS", "1")
    gpus = tf.config.list_physical_devices("GPU")
    for device in gpus:  # take GPU memory as needed: local tune workers may share one GPU
        try:
            tf.config.experimental.set_memory_growth(device, True)
        except RuntimeError:  # this process already initialised its GPUs
            pass
    gpu = bool(gpus)
    mixed = settings.train.mixed_precision == "on" or (
        settings.train.mixed_precision == "auto" and gpu
    )
    keras.mixed_precision.set_global_policy("mixed_float16" if mixed else "float32")
    xla = settings.train.xla == "on" or (settings.train.xla == "auto" and gpu)
    return {"gpu": gpu, "mixed_precision": mixed, "xla": xla}


def distribution(settings: Settings):  # noqa: ANN201 - tf.distribute.Strategy
    """``tf.distribute.MirroredStrategy`` over this machine's GPUs when there are several
    (``train.distribute: auto``), or over every logical device of one kind (``on``: GPUs, else
    CPUs, which tests split into logical devices); otherwise TensorFlow's default strategy, whose
    scope changes nothing. Build, compile and fit a model inside its ``scope()``."""
    import tensorflow as tf

    mode = settings.train.distribute
    gpus = tf.config.list_logical_devices("GPU")
    devices = gpus or tf.config.list_logical_devices("CPU")
    if mode == "off" or len(devices) < 2 or (mode == "auto" and len(gpus) < 2):
        return tf.distribute.get_strategy()
    return tf.distribute.MirroredStrategy([d.name for d in devices])


def global_batch(settings: Settings, strategy) -> Settings:  # noqa: ANN001 - tf.distribute.Strategy
    """``settings`` with the global batch size: ``train.batch_size`` per replica, so a step sees
    the same images per device however many devices share it."""
    replicas = strategy.num_replicas_in_sync
    if replicas == 1:
        return settings
    return settings.model_copy(
        update={
            "train": settings.train.model_copy(
                update={"batch_size": settings.train.batch_size * replicas}
            )
        }
    )
