"""Commands on registered models: ``register``, ``promote``, ``rollback``, ``models``,
``predict``."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated, Any

import typer

from osteo_pipeline.cli.common import (
    EXIT_CHECK_FAILED,
    ConfigSource,
    InputError,
    ModelUriArgument,
    command,
    out,
    print_json,
)

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON (numbers as numbers).")]
# Column headings of `osteo models` on the terminal.
SHORT_HEADINGS = {
    "version": "ver",
    "balanced_accuracy": "bal_acc",
    "recall": "sens",
    "specificity": "spec",
    "roc_auc": "auc",
    "dataset_hash": "dataset",
}


@command(name="register")
def register_cmd(
    run_id: Annotated[str, typer.Argument(help="MLflow run id of an `osteo train` run.")],
    *,
    config: ConfigSource,
) -> None:
    """Register a trained run's model as a new version with alias 'staging' (and a model card)."""
    from osteo_pipeline.steps.registry import register_run

    settings = config.settings()
    version = register_run(run_id, settings)
    out.print(
        f"registered {settings.registry.model_name} version {version} as 'staging'",
    )


@command()
def promote(
    version: Annotated[
        str | None, typer.Option(help="Version to promote (default: the 'staging' alias).")
    ] = None,
    data_dir: Annotated[
        Path | None, typer.Option(help="Where the candidate's test images are, if moved.")
    ] = None,
    *,
    config: ConfigSource,
) -> None:
    """Gate a candidate against production on the same held-out images; promote if it passes."""
    from osteo_pipeline.steps.registry import promote as run_promote

    decision = run_promote(config.settings(), version, data_dir)
    style = {"passed": "green", "inconclusive": "yellow"}.get(decision.verdict, "red")
    out.print(f"[{style}]{decision.summary}[/]")
    production = decision.extra["production"] or "none"
    if not decision.passed:
        out.print(f"production unchanged ({production})")
        raise typer.Exit(EXIT_CHECK_FAILED)
    out.print(
        f"production -> version {decision.extra['candidate']} (previous: {production})",
    )


@command()
def rollback(*, config: ConfigSource) -> None:
    """Point 'production' back at the 'previous' version."""
    from osteo_pipeline.steps.registry import rollback as run_rollback

    old, new = run_rollback(config.settings())
    out.print(f"production: version {old} -> version {new}")


@command()
def models(
    model: Annotated[
        str | None, typer.Option("--model", help="Only this registered model (default: every one).")
    ] = None,
    json_: JsonOption = False,
    *,
    config: ConfigSource,
) -> None:
    """List the versions of every registered model (or of --model) with their aliases and key
    test metrics."""
    from rich.table import Table

    from osteo_pipeline.steps.registry import LISTED_METRICS, list_versions, registered_models

    settings = config.settings()
    names = registered_models(settings)
    if model is not None and model not in names:
        registered = ", ".join(names) or "none yet"
        raise InputError(f"no registered model named {model!r}; registered: {registered}")
    rows = list_versions(settings, [model] if model else names) if names else []
    if json_:
        print_json(rows)
        return
    if not rows:
        listed = ", ".join(names)
        out.print(
            f"no registered versions yet of {listed}" if names else "no registered models yet"
        )
        return
    table = Table(*(SHORT_HEADINGS.get(k, k) for k in rows[0]))
    for row in rows:
        cells: dict[str, Any] = {
            **row,
            "run_id": (row["run_id"] or "")[:8],
            "aliases": ", ".join(row["aliases"]),
        }
        for metric in LISTED_METRICS:
            cells[metric] = f"{row[metric]:.3f}" if row[metric] is not None else "-"
        table.add_row(*(str(v or "") for v in cells.values()))
    out.print(table)


@command()
def predict(
    model_uri: ModelUriArgument,
    images: Annotated[list[Path], typer.Argument(help="Image files.")],
    json_: Annotated[bool, typer.Option("--json", help="Print JSON records.")] = False,
    *,
    config: ConfigSource,
) -> None:
    """Classify image files with a logged or registered model (the same pyfunc the server runs)."""
    from rich.table import Table

    from osteo_pipeline.steps.predict import predict_files

    result = predict_files(model_uri, images, config.settings())
    if json_:
        print_json(result)
        return
    table = Table(*result.columns)
    for row in result.itertuples(index=False):
        table.add_row(*(f"{v:.3f}" if isinstance(v, float) else str(v) for v in row))
    out.print(table)


@command()
def score(
    source: Annotated[
        Path,
        typer.Argument(help="A folder or DICOM tree (any depth), or a manifest (.csv/.parquet)."),
    ],
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for the scores and worklist.")],
    model_uri: Annotated[
        str | None,
        typer.Option("--model", help="Model URI (default: the registry's production alias)."),
    ] = None,
    engine: Annotated[
        str | None, typer.Option("--engine", help="local (default) or spark.")
    ] = None,
    master: Annotated[
        str | None, typer.Option("--master", help="Spark master URL (default: local[*]).")
    ] = None,
    *,
    config: ConfigSource,
) -> None:
    """Score an archive with a registered model: Parquet rows (resumable) and a screening
    worklist ranked by risk."""
    from rich.progress import Progress

    from osteo_pipeline.cli.common import console
    from osteo_pipeline.steps.score import score_archive

    settings = config.settings(
        scoring__model_uri=model_uri, scoring__engine=engine, scoring__spark_master=master
    )
    with Progress(console=console, transient=True, disable=not console.is_terminal) as bar:
        task = bar.add_task("scoring", total=None)
        result = score_archive(
            source,
            out_dir,
            settings,
            settings.scoring.model_uri,
            lambda done, total: bar.update(task, completed=done, total=total),
        )
    version = (
        f"{result.model.name} v{result.model.version}"
        if result.model.version
        else result.model.name
    )
    say = functools.partial(out.print, markup=False)  # paths may hold [brackets]
    say(
        f"{result.files} files: {result.scored} scored now ({result.errors} errors), "
        f"{result.skipped} already scored by {version}, {result.engine} engine"
    )
    say(f"scores: {result.scores}")
    if result.errors:
        say(f"errors: {result.errors} files not scored, why in the error column of scores")
    worklist = result.worklist
    if worklist is not None:
        counts = ", ".join(f"{n} {band}" for band, n in worklist.band_counts.items())
        say(f"worklist: {worklist.html} ({counts or f'{len(worklist.table)} not banded'})")
        if worklist.thresholds is not None:
            t = worklist.thresholds
            say(f"thresholds on the {t.chosen_on}: {t.describe()}")
        else:
            say(worklist.note)
