"""What the CLIs share: one error policy and the progress bar.

Exit codes mean the same in ``fedrad-site``, ``fedrad-server`` and ``fedrad-bench``:
0 success, 1 the command ran but the answer is "no" (e.g. data cannot train),
2 bad invocation or configuration, 3 an unexpected internal error.
"""

from __future__ import annotations

import functools
import os
import sys
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from shared.config import ConfigError
from shared.modelfile import ModelFileError

EXIT_OK, EXIT_NO, EXIT_USAGE, EXIT_INTERNAL = 0, 1, 2, 3

out = Console()
err = Console(stderr=True)
REPORT_WIDTH = 160  # columns of a wide table written to a file or pipe


def report_console(stderr: bool = False) -> Console:
    """A console for wide figure tables: the terminal's width, or 160 columns when written to a file or pipe.

    Why: off a terminal rich assumes 80 columns and cuts a twelve-column benchmark table to "…", so a run
    saved to a file (as every benchmark's figures are) could not be read back. ``COLUMNS`` still wins."""
    console = Console(stderr=stderr)
    if console.is_terminal or os.environ.get("COLUMNS"):
        return console
    return Console(stderr=stderr, width=REPORT_WIDTH)


F = TypeVar("F", bound=Callable[..., Any])


def cli_app(name: str, help: str) -> typer.Typer:
    """A FedRad command group: help on no arguments, no shell-completion installer, no rich tracebacks."""
    return typer.Typer(name=name, help=help, no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)


def handle_errors(func: F) -> F:
    """Turn expected failures into one clear line and a meaningful exit code, never a traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (typer.Exit, typer.Abort, SystemExit):
            raise
        except (ConfigError, ModelFileError) as exc:  # escaped: "pip install 'fedrad[mlflow]'" is text, not markup
            err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
            raise typer.Exit(EXIT_USAGE) from None
        except KeyboardInterrupt:
            err.print("[yellow]interrupted[/]")
            raise typer.Exit(130) from None
        except Exception as exc:  # last resort: say what happened, keep the traceback for those who ask
            if os.environ.get("FEDRAD_DEBUG"):
                traceback.print_exc()
            err.print(
                f"[bold red]internal error:[/] {type(exc).__name__}: {exc}\n"
                "This is a FedRad bug, not a problem with your data. Re-run with FEDRAD_DEBUG=1 for details.",
                highlight=False,
                soft_wrap=True,
            )
            raise typer.Exit(EXIT_INTERNAL) from None

    return wrapper  # type: ignore[return-value]


@contextmanager
def progress_bar(description: str, enabled: bool = True) -> Iterator[Callable[[int, int], None]]:
    """A rich progress bar on stderr (stdout stays clean for --json); yields an ``update(done, total)``."""
    if not enabled or not sys.stderr.isatty() and os.environ.get("FEDRAD_PROGRESS") != "1":
        yield lambda done, total: None
        return
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=True,
    ) as bar:
        task = bar.add_task(description, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update
