import json
import re

import pytest
from typer.testing import CliRunner

from osteo_pipeline.cli import app

runner = CliRunner()
SMALL = ["--set", "validation.min_width=32", "--set", "validation.min_height=32"]


def test_synth_then_validate_passes(tmp_path):
    data = tmp_path / "d"
    assert (
        runner.invoke(
            app, ["synth", str(data), "--per-class", "6", "--size", "64", "--seed", "3"]
        ).exit_code
        == 0
    )
    result = runner.invoke(
        app, ["validate", str(data), "--json", "--report-dir", str(tmp_path / "r"), *SMALL]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    for key in (
        "passed",
        "counts",
        "unreadable",
        "duplicate_groups",
        "label_conflicts",
        "copy_groups",
        "derived_copies",
        "failed_expectations",
    ):
        assert key in summary
    assert summary["counts"] == {"normal": 6, "osteoporosis": 6}
    assert (tmp_path / "r" / "validation.html").read_text().count("passed") >= 1
    assert (tmp_path / "r" / "manifest.csv").exists()


def test_failed_validation_exits_1_and_names_the_file(tmp_path):
    data = tmp_path / "d"
    runner.invoke(app, ["synth", str(data), "--per-class", "6", "--size", "64"])
    (data / "osteoporosis" / "broken.jpg").write_bytes(b"\xff\xd8\xff")
    result = runner.invoke(
        app, ["validate", str(data), "--report-dir", str(tmp_path / "r"), *SMALL]
    )
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


def _one_line_error(result, code: int, *expected: str) -> None:
    """Exit ``code``, one ``error:`` line naming ``expected``, never a traceback."""
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.output
    for text in expected:
        assert text in errors[0], errors[0]


@pytest.fixture
def data(tmp_path):
    folder = tmp_path / "d"
    runner.invoke(app, ["synth", str(folder), "--per-class", "12", "--size", "64"])
    return folder


@pytest.fixture
def store(tmp_path):
    """An empty private tracking store and study storage, so no command touches the project's."""
    return [
        "--set",
        f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
        "--set",
        f"tracking.artifact_root={tmp_path / 'mlruns'}",
        "--set",
        f"tune.storage=sqlite:///{tmp_path / 'optuna.db'}",
    ]


def test_every_command_answers_bad_input_with_one_line_and_an_exit_code(
    data, store, tmp_path, monkeypatch
):
    """One bad input per command: a clear one-line error, exit 2 (1 for a failed check)."""
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.chdir(tmp_path)
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    cases = [
        (["config", "--set", "seed"], 2, "key.sub=value"),
        (["synth", str(a_file)], 2, "a-file", "not a folder"),
        (["validate", str(tmp_path / "missing")], 2, "data folder not found"),
        (
            ["split", str(data), *SMALL, "--out", str(a_file / "split.json")],
            2,
            "cannot write the split manifest",
        ),
        (
            ["tune", str(data), *SMALL, *store, "--set", "tune.storage=nosuchdb://x"],
            2,
            "tune.storage=nosuchdb://x",
        ),
        (["tune-worker", "no-such-study", *store], 2, "no study named 'no-such-study'"),
        (
            ["train", str(data), *SMALL, *store, "--params", str(tmp_path / "nope.yaml")],
            2,
            "--params",
            "nope.yaml",
        ),
        (["train", str(data), *SMALL, *store], 2, "no study", "run `osteo tune`"),
        (["register", "0" * 32, *store], 2, "0" * 32),
        (["promote", *store], 2, "no candidate"),
        (["rollback", *store], 2, "no 'production' version"),
        (
            [
                "models",
                "--set",
                "tracking.uri=http://127.0.0.1:9",
                "--set",
                "tracking.http_retries=0",
            ],
            2,
            "unreachable",
        ),
        (
            ["predict", "models:/osteo-knee/1", str(tmp_path / "missing.jpg"), *store],
            2,
            "missing.jpg",
        ),
        (["score", str(a_file), "--out", str(tmp_path / "s"), *store], 2, "not a folder"),
        (["score", str(data), "--out", str(tmp_path / "s"), *store], 2, "osteo-knee@production"),
        (["compare", str(data), "--cv", "five"], 2, "--cv"),
        (["compare", str(data), "--sizes", "abc"], 2, "compare.sizes", "valid integer"),
        (["crops", str(tmp_path / "missing")], 2, "data folder not found"),
        (["evaluate", "models:/nope/1", str(data), *store], 2, "nope"),
        (["explain", "models:/nope/1", str(a_file), *store], 2, "nope"),
        (["run", str(tmp_path / "missing")], 2, "data folder not found"),
        (["schedule"], 2, "PREFECT_API_URL"),
        (
            [
                "serve",
                "--set",
                "tracking.uri=http://127.0.0.1:9",
                "--set",
                "tracking.http_retries=0",
            ],
            2,
            "unreachable",
        ),
    ]
    commands = {c.name or c.callback.__name__ for c in app.registered_commands}
    assert {case[0][0] for case in cases} == commands  # every command has its bad-input case
    for args, code, *expected in cases:
        _one_line_error(runner.invoke(app, args), code, *expected)


def test_a_batch_that_fails_validation_stops_split_tune_and_compare_with_exit_1(data, store):
    (data / "normal" / "broken.jpg").write_bytes(b"\xff\xd8\xff")
    for command in (
        ["split", str(data)],
        ["tune", str(data), *store],
        ["compare", str(data), "--systems", "metadata-probe"],
    ):
        result = runner.invoke(app, [*command, *SMALL])
        assert (
            result.exit_code == 1
            and "normal/broken.jpg" in result.output
            and "Traceback" not in result.output
        ), result.output


def test_an_out_of_bounds_setting_is_one_line_naming_the_field():
    _one_line_error(
        runner.invoke(app, ["config", "--set", "model.input_size=100000"]),
        2,
        "model.input_size",
        "less than or equal to 1024",
    )


def test_models_lists_every_registered_model_with_numbers_as_numbers(store, tmp_path):
    """Not only registry.model_name: a store holding other models' versions lists them all
    (registry locks left out), and --json gives versions and metrics as numbers."""
    import mlflow
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    client = MlflowClient()
    for name in ("osteo-knee-binary", "osteo-knee-3class"):
        client.create_registered_model(name)
        client.create_model_version(
            name,
            (tmp_path / "model").as_uri(),
            tags={"metric.test_balanced_accuracy": "0.75", "metric.test_roc_auc": "nan"},
        )
    client.create_registered_model("osteo-knee-binary.lock.promote")
    listed = runner.invoke(app, ["models", "--json", *store])
    assert listed.exit_code == 0, listed.output
    rows = json.loads(listed.stdout)
    assert [(row["model"], row["version"]) for row in rows] == [
        ("osteo-knee-3class", 1),
        ("osteo-knee-binary", 1),
    ]
    assert (
        rows[0]["balanced_accuracy"] == 0.75
        and rows[0]["roc_auc"] is None
        and rows[0]["recall"] is None
    )
    table = runner.invoke(app, ["models", *store])
    assert (
        table.exit_code == 0 and "osteo-knee-binary" in table.stdout and "0.750" in table.stdout
    ), table.output
    one = json.loads(
        runner.invoke(app, ["models", "--json", "--model", "osteo-knee-binary", *store]).stdout
    )
    assert [row["model"] for row in one] == ["osteo-knee-binary"]
    _one_line_error(
        runner.invoke(app, ["models", "--model", "nope", *store]),
        2,
        "'nope'",
        "registered: osteo-knee-3class, osteo-knee-binary",
    )


def test_validate_prints_the_settings_that_fit_and_config_takes_a_packaged_name(tmp_path):
    data = tmp_path / "d"
    runner.invoke(
        app,
        [
            "synth",
            str(data),
            "--per-class",
            "6",
            "--size",
            "64",
            "--classes",
            "normal,osteopenia,osteoporosis",
        ],
    )
    result = runner.invoke(
        app, ["validate", str(data), "--report-dir", str(tmp_path / "r"), *SMALL]
    )
    assert result.exit_code == 1
    assert (
        "to fit: class folder 'osteopenia' is not in data.classes [normal, osteoporosis]: add it "
        "(--set 'data.classes=[normal, osteopenia, osteoporosis]', or --config knee-3class)"
        in result.output
    ), result.output
    assert "Settings that would fit" in (tmp_path / "r" / "validation.html").read_text()
    three = runner.invoke(
        app,
        [
            "validate",
            str(data),
            "--config",
            "knee-3class",
            "--report-dir",
            str(tmp_path / "r3"),
            *SMALL,
        ],
    )
    assert three.exit_code == 0, three.output


def test_results_go_to_stdout_and_logs_and_errors_to_stderr(data, tmp_path):
    made = runner.invoke(app, ["synth", str(tmp_path / "more"), "--per-class", "2", "--size", "64"])
    assert "wrote 4 images" in made.stdout and "wrote" not in made.stderr, made.output
    report = ["--report-dir", str(tmp_path / "r"), *SMALL]
    checked = runner.invoke(app, ["validate", str(data), *report])
    assert checked.exit_code == 0, checked.output
    assert "Validation PASSED" in checked.stdout and "report: " in checked.stdout
    assert "checked 24 files" in checked.stderr and "checked 24 files" not in checked.stdout
    as_json = runner.invoke(app, ["validate", str(data), "--json", *report])
    summary = json.loads(as_json.stdout)  # nothing but the JSON on stdout
    assert "report: " in as_json.stderr
    assert type(summary["files"]) is int and type(summary["seconds"]) is float  # JSON numbers
    (data / "normal" / "broken.jpg").write_bytes(b"\xff\xd8\xff")
    stopped = runner.invoke(app, ["split", str(data), *SMALL])
    assert stopped.exit_code == 1 and stopped.stdout == "", stopped.output
    assert "normal/broken.jpg" in stopped.stderr and "stopped:" in stopped.stderr
    missing = runner.invoke(app, ["validate", str(tmp_path / "missing")])
    assert missing.stdout == "" and missing.stderr.startswith("error: data folder not found")


def test_every_command_takes_the_shared_config_options():
    """--config and --set are declared once and reach every command that reads settings (all
    but `weights install`, which only checks a file)."""
    import typer.main

    def leaves(command, path=()):
        for name, sub in getattr(command, "commands", {}).items():
            yield from leaves(sub, (*path, name))
        if not hasattr(command, "commands"):
            yield " ".join(path), command

    commands = dict(leaves(typer.main.get_command(app)))
    assert len(commands) == 22
    for name, command in commands.items():
        options = {opt for param in command.params for opt in param.opts}
        expected = {"--config", "-c", "--set", "-s"} if name != "weights install" else set()
        assert options >= expected and not (options & {"--config", "--set"}) - expected, name
    shown = runner.invoke(app, ["weights", "show", "--set", "model.weights=none"])
    assert shown.exit_code == 0 and "random" in shown.stdout.lower(), shown.output


def test_package_warnings_reach_caplog_and_stderr_after_an_in_process_call(caplog, capsys):
    """The CLI's log handler sits on the root: the package's records still propagate (pytest's
    caplog, an embedding application see them), and it writes to the stderr of the moment."""
    import logging

    assert runner.invoke(app, ["config"]).exit_code == 0
    assert logging.getLogger("osteo_pipeline").propagate
    logging.getLogger("osteo_pipeline.io.copies").warning("a warning after the call")
    assert "a warning after the call" in caplog.text
    library = logging.getLogger("a_library.that_sets_info")
    library.setLevel(logging.INFO)
    library.info("library chatter")
    logging.getLogger("osteo_pipeline.steps").info("package progress")
    stderr = capsys.readouterr().err
    assert "a warning after the call" in stderr and "Logging error" not in stderr
    assert "package progress" in stderr and "library chatter" not in stderr
    assert runner.invoke(app, ["config"]).exit_code == 0  # a second call: still one handler
    ours = [h for h in logging.getLogger().handlers if getattr(h, "osteo_cli", False)]
    assert len(ours) == 1


def test_crops_draws_the_knee_boxes_of_spread_films(data, tmp_path):
    figure = tmp_path / "figures" / "crops.png"
    result = runner.invoke(app, ["crops", str(data), "--out", str(figure), "--limit", "5"])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"{figure}: 5 films, ") and "knee crops" in result.stdout
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_html_report_names_both_files_of_each_derived_copy_link(tmp_path):
    data = tmp_path / "d"
    runner.invoke(app, ["synth", str(data), "--per-class", "6", "--size", "64", "--copies", "0.5"])
    planted = json.loads((data / ".planted_copies.json").read_text())
    runner.invoke(app, ["validate", str(data), "--report-dir", str(tmp_path / "r"), *SMALL])
    html = (tmp_path / "r" / "validation.html").read_text()
    assert "built-in method" not in html
    copies = [entry["copy"] for entry in planted if "copy" in entry]
    assert copies and any(f"&rarr; <code>{copy}</code>" in html for copy in copies), html[-3000:]


@pytest.mark.slow
def test_train_prints_its_metrics_run_and_version_on_stdout(synth_dir, config_file, train_settings):
    result = runner.invoke(
        app,
        ["train", str(synth_dir(per_class=12)), "--params", "config", "--config", str(config_file)],
    )
    assert result.exit_code == 0, result.output
    name = train_settings.registry.model_name
    for shown in ("test metrics (n=", "balanced_accuracy", f"registered {name} version 1 as"):
        assert shown in result.stdout and shown not in result.stderr, result.output
    assert re.search(r"^run [0-9a-f]{32}; model \S+:/", result.stdout, re.M), result.stdout
    assert "epoch 1" in result.stderr and "epoch 1" not in result.stdout  # progress is a log
