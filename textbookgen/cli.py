"""The `textbookgen` command line: one subcommand per pipeline stage.

Commands here are thin: they parse options and call the stage's module, where the work lives.
"""

from __future__ import annotations

import typer

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="Build textbook-quality synthetic pretraining datasets, from recipe to Hub.",
)


@app.callback()
def main() -> None:
    """textbookgen: recipe -> topics -> prompts -> journal -> documents -> curated dataset -> card -> Hub."""


@app.command()
def version() -> None:
    """Print the textbookgen version."""
    from textbookgen import __version__

    typer.echo(__version__)
