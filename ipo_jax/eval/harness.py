"""The `eval` stage: generate with our sampler, judge reasoning and answer separately, classify
XSTest answers, score math / multiple-choice / code answers, check contamination, and write the
raw rows, the summary and the report; split a run into parts and merge them; compare runs.

    ipo-jax eval --config configs/eval_paper.py --config.model.init=hf:/models/my-ipo-model \\
        --config.judge.base_url=http://localhost:8000/v1 --config.judge.model=judge

One generation, in order: the user message is `scoring.format_prompt(item)` (the models'
recommended instruction for math, the options for GPQA, the function for HumanEval; safety
prompts unchanged); the policy samples with the benchmark's token budget
(``max_new_tokens_per_benchmark``, else ``sampling.max_new_tokens``) and n samples per prompt
(``samples_per_benchmark``, else ``samples_per_prompt``); harmful and benign items are judged by
the safety judge (reasoning and answer apart, one batched call per chunk); XSTest items are also
classified into its three classes (`ipo_jax.eval.xstest`, LLM or string match); math, choice and
code items are scored by `scoring.score_answers` (code in parallel sandboxed subprocesses).
Generations cut off at the budget keep finish_reason "length" and are counted per benchmark.

Splitting (``num_shards``): part i of n evaluates the items at positions i, i+n, i+2n, ... of
each benchmark and writes ``<out>/parts/part-<i>-of-<n>/`` (generations.jsonl, then part.json,
which marks the part complete).  When a part finds all n parts complete it merges them into
``<out>`` (rows ordered by benchmark, item position and sample: the order of a single run), so
the last part to finish writes the one summary and report; ``merge=True`` merges by hand.  Parts
must come from the same settings (model, sampling, judge, benchmarks, budgets, samples): the
merge compares them and refuses a mix.  ``num_shards = 0`` takes n and i from JAX (one part per
process); explicit ``shard`` / ``num_shards`` serve independent single-host runs (each host its
own mesh over its own devices).

Outputs under ``config.out``:
  generations.jsonl   one row per generation (`metrics.score_generation`)
  summary.json        settings, metrics per benchmark and pooled, the paper-table row, contamination
  report.md + *.png   the paper table, per-benchmark details and plots (`report.py`)
Files are written atomically (`ipo_jax.io`), so a killed run never leaves a half-written file
that reads as complete.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import logging
import time
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
from tqdm.auto import tqdm

from ipo_jax.data.pairs import prompt_messages
from ipo_jax.data.records import read_jsonl_records
from ipo_jax.distributed import is_main_process, shares_joined
from ipo_jax.eval.config import check_per_benchmark_names, parse_per_benchmark
from ipo_jax.eval.contamination import ContaminationResult, check_contamination
from ipo_jax.eval.items import EvalItem
from ipo_jax.eval.loaders import BENCHMARKS, load_benchmark_files
from ipo_jax.eval.metrics import (
    CAPABILITY_KINDS,
    JUDGED_KINDS,
    headline,
    score_generation,
    scored_text,
    summarize_by_benchmark,
)
from ipo_jax.eval.report import (
    benchmark_table,
    compare_dirs,
    details_table,
    has_paper_benchmarks,
    paper_row,
    paper_table,
    write_single_report,
)
from ipo_jax.eval.scoring import format_prompt, score_answers
from ipo_jax.eval.xstest import JUDGES as XSTEST_JUDGES
from ipo_jax.eval.xstest import build_xstest_judge
from ipo_jax.io import atomic_write_json, atomic_write_jsonl
from ipo_jax.judging import Judge, judge_trajectories
from ipo_jax.judging.build import build_judges, check_judge_fits
from ipo_jax.judging.guard import ErrorBudget, prepare_judges
from ipo_jax.provenance import prompts_sha256, record_provenance, stage_provenance
from ipo_jax.rollout import Policy, build_policy, split_completion
from ipo_jax.sampling import row_seed

logger = logging.getLogger(__name__)


class EvalConfigError(ValueError):
    """A bad `eval` setting; the message names the field and what was expected."""


def parse_benchmarks(spec: str) -> list[tuple[str, str]]:
    """'name=path,name=path' -> [(name, path)].  The same name may appear twice (two files); an
    unknown name is an error listing the known ones."""
    out = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, sep, path = part.partition("=")
        if not sep or not name.strip() or not path.strip():
            raise EvalConfigError(f"config.benchmarks entry {part!r}: expected name=path (e.g. xstest=data/xstest_prompts.csv)")
        if name.strip() not in BENCHMARKS:
            raise EvalConfigError(f"config.benchmarks entry {part!r}: unknown benchmark {name.strip()!r}; expected one "
                                  f"of {', '.join(BENCHMARKS)}")
        out.append((name.strip(), path.strip()))
    if not out:
        raise EvalConfigError("config.benchmarks is empty: give name=path[,name=path...]")
    return out


# ----------------------------------------------------------------------------- one model, one set


def with_budget(policy: Policy, max_new_tokens: int | None) -> Policy:
    """`policy` sampling at most `max_new_tokens` new tokens (a shallow copy; the sampler and
    model are shared)."""
    if max_new_tokens is None or policy.sampling.max_new_tokens == max_new_tokens:
        return policy
    budgeted = copy.copy(policy)
    budgeted.sampling = dataclasses.replace(policy.sampling, max_new_tokens=max_new_tokens)
    return budgeted


def generation_seed(seed: int, benchmark: str, item_id: str, sample: int) -> int:
    """The sampling seed of one generation (sample `sample` of item `item_id`): it depends on
    nothing else, so a run split across hosts, chunked differently or resumed with other batch
    sizes samples every generation exactly as a single run does."""
    return row_seed(seed, zlib.crc32(f"{benchmark}\0{item_id}\0{sample}".encode("utf-8")))


def chunk_generations(config) -> int:
    """Generations per chunk of `generate_and_score` (sampled, then judged in one batched call):
    four of the sampler's batches."""
    return config.sampler.batch_size * 4


def generate_and_score(policy: Policy, judge: Judge, items: Sequence[EvalItem], *, samples_per_prompt: int = 1,
                       seed: int = 0, batch: int = 64, desc: str = "eval", max_new_tokens: int | None = None,
                       xstest_judge=None, indices: Sequence[int] | None = None, code_workers: int = 4,
                       code_timeout: float = 10.0, judge_budget=None,
                       provenance: dict[str, Any] | None = None, **sandbox_limits) -> list[dict[str, Any]]:
    """Sample `samples_per_prompt` completions per item with at most `max_new_tokens` new tokens
    (None: the policy's setting), then per chunk of `batch` generations: judge the harmful /
    benign ones (one batched judge call), classify them with `xstest_judge` when given, score
    the math / choice / code ones (`scoring.score_answers`).  `indices` are the items' positions
    in their benchmark (default 0, 1, ...): rows carry them so split runs merge in order.
    `judge_budget` (`ipo_jax.judging.guard.ErrorBudget`): each chunk's judge failures are checked
    after its judge call (over ``max_error_share``: `JudgeFailedError`); `provenance`: each row
    carries it (``ipo_jax.provenance.record_provenance``)."""
    positions = list(indices) if indices is not None else list(range(len(items)))
    if len(positions) != len(items):
        raise ValueError(f"generate_and_score: {len(positions)} indices for {len(items)} items")
    policy = with_budget(policy, max_new_tokens)
    jobs = [(pos, item, s) for pos, item in zip(positions, items) for s in range(samples_per_prompt)]
    rows = []
    with tqdm(total=len(jobs), desc=desc, unit="gen", disable=None) as bar:
        for start in range(0, len(jobs), batch):
            chunk = jobs[start : start + batch]
            completions = policy.complete([([{"role": "user", "content": format_prompt(item)}], "") for _, item, _ in chunk],
                                          seed=seed, row_seeds=[generation_seed(seed, item.benchmark, item.id, s)
                                                                for _, item, s in chunk])
            parts = [split_completion(c.text) for c in completions]
            judged_at = [k for k, (_, item, _) in enumerate(chunk) if item.kind in JUDGED_KINDS]
            if judge_budget is not None:
                judge_budget.start_chunk(f"{desc} generations {start}-{start + len(chunk) - 1}")
            judged = judge_trajectories(judge, [(chunk[k][1].prompt, *parts[k][:2]) for k in judged_at])
            if judge_budget is not None:
                judge_budget.end_chunk()
            verdicts_at = dict(zip(judged_at, judged))
            classes_at = {}
            if xstest_judge is not None and judged_at:
                classes = xstest_judge.classify([(chunk[k][1].prompt, parts[k][1]) for k in judged_at])
                classes_at = dict(zip(judged_at, classes))
            scored_at = [k for k, (_, item, _) in enumerate(chunk) if item.kind in CAPABILITY_KINDS]
            scores = score_answers([(chunk[k][1], scored_text(completions[k].text)[0]) for k in scored_at],
                                   workers=code_workers, timeout=code_timeout, **sandbox_limits) if scored_at else []
            scores_at = dict(zip(scored_at, scores))
            for k, ((pos, item, sample), completion) in enumerate(zip(chunk, completions)):
                rows.append(score_generation(item, sample, completion.text, completion.finish_reason, verdicts_at.get(k),
                                             score=scores_at.get(k), xstest=classes_at.get(k), index=pos))
                if provenance is not None:
                    rows[-1]["provenance"] = provenance
            bar.update(len(chunk))
    return rows


# ----------------------------------------------------------------------------- items and settings


def _train_prompts(files: str) -> list[str]:
    prompts = []
    for path in filter(None, (p.strip() for p in files.split(","))):
        for record in read_jsonl_records(path, {"prompt": (str, list)}, kind="training prompt"):
            prompts.append("\n".join(m["content"] for m in prompt_messages(record) if m["role"] == "user"))
    return prompts


def _loader_options(config, name: str) -> dict[str, Any]:
    if name == "wildjailbreak":
        sample = config.get("wildjailbreak", {}).get("sample", 0)
        return dict(sample=sample or None, seed=config.get("wildjailbreak", {}).get("seed", 0))
    if name == "gpqa":
        return dict(seed=config.get("gpqa", {}).get("seed", 0))
    if name == "aime":
        return dict(years=config.get("aime", {}).get("years", ""))
    return {}


def load_items(config, files: dict[str, list[dict[str, Any]]] | None = None) -> dict[str, list[EvalItem]]:
    """{benchmark label: items} from config.benchmarks, each file's items capped at config.limit
    (WildJailbreak: a seeded sample of config.wildjailbreak.sample; GPQA: options shuffled with
    config.gpqa.seed; AIME: the files of config.aime.years).  `files`, when given, is filled with
    {label: [{"file", "rows", "items"}]}: every file each benchmark read and the items it gave."""
    groups: dict[str, list[EvalItem]] = {}
    for name, path in parse_benchmarks(config.benchmarks):
        items, read = load_benchmark_files(name, path, limit=config.limit or None, **_loader_options(config, name))
        # our own jsonl files may mix kinds; label them by file so the report keeps them apart
        label = Path(path).stem if name == "jsonl" else name
        groups.setdefault(label, []).extend(dataclasses.replace(i, benchmark=label) for i in items)
        if files is not None:
            files.setdefault(label, []).extend(read)
    return groups


@dataclasses.dataclass(frozen=True)
class BenchmarkSettings:
    """What one benchmark is run with."""

    samples: int
    max_new_tokens: int
    items: int

    def to_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


def benchmark_settings(config, groups: dict[str, list[EvalItem]]) -> dict[str, BenchmarkSettings]:
    """{label: samples per prompt, token budget, items} from the global and per-benchmark settings
    (names checked against the run's benchmarks)."""
    samples = parse_per_benchmark(config.samples_per_benchmark, "samples_per_benchmark")
    budgets = parse_per_benchmark(config.max_new_tokens_per_benchmark, "max_new_tokens_per_benchmark")
    check_per_benchmark_names(samples, "samples_per_benchmark", list(groups))
    check_per_benchmark_names(budgets, "max_new_tokens_per_benchmark", list(groups))
    return {label: BenchmarkSettings(samples.get(label, config.samples_per_prompt),
                                     budgets.get(label, config.sampling.max_new_tokens), len(items))
            for label, items in groups.items()}


def contamination(groups: dict[str, list[EvalItem]], train_files: str, n: int) -> list:
    if not train_files:
        return []
    train = _train_prompts(train_files)
    return [check_contamination(train, items, n=n) for items in groups.values() if items]


def _contamination_dicts(results: Sequence) -> list[dict[str, Any]]:
    return [dataclasses.asdict(c) | {"share": c.share} for c in results]


def _contamination_results(dicts: Sequence[dict[str, Any]]) -> list:
    return [ContaminationResult(d["benchmark"], d["n_items"], tuple(d["exact"]), tuple(d["ngram"])) for d in dicts]


# ----------------------------------------------------------------------------- outputs


def write_outputs(out: Path, rows: list[dict], meta: dict[str, Any], contamination_results: Sequence) -> dict[str, Any]:
    """generations.jsonl, summary.json, report.md and plots for one model's rows."""
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_jsonl(out / "generations.jsonl", rows)
    summaries = summarize_by_benchmark(rows)
    summary = dict(meta, benchmarks=summaries, pooled=headline(summaries),
                   contamination=_contamination_dicts(contamination_results))
    summary["paper"] = paper_row(summary)
    atomic_write_json(out / "summary.json", summary)
    if meta.get("provenance") is not None:  # what produced the rows (ipo_jax/provenance.py)
        atomic_write_json(out / "run.json", dict(stage="eval", provenance=meta["provenance"],
                                                 **{k: v for k, v in meta.items() if k != "provenance"}))
    write_single_report(out, summary, contamination_results)
    return summary


# ----------------------------------------------------------------------------- split runs


PARTS_DIR = "parts"
PART_MARKER = "part.json"  # written after the part's generations: its presence means the part is complete
_NOT_COMPARED = ("seconds", "shard")  # meta keys that may differ between the parts of one run


def resolve_shard(config) -> tuple[int, int]:
    """(shard, num_shards): explicit settings, or this JAX process among all (module docstring)."""
    n, i = int(config.get("num_shards", 0) or 0), int(config.get("shard", -1))
    if n <= 0:
        if i not in (-1,):
            raise EvalConfigError(f"config.shard is {i} but config.num_shards is 0; give both (shard < num_shards) "
                                  "or neither (one part per JAX process)")
        return jax.process_index(), jax.process_count()
    if not 0 <= i < n:
        raise EvalConfigError(f"config.shard is {i}; expected 0 <= shard < num_shards ({n})")
    return i, n


def take_shard(groups: dict[str, list[EvalItem]], shard: int, num_shards: int) -> dict[str, list[tuple[int, EvalItem]]]:
    """{label: [(position, item)]}: every num_shards-th item of each benchmark, from `shard`."""
    return {label: [(k, item) for k, item in enumerate(items) if k % num_shards == shard] for label, items in groups.items()}


def part_dir(out: Path, shard: int, num_shards: int) -> Path:
    return Path(out) / PARTS_DIR / f"part-{shard:05d}-of-{num_shards:05d}"


def write_part(out: Path, shard: int, num_shards: int, rows: list[dict], meta: dict[str, Any],
               contamination_results: Sequence) -> Path:
    """One part's generations, then its marker (module docstring)."""
    d = part_dir(out, shard, num_shards)
    d.mkdir(parents=True, exist_ok=True)
    atomic_write_jsonl(d / "generations.jsonl", rows)
    atomic_write_json(d / PART_MARKER, dict(shard=shard, num_shards=num_shards, meta=meta,
                                            contamination=_contamination_dicts(contamination_results)))
    return d


def complete_parts(out: Path) -> tuple[int | None, dict[int, dict[str, Any]]]:
    """(num_shards, {shard: part record}) of the complete parts under <out>/parts; a mix of part
    counts is an error."""
    records = {}
    counts = set()
    for marker in sorted((Path(out) / PARTS_DIR).glob(f"part-*-of-*/{PART_MARKER}")):
        try:
            record = json.loads(marker.read_text())
            shard, n = int(record["shard"]), int(record["num_shards"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise EvalConfigError(f"{marker}: not a readable part record ({type(e).__name__}: {e})") from None
        counts.add(n)
        records[shard] = record | {"dir": str(marker.parent)}
    if len(counts) > 1:
        raise EvalConfigError(f"{Path(out) / PARTS_DIR}: parts of different splits ({sorted(counts)} parts); remove "
                              "the stale ones")
    return (counts.pop() if counts else None), records


def _compared(meta: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in meta.items() if k not in _NOT_COMPARED}


def merge_parts(out: Path) -> dict[str, Any]:
    """Combine the complete parts under <out>/parts into <out> (one summary and report)."""
    n, records = complete_parts(out)
    if n is None:
        raise EvalConfigError(f"config.merge: no complete parts under {Path(out) / PARTS_DIR} (each part writes "
                              f"{PARTS_DIR}/part-<i>-of-<n>/{PART_MARKER} when it finishes)")
    missing = [i for i in range(n) if i not in records]
    if missing:
        raise EvalConfigError(f"config.merge: {len(missing)} of {n} parts are not complete yet under "
                              f"{Path(out) / PARTS_DIR}: shards {missing[:20]}")
    first = _compared(records[0]["meta"])
    for i in range(1, n):
        other = _compared(records[i]["meta"])
        if other != first:
            keys = sorted(k for k in set(first) | set(other) if first.get(k) != other.get(k))
            raise EvalConfigError(f"config.merge: part {i} was run with other settings than part 0 ({', '.join(keys)}); "
                                  "every part of a run must use the same config but for shard")
    rows = []
    for i in range(n):
        path = Path(records[i]["dir"]) / "generations.jsonl"
        rows += [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    order = {label: k for k, label in enumerate(records[0]["meta"].get("benchmark_settings", {}))}
    rows.sort(key=lambda r: (order.get(r["benchmark"], len(order)), r.get("index", 0), r["sample"]))
    meta = dict(records[0]["meta"], shards=n, seconds=max(float(r["meta"].get("seconds", 0)) for r in records.values()),
                seconds_all_parts=round(sum(float(r["meta"].get("seconds", 0)) for r in records.values()), 1))
    meta.pop("shard", None)
    return write_outputs(Path(out), rows, meta, _contamination_results(records[0]["contamination"]))


# ----------------------------------------------------------------------------- the stage


def _report_done(out: Path, summary: dict[str, Any]) -> None:
    logger.info(paper_table({summary["label"]: summary}) if has_paper_benchmarks(summary)
                else benchmark_table(summary["benchmarks"]))
    logger.info("")
    logger.info(details_table(summary))
    logger.info(f"report: {out / 'report.md'}; generations: {out / 'generations.jsonl'}")


def _checked_items(config, xstest_method: str):
    """(items by benchmark, their settings, the files read, contamination results): every
    benchmark file read and checked before any model loads; overlaps with the training prompts
    are warned about."""
    files: dict[str, list[dict[str, Any]]] = {}
    groups = load_items(config, files)
    settings = benchmark_settings(config, groups)
    if "xstest" in groups and xstest_method == "llm" and config.judge.backend == "pattern":
        build_xstest_judge("llm", None)  # raises: says to give an LLM judge or string_match
    found = contamination(groups, config.train_prompts, config.ngram)
    for result in found:
        if result.exact or result.ngram:
            logger.warning(f"{result.benchmark}: {len(result.exact)} exact and {len(result.ngram)} n-gram overlaps "
                           f"with the training prompts (ids in summary.json); numbers on these prompts are not held out")
    return groups, settings, files, found


def _ready_judges(config, groups: dict[str, list[EvalItem]], settings: dict[str, BenchmarkSettings], xstest_method: str):
    """(judge, error budget, judge servers, XSTest judge or None). The judge is probed and
    context-checked before the policy loads (the longest judged text: the largest budget of a
    judged benchmark); a failing judge stops the stage with exit code 5 (ipo_jax/judging/guard.py)."""
    judged = [item.prompt for items in groups.values() for item in items if item.kind in JUDGED_KINDS]
    check_judge_fits(config, judged, f"benchmarks {config.benchmarks}", roles=("judge",))  # before any model loads
    judge, _ = build_judges(config)
    judged_budgets = {label: settings[label].max_new_tokens for label, items in groups.items()
                      if any(item.kind in JUDGED_KINDS for item in items)}
    if judged:  # nothing to judge (capability benchmarks only): the judge is never asked, so not probed
        judge, _, budget, servers = prepare_judges(
            config, judge, None, prompts=judged, trajectory_tokens=max(judged_budgets.values(), default=0),
            trajectory_setting="the largest token budget of a judged benchmark (sampling.max_new_tokens / "
            "max_new_tokens_per_benchmark)")
    else:
        budget, servers = ErrorBudget(config.judge.get("max_error_share", 0.05)), {}
    xstest_judge = build_xstest_judge(xstest_method, judge.chat) if "xstest" in groups else None
    return judge, budget, servers, xstest_judge


def _finish_parts(out: Path, shard: int, num_shards: int, rows: list[dict], meta: dict[str, Any], found: Sequence,
                  process_parts: bool, written: Path | None) -> None:
    """After the generations: write this run's outputs, or its part, and merge when every part is there."""
    if num_shards == 1:
        _report_done(out, write_outputs(out, rows, meta, found))
        return
    if process_parts:  # the part was written inside shares_joined
        if is_main_process():
            _report_done(out, merge_parts(out))
        else:
            logger.info(f"part {shard} of {num_shards} written to {written}; process 0 merges the parts into {out}")
        return
    written = write_part(out, shard, num_shards, rows, dict(meta, shard=shard), found)
    n, records = complete_parts(out)
    if n == num_shards and len(records) == num_shards:
        _report_done(out, merge_parts(out))
    else:
        logger.info(f"part {shard} of {num_shards} written to {written}; {len(records)} of {num_shards} parts complete. "
                    "The last part to finish merges them (or: ipo-jax eval --config ... --config.merge=True "
                    f"--config.out={out})")


def run_eval(config) -> int:
    """The CLI stage: compare, merge, or config -> items, judges, policy -> (a part of) the
    generations, summary and report.  Every setting and benchmark file is checked before any
    model loads."""
    out = Path(config.out)
    if config.get("compare"):
        table = compare_dirs([p.strip() for p in config.compare.split(",") if p.strip()], out)
        logger.info(table)
        logger.info(f"report: {out / 'report.md'}")
        return 0
    if config.get("merge"):
        _report_done(out, merge_parts(out))
        return 0

    if config.samples_per_prompt < 1:
        raise EvalConfigError(f"config.samples_per_prompt is {config.samples_per_prompt}; expected >= 1")
    xstest_method = config.xstest.judge
    if xstest_method not in XSTEST_JUDGES:
        raise EvalConfigError(f"config.xstest.judge is {xstest_method!r}; expected one of {', '.join(map(repr, XSTEST_JUDGES))}")
    shard, num_shards = resolve_shard(config)
    groups, settings, files, found = _checked_items(config, xstest_method)
    judge, budget, servers, xstest_judge = _ready_judges(config, groups, settings, xstest_method)
    mine = take_shard(groups, shard, num_shards)
    policy = build_policy(config)
    provenance = stage_provenance("eval", policy=policy, judge=judge, judge_servers=servers, prompts_digest=prompts_sha256(
        [dict(benchmark=i.benchmark, id=i.id, prompt=i.prompt) for items in groups.values() for i in items]))
    stamp = record_provenance(provenance)
    # one part per JAX process (num_shards 0, several processes): each process generates its part on its
    # own devices; leaving `shares_joined` every part is done (a process that failed stops the others),
    # and process 0 alone merges. Explicit shards are independent runs: the last to finish merges.
    process_parts = num_shards > 1 and not int(config.get("num_shards", 0) or 0)
    written = None
    with shares_joined("eval") if process_parts else contextlib.nullcontext():
        start = time.time()
        rows = []
        for label, pairs in mine.items():
            if not pairs:
                continue
            s = settings[label]
            rows += generate_and_score(policy, judge, [item for _, item in pairs], indices=[k for k, _ in pairs],
                                       samples_per_prompt=s.samples, max_new_tokens=s.max_new_tokens, seed=config.seed,
                                       batch=chunk_generations(config), desc=label,
                                       xstest_judge=xstest_judge if label == "xstest" else None,
                                       code_workers=config.code.workers, code_timeout=config.code.timeout,
                                       memory_mb=config.code.memory_mb, max_disk_mb=config.code.max_disk_mb,
                                       judge_budget=budget, provenance=stamp)
        if budget.requests:  # an LLM judge was asked
            logger.info(budget.line())
        meta = dict(model=config.model.init, label=config.label or config.model.init, judge=config.judge.backend,
                    provenance=provenance,
                    judge_settings=judge.settings(),
                    xstest_judge=xstest_judge.settings() if xstest_judge is not None else None,
                    sampling=dataclasses.asdict(policy.sampling), samples_per_prompt=config.samples_per_prompt,
                    benchmark_settings={label: s.to_dict() for label, s in settings.items()},
                    benchmark_files=files, aime_years=config.get("aime", {}).get("years", ""),
                    seconds=round(time.time() - start, 1), shards=num_shards)
        if process_parts:  # inside: a part is complete before any process leaves
            written = write_part(out, shard, num_shards, rows, dict(meta, shard=shard), found)
    _finish_parts(out, shard, num_shards, rows, meta, found, process_parts, written)
    return 0
