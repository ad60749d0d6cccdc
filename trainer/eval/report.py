"""The phi-1.5 paper's benchmark table for our results, with the paper's reference rows, as Markdown,
JSON (per-task metrics and standard errors) and a bar chart PNG.

Reference rows: phi-1.5 (arXiv 2309.05463, Tables 2-4; field-notes-training.md section 7.2) and the
Llama-2-7B and Vicuna-13B rows of the same tables. Only some of the values are confirmed in stored
pages (see the field notes); the rest were transcribed from the paper's tables and should be checked
against the PDF. The paper does not say acc or acc_norm, so the table shows `acc` (HellaSwag 0.476 matches
acc) and the JSON carries both. GSM8K, HumanEval and MBPP are percentages, as in the paper. A result whose
requests are not exactly lm_eval's (HellaSwag from the 6-lines text) is marked † with its cause.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["APPROXIMATE_MARK", "COLUMNS", "REFERENCE", "REFERENCE_NOTE", "markdown_table", "plot", "write_report"]

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
