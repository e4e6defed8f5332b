"""The `amoeba` command. Each command group is one module that imports only `common`; this file assembles them and
turns user errors into one line on stderr with exit code 2, never a traceback."""

from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path

import typer
from rich.markup import escape

from .. import __version__
from ..errors import UserError
from . import demo, evaluate, extract, finetune, models, plot, profile, search, select
from .common import err_console, new_app

TRACEBACK_ENV = "AMOEBA_TRACEBACK"

app = new_app("Select, extract, evaluate, profile and search elastic-LLM subnets (AmoebaLLM), and fine-tune them "
              "to recover. MODEL is 'default' (the embedded SmolLM2-135M-Instruct) or a local HF checkpoint dir.\n\n"
              "Start with `amoeba demo`, or: `amoeba flows`, `amoeba search --device amd-epyc --flow torch-eager "
              "--target-ratio 0.6`, `amoeba extract --subnet search/best.json --out ckpt/best`.",
              no_args_is_help=True)
for group in (models, select, extract, evaluate, profile, search, finetune, demo):
    app.add_typer(group.app)
app.add_typer(profile.profile_app, name="profile")
app.add_typer(plot.app, name="plot")


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"amoeba_search {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    """The options every command shares are on the commands themselves."""


def main() -> None:
    """Console entry point: user errors become one line on stderr and exit code 2, never a traceback."""
    try:
        app()
    except UserError as exc:
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)
    except Exception as exc:      # not a checked input: still one line, the traceback only when asked for
        if os.environ.get(TRACEBACK_ENV):
            raise
        where = traceback.extract_tb(exc.__traceback__)[-1]
        message = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
        err_console.print(f"[bold red]unexpected error:[/] {escape(f'{type(exc).__name__}: {message}')} (at "
                          f"{Path(where.filename).name}:{where.lineno}); if the inputs are valid this is a bug: "
                          f"rerun with {TRACEBACK_ENV}=1 for the traceback", highlight=False, soft_wrap=True)
        sys.exit(1)
