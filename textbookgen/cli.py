"""The `textbookgen` command line: one subcommand per pipeline stage.

Commands here are thin: they parse options and call the stage's module, where the work lives.
"""

from __future__ import annotations

import errno
import inspect
import json
import os
import re
import shlex
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer
from typer.core import TyperGroup

try:  # typer 0.2x vendors its click
    from typer._click.exceptions import UsageError as _UsageError
except ImportError:  # pragma: no cover
    from click.exceptions import UsageError as _UsageError

if TYPE_CHECKING:
    from textbookgen.build import BudgetedGenerator, Build
    from textbookgen.engine import ChatRequest, ChatResponse, Generator
    from textbookgen.taxonomy import GrowReport, Taxonomy

_LIST_ITEM = re.compile(r"\s*([-*\u2022]|\d+[.)])\s")  # a line that starts a list item keeps its line break


def _flow(text: str | None) -> str | None:
    """A help text whose paragraphs flow: the lines of each are joined, so that rich wraps them once, at the
    terminal's width. Docstrings are hard-wrapped at ~110 columns, and rich kept those breaks, breaking lines
    mid-sentence; blank-line paragraph breaks, list items and click's `\\b` (no rewrap) paragraphs are kept."""
    if not text:
        return text
    paragraphs = re.split(r"\n[ \t]*\n", inspect.cleandoc(text))
    return "\n\n".join(p if p.startswith("\b") else _join_lines(p) for p in paragraphs)


def _join_lines(paragraph: str) -> str:
    """One paragraph's lines as one, each list item starting a line of its own."""
    lines: list[str] = []
    for line in paragraph.splitlines():
        if lines and not _LIST_ITEM.match(line):
            lines[-1] += " " + line.strip()
        else:
            lines.append(line.rstrip())
    return "\n".join(lines)


class _Root(TyperGroup):
    """The `textbookgen` command: flows the help of every command under it (`_flow`), in one place rather than in
    every docstring, and makes click's usage errors (a missing argument, an unknown option, `--concurrency abc`)
    bad input like any other: one `error:` line and exit 1. Click exits 2 for them, which `generate` and `build`
    document as a stopped run that a rerun resumes."""

    def __init__(self, **attrs) -> None:
        super().__init__(**attrs)
        _flow_all(self)

    def make_context(self, *args, **kwargs):
        with _usage_errors_as_bad_input():
            return super().make_context(*args, **kwargs)

    def invoke(self, ctx):
        with _usage_errors_as_bad_input():
            return super().invoke(ctx)


def _flow_all(command) -> None:
    """`_flow` the help of `command` and of every command under it."""
    command.help = _flow(command.help)
    for sub in getattr(command, "commands", {}).values():
        _flow_all(sub)


@contextmanager
def _usage_errors_as_bad_input() -> Iterator[None]:
    """Turn a click UsageError into `error: MESSAGE (see 'COMMAND --help')` and exit 1; a group called with no
    arguments still prints its help, and exits 1 too (click's 2 is this CLI's "stopped: rerun to resume")."""
    try:
        yield
    except _UsageError as err:
        if type(err).__name__ == "NoArgsIsHelpError":  # as typer tells it, the class being new in click 8.2
            err.show()
            raise SystemExit(1) from None
        see = f" (see '{err.ctx.command_path} --help')" if err.ctx is not None else ""
        _fail(err.format_message().rstrip(".") + see)


app = typer.Typer(
    cls=_Root,
    no_args_is_help=True,
    add_completion=False,
    help="Build textbook-quality synthetic pretraining datasets, from recipe to Hub.",
)


# Exit statuses of a run that left requests unanswered (`generate` and `build`): some failed; the budget kept some back
UNFINISHED_EXIT = {"failed": 3, "budget": 4}


def _fail(message: str, code: int = 1) -> NoReturn:
    """Print one `error: ...` line and exit with `code`."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _error_line(err: Exception) -> str:
    """The first line of a known bad-input error, naming the file (OSError) or the option (pydantic; a
    validator of a whole model or section, e.g. of two options that exclude each other, has no option to name:
    its message names what it checks)."""
    from pydantic import ValidationError

    if isinstance(err, ValidationError):
        return "; ".join((f"--{str(e['loc'][-1]).replace('_', '-')}: " if e["loc"] and (
            e["type"] == "missing" or not isinstance(e.get("input"), dict)) else "")
            + e["msg"].removeprefix("Value error, ") for e in err.errors())
    if isinstance(err, OSError) and err.filename is not None:
        return f"{err.filename}: {err.strerror or err}"
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def _disk_full(err: BaseException, journal: str | Path | None, folder: str | Path | None = None,
               journaling: bool = True) -> str | None:
    """One line for a full disk (ENOSPC while writing a file, SQLite's `database or disk is full`, which names no
    file), naming the file (else the `folder` written to) and saying that the journal keeps the requests that
    finished; None for any other error. SQLite's error is put on `journal` only while `journaling` (a build's
    other SQLite files and SQLite's temp files fill a disk too: then the `folder`). Exit 1, as bad input: no rerun
    succeeds until space is freed."""
    text = str(err)
    if isinstance(err, OSError) and (err.errno == errno.ENOSPC or "No space left on device" in text):
        path = err.filename or folder or journal  # pyarrow's parquet writer names no file
    elif isinstance(err, sqlite3.OperationalError) and "disk is full" in text:
        path = journal if journaling else folder
    else:
        return None
    if not journal:
        return f"{path or 'a file'}: No space left on device: free space and rerun the same command."
    return (f"{path}: No space left on device; finished requests are kept in {journal}: free space and rerun the "
            "same command to resume.")


@contextmanager
def _reported(journal: str | Path | None = None, stopped: int = 1) -> Iterator[None]:
    """Turn bad input (ValueError, OSError, journal, provider, polars and YAML errors) into one `error:` line and
    exit 1; with `journal`, say that the answers already paid for are kept there. `stopped` is the exit code of a
    provider error: 2 where it stops a paid run (the provider, or the error-rate stop), as `generate` exits."""
    import polars as pl
    import yaml

    from textbookgen.errors import FatalProviderError
    from textbookgen.journal import JournalError

    try:
        yield
    except sqlite3.OperationalError as err:  # a journal's write: a full disk, said in one line
        full = _disk_full(err, journal)
        if full is None:
            raise
        _fail(full)
    except (ValueError, OSError, JournalError, FatalProviderError, pl.exceptions.PolarsError,
            yaml.YAMLError) as err:
        if full := _disk_full(err, journal):
            _fail(full)
        kept = f"\nfinished requests are kept in {journal}; rerun the same command to resume." if journal else ""
        _fail(_error_line(err) + kept, stopped if isinstance(err, FatalProviderError) else 1)


_RULES = {"> 0": lambda v: v > 0, ">= 0": lambda v: v >= 0, ">= 1": lambda v: v >= 1, ">= 2": lambda v: v >= 2,
          "in [0, 1]": lambda v: 0 <= v <= 1, "in [0, 2]": lambda v: 0 <= v <= 2, "in (0, 1]": lambda v: 0 < v <= 1}


def _check(option: str, value: float | None, rule: str) -> None:
    """Exit with `error: OPTION: must be RULE` unless `value` is None or keeps to the rule (a key of _RULES)."""
    if value is not None and not _RULES[rule](value):
        _fail(f"{option}: must be {rule}, got {value}")


def _check_provider(provider: str) -> None:
    """Exit naming --provider unless it is one we have a client for."""
    from textbookgen.providers import PROVIDERS

    if provider not in PROVIDERS:
        _fail(f"--provider {provider!r}: choose one of {', '.join(PROVIDERS)}")


def _check_output(path: str | Path, option: str) -> None:
    """Before any paid work: `path` must name a file (not a folder) in a folder we can create and write."""
    p = Path(path)
    if p.is_dir():
        _fail(f"{option} {p}: is a folder; give a file name")
    parent = next(a for a in p.absolute().parents if a.exists())
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        _fail(f"{option} {p}: cannot write there ({parent} is not a writable folder)")


@app.callback()
def main() -> None:
    """textbookgen: recipe -> topics -> prompts -> journal -> documents -> curated dataset -> card -> Hub."""
    _terminate_as_interrupt()


def _interrupt_exit() -> int:
    """The exit code of an interrupted command: 143 after SIGTERM, else 130 (Ctrl-C)."""
    return 143 if _TERMINATED else 130


_TERMINATED = False


def _terminate_as_interrupt() -> None:
    """SIGTERM (a scheduler's stop, `kill`, a job started with `&`, which ignores SIGINT) takes Ctrl-C's path: the
    attempts on the wire are counted as billed, the journal is closed, a resume hint is printed. Its default
    action killed the process mid-request, and answers billed after it were neither kept nor counted."""
    import signal
    import threading

    def terminated(signum, frame) -> None:
        global _TERMINATED
        _TERMINATED = True
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, terminated)


@app.command()
def version() -> None:
    """Print the textbookgen version."""
    from textbookgen import __version__

    typer.echo(__version__)


def _check_endpoint(endpoint: str | None) -> None:
    """Exit naming `--endpoint` unless it is an http(s) URL of a server that accepts connections."""
    import socket
    from urllib.parse import urlparse

    if endpoint is None:
        return
    url = urlparse(endpoint)
    if url.scheme not in ("http", "https") or not url.hostname:
        _fail(f"--endpoint {endpoint}: not an http(s) URL")
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), 10).close()
    except (OSError, ValueError) as err:
        _fail(f"--endpoint {endpoint}: cannot connect ({getattr(err, 'strerror', None) or err})")


def _exit_interrupted(message: str) -> NoReturn:
    """Print the line saying what an interrupted push or pull left (`hub.HubInterrupted`), and exit 130 now.

    `os._exit`, not a normal exit: Python joins the client's transfer threads at exit (its pool's, daemon or
    not), and one stalled in a socket read would hold the process until its request timed out, and then its
    retries. Nothing is left to save: no commit was sent, and downloads in flight are `.incomplete`.
    """
    import sys

    typer.echo(f"\n{message}", err=True)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(_interrupt_exit())


def _hub_token(token_env: str | None) -> str | None:
    """The token in the variable --token-env names (a write token kept apart from HF_TOKEN, a CI secret); None
    without the option (HF_TOKEN or `hf auth login`). A token pasted where the name goes is refused unshown."""
    if token_env is None:
        return None
    if re.fullmatch(r"hf_[A-Za-z0-9]{30,}", token_env) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", token_env):
        _fail("--token-env takes the name of an environment variable holding a Hugging Face token (e.g. "
              "HF_WRITE_TOKEN), not the token itself")
    token = os.environ.get(token_env, "").strip()  # a file's newline, read into the variable, is no part of it
    if not token:
        _fail(f"--token-env: environment variable {token_env} is not set")
    return token


@app.command()
def push(
    folder: str = typer.Argument(..., help="built dataset folder: data/ shards, README.md, assets/, provenance"),
    repo_id: str = typer.Argument(..., help="dataset repo on the Hub, e.g. user/my-textbooks"),
    private: bool = typer.Option(False, "--private", help="make the repo private, an existing public one too (a private repo is never made public)"),
    message: str | None = typer.Option(None, "--message", "-m", help="commit message"),
    revision: str = typer.Option("main", "--revision", help="branch to commit to (created from main if missing), "
                                 "or refs/pr/N to push onto that open pull request"),
    create_pr: bool = typer.Option(False, "--create-pr", help="open a pull request against main instead of "
                                   "committing to it (read access is enough); prints its URL"),
    token_env: str | None = typer.Option(None, "--token-env", help="environment variable holding the token "
                                         "(default HF_TOKEN, else `hf auth login`)"),
    endpoint: str | None = typer.Option(None, "--endpoint", envvar="HF_ENDPOINT", help="Hub URL (default huggingface.co)"),
    timeout: float | None = typer.Option(None, "--timeout", envvar="TEXTBOOKGEN_HUB_TIMEOUT", help="seconds to wait for each Hub answer (default 60)"),
) -> None:
    """Push a built dataset to the Hub in one commit, or as a pull request (token from --token-env, HF_TOKEN or
    `hf auth login`)."""
    from textbookgen import hub

    _check("--timeout", timeout, "> 0")
    token = _hub_token(token_env)
    _check_endpoint(endpoint)
    try:
        url = hub.push(folder, repo_id, private=private, token=token, endpoint=endpoint, commit_message=message,
                       revision=revision, timeout=timeout, create_pr=create_pr)
    except (ValueError, OSError, hub.PushConflictError) as err:
        _fail(_error_line(err))
    except hub.HubInterrupted as err:
        _exit_interrupted(str(err))
    typer.echo(url)


@app.command()
def pull(
    repo_id: str = typer.Argument(..., help="dataset repo on the Hub, e.g. user/my-textbooks"),
    out: str | None = typer.Option(None, "--out", "--output", "-o", help="folder to write (default: ./<repo name>)"),
    revision: str | None = typer.Option(None, "--revision", help="branch, tag or commit (default main)"),
    token_env: str | None = typer.Option(None, "--token-env", help="environment variable holding the token "
                                         "(default HF_TOKEN, else `hf auth login`; none for a public repo)"),
    endpoint: str | None = typer.Option(None, "--endpoint", envvar="HF_ENDPOINT", help="Hub URL (default huggingface.co)"),
    timeout: float | None = typer.Option(None, "--timeout", envvar="TEXTBOOKGEN_HUB_TIMEOUT", help="seconds to wait for each Hub answer (default 60)"),
    force: bool = typer.Option(False, "--force", help="overwrite files of the folder that have a repo file's name "
                               "though no pull of this repo wrote them, or that you edited since a pull wrote "
                               "them, and remove such edited files the revision lacks (refused otherwise)"),
) -> None:
    """Download a dataset repo (shards, card, plots, recipe, manifest) into a folder."""
    from textbookgen import hub

    target = Path(out) if out is not None else hub.pull_folder(repo_id)
    if target.exists() and not target.is_dir():
        _fail(f"--out {target}: is a file; give a folder" if out is not None else
              f"{target}: is a file, and pull writes into ./{target} by default; give another folder with --out")
    _check("--timeout", timeout, "> 0")
    token = _hub_token(token_env)
    _check_endpoint(endpoint)
    try:
        with _reported():
            path = hub.pull(repo_id, out, revision=revision, token=token, endpoint=endpoint, timeout=timeout,
                            force=force)
    except hub.HubInterrupted as err:
        _exit_interrupted(str(err))
    typer.echo(str(path))


@app.command()
def publish(
    input_path: str = typer.Argument(..., help="your corpus: parquet/jsonl file or folder (e.g. a curation output)"),
    out: str = typer.Option(..., "--output", "--out", "-o", help="folder to write: data/{split}-NNNNN-of-NNNNN.parquet, "
                            "README.md, assets/; then `textbookgen push` it"),
    split: str = typer.Option("train", "--split", help="split the input becomes (publish again to add another)"),
    name: str | None = typer.Option(None, "--name", help="card title and pretty_name (default: the folder's name)"),
    license: str | None = typer.Option(None, "--license", help="Hub license id, e.g. cc-by-4.0 (default: unknown)"),
    language: str | None = typer.Option(None, "--language", help="ISO 639 code of the text (default: en)"),
    stats: Annotated[list[str] | None, typer.Option("--stats", help="a curation command's <output>.stats.json, "
                     "reported in the card; repeat in the order the commands ran")] = None,
    repo_id: str | None = typer.Option(None, "--repo-id", help="repo named in the card's usage example"),
    text_column: str = typer.Option("text", "--text-column", help="field holding the text"),
) -> None:
    """Write your own corpus as a Hub dataset folder with every column as given, and a card that describes it."""
    from textbookgen.publish import publish as publish_corpus

    with _reported():
        readme = publish_corpus(input_path, out, split=split, text_column=text_column, name=name, license=license,
                                language=language, repo_id=repo_id, stats=stats)
    typer.echo(str(readme))


# ---- generation engine: generate (owner: engine) ---------------------------------------------------
def _prices(specs: list[str] | None) -> dict[str, tuple[float, float]]:
    prices = {}
    for spec in specs or []:
        model, sep, pair = spec.partition("=")
        try:
            price_in, price_out = (float(x) for x in pair.split(","))
        except ValueError:
            _fail(f"--price expects MODEL=IN,OUT (USD per 1M tokens), got {spec!r}")
        if not sep or not model:
            _fail(f"--price expects MODEL=IN,OUT (USD per 1M tokens), got {spec!r}")
        prices[model] = (price_in, price_out)
    return prices


def _base_urls(value: str | None) -> str | list[str] | None:
    """`--base-url` as read: one URL, or the comma-separated URLs of several replicas (a list); a URL that is
    none is refused."""
    from textbookgen.providers import replica_urls

    urls = [url.strip() for url in (value or "").split(",") if url.strip()]
    try:
        replica_urls("openai-compatible", urls or None)
    except ValueError as err:
        _fail(f"--base-url: {err}")
    return urls if len(urls) > 1 else (urls[0] if urls else value)


ApiKeyEnvOption = Annotated[str | None, typer.Option("--api-key-env", help="environment variable holding the key "
                                                     "(default OPENAI_API_KEY / ANTHROPIC_API_KEY)")]
# the provider batch API's options, alike in every command that sends requests (`_batch_options` checks them)
BatchOption = Annotated[bool, typer.Option("--batch", help="the provider's batch API (openai, anthropic): half price, "
                                           "answers within 24 h; interrupt and rerun to collect submitted batches")]
BatchSizeOption = Annotated[int | None, typer.Option("--batch-size", help="requests per batch (with --batch; "
                                                     "default 10,000)")]
BatchPollOption = Annotated[float | None, typer.Option("--batch-poll", help="seconds between batch status checks "
                                                       "(with --batch; default 30)")]


@app.command()
def generate(
    prompts: str = typer.Argument(..., help="prompts file: .jsonl (one {prompt|messages, ...} a line) or .parquet"),
    provider: str = typer.Option("openai", "--provider", help="openai | anthropic | openai-compatible"),
    model: str = typer.Option("gpt-4o-mini", "--model", help="model name, as the provider or server calls it"),
    base_url: str | None = typer.Option(None, "--base-url", callback=_base_urls, help="server URL (vLLM, SGLang, "
                                        "llama.cpp, emulator); several replicas of the model (one server per GPU "
                                        "node) comma-separated: each request goes to the one with the fewest in "
                                        "flight, one that is down is set aside until it is back"),
    api_key_env: ApiKeyEnvOption = None,
    journal: str | None = typer.Option(None, "--journal", help="journal file (default: <prompts>.journal.sqlite); rerun to resume"),
    out: str | None = typer.Option(None, "--out", "--output", "-o", help="completions file, .jsonl or .parquet (default: <prompts>.completions.jsonl)"),
    concurrency: int = typer.Option(64, "--concurrency", help="most requests on the wire"),
    rpm: float | None = typer.Option(None, "--rpm", help="requests/min to stay under (server headers tighten it)"),
    tpm: float | None = typer.Option(None, "--tpm", help="combined tokens/min"),
    input_tpm: float | None = typer.Option(None, "--input-tpm", help="input tokens/min to stay under"),
    output_tpm: float | None = typer.Option(None, "--output-tpm", help="output tokens/min to stay under"),
    max_cost: float | None = typer.Option(None, "--max-cost", help="USD budget: stop launching requests when reached"),
    max_output_tokens: int | None = typer.Option(None, "--max-output-tokens", help="output-token budget"),
    max_tokens: int = typer.Option(1024, "--max-tokens", help="per request, where a row does not say"),
    temperature: float | None = typer.Option(None, "--temperature", help="0 to 2, where a row does not say "
                                             "(default: none sent, the provider's own, 1.0 for OpenAI and Anthropic)"),
    top_p: float | None = typer.Option(None, "--top-p", help="nucleus sampling in (0, 1], where a row does not say "
                                       "(default: none sent)"),
    system: str | None = typer.Option(None, "--system", help="system prompt, where a row does not say"),
    n: int = typer.Option(1, "--n", help="answers per prompt: sample 0 is the prompt as --n 1 sends it, sample k "
                          "is seeded the row's seed + k (k where it has none; sent where the API takes one, "
                          "not to Anthropic: use a temperature above 0); metadata.sample says which; a larger "
                          "--n later (from 1 too) pays only for the new ones"),
    price: Annotated[list[str] | None, typer.Option("--price", help="MODEL=IN,OUT USD per 1M tokens (repeatable)")] = None,
    timeout: float = typer.Option(120.0, "--timeout", help="seconds an attempt waits for its answer; each timeout "
                                  "doubles it for the rest of the run, up to 8x"),
    max_attempts: int = typer.Option(8, "--max-attempts", help="per request, over transient errors"),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="re-send requests that failed for good (400, refusal)"),
    max_error_rate: float | None = typer.Option(None, "--max-error-rate", help="stop the run once 50 requests have "
                                                "finished and more than this share of them failed (default 0.5; 1: "
                                                "never stop). Live runs only: --batch pays for a batch as it submits "
                                                "it, so nothing stops it early"),
    batch: BatchOption = False, batch_size: BatchSizeOption = None, batch_poll: BatchPollOption = None,
    progress: bool = typer.Option(True, "--progress/--no-progress", help="live progress on stderr"),
) -> None:
    """Generate a completion for every prompt; writes the journal and the completions file.

    Exit status (a script can tell what a rerun needs): 0 every prompt answered; 1 bad input; 2 the run
    stopped (provider error, too many failures: rerun to resume); 3 some requests failed, their errors in the
    completions file (refused for good: rerun with --retry-failed once the cause is fixed; gave up on transient
    errors: a plain rerun); 4 the budget stopped it before every prompt was sent, none failed (rerun with a
    larger --max-cost / --max-output-tokens). 130 Ctrl-C, 143 SIGTERM (the same path: journal closed, resume hint)."""
    import logging
    from collections import Counter

    from textbookgen.engine import Generator, RateLimits, sampled, warn_same_samples
    from textbookgen.promptfile import load_prompts, write_completions

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for option, value, rule in (("--timeout", timeout, "> 0"), ("--max-attempts", max_attempts, ">= 1"),
                                ("--concurrency", concurrency, ">= 1"), ("--rpm", rpm, "> 0"), ("--tpm", tpm, "> 0"),
                                ("--input-tpm", input_tpm, "> 0"), ("--output-tpm", output_tpm, "> 0"),
                                ("--max-cost", max_cost, ">= 0"), ("--max-output-tokens", max_output_tokens, ">= 0"),
                                ("--max-tokens", max_tokens, ">= 1"), ("--temperature", temperature, "in [0, 2]"),
                                ("--top-p", top_p, "in (0, 1]"), ("--n", n, ">= 1"),
                                ("--max-error-rate", max_error_rate, "in [0, 1]")):
        _check(option, value, rule)
    batching = _batch_options(batch, batch_size, batch_poll)
    if batch and max_error_rate is not None and max_error_rate < 1:
        _fail("--max-error-rate: live runs only; --batch pays for a batch as it submits it, so nothing stops it "
              "early (try the prompts on a small live run first: the --batch run replays its answers free)")
    max_error_rate = 0.5 if max_error_rate is None else max_error_rate
    _check_provider(provider)
    stem = Path(prompts).with_suffix("")
    out_path = out or f"{stem}.completions.jsonl"
    _check_output(out_path, "--out")
    defaults = {"max_tokens": max_tokens, "temperature": temperature, "top_p": top_p, "system": system}
    with _reported():
        requests = load_prompts(prompts, defaults)
        if n != 1:
            requests = [s for r in requests for s in sampled(r, n)]
            warn_same_samples(provider, n, requests)
    api_key = _api_key(provider, base_url, api_key_env)
    with _reported():
        gen = Generator(provider, model, base_url=base_url, api_key=api_key,
                        journal=journal or f"{stem}.journal.sqlite",
                        limits=RateLimits(rpm=rpm, input_tpm=input_tpm, output_tpm=output_tpm, tpm=tpm),
                        concurrency=concurrency, max_cost_usd=max_cost, max_output_tokens=max_output_tokens,
                        prices=_prices(price), progress=progress, timeout_s=timeout, max_attempts=max_attempts,
                        retry_failed=retry_failed, max_error_rate=max_error_rate, **batching)
    responses = _run_generator(gen, requests)
    with _reported(journal=gen.journal_path):
        path = write_completions(out_path, responses)
    counts = Counter(r.status for r in responses)
    cost = sum(r.cost_usd for r in responses)
    typer.echo(f"{len(responses)} completions -> {path} ({', '.join(f'{k} {v}' for k, v in sorted(counts.items()))}); "
               f"${cost:.4f}; journal {gen.journal_path}")
    _exit_unfinished(responses)


def _batch_options(batch: bool, batch_size: int | None, batch_poll: float | None) -> dict:
    """The Generator's batch arguments from --batch, --batch-size and --batch-poll (each unset one left to its
    default), after checking them: the sizes alone, without --batch, would run live at twice the price."""
    for option, value, rule in (("--batch-size", batch_size, ">= 1"), ("--batch-poll", batch_poll, ">= 0")):
        _check(option, value, rule)
    if not batch and (batch_size is not None or batch_poll is not None):
        _fail("--batch-size and --batch-poll go with --batch")
    return {"batch": batch, **{k: v for k, v in (("batch_size", batch_size), ("batch_poll_s", batch_poll))
                               if v is not None}}


def _env_key(api_key_env: str | None) -> str | None:
    """The key in the variable --api-key-env names (None without the option: the provider's default variable);
    exits 1 when it is not set: bad input, which no rerun mends (2 would tell a requeue loop to retry)."""
    if not api_key_env:
        return None
    from textbookgen.providers import check_key_variable

    try:
        check_key_variable(api_key_env)
    except ValueError as e:
        _fail(f"--api-key-env {e}")
    api_key = os.environ.get(api_key_env)
    if not api_key:
        # a variable name is upper-case words; a long mixed-case name with digits may be a key pasted there
        keylike = len(api_key_env) >= 20 and not re.fullmatch(r"[A-Z0-9_]+", api_key_env) and \
            any(c.isdigit() for c in api_key_env)
        named = "the variable --api-key-env names (not shown: it looks like a key, not a name)" if keylike \
            else api_key_env
        _fail(f"environment variable {named} is not set")
    return api_key


def _api_key(provider: str, base_url: str | list[str] | None, api_key_env: str | None) -> str | None:
    """The key a command that calls `provider` sends: the variable --api-key-env names, else the provider's own
    variable, else a placeholder for a server of your own (`ProviderConfig.api_key`). Checked before any journal
    or lock is created; a --base-url the provider refuses, an openai-compatible provider with none, and a missing
    key each exit 1 in one line saying what to give, as no rerun mends them."""
    from textbookgen.providers import replica_urls
    from textbookgen.recipe import KEY_ENV, ProviderConfig

    try:  # before ProviderConfig, whose validation error would be a traceback
        replica_urls(provider, base_url)
    except ValueError as err:
        _fail(f"--base-url: {err}")
    if provider == "openai-compatible" and not base_url:
        _fail("--provider openai-compatible needs --base-url, the server's URL (e.g. http://127.0.0.1:8000/v1)")
    if api_key_env:
        return _env_key(api_key_env)
    key = ProviderConfig(name=provider, base_url=base_url).api_key()
    if key is None:
        _fail(f"no API key for {provider}: set {KEY_ENV[provider]} (or name the variable that holds it with "
              "--api-key-env NAME)")
    return key


def _run_generator(gen: Generator, requests: list[ChatRequest]) -> list[ChatResponse]:
    """`gen.run`; a provider error exits 2 and Ctrl-C 130 (SIGTERM 143), each saying the journal keeps the finished
    requests, and a journal another run holds (or that is none) exits 1."""
    from textbookgen.errors import FatalProviderError
    from textbookgen.journal import JournalError

    try:
        return gen.run(requests)
    except (OSError, sqlite3.OperationalError) as err:
        full = _disk_full(err, gen.journal_path)
        if full is None:
            raise
        _fail(full)
    except FatalProviderError as err:
        _fail(f"{err}\nfinished work is kept in {gen.journal_path}; rerun to resume.", 2)
    except JournalError as err:  # in use by another run, not a journal, a directory
        _fail(str(err))
    except KeyboardInterrupt:
        _exit_interrupted_run(gen.journal_path)


def _exit_interrupted_run(journal: str | Path | None) -> NoReturn:
    """Ctrl-C (SIGTERM) stopped a paid run: say the journal keeps what finished and exit 130 (143)."""
    typer.echo(f"\ninterrupted: finished requests are in {journal}; rerun the same command to resume.", err=True)
    raise typer.Exit(_interrupt_exit()) from None


def _exit_unfinished(responses: list[ChatResponse]) -> None:
    """Exit 3 where requests failed, saying how many, why, and what sends them again (a rerun with --retry-failed,
    a plain one, a larger budget); else 4 where the budget kept requests back. Returns when all were answered."""
    from collections import Counter

    failed = [r for r in responses if r.status == "failed"]
    skipped = sum(r.status == "skipped_budget" for r in responses)
    note = next((r.error for r in responses if r.status == "skipped_budget" and r.error), "a budget was reached")
    budget = (f"{skipped} of {len(responses)} requests were never sent, {note}; rerun with a larger --max-cost / "
              "--max-output-tokens to send them")
    if failed:  # not a success: say how many, why, and how to send them again
        classes = Counter(r.error_class or "failed" for r in failed)
        transient = classes.get("transient", 0)
        again = []
        if len(failed) > transient:
            again.append(f"rerun with --retry-failed to send the {len(failed) - transient} refused for good again "
                         "once the cause is fixed")
        if transient:
            again.append(f"a plain rerun sends the {transient} that gave up on transient errors again")
        if skipped:
            again.append(budget)
        why = ", ".join(f"{name} {count}" for name, count in classes.most_common())
        _fail(f"{len(failed)} of {len(responses)} requests failed ({why}), e.g. {(failed[0].error or '')[:200]}; "
              + "; ".join(again), UNFINISHED_EXIT["failed"])
    if skipped:
        _fail(budget, UNFINISHED_EXIT["budget"])


def _unreached(err: BaseException) -> bool:
    """Whether `err` comes of calls no server answered (connection refused, unknown host, timeout)."""
    from textbookgen.errors import RetryableError

    cause = err.__cause__ or err.__context__
    return isinstance(cause, RetryableError) and not cause.reached


def _local_server_key(path: str, base_url: str | None) -> str | None:
    """The placeholder key a build hands a server of your own (recipe.ProviderConfig.api_key) where the journal's
    open batches went to one (`base_url`, else the server each recorded) and no key is set; else None (the
    provider's environment variable)."""
    from textbookgen.journal import Journal
    from textbookgen.recipe import ProviderConfig

    with Journal(path, read_only=True) as j:
        groups = j.open_batch_groups()
    keys = {ProviderConfig(name=provider, base_url=base_url or recorded).api_key() for provider, _, recorded in groups}
    return "EMPTY" if "EMPTY" in keys else None


@app.command()
def journal(
    path: str = typer.Argument(..., help="journal file written by generate / build"),
    export: str | None = typer.Option(None, "--export", "--out", "--output", "-o",
                                      help="write the rows to this parquet file"),
    status: Annotated[list[str] | None, typer.Option("--status", help="export only these statuses (repeatable)")] = None,
    cancel_batches: bool = typer.Option(False, "--cancel-batches",
                                        help="cancel the journal's open provider batches, keep what they finished; "
                                        "the requests that never ran stay pending for a rerun"),
    base_url: str | None = typer.Option(None, "--base-url", help="with --cancel-batches: the server the batches "
                                        "went to, e.g. a recipe's provider.base_url (default: the one the journal "
                                        "recorded for each batch, else the provider's API)"),
    api_key_env: str | None = typer.Option(None, "--api-key-env", help="with --cancel-batches: environment variable "
                                           "holding the key (default OPENAI_API_KEY / ANTHROPIC_API_KEY)"),
    price: Annotated[list[str] | None, typer.Option("--price", help="MODEL=IN,OUT USD per 1M tokens (repeatable): "
                                                    "prices the tokens runs made at no price (unpriced_tokens)")] = None,
) -> None:
    """Summarise a request journal (counts by status, tokens, cost) and optionally export it to parquet;
    --cancel-batches first cancels its open batches (stop the run using it first)."""
    from textbookgen.engine import STATUSES
    from textbookgen.journal import Journal

    if not Path(path).is_file():
        _fail(f"{path}: is a folder; give the journal file" if Path(path).is_dir() else f"no journal at {path}")
    if (base_url or api_key_env) and not cancel_batches:
        _fail("--base-url and --api-key-env go with --cancel-batches")
    prices = _prices(price)
    for name in status or []:
        if name not in ("pending", *STATUSES):
            _fail(f"--status {name!r}: choose from pending, {', '.join(STATUSES)}")
    if status and not export:
        _fail("--status picks the rows --export writes; it goes with --export")
    if export:
        if Path(export).suffix != ".parquet":
            _fail(f"--export {export}: writes parquet; give a .parquet file name")
        _check_output(export, "--export")
    if cancel_batches:
        import logging

        from textbookgen.batch import cancel_batches as cancel
        from textbookgen.errors import FatalProviderError

        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
        api_key = _env_key(api_key_env)
        with _reported():
            api_key = api_key or _local_server_key(path, base_url)
            try:
                counts = cancel(path, base_url=base_url, api_key=api_key)
            except FatalProviderError as err:
                if base_url or not _unreached(err):
                    raise
                _fail(f"{_error_line(err)}; no server answered at the one the journal recorded (or the provider's "
                      "API): if the batches went to another server (a recipe's provider.base_url), pass --base-url "
                      "with its URL")
        gone = f", {counts['gone']} not at the provider for this key (let go)" if counts["gone"] else ""
        typer.echo(f"batches: {counts['cancelled']} cancelled, {counts['lost']} never created{gone}; requests: "
                   f"{counts['answered']} answered, {counts['failed']} failed, {counts['pending']} pending "
                   "(rerun the generate or build command to send them)")
    with _reported(), Journal(path, read_only=True) as j:
        typer.echo(json.dumps(j.summary(prices), indent=2))
        if export:
            typer.echo(f"exported -> {j.export_parquet(export, statuses=status)}")


# ---- recipes: validate / build / plan; topic taxonomies (owner: diversity & recipes) ----------------
def _overrides(sets: list[str] | None) -> dict:
    import yaml

    out = {}
    for s in sets or []:
        key, sep, value = s.partition("=")
        if not sep or not key:
            _fail(f"--set expects KEY=VALUE (dotted key), got {s!r}")
        out[key.strip()] = yaml.safe_load(value) if value else None
    return out


def _load_recipe(path: str, sets: list[str] | None, prices: list[str] | None = None):
    from textbookgen.recipe import RecipeError, load_recipe

    try:
        return load_recipe(path, _overrides(sets), _prices(prices))
    except RecipeError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from None


SET_HELP = "override a recipe field, e.g. --set samples=20 --set provider.base_url=http://127.0.0.1:8000/v1"
SetOption = Annotated[list[str] | None, typer.Option("--set", help=SET_HELP)]
PRICE_HELP = ("MODEL=IN,OUT: USD per 1M input and output tokens (standard API; batch bills half), over the "
              "recipe's `prices:` and the built-in table, e.g. for a self-hosted model (repeatable)")
PriceOption = Annotated[list[str] | None, typer.Option("--price", help=PRICE_HELP)]
# the same, for commands that take no recipe (`topics grow`, `classifier label`)
NO_RECIPE_PRICE_HELP = ("MODEL=IN,OUT: USD per 1M input and output tokens (standard API; batch bills half), over the "
                        "built-in table, e.g. for a self-hosted model (repeatable)")
NoRecipePriceOption = Annotated[list[str] | None, typer.Option("--price", help=NO_RECIPE_PRICE_HELP)]


@app.command()
def validate(
    recipe: str = typer.Argument(..., help="recipe YAML"),
    set_: SetOption = None,
    price: PriceOption = None,
) -> None:
    """Check a recipe: schema, files it names, templates, mix names, and everything else the build would
    reject later that needs no network and no paid request. Errors name file, line and field."""
    from textbookgen.build import Build, BuildError, field_problem, open_web_samples, web_samples_problem
    from textbookgen.recipe import deferred_problems, repeated_prompts_note
    from textbookgen.taxonomy import Taxonomy, TaxonomyError
    from textbookgen.websamples import WebSampleError

    r = _load_recipe(recipe, set_, price)
    tc = r.taxonomy
    try:  # the taxonomy file is the recipe's other input that can be malformed
        tax = Taxonomy.load(r.taxonomy_path(), format=tc.format, select=tc.select, name=tc.name)
    except TaxonomyError as err:
        _fail(field_problem(r, "taxonomy.source", str(err)))
    if r.web_samples is not None and not r.web_samples.is_remote:  # a remote source is read by the build
        try:
            open_web_samples(r)
        except WebSampleError as err:
            _fail(web_samples_problem(r, err))
    problems = deferred_problems(r, tax)
    if problems:
        _fail(r.problem_text(problems))
    check = Build(r, plan_only=True)
    try:  # local files only: a plan downloads nothing
        with _reported():
            check.check_finish()  # a repo to push to, a card template that compiles
        check.check_benchmarks(planning=True)
    except BuildError as err:
        _fail(str(err))
    repeated = repeated_prompts_note(r, tax)
    for note in [*([repeated] if repeated else []), *check.notes]:
        typer.echo(f"note: {note}")
    grow = f", grown to {tc.grow.target:,} by the build" if tc.grows(len(tax.leaves())) else ""
    typer.echo(f"ok: {r.name} {r.version}: {r.samples:,} samples of {r.model} ({r.provider.name}), "
               f"{len(tax.leaves()):,} topics{grow}, {len(r.mix)} mix entr{'y' if len(r.mix) == 1 else 'ies'}, "
               f"output {r.output_dir()} [recipe {r.hash}]")


def _kept_journal(b: Build) -> Path:
    """The journal that keeps the answers a build paid for when it stops: the running stage's, else generate's."""
    return b.journals().get(b.stage or "", b.journals()["generate"])


def _run_build(recipe: str, sets: list[str] | None, plan_only: bool, push: bool | None, progress: bool,
               retry_failed: bool = False, push_incomplete: bool = False,
               prices: list[str] | None = None, flags: list[str] | None = None) -> None:
    """Run a build; exit as `generate` does: 2 stopped (a fatal provider error or the error breaker), 3 some
    requests failed, 4 the budget kept some back, 130 Ctrl-C, 143 SIGTERM; the message says what a rerun needs.
    `flags`: the options given besides --set/--price that a plan's command to run the build for real repeats."""
    from textbookgen.build import Build, BuildError
    from textbookgen.errors import FatalProviderError
    from textbookgen.journal import JournalError

    r = _load_recipe(recipe, sets, prices)
    given = [*(f"--set {shlex.quote(s)}" for s in sets or []), *(f"--price {shlex.quote(p)}" for p in prices or []),
             *(flags or [])]
    b = Build(r, plan_only=plan_only, push=push, progress=progress, retry_failed=retry_failed,
              push_incomplete=push_incomplete or None, options=" ".join(given))
    try:
        res = b.run()
    except BuildError as err:
        _fail(str(err), UNFINISHED_EXIT.get(err.unfinished, 1))
    except FatalProviderError as err:  # from a paid stage: the provider, or too many failures, stopped it
        _fail(f"{err}\nfinished requests are kept in {_kept_journal(b)}; rerun the same command to resume.", 2)
    except (JournalError, ValueError, FileNotFoundError) as err:
        _fail(str(err))
    except (OSError, sqlite3.OperationalError) as err:  # a file, the network or the Hub failed mid-build, a disk
        full = _disk_full(err, _kept_journal(b), b.out, journaling=b.stage in b.journals())
        if full:
            _fail(full)
        if not isinstance(err, OSError):
            raise
        typer.echo(f"error: {type(err).__name__}: {err}\nfinished requests are kept in "
                   f"{r.output_dir() / 'journal.sqlite'}; rerun the same command to resume.", err=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt as err:
        from textbookgen.hub import HubInterrupted

        if isinstance(err, HubInterrupted):  # the push's stalled transfers are not waited for
            _exit_interrupted(f"{err}; or rerun the same command (stages that finished are skipped)")
        journal = b.journals().get(b.stage or "")
        kept = f"finished requests are in {journal}; " if journal else "stages that finished are kept; "
        typer.echo(f"\ninterrupted{f' during {b.stage}' if b.stage else ''}: {kept}rerun the same command to "
                   "resume.", err=True)
        raise typer.Exit(_interrupt_exit()) from None
    if not res.planned:
        m = res.manifest
        c = m["counts"]
        typer.echo(f"built {c['documents']:,} documents, {c['curated']:,} kept by curation (${m['cost_usd']:.2f}) -> "
                   f"{res.out_dir / 'dataset'}; manifest {res.out_dir / 'manifest.json'}")
        for note in m.get("notes", []):
            if note != m.get("incomplete", {}).get("why"):  # said once, in the error line below
                typer.echo(f"note: {note}")
        if res.unfinished:
            _fail(res.incomplete or "the dataset is incomplete", UNFINISHED_EXIT[res.unfinished])


@app.command()
def build(
    recipe: str = typer.Argument(..., help="recipe YAML, e.g. recipes/quickstart.yaml"),
    plan: bool = typer.Option(False, "--plan", help="stop after rendering prompts and print the plan"),
    push: bool | None = typer.Option(None, "--push/--no-push", help="push to hub.repo_id (default: recipe's hub.push)"),
    push_incomplete: bool = typer.Option(False, "--push-incomplete", help="push even when requests failed or the "
                                         "budget stopped generation (implies --push; default: the recipe's "
                                         "hub.push_incomplete); the card says the dataset is incomplete"),
    set_: SetOption = None,
    price: PriceOption = None,
    progress: bool = typer.Option(True, "--progress/--no-progress", help="live generation progress"),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="re-send the requests the journals hold as "
                                      "refused for good (400, refusal, content filter) once you fixed the cause; "
                                      "a plain rerun replays those refusals and re-sends only transient failures"),
) -> None:
    """Build a dataset: taxonomy, prompts, generate, curate, dataset, card, push. Unchanged stages are
    skipped; a killed build resumes. With no API key it plans (prompts, tokens, cost, time) and exits 0.

    Exit status, as `generate`'s: 0 built, every request answered; 1 bad input; 2 stopped (a fatal provider
    error, or most requests failing: rerun to resume); 3 some requests failed (the message says whether a plain
    rerun or --retry-failed sends them again); 4 the budget stopped generation (raise it and rerun); 130
    Ctrl-C, 143 SIGTERM. With 3 or 4 the dataset and its card (which says it is incomplete) are written, but pushed only
    with --push-incomplete."""
    if push_incomplete and push is False:
        _fail("--push-incomplete pushes; it does not go with --no-push")
    flags = [*(["--retry-failed"] if retry_failed else []), *(["--push-incomplete"] if push_incomplete else []),
             *([] if push is None or push_incomplete else ["--push" if push else "--no-push"])]
    _run_build(recipe, set_, plan, True if push_incomplete else push, progress, retry_failed, push_incomplete,
               price, flags)


@app.command("plan")
def plan_cmd(
    recipe: str = typer.Argument(..., help="recipe YAML"),
    set_: SetOption = None,
    price: PriceOption = None,
) -> None:
    """Same as `build --plan`: render prompts, print counts, token, cost and time estimates, and on an output
    folder with a journal what is answered already and what the rest costs."""
    _run_build(recipe, set_, True, False, False, prices=price)


topics_app = typer.Typer(no_args_is_help=True, help="Topic taxonomies: inspect, convert, grow; what a table covers.")
app.add_typer(topics_app, name="topics")


def _taxonomy_file(path: str) -> str:
    """A taxonomy argument as a file: `builtin:NAME` is a shipped topic list, as in a recipe's taxonomy.source."""
    if not path.startswith("builtin:"):
        return path
    from textbookgen.recipe import builtin_topics

    try:
        return str(builtin_topics(path))
    except ValueError as err:
        _fail(str(err))


def _load_taxonomy(path: str, select: str | None):
    from textbookgen.taxonomy import Taxonomy, TaxonomyError

    try:
        return Taxonomy.load(_taxonomy_file(path), select=select)
    except TaxonomyError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from None


SHOWN = 25  # subjects, branches and uncovered topics listed on the terminal


@topics_app.command("stats")
def topics_stats(
    path: str = typer.Argument(..., help="taxonomy: .yaml, .csv (path column), .md outline or .txt (a topic a "
                               "line, indent nests; .gz ok), or "
                               "builtin:NAME (a shipped topic list)"),
    select: str | None = typer.Option(None, help="dotted key of the YAML subtree holding the topics"),
) -> None:
    """Print a taxonomy's size, leaves by depth, names found in more than one place, and its top-level subjects."""
    from collections import Counter, defaultdict

    from textbookgen.taxonomy import name_key

    tax = _load_taxonomy(path, select)
    leaves = tax.leaves()
    typer.echo(f"{tax.name}: {len(tax):,} topics, {len(leaves):,} leaves, depth {tax.depth()}")
    depths = Counter(len(t.path) for t in leaves)
    typer.echo("leaves by depth: " + " · ".join(f"{d}: {n:,}" for d, n in sorted(depths.items())))
    places = defaultdict(list)
    for t in tax.walk():
        places[name_key(t.name)].append(t)
    repeated = [ts for ts in places.values() if len(ts) > 1]
    if repeated:  # a build writes about each of them apart: near-duplicate documents
        first = repeated[0]
        typer.echo(f"names in more than one place (case, plurals and accents aside): {len(repeated):,}, e.g. "
                   f"{first[0].name!r}: {'; '.join(t.path_str for t in first[:3])}")
    for t in tax.topics[:SHOWN]:
        typer.echo(f"  {t.name}: {sum(1 for x in t.walk() if x.is_leaf):,} leaves")
    if len(tax.topics) > SHOWN:
        typer.echo(f"  ... {len(tax.topics) - SHOWN:,} more subjects")


@topics_app.command("convert")
def topics_convert(
    src: str = typer.Argument(..., help="taxonomy to read (a file or builtin:NAME)"),
    dst: str = typer.Argument(..., help="file to write (.yaml keeps ids, weights and metadata)"),
    select: str | None = typer.Option(None, help="dotted key of the YAML subtree holding the topics"),
) -> None:
    """Convert a taxonomy between YAML, CSV, markdown and plain text (.txt)."""
    from textbookgen.taxonomy import save_format

    _check_output(dst, "DST")
    tax = _load_taxonomy(src, select)
    typer.echo(str(_save_taxonomy(tax, dst)))
    lost = tax.names_only_losses() if save_format(dst) in ("markdown", "text") else ""
    if lost:
        typer.echo(f"note: {dst} holds topic names only: it drops {lost}; write .yaml or .csv to keep them", err=True)


def _save_taxonomy(tax, dst: str):
    from textbookgen.taxonomy import TaxonomyError

    try:
        return tax.save(dst)
    except TaxonomyError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from None
    except OSError as err:
        typer.echo(f"error: {dst}: cannot write ({err})", err=True)
        raise typer.Exit(1) from None


@topics_app.command("grow")
def topics_grow(
    src: str = typer.Argument(..., help="root taxonomy (a file or builtin:NAME)"),
    dst: str = typer.Argument(..., help="grown taxonomy to write (.yaml)"),
    target: int = typer.Option(..., "--target", help="number of leaf topics to reach (phi-1.5: ~20,000)"),
    model: str = typer.Option("gpt-4o-mini", help="model"),
    provider: str = typer.Option("openai", help="openai, anthropic or openai-compatible"),
    base_url: str | None = typer.Option(None, help="server URL (vLLM, proxy, emulator)"),
    api_key_env: ApiKeyEnvOption = None,
    journal: str | None = typer.Option(None, help="engine journal (default: <dst>.journal.sqlite, beside DST); "
                                       "rerun with the same one to resume without paying again"),
    max_cost: float | None = typer.Option(None, "--max-cost", help="USD budget over the whole growth (everything "
                                          "the journal records, earlier runs included): stop sending when reached"),
    max_output_tokens: int | None = typer.Option(None, "--max-output-tokens", help="output-token budget, as --max-cost"),
    per_call: int | None = typer.Option(None, help="subtopics asked per call (default: as the journal's answers "
                                        "asked, else 10; the same value lets a larger --target reuse "
                                        "every answer paid for)"),
    max_depth: int | None = typer.Option(None, "--max-depth", help="grow no leaf deeper than this many levels"),
    price: NoRecipePriceOption = None,
    plan: bool = typer.Option(False, "--plan", help="print the calls, tokens and cost growth would take; send nothing"),
    seed: int = typer.Option(0, help="seed"),
) -> None:
    """Expand leaves through the LLM to a target count, dropping near-duplicate names.

    The first line estimates the calls, tokens and cost before any is paid (--plan stops there).

    Exit status: 0 grown, DST written; 1 bad input (a missing API key too); 2 stopped by a provider error (answers
    kept: rerun to resume); 3 calls failed and left DST short of --target (DST written; a rerun retries them); 4,
    as `generate`'s, the budget
    stopped growth: DST is not written (it would fall short of --target), the answers paid for stay in the
    journal and a rerun with a larger --max-cost / --max-output-tokens goes on from them; 130 Ctrl-C, 143 SIGTERM
    (the answers paid for are kept: rerun the same command to resume)."""
    _check_grow_options(provider, per_call, max_cost, max_output_tokens, max_depth)
    prices = _prices(price)
    tax = _load_taxonomy(src, None)
    leaves = len(tax.leaves())
    if leaves >= target:
        _fail(f"--target {target:,}: {src} already has {leaves:,} leaves; nothing to grow")
    _check_grow_output(dst)
    journal_path = Path(journal or f"{Path(dst).with_suffix('')}.journal.sqlite")
    _check_output(journal_path, "--journal")
    key = None if plan else _api_key(provider, base_url, api_key_env)  # before the journal, and before the estimate
    per_call = _grow_per_call(per_call, journal_path)
    typer.echo(_grow_estimate(tax, target, per_call, model, prices, max_cost, journal=journal_path, provider=provider,
                              seed=seed, max_depth=max_depth))
    if plan:
        return
    budgeted = _grow_generator(provider, model, base_url, key, journal_path, max_cost, max_output_tokens, prices)
    if journal is None and Path("grow.sqlite").is_file():
        typer.echo(f"note: journal {journal_path}; to resume a grow journaled in ./grow.sqlite (the old default), "
                   "pass --journal grow.sqlite", err=True)
    report = _run_grow(tax, budgeted, target, journal_path, per_call=per_call, max_depth=max_depth, seed=seed)
    kept_back = f" ({budgeted.skipped:,} kept back by the budget)" if budgeted.skipped else ""
    done = (f"{report.leaves_before:,} -> {report.leaves_after:,} leaves in {report.calls - budgeted.skipped:,} "
            f"calls{kept_back}")
    if budgeted.skipped and report.leaves_after < target:
        _fail(f"{done}: the budget {_budget_spent(budgeted, max_cost, max_output_tokens)} stopped growth; {dst} not "
              f"written (short of --target {target:,}); the answers paid for are kept in {journal_path}: rerun with a "
              "larger budget to go on from them", UNFINISHED_EXIT["budget"])
    _save_taxonomy(tax, dst)
    typer.echo(f"{done}, {report.duplicates_dropped:,} near-duplicates dropped; wrote {dst} (journal {journal_path})")
    if report.leaves_after < target:
        _say_why_short(tax, report, target, max_depth, journal_path)


def _check_grow_options(provider: str, per_call: int | None, max_cost: float | None,
                        max_output_tokens: int | None, max_depth: int | None) -> None:
    """Exit naming the first option out of its range, or a provider there is none of."""
    for option, value, rule in (("--per-call", per_call, ">= 2"), ("--max-cost", max_cost, ">= 0"),
                                ("--max-output-tokens", max_output_tokens, ">= 0"), ("--max-depth", max_depth, ">= 1")):
        _check(option, value, rule)
    _check_provider(provider)


def _check_grow_output(dst: str) -> None:
    """Before paying for the growth: DST must be a taxonomy format, and a file in a folder we can write."""
    from textbookgen.taxonomy import save_format

    _check_output(dst, "DST")
    with _reported():
        save_format(dst)


def _grow_per_call(per_call: int | None, journal: Path) -> int:
    """--per-call, else as many as the journal's answers asked (said in a note: they are replayed), else PER_CALL."""
    from textbookgen.taxonomy import PER_CALL

    if per_call is None:
        per_call = _journal_per_call(journal)
        if per_call is not None:
            typer.echo(f"note: {per_call} subtopics per call, as the answers in {journal} asked (they are "
                       "replayed, not paid again; --per-call changes it)")
    return per_call or PER_CALL


def _grow_generator(provider: str, model: str, base_url: str | None, key: str | None, journal: Path,
                    max_cost: float | None, max_output_tokens: int | None,
                    prices: dict[str, tuple[float, float]]) -> BudgetedGenerator:
    """The engine of a grow, with one budget over every round (each is a run of its own), as a build's: checked
    by the BudgetedGenerator, so a 0 passes too."""
    from textbookgen.build import BudgetedGenerator
    from textbookgen.engine import Generator
    from textbookgen.recipe import BudgetConfig

    with _reported():
        gen = Generator(provider=provider, model=model, base_url=base_url, api_key=key, journal=journal,
                        max_cost_usd=max_cost, max_output_tokens=max_output_tokens, prices=prices)
    budget = BudgetConfig.model_construct(max_cost_usd=max_cost, max_output_tokens=max_output_tokens)
    return BudgetedGenerator(gen, budget, {"grow": journal})


def _run_grow(tax: Taxonomy, budgeted: BudgetedGenerator, target: int, journal: Path, **options) -> GrowReport:
    """`taxonomy.grow`, its round lines on stderr; bad input exits 1, a stopped run (a provider error) 2 and Ctrl-C
    130 (SIGTERM 143), each naming the journal that keeps the answers paid for."""
    from textbookgen import taxonomy

    try:
        with _reported(journal=journal, stopped=2):
            return taxonomy.grow(tax, budgeted, target, **options, log=lambda line: typer.echo(line, err=True))
    except KeyboardInterrupt:
        typer.echo(f"\ninterrupted: the answers paid for are kept in {journal}; rerun the same command to resume "
                   "(they are not paid again)", err=True)
        raise typer.Exit(_interrupt_exit()) from None


def _budget_spent(budgeted: BudgetedGenerator, max_cost: float | None, max_output_tokens: int | None) -> str:
    """The budget that stopped growth and what it had paid, e.g. `--max-cost 0.5 ($0.5012 spent)`."""
    usd, out = budgeted.spent()
    if (budgeted.stop_note or "").startswith("max_output_tokens"):
        return f"--max-output-tokens {max_output_tokens:,} ({out:,} output tokens paid)"
    return f"--max-cost {max_cost:g} (${usd:,.4f} spent)"


def _say_why_short(tax: Taxonomy, report: GrowReport, target: int, max_depth: int | None, journal: Path) -> None:
    """Why a written taxonomy is short of --target: every leaf at --max-depth or too few new names (notes), or
    calls that got no answer (exit 3: a rerun retries them)."""
    short = f"{report.leaves_after:,} leaves, short of --target {target:,}: "
    if max_depth is not None and all(len(t.path) >= max_depth for t in tax.leaves()):
        typer.echo(f"note: {short}every leaf is at --max-depth {max_depth}; raise it to grow further")
    elif report.failed_calls:
        _fail(f"{short}{report.failed_calls:,} calls got no answer (failed, refused or empty); rerun the same "
              "command to retry those that failed on the way (the answers paid for are replayed from "
              f"{journal}), or pass another --seed to ask anew", UNFINISHED_EXIT["failed"])
    else:
        typer.echo(f"note: {short}the answers held too few new names ({report.duplicates_dropped:,} "
                   "near-duplicates dropped); try a larger --per-call or another --seed")


def _journal_per_call(journal: Path) -> int | None:
    """The subtopics per call a grow journal's first request asked for (None without one): a rerun asking the
    same, whatever its --target, replays the answers instead of paying for them again."""
    import contextlib
    import re
    import sqlite3

    from textbookgen.taxonomy import GROW_PROMPT

    if not journal.is_file():
        return None
    before, after = GROW_PROMPT.split("{k}", 1)
    asked = re.compile(re.escape(before.splitlines()[-1]) + r"(\d+)" + re.escape(after.split('"', 1)[0]))
    try:
        with contextlib.closing(sqlite3.connect(f"{journal.resolve().as_uri()}?mode=ro", uri=True)) as db:
            row = db.execute("SELECT request FROM requests ORDER BY rowid LIMIT 1").fetchone()
    except sqlite3.Error:
        return None
    found = asked.search(row[0]) if row else None
    return int(found.group(1)) if found else None


def _grow_estimate(tax: Taxonomy, target: int, per_call: int | None, model: str,
                   prices: dict[str, tuple[float, float]], max_cost: float | None, *, journal: Path, provider: str,
                   seed: int, max_depth: int | None) -> str:
    """`plan: ...`: calls, tokens and cost of growing `tax` to `target` (as a recipe's plan estimates them; the
    calls `journal` answers are free), and what keeps a budget from stopping it or makes it stop growth short."""
    from textbookgen.build import estimate_grow
    from textbookgen.plan import estimate_grow_left
    from textbookgen.pricing import PRICES, estimate_cost, is_priced
    from textbookgen.recipe import GrowConfig

    leaves = len(tax.leaves())
    cfg = GrowConfig(target=target, per_call=per_call, max_depth=max_depth)
    est = (estimate_grow_left(tax, cfg, journal, provider=provider, model=model, seed=seed, prices=prices)
           if journal.is_file() else estimate_grow(leaves, cfg, provider=provider, model=model))
    table = {**PRICES, **prices}
    usd = estimate_cost(model, est["input_tokens"], est["output_tokens"], table)
    worst = estimate_cost(model, est.get("input_tokens_max", est["input_tokens"]), est["output_tokens_max"], table)
    answered = f" ({est['answered']:,} more answered by {journal}, free)" if est.get("answered") else ""
    line = (f"plan: {leaves:,} -> {target:,} leaves: ~{est['calls']:,} calls{answered}, ~{est['input_tokens']:,} input + "
            f"~{est['output_tokens']:,} output tokens, ~${usd:,.4f} on {model} (at most ${worst:,.4f} if every "
            f"answer runs to {cfg.max_tokens:,} tokens)")
    if not is_priced(model, table):
        refused = " (a run with --max-cost is refused)" if max_cost is not None else ""
        line += (f"\nnote: {model} is not in the price table, so it counts as $0 and --max-cost cannot stop "
                 f"it{refused}; give its price with --price MODEL=IN,OUT (USD per 1M tokens)")
    elif max_cost is not None and usd + est.get("paid_usd", 0.0) > max_cost:
        line += (f"\nnote: the estimate exceeds --max-cost {max_cost:g}: growth will stop short of --target and DST "
                 "will not be written (the answers paid for are kept for a rerun with a larger budget)")
    return line


# ---- curation: dedup / decontaminate / filter / classifier (owner: curation) -----------------------
TextCol = Annotated[str, typer.Option("--text-column", help="field holding the text")]
IdCol = Annotated[str, typer.Option("--id-column", help="field holding a unique id (made up if absent)")]
CurationYaml = Annotated[str | None, typer.Option("--config", help="YAML with curation settings (a recipe's "
                                                                      "`curation:` block or the block itself)")]
# dedup / decontaminate / filter: None (not given) leaves the --config file's text_column / id_column, else "text" / "id"
ConfigTextCol = Annotated[str | None, typer.Option("--text-column", help="field holding the text (default: "
                                                   "--config's text_column, else text)")]
ConfigIdCol = Annotated[str | None, typer.Option("--id-column", help="field holding a unique id, made up if absent "
                                                 "(default: --config's id_column, else id)")]


def _curation_run(input_path: str, output: str, make_steps, workdir: str | None, config: str | None,
                  overrides: dict, text_column: str | None, id_column: str | None, signatures: str | None = None
                  ) -> None:
    """Run a curation command; Ctrl-C says that nothing was written, and (dedup with MinHash on) in which
    folder the `signatures` a rerun picks up are."""
    from textbookgen.curation.commands import load_config, run_steps

    minhash = False
    try:
        with _reported():
            cfg = load_config(config, {**overrides, "text_column": text_column, "id_column": id_column})
            minhash = cfg.minhash.enabled
            stats = run_steps(input_path, output, make_steps(cfg), workdir, cfg.text_column, cfg.id_column)
    except KeyboardInterrupt:
        from textbookgen.curation.stream import STORE

        kept = f"; the MinHash signatures made so far are kept in {signatures}" if signatures and minhash else ""
        if (Path(workdir or f"{output}.work") / STORE).is_dir():  # filter, decontaminate: the chunks they finished
            kept = f"; the chunks judged so far are kept in {workdir or f'{output}.work'}"
        typer.echo(f"\ninterrupted: {output} was not written (the input is untouched){kept}; rerun the same "
                   "command", err=True)
        raise typer.Exit(_interrupt_exit()) from None
    typer.echo(json.dumps(stats, indent=2))


@app.command()
def dedup(
    input_path: str = typer.Argument(..., help="parquet/jsonl file or folder"),
    output: str = typer.Option(..., "--output", "--out", "-o", help="kept rows: .parquet or .jsonl (.jsonl.gz, .jsonl.zst)"),
    workdir: str | None = typer.Option(None, "--workdir", help="signature cache (a killed run resumes) + "
                                       "minhash_dedup/clusters.parquet and pairs.parquet, exact_dedup/duplicates.parquet; "
                                       "default <output>.work"),
    index: str | None = typer.Option(None, "--index", help="incremental: a folder keeping the documents that "
                                     "earlier runs with it kept; this input is deduplicated against them too, "
                                     "and what it keeps is added (without --index: a fresh dedup of the input)"),
    threshold: float | None = typer.Option(None, help="exact word-shingle Jaccard of a near-duplicate (0.8)"),
    num_perm: int | None = typer.Option(None, help="MinHash permutations (128)"),
    ngram: int | None = typer.Option(None, help="words per shingle (5)"),
    bands: int | None = typer.Option(None, help="LSH bands (default: chosen for the threshold)"),
    rows: int | None = typer.Option(None, help="LSH rows per band"),
    workers: int | None = typer.Option(None, help="processes (default: CPU count)"),
    shard_size: int | None = typer.Option(None, help="documents per stored shard (20000)"),
    exact: bool | None = typer.Option(None, "--exact/--no-exact", help="exact dedup on normalised text first "
                                      "(default: --config's exact.enabled, else on)"),
    minhash: bool | None = typer.Option(None, "--minhash/--no-minhash", help="MinHash near-duplicate removal "
                                        "(default: --config's minhash.enabled, else on)"),
    config: CurationYaml = None, text_column: ConfigTextCol = None, id_column: ConfigIdCol = None,
) -> None:
    """Exact + MinHash near-duplicate removal; keeps each cluster's best member (quality_score, then the first in
    input order).

    Each run is a fresh dedup of its input, unless --index DIR makes it incremental: the input is then also
    deduplicated against the documents earlier runs with DIR kept, which always stay; a document already
    indexed (same id, same text) is kept, one with an indexed id and a new text replaces the old version,
    and each run writes a new output (an earlier one holds what later runs drop as already indexed). Ids
    identify documents across runs: give an id column, as made-up <file>:<row> ids change when rows move."""
    from functools import partial

    from textbookgen.curation.commands import dedup_steps

    if index is not None:
        if Path(index).is_file():
            _fail(f"--index {index}: is a file; give a folder")
        if Path(output).exists():
            _fail(f"--output {output}: exists; with --index each run writes a new output, since an earlier "
                  "one holds documents later runs drop as already indexed (delete it to redo that run)")
    o = {"minhash.threshold": threshold, "minhash.num_perm": num_perm, "minhash.ngram": ngram,
         "minhash.bands": bands, "minhash.rows": rows, "minhash.workers": workers,
         "minhash.shard_size": shard_size, "exact.enabled": exact, "minhash.enabled": minhash}
    _curation_run(input_path, output, partial(dedup_steps, index=index), workdir, config, o, text_column, id_column,
                  signatures=index or workdir or f"{output}.work")


@app.command()
def decontaminate(
    benchmark: Annotated[list[str] | None, typer.Option("--benchmark", "-b", help="NAME=PATH for a known benchmark "
                         "(arc_easy, gsm8k, mmlu, humaneval, ...) or a jsonl/parquet file/folder; added to those "
                         "of --config (a name in both: -b's path; one given twice: both files)")] = None,
    input_path: str = typer.Argument(..., help="parquet/jsonl file or folder"),
    output: str = typer.Option(..., "--output", "--out", "-o", help="kept rows: .parquet or .jsonl (.jsonl.gz, .jsonl.zst)"),
    ngram: int | None = typer.Option(None, help="n-gram size for candidates (13)"),
    similarity: float | None = typer.Option(None, help="share of an item's words found in order to drop (0.8)"),
    min_quote_words: int | None = typer.Option(None, help="also drop a document holding this many of an item's "
                                               "words in a row (13: GPT-3's rule; off by default)"),
    workdir: str | None = typer.Option(None, "--workdir", help="work folder (default <output>.work); the report "
                                       "is its decontamination/contamination.parquet"),
    config: CurationYaml = None, text_column: ConfigTextCol = None, id_column: ConfigIdCol = None,
) -> None:
    """Drop documents containing benchmark items (n-gram overlap, then an in-order word match); report which."""
    from textbookgen.curation.commands import decontaminate_steps, parse_benchmark
    from textbookgen.curation.config import BenchmarkSource, CurationConfig

    given = [parse_benchmark(b) for b in benchmark or []]

    def steps(cfg: CurationConfig) -> list:
        """--config's benchmarks, then those of -b; one named in both (or the same path) is -b's. A name given
        with -b twice (a set's dev and test files) reads both."""
        def by_file(sources: list[BenchmarkSource]) -> dict[tuple[str, str], BenchmarkSource]:
            return {(src.name or str(Path(src.path).resolve()), str(Path(src.path).resolve())): src for src in sources}

        from_b = by_file(given)
        sources = [*(src for (name, _), src in by_file(cfg.decontamination.benchmarks).items()
                     if name not in {n for n, _ in from_b}), *from_b.values()]
        if not sources:
            raise ValueError("decontaminate: no benchmarks: give -b NAME=PATH (or a jsonl/parquet file/folder), "
                             "or list them under decontamination.benchmarks in --config")
        cfg.decontamination.benchmarks = sources
        return decontaminate_steps(cfg)

    o = {"decontamination.ngram": ngram, "decontamination.similarity": similarity,
         "decontamination.min_quote_words": min_quote_words}
    _curation_run(input_path, output, steps, workdir, config, o, text_column, id_column)


@app.command("filter")
def filter_cmd(
    input_path: str = typer.Argument(..., help="parquet/jsonl file or folder"),
    output: str = typer.Option(..., "--output", "--out", "-o", help="kept rows: .parquet or .jsonl (.jsonl.gz, .jsonl.zst)"),
    min_words: int | None = typer.Option(None, help="fewest words of a prose document (50)"),
    max_words: int | None = typer.Option(None, help="most words of any document (100000)"),
    workdir: str | None = typer.Option(None, "--workdir", help="work folder (default <output>.work); its "
                                       "filters/dropped.parquet lists the dropped rows (id, input row, reason)"),
    config: CurationYaml = None, text_column: ConfigTextCol = None, id_column: ConfigIdCol = None,
) -> None:
    """Heuristic quality filters (length, repetition, symbols, boilerplate); prose rules skip code."""
    from textbookgen.curation.commands import filter_steps

    o = {"filters.min_words": min_words, "filters.max_words": max_words}
    _curation_run(input_path, output, filter_steps, workdir, config, o, text_column, id_column)


def _numbers(option: str, text: str, kind: type[float] | type[int]) -> tuple:
    """A comma-separated option as numbers of `kind`; exits naming the option if one is not."""
    try:
        return tuple(kind(x) for x in text.split(","))
    except ValueError:
        _fail(f"{option}: expects comma-separated {kind.__name__} values, got {text!r}")


classifier_app = typer.Typer(no_args_is_help=True, help="fastText quality classifier: train, eval, score; LLM labels.")
app.add_typer(classifier_app, name="classifier")
Paths = Annotated[list[str] | None, typer.Option(help="corpus file/folder (repeatable)")]


@classifier_app.command("train")
def classifier_train(
    output: str = typer.Option(..., "--output", "--out", "-o", help="model path (<output>.bin + <output>.json)"),
    positive: Paths = None, negative: Paths = None,
    labelled: Paths = None,
    label_column: str = typer.Option("label", help="label field of --labelled files"),
    min_positive: float | None = typer.Option(None, help="numeric labels >= this are positive (default: by "
                                              "the labels' scale, 1 for 0/1 labels, 3 for 0-5 judge scores)"),
    lr: str = typer.Option("0.1,0.5,1.0", help="learning rates to try"),
    epochs: str = typer.Option("5,10", help="epoch counts to try"),
    dim: int = typer.Option(100),
    bucket: int = typer.Option(2_000_000, help="hash buckets for word bigrams, dim x 4 bytes each in the model "
                               "(2M at dim 100: ~800 MB; 200000: ~100 MB, with the words)"),
    text_column: TextCol = "text",
    balance_sources: bool = typer.Option(False, "--balance-sources", help="weigh every source the same (the "
                                         "--positive/--negative corpora as one, each --labelled file as one; each "
                                         "needs both classes) and pick lr x epochs by their mean AUC"),
    folds: int | None = typer.Option(None, help="validate by k-fold cross-validation (1: one 20 % split; default: "
                                     "5 folds under 2,000 distinct texts, else one split)"),
    seed: int = typer.Option(0, help="seed of the folds or split and of the example order"),
) -> None:
    """Train on labelled text; lr and epochs are picked by cross-validation under 2,000 texts, else on a
    validation split. Prints the metadata: its validation summary gives each figure's spread over the folds."""
    from textbookgen.curation.classifier import (
        TrainSettings,
        default_min_positive,
        lopsided_warning,
        model_paths,
        size_note,
        train_classifier,
    )
    from textbookgen.curation.commands import check_label_column, load_labelled

    lrs, epoch_counts = _numbers("--lr", lr, float), _numbers("--epochs", epochs, int)
    for option, values, rule in (("--lr", lrs, "> 0"), ("--epochs", epoch_counts, ">= 1"), ("--dim", [dim], ">= 1"),
                                 ("--bucket", [bucket], ">= 1"), ("--folds", [folds], ">= 1")):
        for value in values:
            _check(option, value, rule)
    _labelled_only(labelled, label_column, min_positive)
    with _reported():
        if labelled:
            check_label_column(label_column, text_column)
        if min_positive is None:
            min_positive = default_min_positive(labelled or [], label_column, text_column)
        texts, labels, sources = load_labelled(positive or [], negative or [], labelled or [], text_column,
                                               label_column, min_positive)
        _check_both_classes(labels, bool(labelled), min_positive)
        from_files = [y for y, s in zip(labels, sources, strict=True) if s in (labelled or [])]
        if from_files and (warning := lopsided_warning(from_files, min_positive)):
            typer.echo(warning, err=True)
        settings = TrainSettings(lrs=lrs, epochs=epoch_counts, dim=dim, bucket=bucket, folds=folds, seed=seed)
        try:
            _, meta = train_classifier(texts, labels, output, settings, groups=sources if balance_sources else None)
        except RuntimeError as err:  # fastText's own errors
            raise ValueError(str(err)) from None
    typer.echo(json.dumps({k: v for k, v in meta.items() if k != "grid"}, indent=2))
    typer.echo(size_note(model_paths(output)[0], settings), err=True)  # stdout stays the metadata's JSON


def _labelled_only(labelled: list[str] | None, label_column: str, min_positive: float | None) -> None:
    """--label-column and --min-positive read --labelled files: without one they would silently do nothing."""
    if labelled:
        return
    if label_column != "label":
        _fail(f"--label-column {label_column}: it names the label field of --labelled files; none is given")
    if min_positive is not None:
        _fail(f"--min-positive {min_positive:g}: it reads the labels of --labelled files; none is given")


def _check_both_classes(labels: list[bool], labelled: bool, min_positive: float) -> None:
    """Exit naming the options that give the class training lacks (fastText's own error named a function)."""
    if len(set(labels)) < 2:
        rule = f" (numeric labels >= --min-positive {min_positive:g} are positive)" if labelled else ""
        _fail(f"no {'negative' if labels[0] else 'positive'} examples among the {len(labels):,} to train on{rule}; "
              "training needs both classes: give --positive and --negative corpora, or --labelled files with both")


def _model_file(model: str) -> str:
    """The model .bin; `classifier train -o OUT` writes OUT.bin, so OUT names it too."""
    return f"{model}.bin" if not Path(model).exists() and Path(f"{model}.bin").is_file() else model


@classifier_app.command("eval")
def classifier_eval(
    model: str = typer.Argument(..., help="model .bin (or the -o given to `classifier train`)"),
    positive: Paths = None, negative: Paths = None, labelled: Paths = None,
    label_column: str = typer.Option("label"),
    min_positive: float | None = typer.Option(None, help="as for `classifier train`"),
    threshold: float = typer.Option(0.5, help="probability threshold for P/R/F1 and the confusion matrix"),
    text_column: TextCol = "text",
) -> None:
    """Precision, recall, F1, ROC AUC and the confusion matrix on held-out labelled text."""
    from textbookgen.curation.classifier import QualityModel, default_min_positive
    from textbookgen.curation.commands import check_label_column, load_labelled

    _check("--threshold", threshold, "in [0, 1]")
    _labelled_only(labelled, label_column, min_positive)
    with _reported():
        if labelled:
            check_label_column(label_column, text_column)
        if min_positive is None:
            min_positive = default_min_positive(labelled or [], label_column, text_column)
        texts, labels, _ = load_labelled(positive or [], negative or [], labelled or [], text_column, label_column,
                                         min_positive, purpose="evaluation")
        metrics = QualityModel.load(_model_file(model)).evaluate(texts, labels, threshold)
    typer.echo(json.dumps(metrics.as_dict(), indent=2))
    if metrics.roc_auc is None:
        typer.echo(f"note: every labelled text is {'positive' if labels[0] else 'negative'}, so ROC AUC (null) is "
                   "undefined and precision/recall count one class; add texts of the other class", err=True)


@classifier_app.command("score")
def classifier_score(
    model: str = typer.Argument(..., help="model .bin (or the -o given to `classifier train`)"),
    input_path: str = typer.Argument(..., help="parquet/jsonl file or folder"),
    output: str = typer.Option(..., "--output", "--out", "-o", help="rows with quality_score: .parquet or .jsonl (.gz, .zst)"),
    threshold: float | None = typer.Option(None, help="keep rows with score >= this"),
    keep_top_percent: float | None = typer.Option(None, help="keep the top X % by score"),
    batch_size: int = typer.Option(4096),
    text_column: TextCol = "text", id_column: IdCol = "id",
) -> None:
    """Add `quality_score` (P(positive label)) to every row; optionally keep by threshold or percentile."""
    from textbookgen.curation.commands import run_steps, score_steps
    from textbookgen.curation.stream import STORE

    try:
        with _reported():
            steps = score_steps(_model_file(model), threshold, keep_top_percent, batch_size, text_column, id_column)
            stats = run_steps(input_path, output, steps, None, text_column, id_column)
    except KeyboardInterrupt:  # the chunks scored so far are kept (stream.score_out_of_core)
        kept = f"; the chunks scored so far are kept in {output}.work" if Path(f"{output}.work", STORE).is_dir() else ""
        typer.echo(f"\ninterrupted: {output} was not written (the input is untouched){kept}; rerun the same "
                   "command", err=True)
        raise typer.Exit(_interrupt_exit()) from None
    typer.echo(json.dumps(stats, indent=2))


@classifier_app.command("label")
def classifier_label(
    input_path: str = typer.Argument(..., help="parquet/jsonl file or folder to sample and judge"),
    output: str = typer.Option(..., "--output", "--out", "-o", help="rows with `label` (0-5): .parquet or .jsonl (.gz, .zst)"),
    provider: str = typer.Option("openai", help="openai | anthropic | openai-compatible"),
    model: str = typer.Option("gpt-4o-mini", help="judge model"),
    base_url: str | None = typer.Option(None, help="server URL (openai-compatible, or the emulator)"),
    api_key_env: ApiKeyEnvOption = None,
    sample: int | None = typer.Option(None, help="judge a sample of this many rows, drawn by --seed; a larger one "
                                      "keeps a smaller one's rows, whose answers the journal replays free"),
    journal: str | None = typer.Option(None, help="SQLite journal (a killed run resumes; default <output>.journal)"),
    max_chars: int = typer.Option(2000, help="characters of each document shown to the judge"),
    max_tokens: int | None = typer.Option(None, help="answer tokens (default 256; 4096 for OpenAI's reasoning "
                                          "models, whose hidden reasoning counts against it)"),
    max_cost: float | None = typer.Option(None, "--max-cost", help="USD budget: stop sending requests when reached"),
    max_cost_usd: float | None = typer.Option(None, "--max-cost-usd", hidden=True),  # the old spelling, for scripts
    concurrency: int = typer.Option(32), seed: int = typer.Option(0),
    price: NoRecipePriceOption = None,
    max_error_rate: float | None = typer.Option(None, "--max-error-rate", help="stop once 50 documents are judged "
                                                "and more than this share failed or gave no 0-5 score (default 0.5; "
                                                "1: never stop). Live runs only: --batch pays for a batch as it "
                                                "submits it, so nothing stops it early; try the judge on a small "
                                                "live --sample first, whose answers the --batch run replays free"),
    batch: BatchOption = False, batch_size: BatchSizeOption = None, batch_poll: BatchPollOption = None,
    text_column: TextCol = "text", id_column: IdCol = "id",
) -> None:
    """Score documents 0-5 for educational value with an LLM (FineWeb-Edu's additive rubric), as labels
    for `classifier train --labelled OUT --min-positive 3`. Exits 4, the labels so far written, when --max-cost
    kept documents back; 2 when the provider or the error-rate stop ended the run (rerun to resume); 130 on Ctrl-C
    (143 SIGTERM), the answers paid for kept in the journal (with --batch, submitted batches run on at the
    provider, and a rerun with --batch collects them instead of paying again)."""
    from textbookgen.batch import BATCH_PROVIDERS
    from textbookgen.curation.corpus_io import check_output, read_corpus, write_corpus
    from textbookgen.curation.judge import EducationalJudge, label_corpus, sampling_for
    from textbookgen.engine import Generator
    from textbookgen.pricing import is_priced

    if max_cost is not None and max_cost_usd is not None and max_cost != max_cost_usd:
        _fail(f"--max-cost {max_cost:g} and --max-cost-usd {max_cost_usd:g} (its old name) disagree; give one")
    max_cost = max_cost if max_cost is not None else max_cost_usd
    _check_provider(provider)
    for option, value, rule in (("--sample", sample, ">= 1"), ("--max-chars", max_chars, ">= 1"),
                                ("--max-tokens", max_tokens, ">= 1"), ("--max-cost", max_cost, ">= 0"),
                                ("--concurrency", concurrency, ">= 1"), ("--max-error-rate", max_error_rate, "in [0, 1]")):
        _check(option, value, rule)
    batching = _batch_options(batch, batch_size, batch_poll)
    if batch and provider not in BATCH_PROVIDERS:
        _fail(f"--batch: --provider {provider} has no batch API; use {' or '.join(BATCH_PROVIDERS)}, or run live")
    if batch and max_error_rate is not None and max_error_rate < 1:
        _fail("--max-error-rate: live runs only; --batch pays for a batch as it submits it, so nothing stops it "
              "early (try the judge on a small live --sample first: the --batch run replays its answers free)")
    max_error_rate = 0.5 if max_error_rate is None else max_error_rate
    journal = journal or f"{output}.journal"
    prices = _prices(price)
    key = _api_key(provider, base_url, api_key_env)  # before the journal is created
    with _reported():
        check_output(output, input_path)
        df = read_corpus(input_path, text_column, id_column)
        gen = Generator(provider=provider, model=model, base_url=base_url, api_key=key, concurrency=concurrency,
                        journal=journal, max_cost_usd=max_cost, prices=prices,
                        max_error_rate=None if max_error_rate >= 1 else max_error_rate, **batching)
    with _reported(journal=journal, stopped=2):  # a provider error or a failed write: the answers paid for are kept
        temperature, default_tokens = sampling_for(model)
        judge = EducationalJudge(gen, max_chars=max_chars, max_tokens=max_tokens or default_tokens,
                                 temperature=temperature)
        try:
            labelled, stats = label_corpus(df, judge, sample, seed, text_column, id_column)
        except KeyboardInterrupt:
            _exit_interrupted_run(journal)
        write_corpus(labelled, output)
    typer.echo(json.dumps(stats, indent=2))
    if max_cost is None and not is_priced(model, prices):  # with --max-cost the engine refuses to start
        typer.echo(f"note: {model} has no known price, so cost_usd counts its calls as $0; give --price "
                   "MODEL=IN,OUT (USD per 1M tokens) to count what they cost", err=True)
    if skipped := stats["dropped"].get("skipped_budget"):  # a script must not train on a budget's cut
        _fail(f"{skipped} of {stats['in']} documents were not judged: --max-cost {max_cost:g} was reached; rerun "
              f"with a larger --max-cost to judge them (the answers paid for are replayed from {journal}, free)",
              UNFINISHED_EXIT["budget"])


def _topic_ids(table: str) -> tuple[list, list | None]:
    """The topic ids of a parquet table (or a folder of parquet shards, as a build or a pull writes a dataset)
    and its documents' `output_tokens` where it has them: its `topic_id` column, else the `topic_id` of its
    `metadata` column, a struct or the JSON text `generate --out` writes (prompts carry the topic in their
    metadata)."""
    import polars as pl

    from textbookgen.dataset import is_build_folder

    if not Path(table).exists():
        _fail(f"{table}: cannot read topic ids from it: no such file or folder")
    if is_build_folder(table):  # its parquet files are prompts, documents and curation reports: not one table
        if not (Path(table) / "dataset" / "data").is_dir():
            _fail(f"{table} is a textbookgen build folder with no dataset/ yet: give its prompts.parquet, or "
                  f"finish the build")
        typer.echo(f"note: {table} is a textbookgen build folder; reading its dataset, {Path(table) / 'dataset'}",
                   err=True)
        table = str(Path(table) / "dataset")
    files = sorted(str(f) for f in Path(table).rglob("*.parquet")) if Path(table).is_dir() else [table]
    if not files:
        _fail(f"{table}: a folder with no .parquet file in it")
    schema = pl.read_parquet_schema(files[0])
    tokens = (pl.read_parquet(files, columns=["output_tokens"])["output_tokens"].to_list()
              if "output_tokens" in schema else None)
    if "topic_id" in schema:
        return pl.read_parquet(files, columns=["topic_id"])["topic_id"].to_list(), tokens
    kind = schema.get("metadata")
    if kind == pl.String:
        field = pl.col("metadata").str.json_path_match("$.topic_id")
    elif isinstance(kind, pl.Struct) and "topic_id" in {f.name for f in kind.fields}:
        field = pl.col("metadata").struct.field("topic_id")
    else:
        field = None
    ids = pl.read_parquet(files, columns=["metadata"]).select(field)[:, 0] if field is not None else None
    if ids is None or ids.null_count() == len(ids):
        _fail(f"{table}: no topic ids: looked for a topic_id column and a metadata column (struct or JSON) with "
              f"topic_id; its columns: {', '.join(schema) or 'none'}")
    return ids.to_list(), tokens


@topics_app.command("coverage")
def topics_coverage(
    taxonomy: str = typer.Argument(..., help="taxonomy the table was built from (e.g. build/x/taxonomy.yaml, "
                                   "or builtin:NAME)"),
    table: str = typer.Argument(..., help="parquet (or a folder of parquet shards) with a topic_id column, or a "
                                "metadata column (struct or JSON) holding topic_id: prompts.parquet, documents, "
                                "or generate --out; an output_tokens column is summed too"),
    depth: int = typer.Option(1, "--depth", help="report branches this many levels deep (1: the subjects)"),
    out: str | None = typer.Option(None, "--out", "--output", "-o", help="write every leaf's samples and tokens (.csv or .parquet)"),
    plot: str | None = typer.Option(None, "--plot", help="draw samples per topic and per branch (.png, .svg, .pdf)"),
) -> None:
    """Samples per topic: how much of the taxonomy a prompt or document table covers, per branch, and which
    topics it never reached."""
    import polars as pl

    _check("--depth", depth, ">= 1")
    for option, path in (("--out", out), ("--plot", plot)):
        if path is not None:
            _check_output(path, option)
    if out is not None and Path(out).suffix not in (".csv", ".parquet"):
        _fail(f"--out {out}: write .csv or .parquet")
    if plot is not None and Path(plot).suffix.lower() not in (".png", ".svg", ".pdf"):
        _fail(f"--plot {plot}: draw a .png, .svg or .pdf")
    tax = _load_taxonomy(taxonomy, None)
    try:
        ids, tokens = _topic_ids(table)
    except (OSError, pl.exceptions.PolarsError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err).splitlines()[0]
        typer.echo(f"error: {table}: cannot read topic ids from it as parquet ({reason})", err=True)
        raise typer.Exit(1) from None
    cov = tax.coverage(ids)
    if ids and cov.unknown == len(ids):
        _fail(f"{table}: none of its {len(ids):,} samples names a topic of {taxonomy}: give the taxonomy the table "
              "was built from (a build's taxonomy.yaml, grown topics included)")
    if cov.unknown:
        typer.echo(f"note: {cov.unknown:,} of {len(ids):,} samples name topics that are not in {taxonomy}; they are "
                   "left out below")
    typer.echo(cov.summary() + (f"; {sum(t or 0 for t in tokens):,} output tokens" if tokens is not None else ""))
    branches = tax.use(ids, tokens, depth=depth)
    typer.echo(f"by branch (depth {depth}):")
    for b in branches[:SHOWN]:
        typer.echo(f"  {b.path}: {b.covered:,}/{b.leaves:,} leaves covered, {b.samples:,} samples"
                   + (f", {b.tokens:,} tokens" if tokens is not None else ""))
    if len(branches) > SHOWN:
        typer.echo(f"  ... {len(branches) - SHOWN:,} more branches (--out has every topic)")
    leaves = tax.use(ids, tokens)
    uncovered = [t for t in leaves if not t.samples]
    if uncovered:
        more = f" (the first {SHOWN}; --out has them all)" if len(uncovered) > SHOWN else ""
        typer.echo(f"uncovered: {len(uncovered):,} leaf topics{more}")
        for t in uncovered[:SHOWN]:
            typer.echo(f"  {t.path}")
    if out is not None:
        frame = pl.DataFrame({"topic_id": [t.id for t in leaves], "topic_path": [t.path for t in leaves],
                              "samples": [t.samples for t in leaves], "tokens": [t.tokens for t in leaves]})
        with _reported():
            frame.write_csv(out) if out.endswith(".csv") else frame.write_parquet(out)
        typer.echo(f"wrote {out}")
    if plot is not None:
        with _reported():
            _coverage_plot(plot, leaves, branches, depth)
        typer.echo(f"wrote {plot}")


def _coverage_plot(path: str, leaves: list, branches: list, depth: int) -> None:
    """Two panels: how many topics got 0, 1, 2... samples, and the samples of each branch (the largest 40)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (hist, bars) = plt.subplots(1, 2, figsize=(13, 5))
    counts = [t.samples for t in leaves]
    hist.hist(counts, bins=range(max(counts, default=0) + 2), color="#4477aa", align="left")
    hist.set(title=f"{len(leaves):,} leaf topics", xlabel="samples per topic", ylabel="topics")
    top = sorted(branches, key=lambda b: -b.samples)[:40][::-1]
    bars.barh([b.path if len(b.path) <= 60 else "\u2026" + b.path[-59:] for b in top], [b.samples for b in top],
              color="#66aa55")
    bars.set(title=f"samples per branch (depth {depth})", xlabel="samples")
    bars.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
