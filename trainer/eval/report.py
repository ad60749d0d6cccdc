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
folders written earlier. Two models' accuracies each ± its own stderr overlap far more than their
difference is uncertain when both were scored on the same items, so compare.md (and compare.json) also gives
paired differences: per task, the mean of the per-item differences ± their stderr (lm_eval's sample std /
sqrt(n), applied to the differences) and the raw p-value of the exact McNemar test on the items only one model
gets right, marked where significant after the Holm-Bonferroni correction over all the table's paired tests
(many tasks x checkpoints would otherwise mark one test in 20 by chance); only where both reports hold the
same items, shots and requests (otherwise the reason). Pairs: each model with the first and with the one
before it, or each with one named baseline. What each model was trained on, where its checkpoint says, is
listed under the table.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = ["ALPHA", "APPROXIMATE_MARK", "COLUMNS", "REFERENCE", "REFERENCE_NOTE", "PairedDiff", "baseline_report",
           "compare_table", "describe_training", "find_baseline", "holm", "item_scores", "markdown_table",
           "paired_diff", "paired_rows", "paired_table", "plot", "plot_compare", "read_report", "read_training",
           "write_compare", "write_report"]

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
              "Items scored: " + ", ".join(f"{k} {r.n:,}" for k, r in results.items())
              + " (under --limit the first N of each, of each subject for MMLU: not the full sets of the paper's "
              "rows).",
              "", REFERENCE_NOTE]
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
                 config: Mapping[str, Any] | None = None, samples: bool = True,
                 training: Mapping[str, Any] | None = None) -> dict[str, Path]:
    """results.json (metrics, stderr, config, what the model was trained on, reference), table.md, chart.png,
    and samples.jsonl."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    payload = {"model": model_name, "config": dict(config or {}), "training": dict(training) if training else None,
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


def compare_table(runs: Mapping[str, Mapping[str, Any]],
                  training: Mapping[str, Mapping[str, Any] | None] | None = None, baseline: str | None = None) -> str:
    """Markdown: one row per evaluated model or checkpoint (in the order given), one column per task
    (± stderr), the phi-1.5 paper's row for reference, then the paired differences (`paired_table`, against
    `baseline` alone where one is named) and what each model was trained on (`training`: {model: results.json's
    "training"}, where known)."""
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
        lines.append(f"| {name}{' (baseline)' if name == baseline else ''} | " + " | ".join(cells) + " |")
    paper = REFERENCE["phi-1.5 (paper)"]
    lines.append("| phi-1.5 (paper) | " + " | ".join(_fmt(paper.get(k), scale) for k, _, _, scale in cols) + " |")
    causes = {r.approximate: k for results in runs.values() for k, r in results.items() if r.approximate}
    notes = "".join(f"\n{APPROXIMATE_MARK} {k}: approximate, not lm_eval's exact requests: {c}\n"
                    for c, k in causes.items())
    own = "± is each model's own stderr: compare models by the paired differences below. " if len(runs) > 1 else ""
    text = "\n".join(lines) + "\n\n" + "Metrics as in table.md of each model's folder (" + ", ".join(
        f"{c[1]} {c[2]}" for c in cols) + "). " + own + REFERENCE_NOTE + "\n" + notes
    if len(runs) > 1:
        text += "\n" + paired_table(runs, baseline)
    known = {name: t for name, t in (training or {}).items() if t}
    if known:
        text += "\n## Trained on\n\n" + "".join(f"- {name}: {describe_training(t)}\n" for name, t in known.items())
    return text


# ---------------------------------------------------------------------------- paired differences

ALPHA = 0.05  # the family-wise error rate the * of compare.md keeps to


@dataclass(frozen=True)
class PairedDiff:
    """Model B minus model A on the same n items: the mean per-item difference, its standard error (the
    differences' sample std / sqrt(n), lm_eval's `mean_stderr`), and the items only B / only A got right."""

    metric: str
    n: int
    diff: float
    stderr: float | None
    better: int
    worse: int

    @property
    def p(self) -> float:
        """Two-sided p-value of the exact McNemar test: under "no difference" each item only one model gets
        right is B's or A's by a fair coin, so p = P(a split of `better + worse` as uneven or more). Per-item
        scores are 0/1; unlike a z-test on diff / stderr it holds at the few items a --limit run differs on
        (5 of 50 items won, none lost: 0.0625, where the z-test says 0.020)."""
        k, m = min(self.better, self.worse), self.better + self.worse
        return min(1.0, 2 * sum(math.comb(m, i) for i in range(k + 1)) / 2**m)

    @property
    def significant(self) -> bool:
        """Uncorrected: p < ALPHA."""
        return self.p < ALPHA


def holm(ps: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values, in the order given: the k-th smallest p times (m - k + 1), made
    non-decreasing and capped at 1. Adjusted p < ALPHA keeps the chance of any false finding among the m
    tests at most ALPHA, whatever their dependence."""
    adjusted, running = [1.0] * len(ps), 0.0
    for k, i in enumerate(sorted(range(len(ps)), key=ps.__getitem__)):
        running = max(running, min(1.0, (len(ps) - k) * ps[i]))
        adjusted[i] = running
    return adjusted


def item_scores(result: Any, metric: str) -> list[tuple[str, Any, float]] | str:
    """(item id, gold, the item's `metric` value) from a result's per-item samples, or why there are none."""
    samples = result.samples
    if not samples:
        return "no per-item results (samples.jsonl missing or written with samples=False)"
    if len(samples) != result.n:
        return f"samples hold {len(samples)} of its {result.n} items"
    first = samples[0]
    if metric in ("acc", "acc_norm") and "pred" in first:
        pred = "pred_norm" if metric == "acc_norm" else "pred"
        if pred not in first:
            return f"no per-item {metric}"
        return [(str(s["id"]), s["gold"], float(s[pred] == s["gold"])) for s in samples]
    if metric == "acc" and "greedy" in first:  # LAMBADA
        return [(str(s["id"]), None, float(s["greedy"])) for s in samples]
    if metric in ("exact_match", "exact_match_flexible") and "strict" in first:
        from trainer.eval.generative import normalize_answer

        field = "strict" if metric == "exact_match" else "flexible"
        return [(str(s["id"]), s["gold"], float(normalize_answer(s[field]) == s["gold"])) for s in samples]
    if metric == "pass@1" and "status" in first:
        return [(str(s["id"]), None, float(s["status"] == "passed")) for s in samples]
    return f"no per-item {metric}"


def paired_diff(a: Any, b: Any, metric: str, names: tuple[str, str] = ("A", "B")) -> PairedDiff | str:
    """B minus A on `metric` item by item, or why the two results (called `names` in it) cannot be paired:
    other shots, other requests (one approximate), other items (count, ids) or other gold answers."""
    na, nb = names
    if a.num_fewshot != b.num_fewshot:
        return f"{na} is {a.num_fewshot}-shot, {nb} {b.num_fewshot}-shot"
    if a.approximate != b.approximate:
        if a.approximate and b.approximate:
            return "other requests: approximate for other causes"
        return f"other requests: {na if a.approximate else nb} is approximate, {nb if a.approximate else na} exact"
    if a.n != b.n:
        return f"other items: {na} has {a.n}, {nb} {b.n}"
    xs, ys = item_scores(a, metric), item_scores(b, metric)
    for name, got in ((na, xs), (nb, ys)):
        if isinstance(got, str):
            return f"{name}: {got}"
    ids_a, ids_b = [x[0] for x in xs], [y[0] for y in ys]
    if ids_a != ids_b:
        if len(set(ids_a)) != len(ids_a) or set(ids_a) != set(ids_b):
            first = min(set(ids_a) ^ set(ids_b), default=None)
            if first is None:
                return "item ids repeat, in another order"
            return f"other item ids (e.g. {first!r} only in {na if first in set(ids_a) else nb})"
        by_id = {y[0]: y for y in ys}
        ys = [by_id[i] for i in ids_a]
    for (i, gold_a, _), (_, gold_b, _) in zip(xs, ys, strict=True):
        if gold_a != gold_b:
            return f"item {i!r} has gold {gold_a!r} in {na}, {gold_b!r} in {nb} (another version of the data)"
    from trainer.eval.harness import mean_stderr

    d = [y[2] - x[2] for x, y in zip(xs, ys, strict=True)]
    return PairedDiff(metric, len(d), sum(d) / len(d), mean_stderr(d), sum(v > 0 for v in d), sum(v < 0 for v in d))


def _pairs(names: list[str], baseline: str | None = None) -> list[tuple[str, str]]:
    """Each model against `baseline` alone; without one, each against the first, then, past two models, each
    against the one before."""
    if baseline is not None:
        return [(baseline, n) for n in names if n != baseline]
    pairs = [(names[0], n) for n in names[1:]]
    return pairs + [(a, b) for a, b in zip(names[1:], names[2:], strict=False)]


def paired_rows(runs: Mapping[str, Mapping[str, Any]], baseline: str | None = None) -> list[dict[str, Any]]:
    """Every pair's paired difference per compared task (compare.json's "paired"): its raw p-value ("p") and
    uncorrected verdict ("significant_uncorrected"), and the Holm-Bonferroni adjusted p-value ("p_holm") over
    all the rows' tests, whose verdict is "significant"."""
    rows = []
    for a, b in _pairs(list(runs), baseline if baseline in runs else None):
        for key, _, metric, _scale in _compare_columns(runs):
            ra, rb = _result_for(runs[a], key), _result_for(runs[b], key)
            row: dict[str, Any] = {"a": a, "b": b, "task": key, "metric": metric}
            if ra is None or rb is None:
                row["reason"] = f"not evaluated in {a if ra is None else b}"
            else:
                got = paired_diff(ra, rb, metric, (a, b))
                row.update({"reason": got} if isinstance(got, str) else
                           {**asdict(got), "p": got.p, "significant_uncorrected": got.significant})
            rows.append(row)
    tested = [r for r in rows if "p" in r]
    for row, adjusted in zip(tested, holm([r["p"] for r in tested]), strict=True):
        row.update(p_holm=adjusted, significant=adjusted < ALPHA)
    return rows


def _p(p: float) -> str:
    return ", p<0.001" if p < 0.001 else f", p={p:.3f}"


def paired_table(runs: Mapping[str, Mapping[str, Any]], baseline: str | None = None) -> str:
    """Markdown: per pair of models and task, B − A on the same items ± the paired stderr and raw p-value,
    * where significant after the Holm-Bonferroni correction over every test in the table."""
    cols = _compare_columns(runs)
    rows = paired_rows(runs, baseline)
    lines = ["## Paired differences (same items)", "",
             "| B vs A | " + " | ".join(c[1] for c in cols) + " |", "|" + "---|" * (len(cols) + 1)]
    reasons = []
    for i in range(0, len(rows), len(cols)):
        cells = []
        for row, (_, title, _, scale) in zip(rows[i:i + len(cols)], cols, strict=True):
            if "reason" in row:
                cells.append("n/a")
                reasons.append(f"- {row['b']} vs {row['a']}, {title}: {row['reason']}")
                continue
            se = "" if row["stderr"] is None else (f" ± {row['stderr'] * scale:.1f}" if scale == 100
                                                      else f" ± {row['stderr']:.3f}")
            diff = f"{row['diff'] * scale:+.1f}" if scale == 100 else f"{row['diff']:+.3f}"
            cells.append(f"{diff}{se}{' *' if row['significant'] else ''} ({row['better']}↑ {row['worse']}↓"
                         f"{_p(row['p'])})")
        lines.append(f"| {rows[i]['b']} vs {rows[i]['a']} | " + " | ".join(cells) + " |")
    tests = sum("p" in r for r in rows)
    nominal = sum(bool(r.get("significant_uncorrected")) for r in rows)
    paired_with = (f"Each model is paired with the baseline, {baseline}." if baseline in runs else
                   "Each model is paired with the first, and with the one before it (--baseline NAME: with that "
                   "one alone).")
    lines += ["", "B − A per task on the items both were scored on: the mean per-item difference ± its standard "
              "error (lm_eval's stderr applied to the differences); ↑/↓: the items only B / only A gets right; p: "
              "the two-sided exact McNemar test on those, uncorrected. * = significant at 5% after the "
              f"Holm-Bonferroni correction over the family of all {tests} paired tests in this table (every pair "
              "and task with a figure): the chance of any false * is at most 5%. Uncorrected, "
              f"{nominal} of the {tests} have p < 0.05 (by chance alone about 1 in 20 would); compare.json gives "
              "each p and its Holm-adjusted p_holm. Without * a gap is not established, whatever the rows above "
              "suggest (their ± is each model's own, not the uncertainty of a difference on shared items). "
              + paired_with]
    if reasons:
        lines += ["", "No paired figure (n/a):", *reasons]
    return "\n".join(lines) + "\n"


def describe_training(t: Mapping[str, Any]) -> str:
    """One line from results.json's "training": step, samples/tokens seen, each dataset with its revision
    and the Hub commit its prepared data was read from (where known)."""
    seen = [f"step {t['step']}"] if t.get("step") is not None else []
    if t.get("samples") is not None:
        seen.append(f"{t['samples']:,} samples" + (f" ({t['tokens']:,} tokens)" if t.get("tokens") else ""))
    if t.get("synthetic"):
        data = "synthetic tokens"
    else:
        data = "; ".join(
            ds["source"] + "".join(f" {k} {ds[k]}" for k in ("subset", "split", "revision", "commit") if ds.get(k))
            + (f" (weight {ds['weight']:g})" if len(t["datasets"]) > 1 else "") for ds in t.get("datasets") or [])
    note = f" [{t['commit_note']}]" if t.get("commit_note") else ""
    init = f", from {t['init_from']}" if t.get("init_from") else ""
    return ", ".join(seen) + f" on {data or 'data not recorded'}{note}{init}"


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


def write_compare(runs: Mapping[str, Mapping[str, Any]], out_dir: str | Path,
                  training: Mapping[str, Mapping[str, Any] | None] | None = None,
                  baseline: str | None = None) -> dict[str, Path]:
    """compare.md, compare.json (paired differences, against `baseline` alone where one is named; training
    data) and compare.png in `out_dir`, beside each model's own report folder."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"compare": out / "compare.md", "compare_json": out / "compare.json", "compare_chart": out / "compare.png"}
    paths["compare"].write_text(compare_table(runs, training, baseline), encoding="utf-8")
    paired = paired_rows(runs, baseline) if len(runs) > 1 else []
    tests = sum("p_holm" in r for r in paired)
    payload = {"models": list(runs), "baseline": baseline,
               "correction": {"test": "exact McNemar, two-sided", "method": "holm-bonferroni", "alpha": ALPHA,
                              "family": "every paired test in this file", "tests": tests},
               "paired": paired, "training": {name: (training or {}).get(name) for name in runs}}
    paths["compare_json"].write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    plot_compare(runs, paths["compare_chart"])
    return paths


def _results_json(folder: str | Path) -> Path:
    return Path(folder) / "results.json" if Path(folder).is_dir() else Path(folder)


def read_report(folder: str | Path) -> tuple[str, dict[str, Any]]:
    """(model name, {task: TaskResult}) from a report folder's results.json, with the per-item results of
    the samples.jsonl beside it (for paired differences) where there is one."""
    from trainer.eval.harness import TaskResult
    from trainer.files import read_json

    path = _results_json(folder)
    payload = read_json(path)
    try:
        results = {k: TaskResult(**{f: v for f, v in r.items() if f in TaskResult.__dataclass_fields__})
                   for k, r in payload["results"].items()}
        name = str(payload["model"])
    except (KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"{path}: not a results.json written by trainer eval ({type(e).__name__}: {e})") from None
    samples = path.parent / "samples.jsonl"
    if samples.is_file():
        for line in samples.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
                task = rec.pop("task")
            except (json.JSONDecodeError, KeyError, AttributeError):
                break  # torn by a crash mid-write: the tasks it cuts short get no paired figure, and say why
            if task in results:
                results[task].samples.append(rec)
    return name, results


def read_training(folder: str | Path) -> dict[str, Any] | None:
    """What a report's results.json says its model was trained on (None: not recorded)."""
    from trainer.files import read_json

    training = read_json(_results_json(folder)).get("training")
    return training if isinstance(training, dict) else None


def _report_folders(path: Path) -> list[Path]:
    """`path`, or the report folders in it (sorted) when it is the --out of a several-checkpoint eval."""
    if path.is_dir() and not (path / "results.json").exists():
        inner = sorted(d for d in path.iterdir() if (d / "results.json").is_file())
        if inner:
            return inner
    return [path]


def find_baseline(spec: str, inputs: Mapping[str, str | Path]) -> str | None:
    """The name of the input `spec` names ({name: path as given}): by its name in compare.md, or by its path
    (as given, or the same file or folder); None where it names none of them."""
    if spec in inputs:
        return spec
    target = _results_json(Path(spec).expanduser()).resolve()
    return next((name for name, given in inputs.items()
                 if str(given) == spec or _results_json(Path(given).expanduser()).resolve() == target), None)


def baseline_report(spec: str, inputs: Mapping[str, str | Path], what: str) -> tuple[str, dict[str, Any],
                                                                                          dict[str, Any] | None]:
    """(name, results, training) of the report folder `spec` names, as a baseline that is none of the `inputs`
    (the `what` given); a clear error where it is no report folder either."""
    folders = _report_folders(Path(spec).expanduser())
    if len(folders) > 1:
        names = ", ".join(f.name for f in folders)
        raise ValueError(f"--baseline {spec}: holds {len(folders)} report folders ({names}); name one of them")
    if not _results_json(folders[0]).is_file():
        among = f"--baseline {spec}: not among the {what} given ({', '.join(inputs)}, by path or name)"
        if folders[0].exists():
            raise ValueError(f"{among}, and not a report folder (no results.json); to pair with it, add it to the "
                             f"{what}")
        raise ValueError(f"{among}, nor a report folder")
    name, results = read_report(folders[0])
    return (name if name not in inputs else str(folders[0])), results, read_training(folders[0])


def main(argv: list[str] | None = None) -> int:
    """`python -m trainer.eval.report DIR [DIR ...] --out CMP`: compare.md, compare.json and compare.png across
    report folders written earlier (one per checkpoint, in the order given; the paired differences pair each
    with the first and with the one before it, or with --baseline alone)."""
    import argparse

    from trainer.cli import report_user_errors

    p = argparse.ArgumentParser(prog="python -m trainer.eval.report", description=main.__doc__)
    p.add_argument("reports", nargs="+", help="report folders (or their results.json)")
    p.add_argument("--out", default="eval_compare", help="folder for compare.md, compare.json and compare.png")
    p.add_argument("--baseline", default=None, metavar="REPORT",
                   help="pair every other report with this one alone: one of the reports (its folder, or its model "
                        "name in compare.md), or another report folder, which then comes first")

    def run(args: argparse.Namespace) -> int:
        runs: dict[str, dict[str, Any]] = {}
        training: dict[str, dict[str, Any] | None] = {}
        folders: dict[str, Path] = {}
        for folder in [f for given in args.reports for f in _report_folders(Path(given))]:
            name, results = read_report(folder)
            name = name if name not in runs else str(folder)
            runs[name], training[name], folders[name] = results, read_training(folder), folder
        baseline = None if args.baseline is None else find_baseline(args.baseline, folders)
        if args.baseline is not None and baseline is None:
            baseline, results, trained = baseline_report(args.baseline, folders, "reports")
            runs, training = {baseline: results, **runs}, {baseline: trained, **training}
        if baseline is not None and len(runs) < 2:
            raise ValueError(f"--baseline {args.baseline}: the only report; give others to pair with it")
        paths = write_compare(runs, args.out, training, baseline)
        print(compare_table(runs, training, baseline), end="")
        print("wrote " + ", ".join(str(v) for v in paths.values()))
        return 0

    return report_user_errors(run, p.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
