"""A Keras callback that reports each epoch to the active MLflow run and the log."""

from __future__ import annotations

import logging

import keras
import mlflow

log = logging.getLogger(__name__)


class EpochLogger(keras.callbacks.Callback):
    """Per-epoch Keras logs (loss, accuracy, val_*) to the active MLflow run, step = epoch, and a
    progress line (``label`` names what is training: a trial, a fold, the refit)."""

    def __init__(self, prefix: str = "", label: str = "") -> None:
        super().__init__()
        self.prefix = prefix
        self.label = label

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        if logs:
            values = {k: float(v) for k, v in logs.items() if k != "learning_rate"}
            mlflow.log_metrics({f"{self.prefix}{k}": v for k, v in values.items()}, step=epoch)
            shown = ", ".join(
                f"{k} {values[k]:.4f}" for k in ("loss", "val_loss", "val_accuracy") if k in values
            )
            log.info("%sepoch %d: %s", f"{self.label} " if self.label else "", epoch + 1, shown)
