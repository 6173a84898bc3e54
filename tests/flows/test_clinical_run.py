"""`osteo run MANIFEST`'s flow on the synthetic clinical corpus, whose folder names carry the
patient IDs as PACS exports do: it trains, registers and gates, and afterwards no store holds any
of those IDs in plain text: the MLflow store and artifacts, the registry, Optuna's storage, the
outputs, the caches, and Prefect's artifacts, logs and flow-run parameters."""

import csv
import json
from pathlib import Path

import pytest

from flows.retrain import retrain_flow
from osteo_pipeline.steps.synth_clinical import write_clinical_dataset

pytestmark = pytest.mark.usefixtures("prefect_harness")


def _prefect_text() -> str:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        artifacts = [a.model_dump(mode="json") for a in client.read_artifacts()]
        logs = [log.message for log in client.read_logs()]
        runs = [r.parameters for r in client.read_flow_runs()]
    return json.dumps([artifacts, logs, runs])


def test_a_manifest_runs_end_to_end_and_no_store_keeps_a_patient_id(
    tmp_path_factory, config_file, train_settings, tmp_path, monkeypatch
):
    export = tmp_path_factory.mktemp("pacs") / "export"  # outside the stores searched below
    write_clinical_dataset(export, list(train_settings.data.classes), 8, 64, 5)
    with open(export / "manifest.csv", newline="", encoding="utf-8") as handle:
        ids = {row["patient_id"] for row in csv.DictReader(handle)}
    assert all(any(p.name == i for p in export.iterdir()) for i in ids)  # IDs name folders
    monkeypatch.setenv("OSTEO_PATIENT_KEY", "a key only this test knows, long enough")

    result = retrain_flow(str(export / "manifest.csv"), str(config_file))

    assert result["version"] and result["dataset_hash"]
    split = json.loads((Path(result["run_dir"]) / "split.json").read_text())
    assert split["patient_check"]["shared"] == 0 and split["files"][0]["path"].startswith("row ")
    stores = [p for p in tmp_path.rglob("*") if p.is_file()]
    card = next(p for p in stores if p.name == f"model_card_v{result['version']}.md").read_text()
    assert "## Per patient exam (n = " in card and "## By sex and age band" in card
    assert any(p.name == "mlflow.db" for p in stores) and any(p.name == "optuna.db" for p in stores)
    assert len(stores) > 20
    database = next(p for p in stores if p.name == "mlflow.db").read_bytes()
    assert str(export).encode() in database  # the search reads the stores' plain text
    found = {
        str(path.relative_to(tmp_path)): sorted(i for i in ids if i.encode() in path.read_bytes())
        for path in stores
    }
    assert not {path: hit for path, hit in found.items() if hit}
    prefect = _prefect_text()
    assert str(export) in prefect  # the search reaches this run's records
    assert not [i for i in ids if i in prefect]
