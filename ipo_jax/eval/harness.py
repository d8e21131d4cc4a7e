"""The `eval` stage: generate with our sampler, judge reasoning and answer separately, score,
check contamination, and write the raw rows, the summary and the report.

    ipo-jax eval --config configs/eval.py --config.model.init=hf:/models/my-ipo-model \\
        --config.benchmarks=strongreject=data/strongreject.csv,xstest=data/xstest_prompts.csv

Outputs under ``config.out``:
  generations.jsonl   one row per generation: item, completion, reasoning, answer, verdicts,
                      refusal, predicted/reference/correct for math (`metrics.score_generation`)
  summary.json        metrics per benchmark and pooled, contamination, settings
  report.md + *.png   the tables and plots (`report.py`)
Files are written atomically (`ipo_jax.io`), so a killed run never leaves a half-written file
that reads as complete.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ipo_jax.eval.items import EvalItem
from ipo_jax.eval.metrics import headline, score_generation, summarize_by_benchmark
from ipo_jax.io import atomic_write_json, atomic_write_jsonl
from ipo_jax.judging import Judge, judge_trajectories
from ipo_jax.rollout import Policy, split_completion


class EvalConfigError(ValueError):
    """A bad `eval` setting; the message names the field and what was expected."""


def parse_benchmarks(spec: str) -> list[tuple[str, str]]:
    """'name=path,name=path' -> [(name, path)].  The same name may appear twice (two files)."""
    out = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, sep, path = part.partition("=")
        if not sep or not name.strip() or not path.strip():
            raise EvalConfigError(f"config.benchmarks entry {part!r}: expected name=path (e.g. xstest=data/xstest_prompts.csv)")
        out.append((name.strip(), path.strip()))
    if not out:
        raise EvalConfigError("config.benchmarks is empty: give name=path[,name=path...]")
    return out


def generate_and_score(policy: Policy, judge: Judge, items: Sequence[EvalItem], *, samples_per_prompt: int = 1,
                       seed: int = 0, batch: int = 64, desc: str = "eval") -> list[dict[str, Any]]:
    """Sample `samples_per_prompt` completions per item, judge the harmful/benign ones (each chunk
    of `batch` generations in one batched judge call), score all."""
    jobs = [(item, s) for item in items for s in range(samples_per_prompt)]
    rows = []
    with tqdm(total=len(jobs), desc=desc, unit="gen", disable=None) as bar:
        for start in range(0, len(jobs), batch):
            chunk = jobs[start : start + batch]
            # a seed per chunk: results do not depend on how many chunks ran before in this process
            completions = policy.complete([([{"role": "user", "content": item.prompt}], "") for item, _ in chunk],
                                          seed=seed * 1_000_003 + start)
            judged_at = [k for k, (item, _) in enumerate(chunk) if item.kind != "math"]  # math is not judged
            judged = judge_trajectories(judge, [(chunk[k][0].prompt, *split_completion(completions[k].text)[:2])
                                                for k in judged_at])
            verdicts_at = dict(zip(judged_at, judged))
            for k, ((item, sample), completion) in enumerate(zip(chunk, completions)):
                rows.append(score_generation(item, sample, completion.text, completion.finish_reason, verdicts_at.get(k)))
            bar.update(len(chunk))
    return rows


def _train_prompts(files: str) -> list[str]:
    from ipo_jax.data.pairs import prompt_messages
    from ipo_jax.data.records import read_jsonl_records

    prompts = []
    for path in filter(None, (p.strip() for p in files.split(","))):
        for record in read_jsonl_records(path, {"prompt": (str, list)}, kind="training prompt"):
            prompts.append("\n".join(m["content"] for m in prompt_messages(record) if m["role"] == "user"))
    return prompts


def load_items(config) -> dict[str, list[EvalItem]]:
    """{benchmark label: items} from config.benchmarks, each file's items capped at config.limit."""
    from ipo_jax.eval.loaders import load_benchmark

    groups: dict[str, list[EvalItem]] = {}
    for name, path in parse_benchmarks(config.benchmarks):
        items = load_benchmark(name, path, limit=config.limit or None)
        # our own jsonl files may mix kinds; label them by file so the report keeps them apart
        label = Path(path).stem if name == "jsonl" else name
        groups.setdefault(label, []).extend(dataclasses.replace(i, benchmark=label) for i in items)
    return groups


def contamination(groups: dict[str, list[EvalItem]], train_files: str, n: int) -> list:
    from ipo_jax.eval.contamination import check_contamination

    if not train_files:
        return []
    train = _train_prompts(train_files)
    return [check_contamination(train, items, n=n) for items in groups.values() if items]


def write_outputs(out: Path, rows: list[dict], meta: dict[str, Any], contamination_results: Sequence) -> dict[str, Any]:
    """generations.jsonl, summary.json, report.md and plots for one model's rows."""
    from ipo_jax.eval.report import write_single_report

    out.mkdir(parents=True, exist_ok=True)
    atomic_write_jsonl(out / "generations.jsonl", rows)
    summaries = summarize_by_benchmark(rows)
    summary = dict(meta, benchmarks=summaries, pooled=headline(summaries),
                   contamination=[dataclasses.asdict(c) | {"share": c.share} for c in contamination_results])
    atomic_write_json(out / "summary.json", summary)
    write_single_report(out, summary, contamination_results)
    return summary


def run_eval(config) -> int:
    """The CLI stage: config -> items, policy, judge -> generations + summary + report."""
    from ipo_jax.judging.build import build_judges, check_judge_fits
    from ipo_jax.rollout import build_policy

    if config.samples_per_prompt < 1:
        raise EvalConfigError(f"config.samples_per_prompt is {config.samples_per_prompt}; expected >= 1")
    groups = load_items(config)
    found = contamination(groups, config.train_prompts, config.ngram)
    for result in found:
        if result.exact or result.ngram:
            print(f"warning: {result.benchmark}: {len(result.exact)} exact and {len(result.ngram)} n-gram overlaps "
                  f"with the training prompts (ids in summary.json); numbers on these prompts are not held out")
    judged = [item.prompt for items in groups.values() for item in items if item.kind != "math"]
    check_judge_fits(config, judged, f"benchmarks {config.benchmarks}", roles=("judge",))  # before any model loads
    judge, _ = build_judges(config)
    policy = build_policy(config)
    start = time.time()
    rows = []
    for label, items in groups.items():
        rows += generate_and_score(policy, judge, items, samples_per_prompt=config.samples_per_prompt,
                                   seed=config.seed, batch=config.sampler.batch_size * 4, desc=label)
    meta = dict(model=config.model.init, label=config.label or config.model.init, judge=config.judge.backend,
                sampling=dataclasses.asdict(policy.sampling), samples_per_prompt=config.samples_per_prompt,
                seconds=round(time.time() - start, 1))
    out = Path(config.out)
    summary = write_outputs(out, rows, meta, found)
    from ipo_jax.eval.report import benchmark_table

    print(benchmark_table(summary["benchmarks"]))
    print(f"report: {out / 'report.md'}; generations: {out / 'generations.jsonl'}")
    return 0
