"""The ``distillguard`` command line: parse arguments, load config, call the library; nothing else.

Exit codes: 0 success, 2 usage or input errors (``DistillguardError``), 1 anything unexpected.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from distillguard.core.errors import DistillguardError, InvalidInputError

app = typer.Typer(
    name="distillguard",
    help="Find and stop distillation attacks on an LLM API without hurting real customers.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err = Console(stderr=True)
out = Console()

LogDir = Annotated[Path, typer.Argument(help="A log directory in the data contract.", show_default=False)]
OutDir = Annotated[Path, typer.Option("--out", "-o", help="Directory to write results into.")]
ConfigOpt = Annotated[
    Path | None, typer.Option("--config", "-c", help="YAML file overlaying the packaged defaults.")
]


def _fail(exc: DistillguardError) -> None:
    if isinstance(exc, InvalidInputError):
        err.print(f"[bold red]invalid input[/]: {len(exc.problems) + exc.truncated} problem(s)")
        for problem in exc.problems:
            err.print(f"  {problem}", markup=False, highlight=False)
        if exc.truncated:
            err.print(f"  ... and {exc.truncated} more problems of the same kinds")
    else:
        err.print(f"[bold red]error[/]: {exc}", highlight=False)
    raise typer.Exit(code=2)


@app.command()
def validate(
    logdir: LogDir,
    config: ConfigOpt = None,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Also write the summary as JSON to this file.")
    ] = None,
) -> None:
    """Check a log directory against the data contract: print a summary, or every problem found."""
    from distillguard.core.config import load_config
    from distillguard.ingest.validate import render_summary, validate_logdir, write_summary_json

    try:
        summary = validate_logdir(logdir, load_config(config))
    except DistillguardError as exc:
        _fail(exc)
        return
    render_summary(summary, out)
    if json_out is not None:
        write_summary_json(summary, json_out)


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except DistillguardError as exc:  # raised outside a command's own handler
        err.print(f"[bold red]error[/]: {exc}", highlight=False)
        sys.exit(2)


if __name__ == "__main__":
    main()
