"""``osteo score``: rows for every file (an error row for a corrupt one), a resume that scores each
image once even after a kill, the worklist's thresholds as documented with their test-split
rates and intervals, and the Spark engine giving the local engine's rows."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from osteo_pipeline.config import Settings
from osteo_pipeline.core.worklist import (
    REFER,
    RULE_IN,
    RULE_OUT,
    bands,
    choose_thresholds,
    risk_text,
    threshold_performance,
)
from osteo_pipeline.io.run_artifacts import TrainingRun
from osteo_pipeline.steps.score import score_archive
from osteo_pipeline.steps.synth import write_synthetic_dataset
from tests.conftest import TINY
from tests.small import clear_user_env, small_training_settings


@dataclass(frozen=True)
class Production:
    settings: Settings
    archive: Path  # synthetic images in class folders, plus one corrupt file
    version: str
    config: Path  # the settings as YAML, for the CLI


@pytest.fixture(scope="module")
def production(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Production]:
    """A test-double classifier (tests/registry_helpers.py) registered and promoted, and an
    archive of 42 files to score: 40 images, a copy under an odd name, a corrupt file."""
    from osteo_pipeline.steps.registry import promote, register_run
    from osteo_pipeline.steps.split import split_dataset
    from osteo_pipeline.steps.validate import validate_folder
    from tests.registry_helpers import log_candidate

    root = tmp_path_factory.mktemp("score")
    settings = small_training_settings(root)
    with pytest.MonkeyPatch.context() as environment:
        clear_user_env(environment, root)
        data = root / "data"
        write_synthetic_dataset(data, list(settings.data.classes), 12, TINY, 0)
        split = split_dataset(validate_folder(data, settings), settings)
        version = register_run(log_candidate(split, settings, 1.0), settings)
        assert promote(settings).passed
        archive = root / "archive"
        write_synthetic_dataset(archive, list(settings.data.classes), 20, TINY, 7)
        # a name Hadoop would read as a pattern: the Spark engine scores it on the driver
        first = sorted((archive / "normal").glob("*.png"))[0]
        (archive / "normal" / "[odd] name.png").write_bytes(first.read_bytes())
        (archive / "normal" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
        config = root / "config.yaml"
        config.write_text(yaml.safe_dump(settings.model_dump(mode="json")))
        yield Production(settings, archive, version, config)


def _score(production: Production, out: Path, **scoring) -> pd.DataFrame:
    settings = production.settings.model_copy(
        update={"scoring": production.settings.scoring.model_copy(update=scoring)}
    )
    result = score_archive(production.archive, out, settings)
    return result, pd.read_parquet(result.scores)


def test_every_file_gets_one_row_and_a_corrupt_one_an_error(production, tmp_path):
    result, rows = _score(production, tmp_path / "out", part_size=16)
    assert result.files == 42 and result.scored == 42 and result.skipped == 0
    assert rows["path"].is_unique and len(rows) == 42
    broken = rows.set_index("path").loc["normal/broken.png"]
    assert (
        broken["error"]
        == "not an image (UnidentifiedImageError: cannot identify image file the file)"
    )
    assert np.isnan(broken["risk"]) and broken["sha256"]
    good = rows[rows["error"].isna()]
    assert (good["model_version"] == production.version).all()
    assert (good["model_name"] == production.settings.registry.model_name).all()
    assert np.allclose(good["p_normal"] + good["p_osteoporosis"], 1.0)
    assert (good["risk"] == good["p_osteoporosis"]).all()
    # the test double reads the synthetic cue: the osteoporosis folder ranks high
    worklist = pd.read_csv(tmp_path / "out" / "worklist.csv")
    assert len(worklist) == 41 and worklist["risk"].is_monotonic_decreasing
    top = worklist.head(10)["path"]
    assert top.str.startswith("osteoporosis/").mean() >= 0.8


def test_a_rerun_skips_what_this_version_scored(production, tmp_path):
    _score(production, tmp_path / "out")
    result, rows = _score(production, tmp_path / "out")
    assert result.scored == 0 and result.skipped == 42
    assert len(rows) == 42
    # a changed file is a new content hash: scored again, the old row kept beside it
    changed = production.archive / "normal" / "extra.png"
    shutil.copy(next((production.archive / "osteoporosis").glob("*.png")), changed)
    try:
        result, rows = _score(production, tmp_path / "out")
    finally:
        changed.unlink()
    assert result.scored == 1 and result.skipped == 42


def test_thresholds_are_chosen_as_documented_and_reported_on_test(production, tmp_path):
    result, _ = _score(production, tmp_path / "out", target_sensitivity=0.8)
    worklist = result.worklist
    run = TrainingRun.of_model(result.model.uri)
    found = run.calibration_predictions
    risk = np.asarray(found["proba"])[:, 1]
    positive = np.asarray(found["labels"]) == 1
    t = worklist.thresholds
    assert t == choose_thresholds(risk, positive, 0.8, 0.9, "validation predictions")
    # the documented guarantees hold on the predictions they were chosen on
    assert (risk[positive] >= t.rule_out).mean() >= 0.8
    assert (risk[~positive] <= t.rule_in).mean() >= 0.9
    for cut in ("rule_out", "rule_in"):
        for name in ("sensitivity", "specificity"):
            value = worklist.performance[cut][name]
            assert value["low"] <= value["value"] <= value["high"], (cut, name, value)
    bands = worklist.table.set_index("path")
    assert (bands.loc[bands["band"] == RULE_OUT, "risk"] < round(t.rule_out, 4) + 1e-4).all()
    assert (bands.loc[bands["band"] == RULE_IN, "risk"] > round(t.rule_in, 4) - 1e-4).all()
    page = (tmp_path / "out" / "worklist.html").read_text()
    assert "not a diagnosis" in page and "sensitivity" in page


def test_choose_thresholds_by_hand():
    risk = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95])
    positive = np.array([0, 0, 0, 1, 0, 1, 0, 1, 1, 1], bool)
    t = choose_thresholds(risk, positive, 0.8, 0.8, "val")
    # 4 of 5 positives at or above 0.6; 4 of 5 negatives at or below 0.5
    assert (t.rule_out, t.rule_in) == (0.6, 0.6)  # rule-in raised to rule-out: one cut
    t = choose_thresholds(risk, positive, 1.0, 0.6, "val")
    assert (t.rule_out, t.rule_in) == (0.4, 0.4)
    t = choose_thresholds(risk, positive, 0.6, 1.0, "val")
    assert (t.rule_out, t.rule_in) == (0.8, 0.8)
    t = choose_thresholds(risk, positive, 1.0, 1.0, "val")
    assert (t.rule_out, t.rule_in) == (0.4, 0.7)
    assert not t.one_cut and bands([0.4, 0.7, 0.71], t).tolist() == [REFER, REFER, RULE_IN]


def test_one_cut_rules_in_at_the_cut_and_keeps_specificity():
    # a model whose positives saturate at 1.0 (the demo's): the cut is 1.0 and they are ruled in
    risk = np.array([0.0, 0.1, 0.2, 0.3, 0.999, 1.0, 1.0, 1.0, 1.0])
    positive = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1], bool)
    t = choose_thresholds(risk, positive, 0.9, 0.8, "val")
    assert (t.rule_out, t.rule_in, t.one_cut) == (1.0, 1.0, True)
    assert bands(risk, t).tolist() == [RULE_OUT] * 5 + [RULE_IN] * 4
    assert t.describe() == "rule out below 1.0000, rule in at or above 1.0000"
    rates = threshold_performance(risk, positive, t, n_resamples=20)["rule_in"]
    assert rates["specificity"]["value"] >= 0.8 and rates["sensitivity"]["value"] == 1.0
    # the same cut met by a tie among the negatives is not one cut: the tie is referred
    tied = choose_thresholds(
        np.array([0.2, 0.5, 0.5, 0.9]), np.array([0, 0, 1, 1], bool), 1, 1, "v"
    )
    assert (tied.rule_out, tied.rule_in, tied.one_cut) == (0.5, 0.5, False)
    assert bands([0.5], tied).tolist() == [REFER]


def test_risk_text_tells_a_near_certain_cut_from_one():
    assert risk_text(0.25) == "0.2500"
    assert risk_text(0.99999) == "0.99999"  # not 1.0000
    assert risk_text(0.0000012) == "0.000001"  # not 0.0000
    assert risk_text(1.0) == "1.0000"


def test_resume_after_a_kill_scores_each_image_once(production, tmp_path):
    out = tmp_path / "out"
    command = [
        sys.executable, "-m", "osteo_pipeline.cli", "score", str(production.archive),
        "--out", str(out), "--config", str(production.config),
        "--set", "scoring.part_size=2", "--set", "scoring.batch_size=2",
    ]  # fmt: skip
    env = os.environ | {"MLFLOW_TRACKING_URI": production.settings.tracking.uri}
    first = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while len(list((out / "parts").glob("*.parquet"))) < 2 if (out / "parts").is_dir() else True:
        assert first.poll() is None, first.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.wait()
    parts_before = len(list((out / "parts").glob("*.parquet")))
    assert 2 <= parts_before < 21  # killed part-way (21 parts in all)
    second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr
    rows = pd.read_parquet(out / "scores.parquet")
    assert len(rows) == 42 and rows["path"].is_unique  # each image scored once
    done = 2 * parts_before
    assert re.search(rf"{42 - done} scored now \(\d errors\), {done} already", second.stdout)


def test_spark_gives_the_local_engine_rows(production, tmp_path):
    pytest.importorskip("pyspark")
    if shutil.which("java") is None:
        pytest.skip("no Java")
    _, local = _score(production, tmp_path / "local")
    result, spark = _score(
        production, tmp_path / "spark", engine="spark", spark_master="local[2]", part_size=16
    )
    assert result.engine == "spark" and result.scored == 42
    drop = ["scored_at"]
    local, spark = (
        f.drop(columns=drop).sort_values("path").reset_index(drop=True) for f in (local, spark)
    )
    numeric = ["risk", "p_normal", "p_osteoporosis"]
    pd.testing.assert_frame_equal(local.drop(columns=numeric), spark.drop(columns=numeric))
    assert np.allclose(local[numeric], spark[numeric], atol=1e-6, equal_nan=True)


def test_the_scoring_flow_gives_prefect_keyed_hashes_only(
    production, tmp_path, prefect_harness, monkeypatch
):
    import asyncio
    import json

    from prefect.client.orchestration import get_client

    from flows.score import score_flow

    monkeypatch.setenv("OSTEO_PATIENT_KEY", "k" * 40)
    state = score_flow(
        str(production.archive), str(tmp_path / "out"), str(production.config), return_state=True
    )
    summary = state.result()
    assert summary["scored"] == 42 and summary["model_version"] == production.version

    async def artifacts() -> list[dict]:
        async with get_client() as client:
            return [a.model_dump(mode="json") for a in await client.read_artifacts()]

    run_id = str(state.state_details.flow_run_id)  # other tests' flows share the server
    found = {
        a["key"]: a for a in asyncio.run(artifacts()) if a["key"] and a["flow_run_id"] == run_id
    }
    table = json.loads(found["worklist"]["data"])
    assert len(table) == 41 and all(len(row["id"]) == 16 for row in table)
    assert [row["risk"] for row in table] == sorted((row["risk"] for row in table), reverse=True)
    everything = json.dumps(list(found.values()))
    assert "normal/" not in everything and "osteoporosis/" not in everything
    assert "not a diagnosis" in found["worklist-summary"]["data"]


def test_a_manifest_an_empty_folder_and_refused_models(production, tmp_path):
    from osteo_pipeline.steps.score import ScoringError

    images = sorted((production.archive / "osteoporosis").glob("*.png"))[:3]
    manifest = production.archive / "to_score.csv"
    rows = ["path,patient_id"] + [f"osteoporosis/{i.name},P{n}" for n, i in enumerate(images)]
    rows += [
        "osteoporosis/missing.png,P9",
        "../outside.png,P8",
        f"osteoporosis/{images[0].name},P0",
    ]
    manifest.write_text("\n".join(rows) + "\n")
    try:
        result = score_archive(manifest, tmp_path / "m", production.settings)
    finally:
        manifest.unlink()
    scores = pd.read_parquet(result.scores).set_index("path")
    assert result.files == 5 and len(scores) == 5  # the repeated path once
    assert scores.loc["osteoporosis/missing.png", "error"].startswith("cannot read the file")
    assert "leaves the manifest's folder" in scores.loc["../outside.png", "error"]
    assert set(result.worklist.table["patient_id"]) == {"P0", "P1", "P2"}

    (tmp_path / "empty").mkdir()
    result = score_archive(tmp_path / "empty", tmp_path / "e", production.settings)
    assert (result.files, result.scored) == (0, 0) and result.worklist.table.empty

    name = production.settings.registry.model_name
    with pytest.raises(ScoringError, match="name one version"):
        score_archive(
            production.archive, tmp_path / "x", production.settings, f"models:/{name}/latest"
        )


def test_a_model_without_calibration_predictions_gets_a_ranked_unbanded_worklist(
    production, tmp_path, monkeypatch
):
    from osteo_pipeline.io.run_artifacts import TrainingRun

    monkeypatch.setattr(TrainingRun, "calibration_predictions", None)
    result, _ = _score(production, tmp_path / "out")
    worklist = result.worklist
    assert worklist.thresholds is None and worklist.band_counts == {}
    assert "retrain" in worklist.note and (worklist.table["band"] == "not banded").all()
    assert worklist.table["risk"].is_monotonic_decreasing
