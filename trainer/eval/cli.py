"""`python -m trainer eval CKPT [CKPT ...] --tasks ...` (also `python -m trainer.eval`): run the benchmarks and
write the report (table.md, results.json, chart.png, samples.jsonl); for several checkpoints, one such folder
each under --out and compare.md / compare.json / compare.png across them (--baseline: each paired with that one)."""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("checkpoint", nargs="+",
                   help="HF model dir (ours from export_hf, or any causal LM), training run or checkpoint, or Hub id; "
                        "several (e.g. runs/x/checkpoints/step-*) are each evaluated and compared in compare.md")
    p.add_argument("--tasks", default="paper",
                   help="comma list, 'paper' = the phi-1.5 table; 'mmlu@5' = 5-shot, 'arc_challenge@25' (default: paper)")
    p.add_argument("--data", default=None, help="data root (folders as in ../shared/data) or one task's folder; "
                                                "tasks without local data load from the HF Hub")
    p.add_argument("--data-file", action="append", default=[], metavar="TASK=PATH",
                   help="per-task data path; repeat for a task's other splits (few-shot examples: train)")
    p.add_argument("--limit", type=int, default=None, help="first N items per task (MMLU: per subject)")
    p.add_argument("--num-fewshot", type=int, default=None,
                   help="shots for tasks without '@k', as lm_eval's --num_fewshot (defaults: 0; GSM8K 8, MBPP 3, "
                        "also their most: lm_eval's fixed examples); HumanEval and LAMBADA stay zero-shot")
    p.add_argument("--tokenizer", default=None, help="tokenizer path/spec (default: the checkpoint's)")
    p.add_argument("--device", default=None, help="cpu | cuda | cuda:1 (default: cuda if available)")
    p.add_argument("--dtype", default=None, help="float32 | bfloat16 | float16 (default: bf16 on GPU, fp32 on CPU)")
    p.add_argument("--batch-size", type=int, default=32, help="most sequences scored at once (default 32)")
    p.add_argument("--max-batch-tokens", type=int, default=16384,
                   help="most padded tokens in one batch, a bound on GPU memory; lower it on an out-of-memory "
                        "error (default 16384)")
    p.add_argument("--strategy", choices=["prefix", "full"], default="prefix",
                   help="prefix: each context computed once (KV cache); full: lm_eval's whole sequences")
    p.add_argument("--max-new-tokens", type=int, default=None, help="generation budget (task defaults otherwise)")
    p.add_argument("--sandbox-timeout", type=float, default=3.0, help="seconds per generated program")
    p.add_argument("--out", default="eval_out",
                   help="report directory, default eval_out (several checkpoints, or --baseline: a folder each in it, "
                        "and compare.md); an earlier report there is replaced")
    p.add_argument("--name", default=None, help="model name in the table (default: checkpoint name; one checkpoint)")
    p.add_argument("--baseline", default=None, metavar="CHECKPOINT|REPORT",
                   help="pair every other checkpoint with this one alone in compare.md (default: each with the first "
                        "and with the one before it): one of the checkpoints (as given, or its name in compare.md), "
                        "evaluated first, or a report folder written earlier (results.json, samples.jsonl), read, "
                        "not evaluated again (items pair only under the same --limit and shots)")
    return p


_MINIMA = {"limit": 1, "num_fewshot": 0, "batch_size": 1, "max_batch_tokens": 1, "max_new_tokens": 1}


def check_options(args: argparse.Namespace) -> None:
    """Refuse out-of-range numbers before any model or data is loaded."""
    for field, low in _MINIMA.items():
        value = getattr(args, field)
        if value is not None and value < low:
            raise ValueError(f"--{field.replace('_', '-')} must be >= {low}, got {value}")
    if not args.sandbox_timeout > 0:
        raise ValueError(f"--sandbox-timeout must be > 0 seconds, got {args.sandbox_timeout}")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out}: is a file; give a report folder")


def task_list(spec: str) -> list[str]:
    """The --tasks names ('paper' expanded), each checked to be a known task."""
    from trainer.eval.harness import PAPER_TASKS, parse_task

    tasks = [t.strip() for t in spec.split(",") if t.strip()]
    tasks = [x for t in tasks for x in (PAPER_TASKS if t == "paper" else [t])]
    if not tasks:
        raise ValueError("--tasks is empty; give task names, e.g. --tasks paper or --tasks arc_easy,mmlu@5")
    for t in tasks:
        parse_task(t)
    return tasks


def data_files(pairs: Sequence[str], tasks: Sequence[str]) -> dict[str, list[str]]:
    """--data-file TASK=PATH values by task, in order; each TASK must be one of `tasks` (with or without '@k')."""
    wanted = set(tasks) | {t.split("@")[0] for t in tasks}
    files: dict[str, list[str]] = {}
    for kv in pairs:
        task, sep, path = kv.partition("=")
        if not (sep and task and path):
            raise ValueError(f"--data-file {kv!r}: expected TASK=PATH, e.g. --data-file gsm8k=test.jsonl")
        if task not in wanted:
            raise ValueError(f"--data-file {kv!r}: task {task!r} is not among --tasks ({', '.join(tasks)})")
        files.setdefault(task, []).append(path)
    return files


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from trainer.distributed import pick_device
    from trainer.eval.harness import plan_tasks, run_plans
    from trainer.eval.models import load_model
    from trainer.eval.report import (
        baseline_report,
        compare_table,
        find_baseline,
        markdown_table,
        write_compare,
        write_report,
    )
    from trainer.eval.sandbox import SandboxConfig

    console = Console(stderr=True)
    check_options(args)
    tasks = task_list(args.tasks)
    data: object = args.data
    if args.data_file:
        overrides = data_files(args.data_file, tasks)
        data = {t: overrides.get(t, overrides.get(t.split("@")[0], args.data)) for t in tasks}

    def log(msg: str) -> None:
        console.log(msg, markup=False)  # task notes quote '[title]'

    checkpoints = args.checkpoint if isinstance(args.checkpoint, list) else [args.checkpoint]
    if args.name and len(checkpoints) > 1:
        raise ValueError("--name names one checkpoint; with several, each is named by its folder")
    names = [args.name] if args.name else model_names(checkpoints)
    given = dict(zip(names, checkpoints, strict=True))
    runs: dict[str, dict] = {}
    training: dict[str, dict | None] = {}
    baseline = None if args.baseline is None else find_baseline(args.baseline, given)
    if args.baseline is not None and baseline is None:  # an earlier report, read before any model is loaded
        baseline, runs[baseline], training[baseline] = baseline_report(args.baseline, given, "checkpoints")
    elif baseline is not None:  # evaluated first, so every compare.md written on the way pairs with it
        if len(checkpoints) == 1:
            raise ValueError(f"--baseline {args.baseline}: the only checkpoint; give others to pair with it")
        names = [baseline] + [n for n in names if n != baseline]
    order = [*runs, *given]  # compare.md's rows: an earlier report first, then the checkpoints as given
    several = len(order) > 1
    gen = {"max_new_tokens": args.max_new_tokens} if args.max_new_tokens else {}
    config = {k: v for k, v in vars(args).items()
              if not k.startswith("_") and isinstance(v, (str, int, float, bool, list, type(None)))}
    paths: dict[str, Path] = {}
    plans = None
    for name in names:
        checkpoint = given[name]
        out = Path(args.out) / name if several else Path(args.out)
        if several:
            log(f"{name}: {checkpoint}")
        lm = load_model(checkpoint, tokenizer=args.tokenizer,
                        device=pick_device(args.device) if args.device else None, dtype=args.dtype,
                        batch_size=args.batch_size, max_batch_tokens=args.max_batch_tokens, strategy=args.strategy,
                        progress=True)
        training[name] = trained_on(checkpoint)
        if plans is None:  # every task's data, read and checked before the first is scored (a model error first)
            plans = plan_tasks(tasks, data=data, limit=args.limit, num_fewshot=args.num_fewshot, log=log)

        def report(results: dict, out: Path = out, name: str = name, checkpoint: str = checkpoint) -> None:
            # after every task: a later crash or Ctrl-C keeps the finished ones
            paths.update(write_report(results, out, name, config={**config, "checkpoint": checkpoint},
                                      training=training[name]))

        try:
            runs[name] = run_plans(lm, plans, sandbox=SandboxConfig(timeout_s=args.sandbox_timeout), gen_kwargs=gen,
                                   log=log, on_result=report)
        except BaseException:
            if paths:
                log(f"the tasks finished before the stop are reported in {paths['table'].parent}")
            raise
        del lm  # the next checkpoint loads into the memory this one held
        if several:
            ordered = {n: runs[n] for n in order if n in runs}
            paths.update(write_compare(ordered, args.out, training, baseline))
    if not several:
        print(markdown_table(runs[names[0]], names[0]))
        console.log("wrote " + ", ".join(str(p) for p in paths.values()))
        return 0
    print(compare_table(ordered, training, baseline))
    console.log(f"wrote {len(given)} report{'s' if len(given) > 1 else ''} under {args.out}, and " + ", ".join(
        str(paths[k]) for k in ("compare", "compare_json", "compare_chart")))
    return 0


def trained_on(checkpoint: str) -> dict[str, Any] | None:
    """What a training checkpoint's meta.json says its weights were trained on: step, samples and tokens
    seen, each dataset (source, subset, split, revision, column, weight) and the Hub commit its prepared data
    was read from, taken from the data.cache_dir index when that still holds the data trained on (its
    fingerprint equals the checkpoint's); None for other models (HF folders, Hub ids), which do not say."""
    from trainer.checkpoint import resolve
    from trainer.files import read_json

    path = Path(checkpoint).expanduser()
    if (path / "config.json").is_file() or not path.exists():
        return None
    ckpt = resolve(path)
    meta = read_json(ckpt / "meta.json")
    data = meta["config"].get("data") or {}
    datasets = [{k: ds.get(k) for k in ("source", "subset", "split", "revision", "column", "weight")}
                for ds in data.get("datasets") or []]
    samples, seq_len = meta.get("samples"), data.get("seq_len")
    info = {"checkpoint": str(ckpt.absolute()), "step": meta.get("step"), "samples": samples,
            "tokens": samples * seq_len if samples is not None and seq_len else None,
            "synthetic": bool(data.get("synthetic")), "datasets": datasets,
            "data_fingerprint": meta.get("data_fingerprint"), "init_from": meta.get("init_from")}
    if any(_hub_dataset(ds["source"]) for ds in datasets) and not info["synthetic"]:
        commits, note = _prepared_commits(data, meta.get("data_fingerprint"))
        for ds, commit in zip(datasets, commits or [None] * len(datasets), strict=True):
            ds["commit"] = commit
        info["commit_note"] = note
    return info


def _hub_dataset(source: str | None) -> bool:
    """Whether a dataset source is a Hub repo id, not a local folder or file (one gone since is still local:
    "/data/corpus" has no Hub commit to look for)."""
    from textbookgen.hub import REPO_ID_RE
    from trainer.data import local_source

    return bool(source) and local_source(source) is None and REPO_ID_RE.fullmatch(source) is not None


def _prepared_commits(data: dict[str, Any], fingerprint: str | None) -> tuple[list[str | None] | None, str | None]:
    """The Hub commit of each dataset's prepared copy under data.cache_dir (relative to the working folder),
    with None and why where that copy is gone or no longer the data the checkpoint was trained on."""
    from trainer.config import DatasetSource
    from trainer.data import DataError, read_index

    root = Path(data.get("cache_dir") or "data/tokens")
    try:
        indexes = [read_index(root / DatasetSource(**ds).cache_name) for ds in data["datasets"]]
    except (DataError, ValueError):  # gone, moved, or a config this version cannot read
        return None, (f"Hub commits unknown: the prepared data is not in {root} (data.cache_dir, read from "
                      "the folder eval runs in)")
    key = [[ix["key"], ds["weight"]] for ix, ds in zip(indexes, data["datasets"], strict=True)]
    key += [data.get("seq_len"), data.get("mix_block")]
    if hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16] != fingerprint:
        return None, (f"Hub commits unknown: the prepared data in {root} is not what this checkpoint was trained "
                      "on (prepared again since)")
    return [ix.get("commit") for ix in indexes], None


def model_names(checkpoints: Sequence[str]) -> list[str]:
    """Each checkpoint's folder name, with as many parent folders as it takes to tell them apart."""
    parts = [Path(str(c)).expanduser().absolute().parts for c in checkpoints]
    for k in range(1, max(len(p) for p in parts) + 1):
        names = ["-".join(p[-k:]).lstrip("/") or str(c) for p, c in zip(parts, checkpoints, strict=True)]
        if len(set(names)) == len(names):
            return names
    raise ValueError("the same checkpoint is given twice: " + ", ".join(
        str(c) for c in checkpoints if checkpoints.count(c) > 1))


def main(argv: Sequence[str] | None = None) -> int:
    from trainer.cli import report_user_errors

    parser = add_arguments(argparse.ArgumentParser(prog="python -m trainer.eval", description=__doc__))
    return report_user_errors(run, parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
