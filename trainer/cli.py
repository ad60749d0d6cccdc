"""`python -m trainer prepare|train-tokenizer|train|export|generate` (also the `textbookgen-train` script).

Each subcommand is a pair `add_arguments(parser)` / `run(args) -> exit code`; heavy imports happen
inside `run`, so `--help` is instant. Configs are YAML files (or bundled names: tiny, demo-100m,
phi-1.5) with dotted overrides: `--set train.max_steps=100 --set optim.lr=3e-4`.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

_RUNTIME_USER_ERRORS = {"CheckpointError", "TrainingDiverged"}
# The modules of the [train] extra (pyproject.toml): a base install (`pip install textbookgen`) lacks them
_TRAIN_EXTRA = {"torch", "safetensors", "tokenizers", "transformers"}
# `train` exits 0 when done. A run stopped early, with a checkpoint to resume from by running the same command
# again, exits 130 on SIGINT and 143 on SIGTERM (128 + the signal, as the shell reports a process they kill) and
# STOPPED otherwise (train.time_budget_s), on every rank alike: a requeue loop can tell
# "stopped" from "done", and `train && export` exports a finished model only.
STOPPED = 3
_STOP_EXIT = {"SIGINT": 130, "SIGTERM": 143}
_EXIT_CODES = ("exit codes: 0 done; 3 stopped by --time-budget (train.time_budget_s); 130 SIGINT (Ctrl-C); "
               "143 SIGTERM; 1 diverged; 2 bad input or a failed write (a full disk). 3, 130 and 143 leave a "
               "checkpoint: run the same command again to resume.")
Command = tuple[str, Callable[[argparse.ArgumentParser], object], Callable[[argparse.Namespace], int]]


def _under_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ


def process_started() -> float:
    """When this process (under torchrun, its launcher, which a scheduler's time limit counts from) started, on
    the `time.perf_counter()` clock: --time-budget counts from there, so Python's start-up and imports are spent
    from it too. Linux's /proc gives it; elsewhere, now."""
    pid = os.getppid() if _under_torchrun() else os.getpid()
    now = time.perf_counter()
    try:
        since_boot = float(Path("/proc/uptime").read_text().split()[0])
        stat = Path(f"/proc/{pid}/stat").read_text()
        ticks = int(stat[stat.rindex(")") + 2:].split()[19])  # field 22, after the "(name)" that may hold spaces
    except (OSError, ValueError, IndexError):
        return now
    age = since_boot - ticks / os.sysconf("SC_CLK_TCK")
    return now - age if age >= 0 else now


_STARTED = process_started()
FRESH_PROCESS_S = 60.0  # main() entered this soon after the process's (or its launcher's) start: a shell command


def budget_start(entered: float) -> float:
    """Where --time-budget counts from: the process's start, imports included, for a command run from a shell;
    under torchrun its launcher's, however long the rendezvous or a restart took; the call's own start where a
    long-lived process (a notebook) calls main()."""
    fresh = _under_torchrun() or entered - _STARTED < FRESH_PROCESS_S
    return _STARTED if fresh else entered


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", default=None,
                   help="YAML config file, or a bundled one by name: tiny, demo-100m, phi-1.5")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set train.max_steps=100 (repeatable)")


def _load(args: argparse.Namespace, extra: dict[str, tuple[str, object]] | None = None, unset: Sequence[str] = ()):
    """The config with --set overrides, then the flags' `extra` values ({field: (flag, value)}; None: flag not
    given), then the fields in `unset` set to null. Errors name the flag that gave a bad value."""
    from trainer.config import load_config, parse_override

    given = {k: fv for k, fv in (extra or {}).items() if fv[1] is not None}
    overrides = dict(parse_override(o) for o in args.overrides)
    overrides.update({k: v for k, (_, v) in given.items()})
    overrides.update(dict.fromkeys(unset))
    return load_config(args.config, overrides, flags={k: flag for k, (flag, _) in given.items()})


# ----------------------------------------------------------------------------- prepare


def prepare_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", nargs="?", help="dataset to tokenize: local Hub-layout folder, parquet file or Hub "
                                             "repo id (omit to prepare every dataset of --config)")
    p.add_argument("--out", help="output folder for the token shards (with SOURCE)")
    p.add_argument("--tokenizer", default=None, help="tokenizer spec (with SOURCE; default gpt2-codegen)")
    p.add_argument("--subset", default=None, help="config of the dataset card's `configs:` (default: its default)")
    p.add_argument("--split", default=None, help="split to tokenize (with SOURCE; default train)")
    p.add_argument("--column", default=None, help="text column (with SOURCE; default text)")
    p.add_argument("--revision", default=None, help="Hub revision of a repo id (with SOURCE; default its head)")
    p.add_argument("--endpoint", default=None,
                   help="Hub endpoint for a repo id (with SOURCE; default: HF_ENDPOINT or the Hub)")
    p.add_argument("--workers", type=int, default=0, help="tokenizer processes (0 = one per core)")
    p.add_argument("--force", action="store_true", help="tokenize again even if the index is up to date")
    _config_args(p)


def prepare_run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from trainer.data import skipped_rows

    console = Console(soft_wrap=True)
    _check_prepare_flags(args)
    if args.source:
        from trainer.data import prepare

        if not args.out:
            raise ValueError("--out is required with SOURCE")
        indexes = [prepare(args.source, args.out, args.tokenizer or "gpt2-codegen", subset=args.subset,
                           split=args.split or "train", column=args.column or "text", revision=args.revision,
                           endpoint=args.endpoint, num_workers=args.workers, force=args.force)]
        dirs = [Path(args.out)]
    else:
        from trainer.train import dataset_dir, prepare_all

        if args.config is None:
            raise ValueError("give a dataset SOURCE with --out, or --config to prepare a config's datasets")
        cfg = _load(args, {"data.prepare_workers": ("--workers", args.workers or None)})
        indexes = prepare_all(cfg, force=args.force)
        dirs = [dataset_dir(cfg, i) for i in range(len(indexes))]
    for d, idx in zip(dirs, indexes, strict=True):
        held = idx.get("holdout")
        held_out = f", {held['documents']:,} documents ({held['tokens']:,} tokens) held out for validation" if held else ""
        commit = f" from {idx['source']}@{idx['commit'][:12]}" if idx.get("commit") else ""
        rows = f" ({skipped_rows(idx)})" if skipped_rows(idx) else ""
        console.print(f"{d}: {idx['documents']:,} documents{rows}, {idx['total_tokens']:,} tokens "
                      f"in {len(idx['shards'])} shard(s) ({idx['dtype']}){commit}{held_out}")
    return 0


# prepare's flags for a SOURCE, and the config fields that say the same for a config's datasets
_SOURCE_FLAGS = {"out": "data.cache_dir", "tokenizer": "data.tokenizer", "subset": "data.datasets.N.subset",
                 "split": "data.datasets.N.split", "column": "data.datasets.N.column",
                 "revision": "data.datasets.N.revision", "endpoint": "data.datasets.N.endpoint"}


def _check_prepare_flags(args: argparse.Namespace) -> None:
    """Refuse what one way of calling prepare would ignore: a SOURCE's flags with --config (the config's datasets
    have their own), and --config or --set beside a SOURCE (read alone, with its flags)."""
    if args.source and (args.config is not None or args.overrides):
        raise ValueError(f"give a dataset SOURCE (with --out and its flags) or --config, not both: SOURCE "
                         f"{args.source} would be prepared alone, {'--config' if args.config else '--set'} ignored")
    if not args.source:
        for flag, field in _SOURCE_FLAGS.items():
            if getattr(args, flag) is not None and args.config is not None:
                raise ValueError(f"--{flag} goes with a dataset SOURCE; with --config it would be ignored: set "
                                 f"{field} instead (--set {field.replace('.N.', '.0.')}=...)")


def train_tokenizer_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("files", nargs="*", help=".txt/.md/.py files, or .parquet/.jsonl with a text column (--column); "
                                            "a dataset folder means its train split's parquet files, as prepare "
                                            "finds them (omit to train on --config's datasets)")
    p.add_argument("--vocab-size", type=int, required=True, help="BPE size before the 38 whitespace tokens")
    p.add_argument("--out", required=True, help="tokenizer.json to write (give it as data.tokenizer)")
    p.add_argument("--column", default="text", help="the text column of .parquet/.jsonl files (default text; as prepare --column)")
    p.add_argument("--no-whitespace-tokens", action="store_true", help="skip CodeGen's whitespace-run tokens")
    _config_args(p)


def train_tokenizer_run(args: argparse.Namespace) -> int:
    from trainer.tokenizer import train_tokenizer

    out = Path(args.out)
    if out.is_dir():
        raise ValueError(f"--out {out}: is a folder; give the tokenizer.json file to write")
    out.parent.mkdir(parents=True, exist_ok=True)
    if not os.access(out.parent, os.W_OK) or (out.exists() and not os.access(out, os.W_OK)):
        raise PermissionError(errno.EACCES, "not writable", str(out))
    files, columns, held = _tokenizer_files(args)
    tok = train_tokenizer(files, args.vocab_size, whitespace_tokens=not args.no_whitespace_tokens, column=columns,
                          held_out=held)
    tok.save(args.out)
    tests = {id(t): t for t in held if t is not None}.values()  # one per dataset, shared by its files
    left_out = f" ({sum(t.taken for t in tests):,} documents held out for validation left out)" if tests else ""
    print(f"wrote {args.out}: {tok.get_vocab_size():,} tokens from {len(files)} file(s){left_out}")
    learned = tok.get_vocab_size(with_added_tokens=False)
    if learned < args.vocab_size:
        print(f"warning: --vocab-size {args.vocab_size:,} asked for, but the text only gave {learned:,} BPE tokens "
              f"(no pair left that occurs twice); more text gives more", file=sys.stderr)
    return 0


def _is_out(spec: str, out: str) -> bool:
    """Whether the tokenizer spec names the file train-tokenizer writes (`out`, or the folder whose tokenizer.json
    it is), new or replaced: counted under the BPE there now, holdout_tokens would pick other documents than
    prepare picks under the one written."""
    def where(path: str) -> str:
        return os.path.abspath(os.path.expanduser(path))

    target = where(out)
    return where(spec) == target or (Path(target).name == "tokenizer.json" and where(spec) == os.path.dirname(target))


class _HeldOut:
    """A dataset's held-out test (`trainer.data.held_out`) that counts the documents it takes, for the summary."""

    def __init__(self, test: Callable[[str], bool]):
        self.test, self.taken = test, 0

    def __call__(self, text: str) -> bool:
        held = self.test(text)
        self.taken += held
        return held


def _tokenizer_files(args: argparse.Namespace) -> tuple[list[Path], list[str], list[_HeldOut | None]]:
    """The files to train a tokenizer on, each with its text column and held-out test: FILES (with --column, read
    whole), and with --config the training split of each of its datasets (local or a Hub id, with the dataset's own
    column), as training reads it: without the documents its holdout_fraction / holdout_tokens keeps for
    validation (chosen as prepare chooses them; holdout_tokens counts tokens with data.tokenizer)."""
    from trainer.data import held_out, resolve_source

    if not args.files and args.config is None:
        raise ValueError("give FILES to train on, or --config to train on a config's datasets")
    if args.overrides and args.config is None:
        raise ValueError("--set changes a config: give it with --config")
    files: list[Path] = []
    for f in map(Path, args.files):
        if not f.is_dir():
            files.append(f)
        elif any(f.rglob("*.parquet")):  # a dataset folder (or a build's): its train split, as prepare reads it
            files += resolve_source(str(f))
    if args.files and not files:
        raise ValueError(f"no .parquet files in {', '.join(args.files)}")
    columns: list[str] = [args.column] * len(files)
    held: list[_HeldOut | None] = [None] * len(files)
    if args.config is not None:
        cfg = _load(args)
        for i, ds in enumerate(cfg.data.datasets):
            if ds.holdout_tokens and _is_out(cfg.data.tokenizer, args.out):
                state = "replaced by this run" if Path(args.out).exists() else "not written yet"
                raise ValueError(f"data.datasets.{i}.holdout_tokens holds out the documents that make "
                                 f"{ds.holdout_tokens:,} tokens under data.tokenizer, which is {args.out}, {state}: "
                                 "their count under it is not known before it is written; use "
                                 "holdout_fraction (the text alone picks its documents), or count with the tokenizer "
                                 "the data is prepared with now (--set data.tokenizer=SPEC)")
            found = resolve_source(ds.source, ds.split, ds.revision, ds.endpoint, subset=ds.subset)
            test = _HeldOut(held_out(found, ds.column, ds.holdout, cfg.data.tokenizer)) if ds.holdout else None
            files += found
            columns += [ds.column] * len(found)
            held += [test] * len(found)
    return files, columns, held


# ----------------------------------------------------------------------------- train


def train_arguments(p: argparse.ArgumentParser) -> None:
    _config_args(p)
    p.add_argument("--run-dir", default=None, help="output folder (checkpoints, metrics.jsonl, loss.png)")
    p.add_argument("--max-steps", type=int, default=None,
                   help="train this many optimizer steps (replaces the config's train.max_tokens)")
    p.add_argument("--time-budget", type=float, default=None, metavar="SECONDS",
                   help=f"end within this much wall time from the process's start (imports and preparing data "
                        f"included), with a checkpoint: the last step leaves room for it (exit code {STOPPED}: "
                        "resumable)")
    p.add_argument("--resume", default=None, help="auto (newest checkpoint of the run, default) | never | PATH")
    p.add_argument("--device", default=None, help="auto | cpu | cuda | cuda:N")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile each block and the loss: faster steps after a slow first one (sets "
                        "train.compile; default: the config's, on in demo-100m and phi-1.5)")
    p.add_argument("--synthetic", action="store_true", default=None,
                   help="random tokens instead of the datasets (throughput runs)")
    p.add_argument("--no-progress", action="store_true", help="log lines only, no live progress bar")
    p.epilog = _EXIT_CODES


def final_line(result) -> str:
    """The run's last line, for scripts: `key=value` figures of the last step, and the newest validation loss
    with `val_step` where it is older than that step (a run stopped between evaluations)."""
    last = result.history[-1]
    rate, mfu = _run_rate(result.history)
    val = result.val_losses
    val_loss = f" val_loss={val[max(val)]:.4f}" if val else ""
    if val and max(val) != result.final_step:
        val_loss += f" val_step={max(val)}"
    return (f"final step={result.final_step} loss={last['loss']:.4f}{val_loss} tokens_per_s={rate:.0f}"
            f"{'' if mfu is None else f' mfu={mfu:.4f}'} stop={result.stop_reason}")


def train_run(args: argparse.Namespace) -> int:
    from trainer.train import train

    options = {"run_dir": ("--run-dir", args.run_dir), "train.max_steps": ("--max-steps", args.max_steps),
               "train.time_budget_s": ("--time-budget", args.time_budget),
               "checkpoint.resume": ("--resume", args.resume), "train.device": ("--device", args.device),
               "train.compile": ("--compile", args.compile),
               "data.synthetic": ("--synthetic", args.synthetic)}
    cfg = _load_for_train(args, options, unset=["train.max_tokens"] if args.max_steps is not None else [])
    result = train(cfg, progress=False if args.no_progress else None, started=args.started)
    if result.history and os.environ.get("RANK", "0") == "0":
        print(final_line(result))
    if result.stop_reason == "done":
        return 0
    code = _STOP_EXIT.get(result.stop_reason, STOPPED)
    if os.environ.get("RANK", "0") == "0":
        print(_resume_hint(result.run_dir, cfg.checkpoint.resume, code, result.stop_reason), file=sys.stderr)
    return code


def _load_for_train(args: argparse.Namespace, extra: dict[str, tuple[str, object]], unset: Sequence[str]):
    """`_load`, a refusal of the defaults alone (no -c, no --set) saying where a config comes from: the defaults
    name no dataset, and `data.datasets is empty` alone did not say that -c was missing."""
    try:
        return _load(args, extra, unset)
    except ValueError as e:
        if args.config is not None or args.overrides or args.synthetic:
            raise
        raise ValueError(f"{e} (no -c/--config given: start from a bundled config, -c tiny | demo-100m | phi-1.5, "
                         "or a YAML file of your own)") from e


def _run_rate(history: list[dict]) -> tuple[float, float | None]:
    """(tokens/s, MFU) over the steps of this start but its first (compile, warm-up): the tokens over the time
    they took, i.e. each step's rate weighted by its seconds; a plain mean of the rates overstates a run
    whose step times vary (a 1 s and a 0.25 s step of 100 tokens make 160 tokens/s, not 250)."""
    steps = history[1:] or history
    seconds = sum(r["step_s"] for r in steps)
    if not seconds:  # steps below step_s's 0.1 ms rounding
        return sum(r["tokens_per_s"] for r in steps) / len(steps), steps[-1].get("mfu")
    rate = sum(r["tokens_per_s"] * r["step_s"] for r in steps) / seconds
    if any(r.get("mfu") is None for r in steps):
        return rate, None
    return rate, sum(r["mfu"] * r["step_s"] for r in steps) / seconds


def _resume_hint(run_dir: Path, resume: str, code: int, reason: str) -> str:
    """The one line that tells a stopped run's user how to go on."""
    from trainer.checkpoint import find_latest

    latest = find_latest(run_dir / "checkpoints")
    if latest is None:
        return f"exit code {code} ({reason}): stopped with no checkpoint (checkpoint.at_exit is off); a rerun starts over"
    again = "" if resume == "auto" else " with --resume auto"
    return f"exit code {code} ({reason}): resumable; run the same command again{again} to go on from {latest}"


# ----------------------------------------------------------------------------- export / generate


def _tokenizer_for(path: Path, spec: str | None, vocab_size: int):
    """The tokenizer a training checkpoint kept (an explicit one must be the same), else the one given, else the
    one saved beside an export, else the training config's (a checkpoint from before they kept theirs); one with
    more tokens than the model's `vocab_size` is refused."""
    from trainer.checkpoint import check_vocab, saved_tokenizer, tokenizer_for
    from trainer.tokenizer import load_tokenizer

    export = (path / "config.json").is_file()
    pinned = None if export else tokenizer_for(path, spec)
    if pinned is not None:
        tok, what = pinned, str(path / "tokenizer.json")
    elif spec:
        tok, what = load_tokenizer(spec), f"--tokenizer {spec}"
    elif export:
        if not (path / "tokenizer.json").is_file():
            raise FileNotFoundError(f"{path / 'tokenizer.json'}: missing; pass --tokenizer")
        tok, what = load_tokenizer(path / "tokenizer.json"), str(path / "tokenizer.json")
    else:
        saved = saved_tokenizer(path)
        try:
            tok, what = load_tokenizer(saved), f"the training config's data.tokenizer {saved}"
        except ValueError as e:  # e.g. the Hub's GPT-2 files offline
            raise ValueError(f"{e} (the training config's data.tokenizer; pass --tokenizer PATH{_EXPORT_WEIGHTS_ALONE})") from e
    check_vocab(tok.get_vocab_size(), vocab_size, what)
    return tok


def _load_any_model(path: Path, device: str):
    """An exported HF folder (config.json) or a training checkpoint (meta.json, any format)."""
    if (path / "config.json").is_file():
        from trainer.generate import load_model

        return load_model(path, device=device)
    from trainer.checkpoint import load_model

    return load_model(path, device=device)


def export_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="training checkpoint: step folder, checkpoints folder or run folder")
    p.add_argument("out", help="output folder (model.safetensors, config.json, tokenizer files)")
    p.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"],
                   help="dtype of the exported weights (default bfloat16)")
    p.add_argument("--tokenizer", default=None,
                   help="tokenizer spec (default: the one saved with the checkpoint; one that differs is refused)")
    p.add_argument("--no-tokenizer", action="store_true",
                   help="export weights and config only (not into a folder holding tokenizer files from before)")


def export_run(args: argparse.Namespace) -> int:
    from trainer.checkpoint import load_model, read_meta, resolve, saved_model_config
    from trainer.export import export_hf

    ckpt = resolve(args.checkpoint)
    vocab_size = saved_model_config(read_meta(ckpt)).vocab_size
    tok = None if args.no_tokenizer else _tokenizer_for(ckpt, args.tokenizer, vocab_size)
    out = export_hf(load_model(ckpt), args.out, tokenizer=tok, dtype=args.dtype)
    print(f"exported {ckpt} -> {out}")
    return 0


def generate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="exported HF folder or training checkpoint")
    p.add_argument("--prompt", "-p", action="append", default=[], help="prompt (repeatable; default: stdin)")
    p.add_argument("--max-new-tokens", type=int, default=200, help="most tokens to add (stops at EOS; default 200)")
    p.add_argument("--temperature", type=float, default=0.8, help="0: greedy (default 0.8)")
    p.add_argument("--top-k", type=int, default=50, help="sample among the k likeliest tokens; 0: off (default 50)")
    p.add_argument("--top-p", type=float, default=0.95, help="nucleus mass in (0, 1]; 1: off (default 0.95)")
    p.add_argument("--seed", type=int, default=None, help="seed of the sampling (default: a different draw each run)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    p.add_argument("--tokenizer", default=None,
                   help="tokenizer spec (default: the one saved with the checkpoint or export; one that differs from "
                        "a checkpoint's is refused)")


def generate_run(args: argparse.Namespace) -> int:
    from trainer.checkpoint import resolve
    from trainer.distributed import pick_device
    from trainer.generate import generate_text

    for flag, value, ok, rule in [("--max-new-tokens", args.max_new_tokens, args.max_new_tokens >= 0, ">= 0"),
                                  ("--temperature", args.temperature, args.temperature >= 0, ">= 0 (0: greedy)"),
                                  ("--top-k", args.top_k, args.top_k >= 0, ">= 0 (0: off)"),
                                  ("--top-p", args.top_p, 0 < args.top_p <= 1, "in (0, 1] (1: off)")]:
        if not ok:
            raise ValueError(f"{flag} must be {rule}, got {value}")
    device = pick_device(args.device)
    path = Path(args.checkpoint)
    if not (path / "config.json").is_file():
        path = resolve(path)
    if not args.prompt and sys.stdin.isatty():  # else it waits on the terminal without a word
        print("reading the prompt from stdin: type it, then Ctrl-D (or give -p PROMPT)", file=sys.stderr)
    prompts = args.prompt or [sys.stdin.read()]
    model = _load_any_model(path, device)
    tok = _tokenizer_for(path, args.tokenizer, model.config.vocab_size)
    outs = generate_text(model, tok, prompts, args.max_new_tokens, args.temperature, args.top_k or None, args.top_p,
                         args.seed)
    for prompt, out in zip(prompts, outs, strict=True):
        print(prompt + out)
        print("-" * 40)
    return 0


# ----------------------------------------------------------------------------- wiring


def _module_command(module: str, help: str) -> Command:
    """A subcommand living in another module that defines add_arguments(parser) and run(args) -> int."""
    mod = importlib.import_module(module)
    return help, mod.add_arguments, mod.run


def commands() -> dict[str, Command]:
    cmds: dict[str, Command] = {
        "prepare": ("tokenize datasets into token shards", prepare_arguments, prepare_run),
        "train-tokenizer": ("train your own byte-level BPE", train_tokenizer_arguments, train_tokenizer_run),
        "train": ("train or resume (torchrun for many GPUs)", train_arguments, train_run),
        "export": ("export a checkpoint as an HF PhiForCausalLM folder", export_arguments, export_run),
        "generate": ("sample text from a checkpoint", generate_arguments, generate_run),
    }
    # Subcommands owned by other modules register here with _module_command, e.g.
    # cmds["eval"] = _module_command("trainer.eval.cli", "evaluate a checkpoint on benchmarks")
    cmds["eval"] = _module_command("trainer.eval.cli", "evaluate a checkpoint on the phi-1.5 paper's benchmarks")
    return cmds


def build_parser() -> argparse.ArgumentParser:
    script = Path(sys.argv[0]).name
    prog = "python -m trainer" if script in ("__main__.py", "-m", "-c", "") else script
    parser = argparse.ArgumentParser(prog=prog, description="Pretrain phi-1.5 on textbookgen datasets.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_text, add_arguments, run) in commands().items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_arguments(p)
        p.set_defaults(_run=run)
    return parser


def _os_error_line(e: OSError) -> str:
    """One line for an OSError, naming its path when it has one."""
    if e.filename is None or e.strerror is None:
        return str(e)
    hints = {FileExistsError: " (expected a folder there)", NotADirectoryError: " (part of the path is a file)"}
    return f"{e.filename}: {e.strerror}{hints.get(type(e), '')}"


# How each command takes a tokenizer, in place of the hint of trainer.tokenizer's messages (prepare's options)
_GIVE_TOKENIZER = {"train": "set data.tokenizer (in the config, or --set data.tokenizer=PATH) to",
                   "train-tokenizer": "set data.tokenizer (holdout_tokens counts the tokens of the documents it holds "
                                      "out with it; --set data.tokenizer=PATH) to",
                   "export": "give --tokenizer", "generate": "give --tokenizer", "eval": "give --tokenizer"}
_EXPORT_WEIGHTS_ALONE = ", or --no-tokenizer to export the weights alone"  # export's option only


def _command_hints(message: str, command: str | None) -> str:
    """`message` with its hints naming the options of `command`: the library's tokenizer messages name prepare's
    (--tokenizer, data.tokenizer), which `train` (data.tokenizer only) and export/generate/eval (--tokenizer
    only) do not all take, and only export has --no-tokenizer."""
    if "tokenizer" not in message:
        return message
    from trainer.tokenizer import GIVE_TOKENIZER

    if command in _GIVE_TOKENIZER:
        message = message.replace(GIVE_TOKENIZER, _GIVE_TOKENIZER[command])
    return message if command == "export" else message.replace(_EXPORT_WEIGHTS_ALONE, "")


def report_user_errors(run: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """`run(args)`, with user errors (bad config or option, missing or unreadable data, checkpoint or
    output path, a full disk, divergence, a base install without the [train] extra's torch or tokenizers)
    printed as one `error: ...` line instead of a traceback (set TRAINER_DEBUG=1
    for the traceback), and Ctrl-C as one `interrupted` line with exit code 130. Under torchrun a refusal
    that every rank raises alike (marked by `train.every_rank`) is printed by rank 0 alone, and any other error
    line or traceback by the first rank to meet it, which names itself (`_first_rank`); each rank still exits
    with its own code (2 bad input, 1 diverged or a crash)."""
    try:
        return run(args)
    except KeyboardInterrupt as e:  # a second Ctrl-C in training, or one in prepare (which says how to go on)
        if os.environ.get("TRAINER_DEBUG"):
            raise
        print(f"interrupted{f': {e}' if str(e) else ''}", file=sys.stderr)
        return _STOP_EXIT["SIGINT"]
    except ModuleNotFoundError as e:
        if os.environ.get("TRAINER_DEBUG") or e.name not in _TRAIN_EXTRA:  # a submodule: installed but broken
            raise
        print(f"error: the trainer needs the [train] extra (no module named {e.name!r}): "
              f'pip install "textbookgen[train]"', file=sys.stderr)
        return 2
    except Exception as e:
        user_error = isinstance(e, (ValueError, OSError)) or type(e).__name__ in _RUNTIME_USER_ERRORS
        if os.environ.get("TRAINER_DEBUG") or not (user_error or _world_size() > 1):
            raise
        if not user_error:  # a crash under torchrun: its traceback, once for the ranks that crash alike
            _first_rank(traceback.format_exc().rstrip())
            return 1
        line = _os_error_line(e) if isinstance(e, OSError) else str(e)
        line = f"error: {_command_hints(line, getattr(args, 'command', None))}"
        if not getattr(e, "every_rank", False):
            _first_rank(line)
        elif os.environ.get("RANK", "0") == "0":
            print(line, file=sys.stderr)
        return 1 if type(e).__name__ == "TrainingDiverged" else 2


def _world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def _first_rank(text: str) -> None:
    """Print `text` to stderr; under torchrun only on the first rank that reports this same text (the other
    ranks failing alike stay quiet), with that rank named."""
    if _world_size() <= 1:
        print(text, file=sys.stderr)
        return
    from trainer.distributed import first_to_report

    if first_to_report(text):
        rank = f"rank {os.environ.get('RANK', '?')} of {_world_size()}"
        print(text.replace("error: ", f"error: {rank}: ", 1) if text.startswith("error: ") else f"{rank}:\n{text}",
              file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: the subcommand, with user errors as one line (`report_user_errors`)."""
    entered = time.perf_counter()
    args = build_parser().parse_args(argv)
    args.started = budget_start(entered)
    return report_user_errors(args._run, args)


if __name__ == "__main__":
    sys.exit(main())
