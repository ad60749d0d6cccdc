"""Multiple-choice scoring speed: our harness (prefix-shared and full-sequence strategies) against
lm-evaluation-harness's HFLM on the same requests and the same model, with the agreement of the scores.

    python bench/eval.py                      # random PhiForCausalLM, CPU, 24 items per task
    python bench/eval.py --model /path/hf_dir --device cuda --items 500 --batch-size 64

Items/s counts benchmark questions (all their choices scored), from the process's CPU time on CPU (other
jobs on a shared machine do not skew it) and synchronized wall time on GPU. Needs lm-eval and accelerate.

Last line: geomean_speedup_prefix_vs_lm_eval=<x> geomean_speedup_full_vs_lm_eval=<x> (geometric means of the
per-task items/s ratios) max_abs_dll=<largest log-likelihood difference from lm_eval, any task or strategy>
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from shared_data import skip_without  # noqa: E402  bench/ is on the path

from textbookgen.benchmarks import load_benchmark  # noqa: E402
from trainer.eval.harness import eval_items, fewshot_prefixes, find_task_data, mc_requests  # noqa: E402
from trainer.eval.models import CausalLM  # noqa: E402


def data_files(data: Path, tasks: list[str]) -> list[Path]:
    """What a run reads from the data folder: the GPT-2 tokenizer and each task's folder."""
    names = [t.partition("@")[0] for t in tasks]
    return [data / "tokenizer_gpt2" / "encoder.json", data / "tokenizer_gpt2" / "vocab.bpe",
            *(find_task_data(n, data) or data / n for n in names)]


def _tokenizer(data: Path):
    from transformers import GPT2TokenizerFast

    d = Path(tempfile.mkdtemp(prefix="bench-tok-"))
    shutil.copy(data / "tokenizer_gpt2" / "encoder.json", d / "vocab.json")
    shutil.copy(data / "tokenizer_gpt2" / "vocab.bpe", d / "merges.txt")
    return GPT2TokenizerFast.from_pretrained(str(d))


def _model(args: argparse.Namespace):
    from transformers import AutoModelForCausalLM, PhiConfig, PhiForCausalLM

    if args.model:
        return AutoModelForCausalLM.from_pretrained(args.model)
    torch.manual_seed(0)
    cfg = PhiConfig(vocab_size=51200, hidden_size=args.hidden, intermediate_size=4 * args.hidden,
                    num_hidden_layers=args.layers, num_attention_heads=max(1, args.hidden // 64),
                    max_position_embeddings=2048, bos_token_id=50256, eos_token_id=50256)
    return PhiForCausalLM(cfg)


def _requests(task: str, data: Path, n: int) -> tuple[int, list[tuple[str, str]]]:
    name, _, shots = task.partition("@")
    items = load_benchmark(name, find_task_data(name, data) or data)
    evals = eval_items(name, items)[:n]
    prefixes = fewshot_prefixes(task, name, evals, items, int(shots or 0))  # as the harness builds them
    return len(evals), [r for i, it in enumerate(evals) for r in mc_requests(it, prefixes[i] if prefixes else "")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--tasks", default="arc_easy,hellaswag,boolq,winogrande,mmlu@5")
    ap.add_argument("--items", type=int, default=24, help="questions per task")
    ap.add_argument("--model", default=None, help="HF model dir (default: a random PhiForCausalLM)")
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=2, help="timed runs per method (best is kept)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    args = ap.parse_args()
    skip_without(data_files(Path(args.data), args.tasks.split(",")))

    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    torch.set_num_threads(max(1, torch.get_num_threads()))
    data = Path(args.data)
    tok = _tokenizer(data)
    model = _model(args).to(args.device, getattr(torch, args.dtype)).eval()
    n_params = sum(p.numel() for p in model.parameters()) / 1e6
    ref_lm = HFLM(pretrained=model, tokenizer=tok, batch_size=args.batch_size, device=args.device)
    ours = {s: CausalLM(model, tok, device=args.device, batch_size=args.batch_size, strategy=s)
            for s in ("prefix", "full")}
    print(f"model: {args.model or f'random PhiForCausalLM h{args.hidden} L{args.layers}'} ({n_params:.1f}M params), "
          f"{args.dtype} on {args.device}, batch {args.batch_size}, torch threads {torch.get_num_threads()}")
    if args.device == "cpu":  # CPU seconds of this process: robust to other jobs sharing the machine
        clock, clock_name = time.process_time, "process CPU time"
    else:
        def clock() -> float:
            torch.cuda.synchronize()
            return time.perf_counter()
        clock_name = "wall time (synchronized)"
    print(f"items/s from {clock_name}, best of {args.repeats}")
    rows, full_speedups = [], []
    for task in args.tasks.split(","):
        n, reqs = _requests(task, data, args.items)
        insts = [Instance("loglikelihood", {}, r, i) for i, r in enumerate(reqs)]
        runners = {"lm_eval": lambda insts=insts: ref_lm.loglikelihood(insts, disable_tqdm=True),
                   **{s: (lambda lm=lm, reqs=reqs: lm.loglikelihood(reqs)) for s, lm in ours.items()}}
        best = {k: float("inf") for k in runners}
        out = {}
        for _ in range(args.repeats):  # interleaved, best of n
            for k, run in runners.items():
                t0 = clock()
                out[k] = run()
                best[k] = min(best[k], clock() - t0)
        diff = max(abs(a[0] - b[0]) for s in ours for a, b in zip(out[s], out["lm_eval"], strict=True))
        rows.append((task, n, len(reqs), n / best["lm_eval"], n / best["prefix"], n / best["full"],
                     best["lm_eval"] / best["prefix"], diff))
        full_speedups.append(best["lm_eval"] / best["full"])
    head = f"{'task':<12} {'items':>5} {'reqs':>5} {'lm_eval it/s':>12} {'ours prefix':>12} {'ours full':>10} " \
           f"{'speedup':>8} {'max|dll|':>9}"
    print(head)
    print("-" * len(head))
    for task, n, nreq, a, b, c, sp, d in rows:
        print(f"{task:<12} {n:>5} {nreq:>5} {a:>12.2f} {b:>12.2f} {c:>10.2f} {sp:>7.2f}x {d:>9.1e}")
    print(f"geomean_speedup_prefix_vs_lm_eval={geomean([r[6] for r in rows]):.2f} "
          f"geomean_speedup_full_vs_lm_eval={geomean(full_speedups):.2f} max_abs_dll={max(r[7] for r in rows):.1e}")


def geomean(xs: list[float]) -> float:
    """The mean of per-task ratios that weighs a 2x gain and a 2x loss alike."""
    return math.exp(sum(math.log(x) for x in xs) / len(xs))


if __name__ == "__main__":
    main()
