"""The ``osteo`` command. Exit codes: 0 ok, 1 a check failed, 2 usage or input error."""

from __future__ import annotations

import json
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
from rich.table import Table

from osteo_pipeline.config import (
    ConfigError,
    Settings,
    cli_overrides,
    load_settings,
    merge_overrides,
    settings_to_yaml,
)

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up chatter
os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")

app = typer.Typer(
    help="Validate, train, register and serve a knee X-ray osteoporosis classifier.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)
out = Console()

EXIT_OK, EXIT_CHECK_FAILED, EXIT_INPUT = 0, 1, 2

ConfigOption = Annotated[
    Path | None, typer.Option("--config", "-c", help="YAML config file (default: built-in defaults, or $OSTEO_CONFIG).")
]
SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override a config key, e.g. --set validation.min_width=512 (repeatable)."),
]

ModelUriArgument = Annotated[str, typer.Argument(help="e.g. models:/osteo-knee@production or runs:/RUN/model")]

F = TypeVar("F", bound=Callable[..., Any])


class InputError(Exception):
    """Bad input named for the user; the command exits 2."""


def _input_errors() -> tuple[type[BaseException], ...]:
    from osteo_pipeline.core.splits import SplitError
    from osteo_pipeline.io.manifest import DataDirError

    errors: tuple[type[BaseException], ...] = (ConfigError, DataDirError, SplitError, InputError)
    if "osteo_pipeline.core.model" in sys.modules:  # only once a command has loaded Keras
        from osteo_pipeline.core.model import WeightsUnavailableError

        errors += (WeightsUnavailableError,)
    if "osteo_pipeline.io.registry" in sys.modules:
        from osteo_pipeline.io.registry import RegistryError

        errors += (RegistryError,)
    if "osteo_pipeline.io.tracking" in sys.modules:  # a dead tracking server: one line, not a traceback
        from osteo_pipeline.io.tracking import TrackingUnavailableError

        errors += (TrackingUnavailableError,)
    if "osteo_pipeline.io.storage" in sys.modules:
        from osteo_pipeline.io.storage import StorageError

        errors += (StorageError,)
    return errors


def handles_input_errors(command: F) -> F:
    """Turn known input errors into a one-line message and exit code 2, never a traceback."""

    @wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except _input_errors() as exc:
            console.print(f"[bold red]error:[/] {exc}", highlight=False)
            raise typer.Exit(EXIT_INPUT) from exc

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
    out_dir: Annotated[Path, typer.Argument(help="Folder to write OUT_DIR/<class>/*.{jpg,png} into.")],
    per_class: Annotated[int | None, typer.Option(help="Images per class.", min=1)] = None,
    classes: Annotated[str | None, typer.Option(help="Comma-separated class names.")] = None,
    size: Annotated[int | None, typer.Option(help="Shortest image side in px (sizes vary above it).", min=32)] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed (same seed, same images).")] = None,
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Write synthetic knee-like radiographs whose bone texture differs by class."""
    from osteo_pipeline.steps.synth import write_synthetic_dataset

    class_list = [c.strip() for c in classes.split(",") if c.strip()] if classes else None
    settings = _settings(
        config, set_, synth__per_class=per_class, synth__size=size, seed=seed, data__classes=class_list
    )
    counts = write_synthetic_dataset(
        out_dir, settings.data.classes, settings.synth.per_class, settings.synth.size, settings.seed
    )
    console.print(f"wrote {sum(counts.values())} images to {out_dir}: {counts} (seed {settings.seed})")


def _print_validation(summary: dict[str, Any]) -> None:
    verdict = "[bold green]PASSED[/]" if summary["passed"] else "[bold red]FAILED[/]"
    console.print(f"Validation {verdict}: {summary['data_dir']} ({summary['files']} files, {summary['seconds']} s)")
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
        console.print(f"[red]label conflict[/] {' = '.join(conflict['paths'])}", highlight=False)
    console.print(
        f"{len(summary['duplicate_groups'])} exact-duplicate groups, "
        f"{len(summary['near_duplicates'])} near-duplicate groups, {len(summary['ignored'])} ignored entries"
    )


@app.command()
@handles_input_errors
def validate(
    data_dir: Annotated[Path, typer.Argument(help="Folder of class folders: DATA_DIR/<class>/<image>.")],
    json_: Annotated[bool, typer.Option("--json", help="Print the JSON summary on stdout.")] = False,
    report_dir: Annotated[Path | None, typer.Option(help="Where to write validation.html/.json and manifest.csv.")] = None,
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Check a batch of labeled X-rays with Great Expectations; exit 1 if it fails."""
    from osteo_pipeline.io.reports import write_validation_report
    from osteo_pipeline.steps.validate import MAX_LISTED, validate_folder

    settings = _settings(config, set_)
    result = validate_folder(data_dir, settings)
    target = report_dir or settings.output_dir / "validation"
    paths = write_validation_report(result.summary, result.scan.manifest, target, MAX_LISTED)
    if json_:
        out.print_json(data=result.summary) if sys.stdout.isatty() else print(json.dumps(result.summary, indent=2))
    else:
        _print_validation(result.summary)
    console.print(f"report: {paths['html']}")
    if not result.passed:
        raise typer.Exit(EXIT_CHECK_FAILED)


@app.command()
@handles_input_errors
def split(
    data_dir: Annotated[Path, typer.Argument(help="Folder of class folders.")],
    out_file: Annotated[Path | None, typer.Option("--out", help="Split manifest JSON (default OUTPUT_DIR/split.json).")] = None,
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Validate, then write a deterministic stratified split that keeps duplicates together."""
    settings = _settings(config, set_)
    manifest = _validated_split(data_dir, settings)
    path = manifest.save(out_file or settings.output_dir / "split.json")
    table = Table("split", *settings.data.classes)
    for name, counts in manifest.counts().items():
        table.add_row(name, *(str(counts.get(c, 0)) for c in settings.data.classes))
    console.print(table)
    console.print(f"excluded {len(manifest.excluded)} label-conflicting files; dataset hash {manifest.dataset_hash[:16]}")
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
        interval = f"[{values['low']:.3f}, {values['high']:.3f}]" if np.isfinite(values["low"]) else "-"
        table.add_row(name, f"{values['value']:.3f}", interval)
    return table


@app.command()
@handles_input_errors
def tune(
    data_dir: Annotated[Path, typer.Argument(help="Folder of class folders.")],
    trials: Annotated[int | None, typer.Option(help="Finished trials wanted in the study (resumes).", min=1)] = None,
    timeout: Annotated[float | None, typer.Option(help="Stop starting new trials after S seconds.")] = None,
    study: Annotated[str | None, typer.Option(help="Optuna study name (same name resumes).")] = None,
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Search learning rate, unfreeze depth, head size and dropout with Optuna (MLflow-tracked)."""
    from osteo_pipeline.steps.tune import tune as run_tune

    settings = _settings(config, set_, tune__trials=trials, tune__timeout_s=timeout, tune__study_name=study)
    split = _validated_split(data_dir, settings)
    result = run_tune(split, settings)
    console.print(
        f"study {result.study_name}: {result.counts} in {result.seconds:.0f} s; best trial {result.best_trial} "
        f"val_loss {result.best_value:.4f} params {result.best_params}"
    )
    console.print(f"MLflow parent run {result.parent_run_id}; next: osteo train {data_dir} --params best")


@app.command()
@handles_input_errors
def train(
    data_dir: Annotated[Path, typer.Argument(help="Folder of class folders.")],
    params: Annotated[str, typer.Option(help="'best' (from the study), 'config', or a JSON/YAML file of parameters.")] = "best",
    study: Annotated[str | None, typer.Option(help="Optuna study to take 'best' from.")] = None,
    register: Annotated[bool, typer.Option(help="Register the model as a new version with alias 'staging'.")] = True,
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Refit chosen parameters on train, calibrate on val, evaluate once on test, log and register."""
    import yaml

    from osteo_pipeline.steps.refit import refit_and_evaluate
    from osteo_pipeline.steps.train import TrainParams
    from osteo_pipeline.steps.tune import best_params

    settings = _settings(config, set_, tune__study_name=study)
    if params == "best":
        try:
            chosen = best_params(settings)
        except ValueError as exc:
            raise InputError(str(exc)) from exc
    elif params == "config":
        chosen = TrainParams.from_settings(settings).as_dict()
    else:
        file = Path(params)
        if not file.is_file():
            raise InputError(f"--params: no such file {file} (or use 'best' / 'config')")
        loaded = yaml.safe_load(file.read_text())
        if not isinstance(loaded, dict):
            raise InputError(f"--params file {file} must hold a mapping of parameter names to values")
        chosen = TrainParams.from_settings(settings).as_dict() | loaded
    split = _validated_split(data_dir, settings)
    result = refit_and_evaluate(split, chosen, settings, source=params)
    console.print(_metrics_table(result.metrics, f"test metrics (n={sum(split.counts()['test'].values())})"))
    console.print(f"run {result.run_id}; model {result.model_uri}; backbone weights: {result.weights_used}; {result.seconds:.0f} s")
    if register:
        from osteo_pipeline.steps.registry import register_run

        version = register_run(result.run_id, settings)
        console.print(f"registered {settings.registry.model_name} version {version} as 'staging'; next: osteo promote")


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
    version: Annotated[str | None, typer.Option(help="Version to promote (default: the 'staging' alias).")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="Where the candidate's test images are, if moved.")] = None,
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Gate a candidate against production on the same held-out images; promote only if it passes."""
    from osteo_pipeline.steps.registry import promote as run_promote

    settings = _settings(config, set_)
    decision = run_promote(settings, version, data_dir)
    style = "green" if decision.passed else "red"
    console.print(f"[{style}]{decision.summary}[/]", highlight=False)
    if decision.passed:
        console.print(f"production -> version {decision.extra['candidate']} (previous: {decision.extra['production'] or 'none'})")
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
    json_: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """List registered versions with their aliases and key test metrics."""
    from osteo_pipeline.steps.registry import list_versions

    rows = list_versions(_settings(config, set_))
    if json_:
        print(json.dumps(rows, indent=2))
        return
    if not rows:
        console.print("no registered versions yet")
        return
    short = {"version": "ver", "balanced_accuracy": "bal_acc", "recall": "sens", "specificity": "spec", "roc_auc": "auc", "dataset_hash": "dataset"}
    table = Table(*(short.get(k, k) for k in rows[0]))
    for row in rows:
        cells = {**row, "run_id": row["run_id"][:8], "aliases": ", ".join(row["aliases"])}
        for metric in ("balanced_accuracy", "recall", "specificity", "roc_auc"):
            cells[metric] = f"{float(row[metric]):.3f}" if row[metric] not in (None, "", "nan") else "-"
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
        print(result.to_json(orient="records", indent=2))
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
    systems: Annotated[str | None, typer.Option(help="Comma-separated systems (default: all; see compare.systems).")] = None,
    cv: Annotated[str | None, typer.Option(help="FOLDSxREPEATS of the repeated stratified group k-fold, e.g. 5x3.")] = None,
    sizes: Annotated[str | None, typer.Option(help="Comma-separated input sizes in px, e.g. 224,448.")] = None,
    out_dir: Annotated[Path | None, typer.Option("--out", help="Where comparison.md/.json/.png go (default OUTPUT_DIR/compare).")] = None,
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Run the paper's systems on identical folds: mean and 95% CI per metric, table and plot."""
    import logging

    from rich.logging import RichHandler

    from osteo_pipeline.steps.compare import HEADERS, REPORTED, table_rows
    from osteo_pipeline.steps.compare import compare as run_compare

    folds, repeats = _cv(cv)
    size_list = [int(v) for v in _csv(sizes)] if sizes else None
    settings = _settings(config, set_, compare__systems=_csv(systems), compare__folds=folds, compare__repeats=repeats, compare__sizes=size_list)
    progress = logging.getLogger("osteo_pipeline.steps.compare")  # one line per fold: runs take minutes to hours
    progress.setLevel(logging.INFO)
    progress.addHandler(RichHandler(console=console, show_path=False))
    result = run_compare(data_dir, settings, command="osteo " + " ".join(sys.argv[1:]), out_dir=out_dir)
    table = Table("system", *(HEADERS[m] for m in REPORTED), "s/fold", title=f"osteo compare ({settings.compare.folds}x{settings.compare.repeats} folds)")
    for cells in table_rows(result.rows):
        table.add_row(*cells)
    out.print(table)
    console.print(f"{result.files['markdown']} ({result.seconds / 60:.1f} min); MLflow parent run {result.parent_run_id}")


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
    data_dir: Annotated[Path, typer.Argument(help="Folder of labeled class folders to evaluate on.")],
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
        console.print(f"left out {len(result.skipped_seen)} images the model trained or was calibrated on")
    console.print(f"MLflow run {result.run_id} ({result.seconds:.0f} s): figures/reliability_diagram.png, figures/test_gradcam.png")


@app.command()
@handles_input_errors
def explain(
    model_uri: ModelUriArgument,
    image: Annotated[Path, typer.Argument(help="An image file (PNG, JPEG, DICOM, ...).")],
    out_file: Annotated[Path | None, typer.Option("--out", help="Overlay PNG (default IMAGE.gradcam.png in the current folder).")] = None,
    target: Annotated[str | None, typer.Option("--class", help="Class to explain (default: the predicted one).")] = None,
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Write a Grad-CAM overlay PNG: where the model found evidence for the class."""
    from osteo_pipeline.steps.explain import explain_image

    settings = _settings(config, set_)
    with _model_input_errors():
        result = explain_image(model_uri, image, out_file or Path(f"{image.stem}.gradcam.png"), target, settings)
    console.print(f"{result.path}: Grad-CAM for '{result.explained}' (predicted {result.predicted}, p={result.probability:.2f})", highlight=False)


def _prefect_environment() -> None:
    """Prefect state inside the project (not ~/.prefect) and no telemetry, unless set already."""
    os.environ.setdefault("PREFECT_HOME", str(Path.cwd() / ".prefect"))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")


def _data_location(value: str) -> str:
    """An ``s3://bucket/prefix`` URI as given, a local folder made absolute."""
    return value if value.startswith("s3://") else str(Path(value).resolve())


@app.command()
@handles_input_errors
def run(
    data_dir: Annotated[str, typer.Argument(help="Folder of class folders, or s3://bucket/prefix of <class>/<file> objects.")],
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Run the whole retrain flow (Prefect) locally: validate, split, tune, refit, register, promote."""
    _settings(config, set_)  # fail fast, before Prefect starts, on a bad config
    _prefect_environment()
    from flows.retrain import ValidationFailed, retrain_flow

    try:
        result = retrain_flow(_data_location(data_dir), str(config.resolve()) if config else None, list(set_ or []))
    except ValidationFailed as exc:
        console.print(f"[red]{exc}[/]", highlight=False)
        raise typer.Exit(EXIT_CHECK_FAILED) from exc
    verdict = "[green]promoted to production[/]" if result["promoted"] else "[yellow]not promoted[/]"
    console.print(f"version {result['version']} {verdict}: {'; '.join(result['reasons'])}", highlight=False)
    console.print(f"dataset {result['dataset_hash'][:16]}, run {result['run_id']}, backbone weights: {result['weights']}")


@app.command()
@handles_input_errors
def schedule(
    data_dir: Annotated[str | None, typer.Option(help="Folder or s3:// prefix scheduled runs train on (default schedule.data_dir).")] = None,
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
    console.print(f"serving deployment retrain/{settings.schedule.deployment}: cron '{settings.schedule.cron}' ({settings.schedule.timezone}) on {target}")
    retrain_flow.serve(
        name=settings.schedule.deployment,
        schedule=Cron(settings.schedule.cron, timezone=settings.schedule.timezone),
        parameters={"data_dir": target, "config": str(config.resolve()) if config else None, "overrides": list(set_ or [])},
        pause_on_shutdown=False,
    )


if __name__ == "__main__":  # pragma: no cover
    app()
