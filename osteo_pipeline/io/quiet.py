"""Keep TensorFlow's import-time C++ banners off a user's terminal.

``TF_CPP_MIN_LOG_LEVEL=3`` silences TensorFlow's own log, but on a machine without a GPU the
import still writes absl lines ("Could not find cuda drivers", "All log messages before
absl::InitializeLog()") straight to file descriptor 2, where Python cannot filter them. The CLI
installs :func:`quiet_tensorflow_import`: the first ``import tensorflow`` runs with descriptor 2
captured, and every captured line that is not one of those banners is written back to stderr."""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

BANNERS = re.compile(
    r"absl::InitializeLog|cudart_stub|cuda_(dnn|fft|blas)\.cc|Unable to register cu(DNN|FFT|BLAS)"
    r"|computation_placer|oneDNN custom operations|TensorFlow binary is optimized"
    r"|rebuild TensorFlow with the appropriate compiler"
    r"|TF-TRT Warning|cuInit"
)


@contextmanager
def filtered_stderr() -> Iterator[None]:
    """Capture file descriptor 2; on exit, write back every line but the banners."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = [
                line
                for line in captured.read().decode("utf-8", "replace").splitlines()
                if not BANNERS.search(line)
            ]
            if kept:
                sys.stderr.write("\n".join(kept) + "\n")


class _QuietImport(importlib.abc.MetaPathFinder):
    """Wraps the loading of one top-level module in :func:`filtered_stderr`, once."""

    def __init__(self, name: str) -> None:
        self.name = name

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        load = spec.loader.exec_module

        def exec_module(module: Any) -> None:
            with filtered_stderr():
                load(module)

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


def quiet_tensorflow_import() -> None:
    """Filter the banners of the first ``import tensorflow`` (a no-op once it is imported, or when
    the user set ``TF_CPP_MIN_LOG_LEVEL`` below 3 to see TensorFlow's messages)."""
    if "tensorflow" in sys.modules or os.environ.get("TF_CPP_MIN_LOG_LEVEL", "3") != "3":
        return
    if not any(isinstance(f, _QuietImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietImport("tensorflow"))
