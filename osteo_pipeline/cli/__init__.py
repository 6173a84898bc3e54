"""The ``osteo`` command. Results go to stdout, logs and errors to stderr. Exit codes: 0 ok,
1 a check failed, 2 usage or input error.

Each command parses its arguments, calls one step and prints what it returns; a command imports
its step (and so TensorFlow, MLflow, Prefect) only when it runs."""

from __future__ import annotations

import os

# TensorFlow's C++ start-up chatter (CUDA probes on a machine without a GPU, oneDNN banners):
# silenced unless the user asks for it by setting the variable.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # its database set-up notices
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")

# The command modules register their commands on `app` in this order (the order of `--help`).
from osteo_pipeline.cli import data, training, registry, evaluation, operations  # noqa: E402, F401, I001
from osteo_pipeline.cli.common import app  # noqa: E402
from osteo_pipeline.cli.logs import configure_logging  # noqa: E402

app.callback()(configure_logging)

__all__ = ["app"]
