import json

from typer.testing import CliRunner

from osteo_pipeline.cli import app

runner = CliRunner()
SMALL = ["--set", "validation.min_width=32", "--set", "validation.min_height=32"]


def test_synth_then_validate_passes(tmp_path):
    data = tmp_path / "d"
    assert runner.invoke(app, ["synth", str(data), "--per-class", "6", "--size", "64", "--seed", "3"]).exit_code == 0
    result = runner.invoke(app, ["validate", str(data), "--json", "--report-dir", str(tmp_path / "r"), *SMALL])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    for key in ("passed", "counts", "unreadable", "duplicate_groups", "label_conflicts", "near_duplicates", "failed_expectations"):
        assert key in summary
    assert summary["counts"] == {"normal": 6, "osteoporosis": 6}
    assert (tmp_path / "r" / "validation.html").read_text().count("passed") >= 1
    assert (tmp_path / "r" / "manifest.csv").exists()


def test_failed_validation_exits_1_and_names_the_file(tmp_path):
    data = tmp_path / "d"
    runner.invoke(app, ["synth", str(data), "--per-class", "6", "--size", "64"])
    (data / "osteoporosis" / "broken.jpg").write_bytes(b"\xff\xd8\xff")
    result = runner.invoke(app, ["validate", str(data), "--report-dir", str(tmp_path / "r"), *SMALL])
    assert result.exit_code == 1
    assert "osteoporosis/broken.jpg" in result.output


def test_input_errors_exit_2_with_a_message(tmp_path):
    result = runner.invoke(app, ["validate", str(tmp_path / "missing")])
    assert result.exit_code == 2 and "data folder not found" in result.output
    result = runner.invoke(app, ["validate", str(tmp_path), "--set", "split.train=2"])
    assert result.exit_code == 2 and "split.train" in result.output
    assert runner.invoke(app, ["validate"]).exit_code == 2  # usage error


def test_split_writes_manifest(tmp_path):
    data = tmp_path / "d"
    runner.invoke(app, ["synth", str(data), "--per-class", "12", "--size", "64"])
    out = tmp_path / "split.json"
    result = runner.invoke(app, ["split", str(data), "--out", str(out), *SMALL])
    assert result.exit_code == 0, result.output
    payload = json.loads(out.read_text())
    assert len(payload["files"]) == 24 and len(payload["dataset_hash"]) == 64


def test_config_prints_effective_yaml():
    result = runner.invoke(app, ["config", "--set", "seed=5"])
    assert result.exit_code == 0 and "seed: 5" in result.stdout
