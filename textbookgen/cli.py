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


@app.command()
def push(
    folder: str = typer.Argument(..., help="built dataset folder: data/ shards, README.md, assets/, provenance"),
    repo_id: str = typer.Argument(..., help="dataset repo on the Hub, e.g. user/my-textbooks"),
    private: bool = typer.Option(False, "--private", help="create the repo private (an existing repo keeps its visibility)"),
    message: str | None = typer.Option(None, "--message", "-m", help="commit message"),
    endpoint: str | None = typer.Option(None, "--endpoint", envvar="HF_ENDPOINT", help="Hub URL (default huggingface.co)"),
) -> None:
    """Push a built dataset to the Hub in one commit (token from HF_TOKEN or `hf auth login`)."""
    from textbookgen import hub

    try:
        url = hub.push(folder, repo_id, private=private, endpoint=endpoint, commit_message=message)
    except (ValueError, PermissionError, FileNotFoundError, hub.PushConflictError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from None
    typer.echo(url)


@app.command()
def pull(
    repo_id: str = typer.Argument(..., help="dataset repo on the Hub, e.g. user/my-textbooks"),
    out: str | None = typer.Option(None, "--out", "-o", help="folder to write (default: ./<repo name>)"),
    revision: str | None = typer.Option(None, "--revision", help="branch, tag or commit (default main)"),
    endpoint: str | None = typer.Option(None, "--endpoint", envvar="HF_ENDPOINT", help="Hub URL (default huggingface.co)"),
) -> None:
    """Download a dataset repo (shards, card, plots, recipe, manifest) into a folder."""
    from textbookgen import hub

    try:
        path = hub.pull(repo_id, out, revision=revision, endpoint=endpoint)
    except ValueError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from None
    typer.echo(str(path))


# ---- recipes: validate / build / plan; topic taxonomies (owner: diversity & recipes) ----------------
from typing import Annotated, Optional  # noqa: E402


def _overrides(sets: list[str] | None) -> dict:
    import yaml

    out = {}
    for s in sets or []:
        key, sep, value = s.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"--set expects KEY=VALUE (dotted key), got {s!r}")
        out[key.strip()] = yaml.safe_load(value) if value else None
    return out


def _load_recipe(path: str, sets: list[str] | None):
    from textbookgen.recipe import RecipeError, load_recipe

    try:
        return load_recipe(path, _overrides(sets))
    except RecipeError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from None


SET_HELP = "override a recipe field, e.g. --set samples=20 --set provider.base_url=http://127.0.0.1:8000/v1"
SetOption = Annotated[Optional[list[str]], typer.Option("--set", help=SET_HELP)]  # noqa: UP045 (typer needs it)


@app.command()
def validate(
    recipe: str = typer.Argument(..., help="recipe YAML"),
    set_: SetOption = None,
) -> None:
    """Check a recipe: schema, files it names, templates, mix names. Errors name file, line and field."""
    r = _load_recipe(recipe, set_)
    typer.echo(f"ok: {r.name} {r.version}: {r.samples:,} samples of {r.model} ({r.provider.name}), "
               f"{len(r.mix)} mix entr{'y' if len(r.mix) == 1 else 'ies'}, output {r.output_dir()} [recipe {r.hash}]")


def _run_build(recipe: str, sets: list[str] | None, plan_only: bool, push: bool | None, progress: bool) -> None:
    from textbookgen.build import BuildError, build
    from textbookgen.errors import FatalProviderError
    from textbookgen.templates import TemplateError

    r = _load_recipe(recipe, sets)
    try:
        build(r, plan_only=plan_only, push=push, progress=progress)
    except (BuildError, FatalProviderError, TemplateError, ValueError, FileNotFoundError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from None


@app.command()
def build(
    recipe: str = typer.Argument(..., help="recipe YAML, e.g. recipes/quickstart.yaml"),
    plan: bool = typer.Option(False, "--plan", help="stop after rendering prompts and print the plan"),
    push: bool | None = typer.Option(None, "--push/--no-push", help="push to hub.repo_id (default: recipe's hub.push)"),
    set_: SetOption = None,
    progress: bool = typer.Option(True, "--progress/--no-progress", help="live generation progress"),
) -> None:
    """Build a dataset: taxonomy, prompts, generate, curate, dataset, card, push. Unchanged stages are
    skipped; a killed build resumes. With no API key it plans (prompts, tokens, cost, time) and exits 0."""
    _run_build(recipe, set_, plan, push, progress)


@app.command("plan")
def plan_cmd(
    recipe: str = typer.Argument(..., help="recipe YAML"),
    set_: SetOption = None,
) -> None:
    """Same as `build --plan`: render prompts, print counts, token, cost and time estimates."""
    _run_build(recipe, set_, True, False, False)


topics_app = typer.Typer(no_args_is_help=True, help="Topic taxonomies: inspect, convert, grow.")
app.add_typer(topics_app, name="topics")


def _load_taxonomy(path: str, select: str | None):
    from textbookgen.taxonomy import Taxonomy, TaxonomyError

    try:
        return Taxonomy.load(path, select=select)
    except TaxonomyError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from None


@topics_app.command("stats")
def topics_stats(
    path: str = typer.Argument(..., help="taxonomy: .yaml, .csv (path column) or .md outline (.gz ok)"),
    select: str | None = typer.Option(None, help="dotted key of the YAML subtree holding the topics"),
) -> None:
    """Print a taxonomy's size, depth and top-level subjects."""
    tax = _load_taxonomy(path, select)
    typer.echo(f"{tax.name}: {len(tax):,} topics, {len(tax.leaves()):,} leaves, depth {tax.depth()}")
    for t in tax.topics:
        typer.echo(f"  {t.name}: {sum(1 for x in t.walk() if x.is_leaf):,} leaves")


@topics_app.command("convert")
def topics_convert(
    src: str = typer.Argument(..., help="taxonomy to read"),
    dst: str = typer.Argument(..., help="file to write (.yaml keeps ids, weights and metadata)"),
    select: str | None = typer.Option(None, help="dotted key of the YAML subtree holding the topics"),
) -> None:
    """Convert a taxonomy between YAML, CSV and markdown."""
    typer.echo(str(_load_taxonomy(src, select).save(dst)))


@topics_app.command("grow")
def topics_grow(
    src: str = typer.Argument(..., help="root taxonomy"),
    dst: str = typer.Argument(..., help="grown taxonomy to write (.yaml)"),
    target: int = typer.Option(..., "--target", help="number of leaf topics to reach (phi-1.5: ~20,000)"),
    model: str = typer.Option("gpt-4o-mini", help="model"),
    provider: str = typer.Option("openai", help="openai, anthropic or openai-compatible"),
    base_url: str | None = typer.Option(None, help="server URL (vLLM, proxy, emulator)"),
    journal: str = typer.Option("grow.sqlite", help="engine journal (resume after a crash)"),
    per_call: int | None = typer.Option(None, help="subtopics asked per call"),
    seed: int = typer.Option(0, help="seed"),
) -> None:
    """Expand leaves through the LLM to a target count, dropping near-duplicate names."""
    from textbookgen.engine import Generator
    from textbookgen.errors import FatalProviderError
    from textbookgen.taxonomy import grow

    tax = _load_taxonomy(src, None)
    try:
        report = grow(tax, Generator(provider=provider, model=model, base_url=base_url, journal=journal),
                      target, per_call=per_call, seed=seed)
    except FatalProviderError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from None
    tax.save(dst)
    typer.echo(f"{report.leaves_before:,} -> {report.leaves_after:,} leaves in {report.calls:,} calls, "
               f"{report.duplicates_dropped:,} near-duplicates dropped; wrote {dst}")
