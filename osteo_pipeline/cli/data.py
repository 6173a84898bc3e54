"""Commands on the configuration and the data: ``config``, ``synth``, ``validate``, ``split``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from osteo_pipeline.cli.common import (
    EXIT_CHECK_FAILED,
    ConfigSource,
    InputError,
    command,
    console,
    csv_list,
    out,
    print_json,
)
from osteo_pipeline.cli.render import print_validation
from osteo_pipeline.config import Settings, settings_to_yaml
from osteo_pipeline.core.summaries import ValidationSummary

if TYPE_CHECKING:
    from osteo_pipeline.io.split_manifest import SplitManifest

DataDir = Annotated[
    Path,
    typer.Argument(
        metavar="DATA",
        help=(
            "Folder of class folders (DATA/<class>/<image>) or a clinical manifest "
            "(.csv/.parquet: path, patient_id, label or t_score, ...; needs $OSTEO_PATIENT_KEY)."
        ),
    ),
]


@command(name="config")
def show_config(*, config: ConfigSource) -> None:
    """Print the effective configuration (defaults < file < OSTEO_* env < --set) as YAML."""
    out.print(settings_to_yaml(config.settings()), end="")


@command()
def synth(
    out_dir: Annotated[
        Path,
        typer.Argument(
            help="Folder to write OUT_DIR/<class>/*.{jpg,png} into (with --manifest: a clinical "
            "export and OUT_DIR/manifest.csv)."
        ),
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
            help=(
                "Share of images that also get a derived copy of every kind (resized or squashed "
                "to 224 px, cropped, padded, mirrored, turned, inverted, re-toned, blurred, "
                "sharpened, noised, labelled, and combinations), listed in "
                "OUT_DIR/.planted_copies.json."
            ),
            min=0,
            max=1,
        ),
    ] = 0.0,
    manifest: Annotated[
        bool,
        typer.Option(
            help=(
                "A clinical corpus instead: DICOM (MONOCHROME1, 12-bit, VOI LUT) and PNG files in "
                "OUT_DIR/<patient id>/<date>/, 1-4 per patient, and OUT_DIR/manifest.csv with "
                "T-scores; PER_CLASS counts patients."
            )
        ),
    ] = False,
    *,
    config: ConfigSource,
) -> None:
    """Write synthetic knee-like radiographs whose bone texture differs by class (optionally with
    planted derived copies, to test copy detection, or as a clinical export with a manifest)."""
    from osteo_pipeline.steps.synth import write_synthetic_dataset
    from osteo_pipeline.steps.synth_clinical import MANIFEST_NAME, write_clinical_dataset

    settings = config.settings(
        synth__per_class=per_class, synth__size=size, seed=seed, data__classes=csv_list(classes)
    )
    if manifest:
        counts = write_clinical_dataset(
            out_dir,
            settings.data.classes,
            settings.synth.per_class,
            settings.synth.size,
            settings.seed,
        )
        patients = len(settings.data.classes) * settings.synth.per_class
        out.print(
            f"wrote {sum(counts.values())} images of {patients} patients to {out_dir}: {counts} "
            f"(seed {settings.seed}); manifest: {Path(out_dir) / MANIFEST_NAME}"
        )
        return
    counts = write_synthetic_dataset(
        out_dir,
        settings.data.classes,
        settings.synth.per_class,
        settings.synth.size,
        settings.seed,
        bilateral,
        copies,
    )
    out.print(
        f"wrote {sum(counts.values())} images to {out_dir}: {counts} (seed {settings.seed})",
    )


@command()
def validate(
    data_dir: DataDir,
    json_: Annotated[
        bool, typer.Option("--json", help="Print the JSON summary on stdout.")
    ] = False,
    report_dir: Annotated[
        Path | None,
        typer.Option(
            help=(
                "Where to write validation.html/.json, manifest.csv and GX's context with its "
                "Data Docs (gx/)."
            )
        ),
    ] = None,
    *,
    config: ConfigSource,
) -> None:
    """Check a batch of labeled X-rays with Great Expectations; exit 1 if it fails."""
    from osteo_pipeline.io.gx_checks import MAX_LISTED
    from osteo_pipeline.io.reports import write_validation_report
    from osteo_pipeline.steps.validate import validate_folder

    settings = config.settings()
    target = report_dir or settings.output_dir / "validation"
    result = validate_folder(data_dir, settings, docs_dir=target)
    paths = write_validation_report(result, target, MAX_LISTED, settings.validation.max_pixels)
    summary = ValidationSummary.from_dict(result.summary)
    if json_:
        print_json(result.summary)
    else:
        print_validation(summary, out)
    docs = f"; GX Data Docs: {summary.data_docs}" if summary.data_docs else ""
    (console if json_ else out).print(f"report: {paths['html']}{docs}")
    if not result.passed:
        raise typer.Exit(EXIT_CHECK_FAILED)


@command()
def split(
    data_dir: DataDir,
    out_file: Annotated[
        Path | None,
        typer.Option("--out", help="Split manifest JSON (default OUTPUT_DIR/split.json)."),
    ] = None,
    *,
    config: ConfigSource,
) -> None:
    """Validate, then write a deterministic stratified split that keeps copies of one radiograph,
    and a manifest's patients, together."""
    from rich.table import Table

    settings = config.settings()
    manifest = validated_split(data_dir, settings)
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
    out.print(table)
    out.print(
        f"excluded {len(manifest.excluded)} label-conflicting files; dataset hash "
        f"{manifest.dataset_hash[:16]}\nsplit manifest: {path}",
    )


def validated_split(data_dir: Path, settings: Settings) -> SplitManifest:
    """Validate then split; a failed validation prints its findings (stderr) and exits 1."""
    from osteo_pipeline.steps.split import split_dataset
    from osteo_pipeline.steps.validate import validate_folder

    result = validate_folder(data_dir, settings)
    if not result.passed:
        print_validation(ValidationSummary.from_dict(result.summary), console)
        console.print("[red]stopped: the data failed validation, nothing downstream ran[/]")
        raise typer.Exit(EXIT_CHECK_FAILED)
    return split_dataset(result, settings)
