"""Log lines on stderr for the ``osteo`` command: progress of long steps from the package at INFO,
the libraries' own INFO chatter (MLflow's database set-up, Optuna's study notices) kept out.

The handler sits on the root logger and the package's records keep propagating, so whatever else
listens at the root (pytest's ``caplog``, an embedding application) still receives them. Setting
up again (each in-process call) replaces the handler instead of adding a second one."""

from __future__ import annotations

import logging
import sys
from typing import TextIO

from rich.logging import RichHandler

from osteo_pipeline.cli.common import console, fit_tables_to_pipe

PACKAGE = "osteo_pipeline"
QUIETED = ("mlflow", "alembic", "optuna", "absl", "tensorflow", "great_expectations")


class PlainStderrHandler(logging.StreamHandler):
    """One plain line per record, never wrapped (for a pipe or a log file), written to whatever
    ``sys.stderr`` is when the record comes: a test runner swaps it between calls."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _value: object) -> None:
        """The stream is always the current ``sys.stderr``."""


def _shown(record: logging.LogRecord) -> bool:
    """The package's records from INFO up, other loggers' from WARNING (some libraries set their
    own loggers to INFO: Great Expectations announces every temporary docs folder)."""
    ours = record.name == PACKAGE or record.name.startswith(f"{PACKAGE}.")
    return ours or record.levelno >= logging.WARNING


def _not_pickling_notice(record: logging.LogRecord) -> bool:
    """MLflow warns on every logged model that a Python object is pickled: by design here."""
    return "Passing a Python object as `python_model`" not in record.getMessage()


def configure_logging() -> None:
    """Progress of long steps (files, trials, epochs, folds) as log lines on stderr."""
    from osteo_pipeline.io.quiet import quiet_tensorflow_import

    quiet_tensorflow_import()
    fit_tables_to_pipe()
    root = logging.getLogger()
    for earlier in [h for h in root.handlers if getattr(h, "osteo_cli", False)]:
        root.removeHandler(earlier)
    handler: logging.Handler = (
        RichHandler(console=console, show_path=False, log_time_format="%H:%M:%S")
        if console.is_terminal
        else PlainStderrHandler()
    )
    handler.osteo_cli = True  # type: ignore[attr-defined]
    handler.addFilter(_shown)
    root.addHandler(handler)
    logging.getLogger(PACKAGE).setLevel(logging.INFO)
    for name in QUIETED:
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.getLogger("mlflow.pyfunc").addFilter(_not_pickling_notice)
