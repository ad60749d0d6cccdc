"""`python -m textbookgen ...`: the same as the `textbookgen` command."""

from textbookgen.cli import app

app(prog_name="textbookgen")
