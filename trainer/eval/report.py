"""The phi-1.5 paper's benchmark table for our results, with the paper's reference rows, as Markdown,
JSON (per-task metrics and standard errors) and a bar chart PNG.

Reference rows: phi-1.5 (arXiv 2309.05463, Tables 2-4; field-notes-training.md section 7.2) and the
Llama-2-7B and Vicuna-13B rows of the same tables. Only some of the values are confirmed in stored
pages (see the field notes); the rest were transcribed from the paper's tables and should be checked
against the PDF. The paper does not say acc or acc_norm, so the table shows `acc` (HellaSwag 0.476 matches
acc) and the JSON carries both. GSM8K, HumanEval and MBPP are percentages, as in the paper. A result whose
requests are not exactly lm_eval's (HellaSwag from the 6-lines text) is marked † with its cause.

Several models or checkpoints: compare.md (a row each) and compare.png (a line per task across them), from
one `trainer eval` call with several checkpoints, or `python -m trainer.eval.report DIR ...` over report
folders written earlier.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["APPROXIMATE_MARK", "COLUMNS", "REFERENCE", "REFERENCE_NOTE", "compare_table", "markdown_table", "plot",
           "plot_compare", "read_report", "write_compare", "write_report"]

# (result key, column title, metric, scale): the paper's column order
COLUMNS = [
    ("winogrande", "WinoGrande", "acc", 1), ("arc_easy", "ARC-Easy", "acc", 1),
    ("arc_challenge", "ARC-Challenge", "acc", 1), ("boolq", "BoolQ", "acc", 1), ("siqa", "SIQA", "acc", 1),
    ("piqa", "PIQA", "acc", 1), ("hellaswag", "HellaSwag", "acc", 1), ("mmlu", "MMLU", "acc", 1),
    ("openbookqa", "OpenBookQA", "acc", 1), ("gsm8k", "GSM8K", "exact_match", 100),
    ("humaneval", "HumanEval", "pass@1", 100), ("mbpp", "MBPP", "pass@1", 100),
]
REFERENCE: dict[str, dict[str, float | None]] = {
    "phi-1.5 (paper)": {"winogrande": 0.734, "arc_easy": 0.756, "arc_challenge": 0.444, "boolq": 0.758,
                        "siqa": 0.526, "piqa": 0.766, "hellaswag": 0.476, "mmlu": 0.376, "openbookqa": 0.372,
                        "gsm8k": 40.2, "humaneval": 34.1, "mbpp": 37.7},
    "Llama-2-7B (paper)": {"winogrande": 0.691, "arc_easy": 0.763, "arc_challenge": 0.434, "boolq": 0.779,
                           "siqa": 0.480, "piqa": 0.781, "hellaswag": 0.571, "mmlu": 0.453, "openbookqa": 0.314,
                           "gsm8k": 14.6, "humaneval": 12.8, "mbpp": 20.8},
    "Vicuna-13B (paper)": {"winogrande": 0.708, "arc_easy": 0.754, "arc_challenge": 0.432, "boolq": 0.835,
                           "siqa": 0.437, "piqa": 0.774, "hellaswag": 0.578, "mmlu": None, "openbookqa": 0.330,
                           "gsm8k": None, "humaneval": 13.4, "mbpp": None},
}


APPROXIMATE_MARK = "†"
REFERENCE_NOTE = ("Reference rows: as reported in the phi-1.5 paper (arXiv 2309.05463, Tables 2-4), whose prompts "
                  "and acc/acc_norm choices may differ from these; verify against the paper before quoting them.")


def _result_for(results: Mapping[str, Any], key: str) -> Any:
    """The result for a column: exact key, else a shot variant ("mmlu@5")."""
    if key in results:
        return results[key]
    variants = sorted(k for k in results if k.split("@")[0] == key)
    return results[variants[0]] if variants else None


def _row(results: Mapping[str, Any]) -> dict[str, tuple[float, float | None] | None]:
    row: dict[str, tuple[float, float | None] | None] = {}
    for key, _, metric, scale in COLUMNS:
        r = _result_for(results, key)
        if r is None or metric not in r.metrics:
            row[key] = None
            continue
        se = r.stderr.get(metric)
        row[key] = (r.metrics[metric] * scale, se * scale if se is not None else None)
    return row


def _fmt(v: float | None, scale: int, se: float | None = None) -> str:
    if v is None:
        return "–"
    s = f"{v:.1f}" if scale == 100 else f"{v:.3f}"
    if se is not None:
        s += f" ± {se:.1f}" if scale == 100 else f" ± {se:.3f}"
    return s


def markdown_table(results: Mapping[str, Any], model_name: str, reference: bool = True) -> str:
    """Markdown table in the paper's column order: our row (± stderr), then the reference rows; results
    outside the paper's columns (other shot counts, extra tasks) are listed under it."""
    cols = [c for c in COLUMNS if _result_for(results, c[0]) is not None]
    ours = _row(results)
    lines = ["| model | " + " | ".join(c[1] for c in cols) + " |", "|" + "---|" * (len(cols) + 1)]
    cells = [(_fmt(ours[k][0], scale, ours[k][1]) if ours[k] else "–") + _mark(_result_for(results, k))
             for k, _, _, scale in cols]
    lines.append(f"| **{model_name}** | " + " | ".join(cells) + " |")
    if reference:
        for name, vals in REFERENCE.items():
            lines.append(f"| {name} | " + " | ".join(_fmt(vals.get(k), scale) for k, _, _, scale in cols) + " |")
    shown = {id(_result_for(results, c[0])) for c in cols}
    shots = ", ".join(f"{k} {r.num_fewshot}-shot" for k, r in results.items() if r.num_fewshot)
    lines += ["", "acc (lm-evaluation-harness prompts and formulas), zero-shot unless noted"
              + (f" ({shots})" if shots else "") + "; GSM8K chain-of-thought exact match (strict), "
              "HumanEval/MBPP greedy pass@1; those three in %, the others as fractions. ± is the standard error.", "",
              REFERENCE_NOTE]
    others = [(k, r) for k, r in results.items() if id(r) not in shown]
    for k, r in others:
        vals = ", ".join(f"{m} {v:.4f}" + (f" ± {r.stderr[m]:.4f}" if r.stderr.get(m) is not None else "")
                         for m, v in r.metrics.items() if not m.startswith("acc_") or m == "acc_norm")
        lines.append(f"- {k} (n={r.n}){_mark(r)}: {vals}")
    for k, r in results.items():
        if r.approximate:
            lines += ["", f"{APPROXIMATE_MARK} {k}: approximate, not lm_eval's exact requests: {r.approximate}"]
    return "\n".join(lines) + "\n"


def _mark(result: Any) -> str:
    """The footnote mark for a result that is not exactly lm_eval's ("" for exact ones and gaps)."""
    return f" {APPROXIMATE_MARK}" if result is not None and result.approximate else ""


def plot(results: Mapping[str, Any], model_name: str, out: str | Path) -> Path:
    """Grouped bars per benchmark: ours (with stderr) beside the reference rows, on the paper's scale
    (fractions for accuracy tasks; GSM8K/HumanEval/MBPP shown as fractions too so one axis fits)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = [c for c in COLUMNS if _result_for(results, c[0]) is not None]
    ours = _row(results)
    series = [(model_name, [(ours[k] or (math.nan, None))[0] / scale for k, _, _, scale in cols],
               [((ours[k] or (0, 0))[1] or 0) / scale for k, _, _, scale in cols])]
    for name, vals in REFERENCE.items():
        series.append((name, [(vals.get(k) if vals.get(k) is not None else math.nan) / scale
                              for k, _, _, scale in cols], None))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(cols) + 2), 4.2))
    width = 0.8 / len(series)
    for i, (name, vals, errs) in enumerate(series):
        xs = [j + (i - (len(series) - 1) / 2) * width for j in range(len(cols))]
        ax.bar(xs, vals, width, label=name, yerr=errs, capsize=2 if errs else 0)
    ax.set_xticks(range(len(cols)), [c[1] + _mark(_result_for(results, c[0])) for c in cols], rotation=30, ha="right")
    ax.set_ylabel("accuracy / pass@1")
    ax.set_ylim(0, 1)
    ax.set_title(f"{model_name} vs the phi-1.5 paper")
    ax.legend(fontsize=8)
    return _save(fig, out)


def _save(fig, out: str | Path) -> Path:
    """Write a chart as `out` (its folder made) and free the figure."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def write_report(results: Mapping[str, Any], out_dir: str | Path, model_name: str,
                 config: Mapping[str, Any] | None = None, samples: bool = True) -> dict[str, Path]:
    """results.json (metrics, stderr, config, reference), table.md, chart.png, and samples.jsonl."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    payload = {"model": model_name, "config": dict(config or {}),
               "results": {k: r.to_dict() for k, r in results.items()},
               "reference": REFERENCE, "reference_note": REFERENCE_NOTE}
    paths = {"json": out / "results.json", "table": out / "table.md", "chart": out / "chart.png"}
    paths["json"].write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    paths["table"].write_text(markdown_table(results, model_name), encoding="utf-8")
    plot(results, model_name, paths["chart"])
    if samples:
        paths["samples"] = out / "samples.jsonl"
        with open(paths["samples"], "w", encoding="utf-8") as f:
            for k, r in results.items():
                for s in r.samples:
                    f.write(json.dumps({"task": k, **s}) + "\n")
    return paths


def _compare_columns(runs: Mapping[str, Mapping[str, Any]]) -> list[tuple[str, str, str, int]]:
    """(result key, title, metric, scale) for every task any run has: the paper's columns first."""
    keys = [k for r in runs.values() for k in r]
    cols = [c for c in COLUMNS if any(_result_for(r, c[0]) is not None for r in runs.values())]
    shown = {c[0] for c in cols} | {k for k in keys if k.split("@")[0] in {c[0] for c in cols}}
    for k in dict.fromkeys(keys):
        if k not in shown:
            r = next(run[k] for run in runs.values() if k in run)
            cols.append((k, k, next(iter(r.metrics)), 1))
    return cols


def compare_table(runs: Mapping[str, Mapping[str, Any]]) -> str:
    """Markdown: one row per evaluated model or checkpoint (in the order given), one column per task
    (± stderr), and the phi-1.5 paper's row for reference."""
    cols = _compare_columns(runs)
    lines = ["| model | " + " | ".join(c[1] for c in cols) + " |", "|" + "---|" * (len(cols) + 1)]
    for name, results in runs.items():
        cells = []
        for key, _, metric, scale in cols:
            r = _result_for(results, key)
            v = r.metrics.get(metric) if r is not None else None
            se = r.stderr.get(metric) if r is not None else None
            cells.append(_fmt(v * scale if v is not None else None, scale, se * scale if se is not None else None)
                         + _mark(r))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    paper = REFERENCE["phi-1.5 (paper)"]
    lines.append("| phi-1.5 (paper) | " + " | ".join(_fmt(paper.get(k), scale) for k, _, _, scale in cols) + " |")
    causes = {r.approximate: k for results in runs.values() for k, r in results.items() if r.approximate}
    notes = "".join(f"\n{APPROXIMATE_MARK} {k}: approximate, not lm_eval's exact requests: {c}\n"
                    for c, k in causes.items())
    return "\n".join(lines) + "\n\n" + "Metrics as in table.md of each model's folder (" + ", ".join(
        f"{c[1]} {c[2]}" for c in cols) + "). " + REFERENCE_NOTE + "\n" + notes


def plot_compare(runs: Mapping[str, Mapping[str, Any]], out: str | Path) -> Path:
    """One line per task across the models/checkpoints in the order given (a training curve when they
    are a run's checkpoints), with stderr bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(runs)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(names) + 3), 4.5))
    for i, (key, title, metric, _scale) in enumerate(_compare_columns(runs)):
        vals, errs = [], []
        for results in runs.values():
            r = _result_for(results, key)
            vals.append(r.metrics[metric] if r is not None and metric in r.metrics else math.nan)
            errs.append((r.stderr.get(metric) or 0.0) if r is not None else 0.0)
        ax.errorbar(range(len(names)), vals, yerr=errs, marker="o", capsize=2, label=f"{title} ({metric})",
                    color=plt.get_cmap("tab20")(i % 20))
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_ylabel("accuracy / pass@1 (fraction)")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7, ncol=2)
    return _save(fig, out)


def write_compare(runs: Mapping[str, Mapping[str, Any]], out_dir: str | Path) -> dict[str, Path]:
    """compare.md and compare.png in `out_dir`, beside each model's own report folder."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"compare": out / "compare.md", "compare_chart": out / "compare.png"}
    paths["compare"].write_text(compare_table(runs), encoding="utf-8")
    plot_compare(runs, paths["compare_chart"])
    return paths


def read_report(folder: str | Path) -> tuple[str, dict[str, Any]]:
    """(model name, {task: TaskResult}) from a report folder's results.json, without its samples."""
    from trainer.eval.harness import TaskResult
    from trainer.files import read_json

    path = Path(folder) / "results.json" if Path(folder).is_dir() else Path(folder)
    payload = read_json(path)
    try:
        results = {k: TaskResult(**{f: v for f, v in r.items() if f in TaskResult.__dataclass_fields__})
                   for k, r in payload["results"].items()}
        return str(payload["model"]), results
    except (KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"{path}: not a results.json written by trainer eval ({type(e).__name__}: {e})") from None


def _report_folders(path: Path) -> list[Path]:
    """`path`, or the report folders in it (sorted) when it is the --out of a several-checkpoint eval."""
    if path.is_dir() and not (path / "results.json").exists():
        inner = sorted(d for d in path.iterdir() if (d / "results.json").is_file())
        if inner:
            return inner
    return [path]


def main(argv: list[str] | None = None) -> int:
    """`python -m trainer.eval.report DIR [DIR ...] --out CMP`: compare.md and compare.png across report
    folders written earlier (one per checkpoint, in the order given)."""
    import argparse

    from trainer.cli import report_user_errors

    p = argparse.ArgumentParser(prog="python -m trainer.eval.report", description=main.__doc__)
    p.add_argument("reports", nargs="+", help="report folders (or their results.json)")
    p.add_argument("--out", default="eval_compare", help="folder for compare.md and compare.png")

    def run(args: argparse.Namespace) -> int:
        runs: dict[str, dict[str, Any]] = {}
        for folder in [f for given in args.reports for f in _report_folders(Path(given))]:
            name, results = read_report(folder)
            runs[name if name not in runs else str(folder)] = results
        paths = write_compare(runs, args.out)
        print(compare_table(runs), end="")
        print("wrote " + ", ".join(str(v) for v in paths.values()))
        return 0

    return report_user_errors(run, p.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
