"""The commands' success paths, run as a user runs them (the installed `osteo`, its own process):
results on stdout, progress on stderr. One candidate trained by `osteo train` is shared by the
module; its data is a blind batch (one picture under both classes, ``tests/small.py``), so its
metrics are known exactly (balanced accuracy 0.5) and the real floors refuse it every time."""

from __future__ import annotations

import json
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pytest
import yaml
from mlflow.tracking import MlflowClient

from tests.servers import BIN
from tests.small import small_training_settings, write_blind_dataset

pytestmark = pytest.mark.slow

RUN_ID = r"[0-9a-f]{32}"


def osteo(*args: str, root: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    """`osteo ARGS` in ``root`` with a clean environment: no developer settings, caches and
    Prefect state under ``root``, its own temporary Prefect server."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("OSTEO_", "MLFLOW_", "PREFECT_")) and k != "COLUMNS"
    }
    env |= {"XDG_CACHE_HOME": str(root / "xdg-cache"), "PREFECT_HOME": str(root / "prefect")}
    return subprocess.run(
        [str(BIN / "osteo"), *args],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _succeeded(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


@dataclass(frozen=True)
class Store:
    """A private tracking store, registry and study storage, with the settings file for them."""

    root: Path
    config: Path
    data: Path

    def client(self) -> MlflowClient:
        settings = yaml.safe_load(self.config.read_text())
        mlflow.set_tracking_uri(settings["tracking"]["uri"])
        return MlflowClient()


def _store(root: Path) -> Store:
    settings = small_training_settings(root)  # the real default floors
    assert settings.registry.floors == {"balanced_accuracy": 0.6, "recall": 0.5}
    config = root / "config.yaml"
    config.write_text(yaml.safe_dump(settings.model_dump(mode="json")))
    write_blind_dataset(root / "blind", list(settings.data.classes), 10)
    return Store(root, config, root / "blind")


@dataclass(frozen=True)
class Trained:
    store: Store
    stdout: str
    stderr: str
    run_id: str


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """`osteo train --params config` once: the candidate the other commands list, predict with
    and gate."""
    store = _store(tmp_path_factory.mktemp("cli"))
    result = osteo(
        "train",
        str(store.data),
        "--params",
        "config",
        "--config",
        str(store.config),
        root=store.root,
    )
    stdout = _succeeded(result)
    found = re.search(rf"\brun ({RUN_ID})\b", stdout)
    assert found, stdout
    return Trained(store, stdout, result.stderr, found.group(1))


def test_train_prints_its_test_metrics_run_and_registered_version_on_stdout(trained):
    stdout = trained.stdout
    assert re.search(r"balanced_accuracy\D+0\.500\b", stdout), stdout  # the blind candidate's
    assert re.search(r"\broc_auc\b", stdout) and re.search(r"\bspecificity\b", stdout), stdout
    assert re.search(r"registered osteo-knee version 1\b.*'staging'", stdout), stdout
    assert "refit epoch" in trained.stderr and "refit epoch" not in stdout  # progress: stderr
    client = trained.store.client()
    run = client.get_run(trained.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["osteo.kind"] == "train"
    version = client.get_model_version("osteo-knee", "1")
    assert version.run_id == trained.run_id and version.aliases == ["staging"]


def test_models_lists_the_trained_version_with_its_numbers_as_numbers(trained):
    """The table view is covered in tests/test_cli.py on hand-made versions."""
    store = trained.store
    listed = osteo("models", "--json", "--config", str(store.config), root=store.root)
    rows = json.loads(_succeeded(listed))
    assert len(rows) == 1
    row = rows[0]
    assert (row["model"], row["version"], row["aliases"], row["run_id"]) == (
        "osteo-knee",
        1,
        ["staging"],
        trained.run_id,
    )
    assert row["balanced_accuracy"] == 0.5 and isinstance(row["specificity"], float)
    run = store.client().get_run(trained.run_id)
    assert len(row["dataset_hash"]) == 12 and run.data.tags["dataset_hash"].startswith(
        row["dataset_hash"]
    )


def test_predict_classifies_files_with_the_logged_and_the_registered_model(trained):
    store = trained.store
    images = sorted((store.data / "normal").iterdir())[:2]
    records = json.loads(
        _succeeded(
            osteo(
                "predict",
                f"runs:/{trained.run_id}/model",
                *map(str, images),
                "--json",
                "--config",
                str(store.config),
                root=store.root,
            )
        )
    )
    assert [r["file"] for r in records] == [str(i) for i in images]
    for record in records:
        assert record["label"] in {"normal", "osteoporosis"}
        assert record["model_version"] == ""  # a run's model is no registered version
        assert record["p_normal"] + record["p_osteoporosis"] == pytest.approx(1.0, abs=1e-5)
    # one picture: one answer
    assert records[0]["p_normal"] == pytest.approx(records[1]["p_normal"], abs=1e-6)
    table = _succeeded(
        osteo(
            "predict",
            "models:/osteo-knee@staging",
            str(images[0]),
            "--config",
            str(store.config),
            root=store.root,
        )
    )
    line = next(line for line in table.splitlines() if images[0].name in line)
    assert records[0]["label"] in line and f"{records[0]['p_normal']:.3f}" in line, table
    assert "osteo-knee/1" in table, table  # the alias, resolved: the version that answered


def test_a_refused_promote_exits_1_names_the_floor_and_leaves_production_alone(trained):
    store = trained.store
    result = osteo("promote", "--config", str(store.config), root=store.root)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "REJECTED" in result.stdout, result.stdout + result.stderr
    assert "test balanced_accuracy 0.500 below floor 0.600" in result.stdout
    assert re.search(r"production unchanged \(none\)", result.stdout), result.stdout
    client = store.client()
    assert client.get_registered_model("osteo-knee").aliases == {"staging": 1}
    assert client.get_model_version("osteo-knee", "1").tags["gate.decision"] == "rejected"


def test_run_retrains_through_the_flow_and_prints_the_version_and_the_gates_verdict(
    tmp_path,
):
    """`osteo run` (its own temporary Prefect server): the flow's result on stdout, its progress
    on stderr. The blind batch's version is registered and refused by the floors."""
    store = _store(tmp_path)
    result = osteo(
        "run",
        str(store.data),
        "--config",
        str(store.config),
        "--set",
        "tune.trials=1",
        root=store.root,
    )
    stdout = _succeeded(result)
    assert re.search(r"version 1 not promoted\b", stdout), stdout
    assert "test balanced_accuracy 0.500 below floor 0.600" in stdout
    assert re.search(rf"\brun ({RUN_ID})\b", stdout) and re.search(r"dataset [0-9a-f]{16}", stdout)
    assert "refit epoch" in result.stderr and "refit epoch" not in stdout  # progress: stderr
    run_id = re.search(rf"\brun ({RUN_ID})\b", stdout).group(1)
    version = store.client().get_model_version("osteo-knee", "1")
    assert version.run_id == run_id and version.tags["gate.decision"] == "rejected"
