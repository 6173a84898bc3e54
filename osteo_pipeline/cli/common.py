"""What every command shares: the app, its two consoles (results on stdout, logs and errors on
stderr), the ``--config``/``--set`` options declared once, and one-line errors with exit codes."""

from __future__ import annotations

import inspect
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import wraps
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from osteo_pipeline.config import (
    Settings,
    cli_overrides,
    config_file,
    load_settings,
    merge_overrides,
)
from osteo_pipeline.errors import CheckFailedError, OsteoError

EXIT_OK, EXIT_CHECK_FAILED, EXIT_INPUT = 0, 1, 2
PIPE_WIDTH = 400  # columns for tables sent to a pipe or file: wider than any table, none is cut

app = typer.Typer(
    help="Validate, train, register and serve a knee X-ray osteoporosis classifier.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console(soft_wrap=True)  # results
console = Console(stderr=True, soft_wrap=True)  # progress, notes, errors


def fit_tables_to_pipe() -> None:
    """Rich would squeeze tables sent to a pipe or file into 80 columns, cutting cells."""
    if not out.is_terminal and "COLUMNS" not in os.environ:
        out.width = PIPE_WIDTH


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
        metavar="KEY=VALUE",
        help="Override a config key, e.g. --set validation.min_width=512 (repeatable).",
    ),
]
ModelUriArgument = Annotated[
    str, typer.Argument(help="e.g. models:/osteo-knee@production or runs:/RUN/model")
]


class InputError(OsteoError):
    """Bad input named for the user; the command exits 2."""


@dataclass(frozen=True)
class ConfigSource:
    """``--config`` and ``--set`` as given; a command builds its settings from them and its own
    flags."""

    file: Path | None = None
    overrides: tuple[str, ...] = ()

    def settings(self, **flags: Any) -> Settings:
        """Defaults < file < ``OSTEO_*`` environment < ``--set`` < the command's flags (given as
        ``section__key=value``; ``None`` means the flag was not used)."""
        merged = merge_overrides(
            cli_overrides(list(self.overrides)),
            {
                dotted.replace("__", "."): value
                for dotted, value in flags.items()
                if value is not None
            },
        )
        return load_settings(self.file, overrides=merged)

    def resolved_file(self) -> str | None:
        """The config file's absolute path (a packaged name resolved), for a flow run."""
        return str(config_file(self.file).resolve()) if self.file else None


F = TypeVar("F", bound=Callable[..., Any])


def command(
    group: typer.Typer = app, name: str | None = None, *, configurable: bool = True
) -> Callable[[F], F]:
    """Register a command on ``group``. With ``configurable``, the command takes a keyword
    ``config: ConfigSource`` and gets the ``--config``/``--set`` options. Errors a user can cause
    end it with one line and an exit code."""

    def register(function: F) -> F:
        wrapped = _with_config_options(function) if configurable else function
        group.command(name)(_one_line_errors(wrapped))
        return function

    return register


def _with_config_options(function: Callable[..., Any]) -> Callable[..., Any]:
    """``function`` with its ``config`` parameter shown to Typer as ``--config`` and ``--set``."""
    own = inspect.signature(function, eval_str=True)
    shared = [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=option)
        for name, option in (("config", ConfigOption), ("set_", SetOption))
    ]
    parameters = [p for p in own.parameters.values() if p.name != "config"] + shared

    @wraps(function)
    def wrapper(
        *args: Any, config: Path | None = None, set_: list[str] | None = None, **kwargs: Any
    ):
        return function(*args, config=ConfigSource(config, tuple(set_ or ())), **kwargs)

    wrapper.__signature__ = own.replace(parameters=parameters)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in parameters}
    return wrapper


def _one_line_errors(function: Callable[..., Any]) -> Callable[..., Any]:
    """The errors a user can cause become one ``error:`` line on stderr and exit code 2 (1 for a
    failed check), never a traceback. A ``data_dir`` folder that is not there is refused before
    the command imports its step (Great Expectations or TensorFlow take seconds to load)."""

    @wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            if isinstance(kwargs.get("data_dir"), Path):
                from osteo_pipeline.io.sources import require_data

                require_data(kwargs["data_dir"])
            return function(*args, **kwargs)
        except OsteoError as exc:
            # escaped: a message's [a, b] lists are text, not rich markup
            console.print(f"[bold red]error:[/] {escape(str(exc))}")
            raise typer.Exit(
                EXIT_CHECK_FAILED if isinstance(exc, CheckFailedError) else EXIT_INPUT
            ) from exc

    return wrapper


def print_json(payload: Any) -> None:
    """Strict JSON on stdout (the project's one serializer), coloured only on a terminal."""
    from osteo_pipeline.core.jsonable import dumps

    text = dumps(payload)
    if sys.stdout.isatty():
        out.print_json(text)
    else:
        print(text)


def csv_list(value: str | None) -> list[str] | None:
    """``a, b,c`` -> ``["a", "b", "c"]``; None when the option was not given."""
    return [v.strip() for v in value.split(",") if v.strip()] if value else None
