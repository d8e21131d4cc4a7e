"""Markdown tables and matplotlib plots of evaluation summaries.

* The paper table (`paper_row` / `paper_table` / `plot_paper`): a row per model; columns
  JBB, SR and WJ harmful % as "reasoning / response of answered / response of all" (the response
  share over the generations that reached an answer, then over all), XSTest over-refusal %, AIME, MATH-500, GPQA
  and HumanEval pass@1 %, the mean harmful % (reasoning / response, over the safety benchmarks
  present) and the mean capability (pass@1 over the capability benchmarks present).  A mean over
  fewer than all its benchmarks says so ("12.0 (2/3)").  XSTest decided by string match is
  labelled in its cell ("4.0 (string match)").  Numbers are percentages with one decimal;
  "–" where the benchmark was not run.  The last column is the "no answer" share (cut off at the
  budget or reasoning never closed) of each paper benchmark, "JBB / SR / WJ / XSTest / AIME / ...".
* `write_single_report` -- one model's report.md: settings, the paper table, per-benchmark
  details (`details_table`: counts, 95% intervals, judge errors, XSTest classes and errors,
  generations cut off at the token budget, the judge used), the plot, contamination.
* `compare_dirs` -- several eval output dirs (their summary.json) in one paper table and plot
  (runs of only our own sets: the pooled headline table instead).
* A run of none of the paper's benchmarks (only our own jsonl sets) gets the headline table per
  set instead of an empty paper table.
* `benchmark_table` / `comparison_table` / `plot_comparison` -- the demo world's own tables
  (pooled headline shares, `ipo_jax.eval.metrics.HEADLINE`: harmful answer of answered and of all
  generations, each cell naming its denominator, and the no-answer share).

Shares print as "42% (21/50)" (with the denominator where it is not every generation:
"12% (8/66 answered)", "5% (8/120 all)") in the details so the count behind every number stays visible;
plots draw the 95% Wilson interval as error bars.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ipo_jax.eval.contamination import contamination_table
from ipo_jax.eval.metrics import HEADLINE
from ipo_jax.eval.xstest import CLASSES
from ipo_jax.io import atomic_write_json


def fmt_share(s: Mapping[str, Any] | None) -> str:
    """"42% (21/50)", with the share's denominator when it names one: "12% (8/66 answered)"."""
    if not s or s.get("value") is None:
        return "n/a"
    label = f" {s['denominator']}" if s.get("denominator") else ""
    return f"{s['value']:.0%} ({s['count']}/{s['n']}{label})"


def benchmark_table(summaries: Mapping[str, Mapping[str, Any]]) -> str:
    """One row per benchmark: items, generations, the headline shares, judge errors, truncated."""
    head = "| benchmark | items | generations | " + " | ".join(title for _, title, _ in HEADLINE) + " | judge errors | truncated |"
    lines = [head, "|" + "---|" * (len(HEADLINE) + 5)]
    for name, s in summaries.items():
        cells = " | ".join(fmt_share(s.get(key)) for key, _, _ in HEADLINE)
        lines.append(f"| {name} | {s['items']} | {s['generations']} | {cells} | {s['judge_errors']} | {s['truncated']} |")
    return "\n".join(lines)


def comparison_table(models: Mapping[str, Mapping[str, Any]], metrics: Sequence[str] | None = None) -> str:
    """One row per model of pooled headline shares ({model: {metric: share}}); arrows say which way is better."""
    keys = [(k, t, lower) for k, t, lower in HEADLINE if metrics is None or k in metrics]
    head = "| model | " + " | ".join(f"{t} {'↓' if lower else '↑'}" for _, t, lower in keys) + " |"
    lines = [head, "|" + "---|" * (len(keys) + 1)]
    for name, pooled in models.items():
        lines.append(f"| {name} | " + " | ".join(fmt_share(pooled.get(k)) for k, _, _ in keys) + " |")
    return "\n".join(lines)


def _bars(groups: Sequence[str], series: Mapping[str, Sequence[Mapping[str, Any] | None]], title: str, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt
    import numpy as np

    width = 0.8 / max(1, len(series))
    fig, ax = plt.subplots(figsize=(min(12.0, max(6.0, 0.45 * len(groups) * max(1, len(series)))), 4.2))
    x = np.arange(len(groups))
    for i, (name, values) in enumerate(series.items()):
        v = [s["value"] if s and s.get("value") is not None else np.nan for s in values]
        err = [[max(0.0, s["value"] - s["low"]) if s and s.get("value") is not None else 0 for s in values],
               [max(0.0, s["high"] - s["value"]) if s and s.get("value") is not None else 0 for s in values]]
        ax.bar(x + (i - (len(series) - 1) / 2) * width, v, width, yerr=err, capsize=2, label=name)
    ax.set_xticks(x, groups)
    ax.set_ylim(0, 1)
    ax.set_ylabel("share")
    ax.set_title(title)
    ax.legend(fontsize=8, ncols=min(4, len(series)))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_comparison(models: Mapping[str, Mapping[str, Any]], path: Path, title: str) -> Path:
    """Grouped bars: one group per headline metric, one bar per model."""
    keys = [(k, t) for k, t, _ in HEADLINE if any(k in pooled for pooled in models.values())]
    return _bars([t for _, t in keys], {name: [pooled.get(k) for k, _ in keys] for name, pooled in models.items()},
                 title, path)


# ----------------------------------------------------------------------------- the paper table

SAFETY_BENCHMARKS = (("jailbreakbench", "JBB"), ("strongreject", "SR"), ("wildjailbreak", "WJ"))
CAPABILITY_BENCHMARKS = (("aime", "AIME"), ("math500", "MATH-500"), ("gpqa", "GPQA"), ("humaneval", "HumanEval"))
# the "no answer" column: every paper benchmark, in table order
NO_ANSWER_BENCHMARKS = (*SAFETY_BENCHMARKS, ("xstest", "XSTest"), *CAPABILITY_BENCHMARKS)


def _value(s: Mapping[str, Any] | None) -> float | None:
    return None if not s else s.get("value")


def _mean(values: Sequence[float | None]) -> dict[str, Any]:
    present = [v for v in values if v is not None]
    return dict(value=sum(present) / len(present) if present else None, of=len(present), out_of=len(values))


def paper_row(summary: Mapping[str, Any]) -> dict[str, Any]:
    """One model's paper-table numbers (fractions, None where not run) from its summary's
    per-benchmark metrics: every cell is read off `summary["benchmarks"]`."""
    benchmarks = summary["benchmarks"]
    row: dict[str, Any] = {}
    for name, short in SAFETY_BENCHMARKS:
        s = benchmarks.get(name, {})
        row[f"{short} reasoning"] = _value(s.get("harmful_reasoning"))
        row[f"{short} response"] = _value(s.get("harmful_answer"))  # of the answered generations
        row[f"{short} response (all)"] = _value(s.get("harmful_answer_all"))  # of all generations
    xs = benchmarks.get("xstest", {})
    row["XSTest over-refusal"] = _value(xs.get("over_refusal"))
    row["XSTest judge"] = xs.get("xstest_method")
    for name, short in CAPABILITY_BENCHMARKS:
        row[short] = _value(benchmarks.get(name, {}).get("pass@1"))
    for name, short in NO_ANSWER_BENCHMARKS:
        row[f"{short} no answer"] = _value(benchmarks.get(name, {}).get("no_answer"))
    row["mean harmful reasoning"] = _mean([row[f"{s} reasoning"] for _, s in SAFETY_BENCHMARKS])
    row["mean harmful response"] = _mean([row[f"{s} response"] for _, s in SAFETY_BENCHMARKS])
    row["mean harmful response (all)"] = _mean([row[f"{s} response (all)"] for _, s in SAFETY_BENCHMARKS])
    row["mean capability"] = _mean([row[s] for _, s in CAPABILITY_BENCHMARKS])
    return row


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def _pct_mean(mean: Mapping[str, Any] | None) -> str:
    if not mean:  # a summary written before this column existed
        return "–"
    text = _pct(mean["value"])
    return text if mean["value"] is None or mean["of"] == mean["out_of"] else f"{text} ({mean['of']}/{mean['out_of']})"


_HARMFUL = "harmful % (reasoning / response of answered / response of all)"
PAPER_HEADER = (f"| model | JBB {_HARMFUL} ↓ | SR {_HARMFUL} ↓ | WJ {_HARMFUL} ↓ | XSTest over-refusal % ↓ | "
                "AIME pass@1 % ↑ | MATH-500 pass@1 % ↑ | GPQA pass@1 % ↑ | HumanEval pass@1 % ↑ | "
                f"mean {_HARMFUL} ↓ | mean capability % ↑ | "
                f"no answer % ({' / '.join(s for _, s in NO_ANSWER_BENCHMARKS)}) |")


def paper_table(models: Mapping[str, Mapping[str, Any]]) -> str:
    """The paper-style summary table, a row per model ({name: summary}; module docstring).  Each safety
    cell is "reasoning / response of the answered generations / response of all generations"; the
    last column is each benchmark's share of generations without an answer (cut off or reasoning
    never closed).  A summary written before a column existed shows "–" there."""
    lines = [PAPER_HEADER, "|" + "---|" * 12]
    for name, summary in models.items():
        row = summary.get("paper") or paper_row(summary)
        cells = [f"{_pct(row.get(f'{s} reasoning'))} / {_pct(row.get(f'{s} response'))} / "
                 f"{_pct(row.get(f'{s} response (all)'))}" for _, s in SAFETY_BENCHMARKS]
        xstest = _pct(row["XSTest over-refusal"])
        if row["XSTest over-refusal"] is not None and row.get("XSTest judge") == "string_match":
            xstest += " (string match)"
        cells.append(xstest)
        cells += [_pct(row[s]) for _, s in CAPABILITY_BENCHMARKS]
        cells.append(f"{_pct_mean(row['mean harmful reasoning'])} / {_pct_mean(row['mean harmful response'])} / "
                     f"{_pct_mean(row.get('mean harmful response (all)'))}")
        cells.append(_pct_mean(row["mean capability"]))
        cells.append(" / ".join(_pct(row.get(f"{s} no answer")) for _, s in NO_ANSWER_BENCHMARKS))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _paper_series(summary: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any] | None]]:
    """(bar label, share-like dict with value/low/high) per paper column, for the plot."""
    b = summary["benchmarks"]
    bars: list[tuple[str, Mapping[str, Any] | None]] = []
    for name, short in SAFETY_BENCHMARKS:
        bars += [(f"{short}\nreasoning", b.get(name, {}).get("harmful_reasoning")),
                 (f"{short}\nresponse", b.get(name, {}).get("harmful_answer"))]
    xs = b.get("xstest", {})
    bars.append(("XSTest (string match)\nover-refusal" if xs.get("xstest_method") == "string_match"
                 else "XSTest\nover-refusal", xs.get("over_refusal")))
    bars += [(f"{short}\npass@1", b.get(name, {}).get("pass@1")) for name, short in CAPABILITY_BENCHMARKS]
    return bars


def plot_paper(models: Mapping[str, Mapping[str, Any]], path: Path, title: str) -> Path:
    """Grouped bars of the paper columns that any model has, one bar per model (95% intervals)."""
    series = {name: _paper_series(summary) for name, summary in models.items()}
    labels = [label for label, _ in next(iter(series.values()))]
    keep = [k for k, _ in enumerate(labels) if any(_value(bars[k][1]) is not None for bars in series.values())]
    if not keep:
        keep = list(range(len(labels)))
    return _bars([labels[k] for k in keep], {name: [bars[k][1] for k in keep] for name, bars in series.items()},
                 title, path)


def _judge_text(summary: Mapping[str, Any]) -> str:
    settings = summary.get("judge_settings") or {}
    name = settings.get("name") if isinstance(settings, Mapping) else None
    return f"{summary.get('judge', '?')}" + (f" ({name})" if name else "")


def details_table(summary: Mapping[str, Any]) -> str:
    """Per benchmark: items, samples, budget, generations, the main metric with its 95% interval and
    count, judge / classifier errors, cut-off generations, no final answer, judge used."""
    settings = summary.get("benchmark_settings") or {}
    lines = ["| benchmark | items | samples/prompt | max new tokens | generations | metric | value [95% CI] (count/n) "
             "| judge errors | cut off at budget | no final answer | judged by |", "|" + "---|" * 11]
    for name, s in summary["benchmarks"].items():
        bs = settings.get(name, {})
        metrics = []
        if "harmful_reasoning" in s:
            metrics += [("harmful reasoning", s["harmful_reasoning"]), ("harmful response (of answered)", s["harmful_answer"])]
            if "harmful_answer_all" in s:
                metrics.append(("harmful response (of all)", s["harmful_answer_all"]))
            if "unsafe_refusal" not in s:  # XSTest's unsafe prompts have the classifier's refusal below
                metrics.append(("refusal (harmful; string match)", s["refusal"]))
        if "over_refusal" in s:
            metrics.append(("over-refusal (safe prompts)", s["over_refusal"]))
        if "unsafe_refusal" in s:
            metrics.append(("refusal (unsafe prompts)", s["unsafe_refusal"]))
        if "pass@1" in s:
            metrics += [("pass@1 (mean over items)", s["pass@1"]), ("accuracy (all samples)", s["accuracy"])]
        if "no_answer" in s:
            metrics.append(("no answer (cut off / reasoning unclosed)", s["no_answer"]))
        judged_by = []
        if "harmful_reasoning" in s or "over_refusal" in s:
            judged_by.append(f"safety: {_judge_text(summary)}")
        if "xstest_judge" in s:
            judged_by.append(f"XSTest classes: {s['xstest_judge']} ({s.get('xstest_errors', 0)} errors)")
        if "pass@1" in s:
            judged_by.append("scorer: " + ("sandboxed tests" if s.get("code_status") else "answer check"))
        for k, (title, m) in enumerate(metrics or [("-", None)]):
            if not m or m.get("value") is None:
                value = "n/a"
            elif "items" in m:  # pass@1: a mean of per-item estimates (its interval is the accuracy's, below)
                samples = m["samples_min"] if m["samples_min"] == m["samples_max"] else f"{m['samples_min']}-{m['samples_max']}"
                value = f"{100 * m['value']:.1f}% ({m['items']} items x {samples} samples)"
            else:
                label = f" {m['denominator']}" if m.get("denominator") else ""
                value = f"{100 * m['value']:.1f}% [{100 * m['low']:.1f}, {100 * m['high']:.1f}] ({m['count']}/{m['n']}{label})"
            head = (f"| {name} | {s['items']} | {bs.get('samples', '')} | {bs.get('max_new_tokens', '')} | "
                    f"{s['generations']} |") if k == 0 else "| | | | | |"
            tail = (f" {s['judge_errors']} | {s['truncated']} | {s.get('no_final_answer', '')} | {'; '.join(judged_by)} |"
                    if k == 0 else " | | | |")
            lines.append(f"{head} {title} | {value} |{tail}")
    return "\n".join(lines)


def xstest_classes_table(summary: Mapping[str, Any]) -> str | None:
    s = summary["benchmarks"].get("xstest")
    if not s or "xstest_classes" not in s:
        return None

    lines = ["| XSTest prompts | " + " | ".join(CLASSES) + " | errors |", "|" + "---|" * (len(CLASSES) + 2)]
    for kind, title in (("benign", "safe"), ("harmful", "unsafe")):
        counts = s["xstest_classes"].get(kind)
        if counts is not None:
            lines.append(f"| {title} | " + " | ".join(str(counts[c]) for c in CLASSES) + f" | {counts['error']} |")
    return "\n".join(lines)


def files_table(summary: Mapping[str, Any]) -> str | None:
    """Every file (or dataset split) each benchmark read, its rows and the items it gave to the run
    (after sampling and limit); None for a summary that does not record them."""
    files = summary.get("benchmark_files")
    if not files:
        return None
    lines = ["| benchmark | file | rows | items used |", "|---|---|---|---|"]
    for label, read in files.items():
        for k, f in enumerate(read):
            lines.append(f"| {label if k == 0 else ''} | `{f['file']}` | {f['rows']} | {f['items']} |")
    return "\n".join(lines)


def aime_note(summary: Mapping[str, Any]) -> str | None:
    """Which AIME files (and so years) the AIME number covers, e.g. "AIME covers aime_2024_problems.parquet
    (30 items; config.aime.years '2024')"; None when AIME was not run or its files are not recorded."""
    read = (summary.get("benchmark_files") or {}).get("aime")
    if not read:
        return None
    years = summary.get("aime_years", "")
    return ("AIME covers " + ", ".join(f"{Path(f['file']).name} ({f['items']} items)" for f in read)
            + f" (config.aime.years {years!r}" + (", every aime* file found" if not years else "") + ").")


def has_paper_benchmarks(summary: Mapping[str, Any]) -> bool:
    names = {n for n, _ in SAFETY_BENCHMARKS} | {n for n, _ in CAPABILITY_BENCHMARKS} | {"xstest"}
    return bool(names & set(summary["benchmarks"]))


def write_single_report(out: Path, summary: Mapping[str, Any], contamination_results: Sequence) -> Path:

    label = summary["label"]
    benchmarks = summary["benchmarks"]
    paper = has_paper_benchmarks(summary)
    if paper:
        plot_paper({label: summary}, out / "metrics.png", f"{label}")
        overview = [paper_table({label: summary}), "",
                    "Harmful % is the share of harmful prompts' generations whose reasoning / response the judge labels "
                    "unsafe (judge errors excluded); the response share is given twice: of the generations that reached an "
                    "answer, and of all generations (one without an answer counts as not harmful there). No answer % is "
                    "each benchmark's share of generations cut off at the budget or never closing their reasoning. XSTest over-refusal is the share of its safe prompts' generations "
                    "fully or partly refused (classifier errors excluded); pass@1 is the unbiased estimator over each "
                    "prompt's samples, averaged over prompts. Means are over the benchmarks present."]
    else:  # only our own sets (e.g. the demo world's): their headline shares, one row per set
        keys = [(k, t) for k, t, _ in HEADLINE if any(k in s for s in benchmarks.values())]
        _bars(list(benchmarks), {t: [s.get(k) for s in benchmarks.values()] for k, t in keys}, f"{label}",
              out / "metrics.png")
        overview = [benchmark_table(benchmarks), "",
                    "None of the paper's benchmarks was run, so there is no paper table. Shares are of generations "
                    "(count/total, the denominator named where it is not every generation: 'answered' counts only "
                    "generations that reached an answer); harmful shares are of harmful prompts, judge errors excluded; "
                    "over-refusal is the refusal share on benign prompts; no answer is the share cut off at the budget or "
                    "never closing the reasoning."]
    sampling = summary["sampling"]
    xs = summary["benchmarks"].get("xstest", {})
    notes = []
    if xs.get("xstest_method") == "string_match":
        notes.append("XSTest was decided by STRING MATCH (refusal phrases at the start of the answer; no partial "
                     "refusals), not by the three-class LLM judge: 'XSTest (string match)'.")
    truncated = {name: s["truncated"] for name, s in summary["benchmarks"].items() if s["truncated"]}
    if truncated:
        notes.append("Generations cut off at their token budget (finish reason length): "
                     + ", ".join(f"{name} {n}" for name, n in truncated.items()) + ".")
    classes = xstest_classes_table(summary)
    aime = aime_note(summary)
    if aime:
        notes.append(aime)
    files = files_table(summary)
    text = [
        f"# Evaluation: {label}",
        "",
        f"Model `{summary['model']}`; safety judge {_judge_text(summary)}; sampling temperature {sampling['temperature']}, "
        f"top-p {sampling['top_p']}, top-k {sampling['top_k']}, at most {sampling['max_new_tokens']} new tokens unless a "
        f"benchmark's budget says otherwise (details); {summary['samples_per_prompt']} sample(s) per prompt unless a "
        f"benchmark says otherwise; {summary.get('shards', 1)} part(s); {summary['seconds']} s.",
        "",
        "## Summary",
        "",
        *overview,
        *([""] + notes if notes else []),
        "",
        "![metrics](metrics.png)",
        "",
        "## Per benchmark",
        "",
        details_table(summary),
        *(["", "XSTest classes:", "", classes] if classes else []),
        *(["", "## Benchmark files", "", "Every file each benchmark read (rows in the file, items this run used):", "",
           files] if files else []),
        "",
        "## Contamination against the training prompts",
        "",
        contamination_table(contamination_results) if contamination_results else "No training prompts given (config.train_prompts); not checked.",
        "",
        "Raw generations with verdicts, classes and scores: `generations.jsonl`.",
    ]
    (out / "report.md").write_text("\n".join(text) + "\n")
    return out / "report.md"


def compare_dirs(dirs: Sequence[str | Path], out: Path) -> str:
    """One paper table and plot of several eval output dirs (each with its summary.json) in
    <out>/report.md, comparison.png and comparison.json; returns the table.  A missing or
    unreadable summary is a ValueError naming it."""
    import json

    models: dict[str, Mapping[str, Any]] = {}
    for d in dirs:
        path = Path(d) / "summary.json"
        try:
            summary = json.loads(path.read_text())
            label = summary["label"]
            summary["benchmarks"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ValueError(f"config.compare: {path} is not an eval summary ({type(e).__name__}: {e})") from None
        name, k = label, 2
        while name in models:  # two runs of one model: keep both rows
            name, k = f"{label} ({k})", k + 1
        models[name] = summary
    if not models:
        raise ValueError("config.compare is empty: give eval output dirs, comma-separated")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if any(has_paper_benchmarks(s) for s in models.values()):
        table = paper_table(models)
        plot_paper(models, out / "comparison.png", "evaluation")
    else:  # only our own sets: the pooled headline shares (the demo's table)
        pooled = {name: s.get("pooled") or {} for name, s in models.items()}
        table = comparison_table(pooled)
        plot_comparison(pooled, out / "comparison.png", "evaluation")

    atomic_write_json(out / "comparison.json", {name: dict(dir=str(d), paper=s.get("paper") or paper_row(s))
                                                for (name, s), d in zip(models.items(), dirs)})
    text = ["# Evaluation: comparison", "", table, "", "![comparison](comparison.png)", "", "## Runs", ""]
    text += [f"- {name}: `{d}` (model `{s.get('model')}`, judge {_judge_text(s)})" + (f"; {aime_note(s)}" if aime_note(s) else "")
             for (name, s), d in zip(models.items(), dirs)]
    (out / "report.md").write_text("\n".join(text) + "\n")
    return table
