"""Commands that search and train: ``tune``, ``tune-worker``, ``train``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from osteo_pipeline.cli.common import ConfigSource, InputError, command, out
from osteo_pipeline.cli.data import DataDir, validated_split
from osteo_pipeline.cli.render import metrics_table
from osteo_pipeline.core.summaries import MetricsTable

StudyOption = Annotated[
    str | None,
    typer.Option(
        help="Base study name; the study is BASE-<data hash>-<backbone> (tune.study_name)."
    ),
]
TimeoutOption = Annotated[
    float | None, typer.Option(help="Stop starting new trials after S seconds.")
]


@command()
def tune(
    data_dir: DataDir,
    trials: Annotated[
        int | None,
        typer.Option(
            help=(
                "NEW trials to run in this call (the study keeps its earlier ones; "
                "default tune.trials)."
            ),
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
    timeout: TimeoutOption = None,
    study: StudyOption = None,
    *,
    config: ConfigSource,
) -> None:
    """Search learning rate, unfreeze depth, head size and dropout with Optuna (MLflow-tracked).

    The study belongs to this data: new data starts a new study, the same data resumes its own."""
    from osteo_pipeline.steps.tune import tune as run_tune

    settings = config.settings(
        tune__trials=trials,
        tune__max_trials=budget,
        tune__workers=workers,
        tune__timeout_s=timeout,
        tune__study_name=study,
    )
    result = run_tune(validated_split(data_dir, settings), settings)
    counts = result.counts
    out.print(
        f"study {result.study_name}: {result.new_trials} new finished trials, "
        f"{counts['complete']} complete / {counts['pruned']} pruned / {counts['fail']} failed in "
        f"all, {result.seconds:.0f} s; best trial {result.best_trial} objective "
        f"{result.best_value:.4f} params {result.best_params}\n"
        f"MLflow parent run {result.parent_run_id}; next: osteo train {data_dir} --params best\n"
        "more workers (any machine with this storage and data): "
        f"osteo tune-worker {result.study_name}",
    )


@command(name="tune-worker")
def tune_worker(
    study: Annotated[
        str,
        typer.Argument(
            help="The study to join, as `osteo tune` printed it (BASE-<data hash>-<backbone>)."
        ),
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
    timeout: TimeoutOption = None,
    *,
    config: ConfigSource,
) -> None:
    """Join a running study and run its trials until its budget is reached (tune.storage must be
    the study's shared storage). The search settings are the study's own."""
    import os
    import zlib

    from osteo_pipeline.io.split_manifest import SplitManifest
    from osteo_pipeline.steps.tune import adopt_study_settings, joined_study, run_worker

    local = config.settings()
    recorded = joined_study(study, local)
    settings = adopt_study_settings(local, recorded)
    if split_file is not None:
        try:
            split = SplitManifest.load(split_file)
        except (OSError, ValueError, KeyError) as exc:
            raise InputError(f"--split {split_file}: not a split manifest ({exc})") from exc
    else:
        split = validated_split(
            data_dir or Path(recorded.user_attrs.get("data_dir", ".")), settings
        )
    index = (
        worker
        if worker is not None
        else zlib.crc32(f"{os.uname().nodename}:{os.getpid()}".encode()) % 10**6 + 1000
    )
    ran = run_worker(study, split, settings, worker=index, timeout_s=timeout)
    out.print(f"worker {index} ran {ran} trials of study {study}")


@command()
def train(
    data_dir: DataDir,
    params: Annotated[
        str,
        typer.Option(
            help=(
                "'best' (the best trial of this data's study), 'study:NAME' (of a named study), "
                "'config', or a JSON/YAML file of parameters."
            )
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
    *,
    config: ConfigSource,
) -> None:
    """Refit chosen parameters on train, calibrate on val, test once, log and register."""
    from osteo_pipeline.steps.train import train as run_train

    settings = config.settings(tune__study_name=study)
    trained = run_train(
        validated_split(data_dir, settings),
        settings,
        params=params,
        allow_other_data=allow_other_data,
        register=register,
    )
    result = trained.refit
    out.print(
        metrics_table(MetricsTable.from_dict(result.metrics), f"test metrics (n={trained.n_test})")
    )
    out.print(
        f"run {result.run_id}; model {result.model_uri}; backbone weights: {result.weights_used}; "
        f"{result.seconds:.0f} s",
    )
    if trained.version is not None:
        out.print(
            f"registered {settings.registry.model_name} version {trained.version} as 'staging'; "
            "next: osteo promote",
        )
