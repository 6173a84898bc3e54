"""Commands that do not train or load a model never import TensorFlow: each runs in a fresh
interpreter (as the ``osteo`` script does), which reports afterwards whether TensorFlow was
imported."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

# Runs the app as the console script does, then says whether TensorFlow got imported.
RUN_OSTEO = """
import sys
from osteo_pipeline.cli import app
try:
    app(sys.argv[1:], prog_name="osteo")
except SystemExit as done:
    code = done.code
print(f"tensorflow imported: {'tensorflow' in sys.modules}", file=sys.stderr)
print(f"great_expectations imported: {'great_expectations' in sys.modules}", file=sys.stderr)
sys.exit(code)
"""
# Seconds a command may take here. A command that imports TensorFlow is caught by the module
# check, not by the clock (the import takes 4-20 s, under the bound on a fast machine).
QUICK_S = 60


def _osteo(*args: str, cwd: Path) -> tuple[subprocess.CompletedProcess, float]:
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", RUN_OSTEO, *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
    )
    return done, time.perf_counter() - started


@pytest.mark.parametrize(
    ("args", "code", "on_stdout", "on_stderr"),
    [
        (["config", "--set", "seed=5"], 0, "seed: 5", ""),
        (["models"], 0, "no registered models yet", ""),
        (["validate", "/nonexistent"], 2, "", "error: data folder not found: /nonexistent"),
    ],
    ids=["config", "models", "missing-folder"],
)
def test_commands_without_a_model_never_import_tensorflow(
    args, code, on_stdout, on_stderr, tmp_path
):
    store = [
        "--set",
        f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
        "--set",
        f"tracking.artifact_root={tmp_path / 'mlruns'}",
    ]
    done, seconds = _osteo(*args, *store, cwd=tmp_path)
    assert done.returncode == code, done.stdout + done.stderr
    assert on_stdout in done.stdout and on_stderr in done.stderr, done.stdout + done.stderr
    assert "tensorflow imported: False" in done.stderr, done.stderr
    assert seconds < QUICK_S


@pytest.mark.parametrize("command", ["validate", "split", "tune", "compare", "crops"])
def test_a_missing_data_folder_is_refused_before_great_expectations_loads(command, tmp_path):
    done, _ = _osteo(command, str(tmp_path / "absent"), cwd=tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"error: data folder not found: {tmp_path / 'absent'}" in done.stderr
    assert "great_expectations imported: False" in done.stderr, done.stderr


def test_a_python_c_process_that_imports_the_pipeline_runs_on_with_pyspark_installed():
    """PySpark's Spark Connect client exits a `python -c` process with status 0 when imported
    there (it takes it for a doctest run), and Great Expectations imports it whenever PySpark is
    installed: a tune worker started that way ended silently. The package marks it unavailable."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", "import osteo_pipeline.core.expectations; print('still here')"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0 and "still here" in done.stdout, done.stderr[-2000:]
