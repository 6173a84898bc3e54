"""Commands that measure and show models and data: ``compare``, ``evaluate``, ``crops``,
``explain``."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from osteo_pipeline.cli.common import (
    ConfigSource,
    InputError,
    ModelUriArgument,
    command,
    csv_list,
    out,
)
from osteo_pipeline.cli.data import DataDir
from osteo_pipeline.cli.render import metrics_table
from osteo_pipeline.core.summaries import MetricsTable


def _cv(value: str | None) -> tuple[int | None, int | None]:
    """``5x3`` -> 5 folds, 3 repeats (``5`` alone: one repeat)."""
    if not value:
        return None, None
    folds, _, repeats = value.lower().partition("x")
    try:
        return int(folds), int(repeats or 1)
    except ValueError as exc:
        raise InputError(f"--cv {value!r}: expected FOLDSxREPEATS, e.g. 5x3") from exc


@command()
def compare(
    data_dir: DataDir,
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
    *,
    config: ConfigSource,
) -> None:
    """Run the paper's systems on identical folds: mean and 95% CI per metric, table and plot."""
    from rich.table import Table

    from osteo_pipeline.core.compare_report import HEADERS, REPORTED, table_rows
    from osteo_pipeline.steps.compare import compare as run_compare

    folds, repeats = _cv(cv)
    settings = config.settings(
        compare__systems=csv_list(systems),
        compare__folds=folds,
        compare__repeats=repeats,
        compare__sizes=csv_list(sizes),  # the config model parses and bounds the numbers
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
    out.print(
        f"{result.files['markdown']} ({result.seconds / 60:.1f} min); MLflow parent run "
        f"{result.parent_run_id}",
    )


@contextmanager
def _model_input_errors() -> Iterator[None]:
    """A model that cannot be loaded or used, or data that does not fit it: one line, exit 2."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except (ValueError, MlflowException) as exc:
        raise InputError(str(getattr(exc, "message", exc))) from exc


@command()
def evaluate(
    model_uri: ModelUriArgument,
    data_dir: DataDir,
    *,
    config: ConfigSource,
) -> None:
    """Evaluate a model on labeled images it never trained on: CIs, calibration, Grad-CAM."""
    from osteo_pipeline.steps.evaluate import evaluate_model

    settings = config.settings()
    with _model_input_errors():
        result = evaluate_model(model_uri, data_dir, settings)
    title = f"{model_uri} on {data_dir} (n={result.n_images})"
    out.print(metrics_table(MetricsTable.from_dict(result.metrics), title))
    if result.skipped_seen:
        kinds = ", ".join(f"{n} {kind}" for kind, n in sorted(result.left_out_kinds.items()))
        out.print(
            f"left out {len(result.skipped_seen)} images that are copies of images the model "
            f"trained or was calibrated on ({kinds})",
        )
    out.print(
        f"MLflow run {result.run_id} ({result.seconds:.0f} s): figures/reliability_diagram.png, "
        "figures/test_gradcam.png",
    )


@command()
def crops(
    data_dir: DataDir,
    out_file: Annotated[
        Path, typer.Option("--out", help="PNG of the films with their knee boxes.")
    ] = Path("knee_crops.png"),
    limit: Annotated[int, typer.Option(help="Films shown (spread over the folder).", min=1)] = 24,
    *,
    config: ConfigSource,
) -> None:
    """Draw the knee crops (model.roi: knees) on films of DATA_DIR, for a person to check them.
    Written locally only: the figure shows patient images."""
    from osteo_pipeline.steps.crops import draw_knee_crops

    drawn = draw_knee_crops(data_dir, out_file, config.settings(), limit)
    skipped = f" ({drawn.skipped} films could not be read)" if drawn.skipped else ""
    out.print(f"{drawn.path}: {drawn.films} films, {drawn.crops} knee crops{skipped}")


@command()
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
    *,
    config: ConfigSource,
) -> None:
    """Write a Grad-CAM overlay PNG: where the model found evidence for the class."""
    from osteo_pipeline.steps.explain import explain_image

    settings, out_path = config.settings(), out_file or Path(f"{image.stem}.gradcam.png")
    with _model_input_errors():
        result = explain_image(model_uri, image, out_path, target, settings)
    out.print(
        f"{result.path}: Grad-CAM for '{result.explained}' (predicted {result.predicted}, "
        f"p={result.probability:.2f})",
    )
