"""The `sample`, `build-pairs` and `csr` stages: config -> policy, judge, detector, triggers -> files.

What a person should see of a stage (counts, where its files went) is logged at INFO
(`logging.getLogger(__name__)`); the CLI shows INFO by default."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
from pathlib import Path

import jax

from ipo_jax.checkpoint.init import model_config
from ipo_jax.data.pairs import prompt_messages
from ipo_jax.data.prompts import prompt_records_from_config
from ipo_jax.distributed import is_main_process, my_share, shares_joined
from ipo_jax.io import atomic_write_bytes, atomic_write_jsonl
from ipo_jax.judging import judge_trajectories, trajectory_label
from ipo_jax.judging.build import build_judges, check_judge_fits
from ipo_jax.judging.guard import prepare_judges
from ipo_jax.pipeline.chunks import BUILD_KINDS, build_pairs
from ipo_jax.pipeline.csr import (
    collect_trigger_candidates,
    continuation_safety_ratio,
    write_csr_outputs,
    write_trigger_candidates,
)
from ipo_jax.pipeline.intervene import InterventionConfig
from ipo_jax.pipeline.records import prompt_text
from ipo_jax.pipeline.trajectories import check_trajectory_tokens, read_trajectories
from ipo_jax.pipeline.triggers import DEFAULT_TRIGGERS, load_triggers
from ipo_jax.provenance import prompts_sha256, record_provenance, stage_provenance
from ipo_jax.rollout import build_policy, load_policy_tokenizer, split_completion
from ipo_jax.sampling import row_seed

__all__ = ["build_judges", "build_policy", "run_build_pairs", "run_csr", "run_sample"]  # build_*: the demo's

logger = logging.getLogger(__name__)


def _judges_for(config, prompts, roles=("judge", "detector"), trajectory_tokens=None, trajectory_setting=None):
    """The stage's judge (and detector), probed and context-checked before any sampling and
    guarded while it runs (ipo_jax/judging/guard.py): (judge, detector, budget, servers)."""
    judge, detector = build_judges(config)
    if "detector" not in roles:
        detector = None
    tokens = config.sampling.max_new_tokens if trajectory_tokens is None else trajectory_tokens
    return prepare_judges(config, judge, detector, prompts=prompts, trajectory_tokens=tokens,
                          trajectory_setting=trajectory_setting or "sampling.max_new_tokens")


def _write_run_json(path: Path, stage: str, provenance: dict, **settings) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    body = dict(stage=stage, provenance=provenance, **settings)
    atomic_write_bytes(path, (json.dumps(body, indent=2, ensure_ascii=False, default=str) + "\n").encode("utf-8"))


SHARE_PARTS_DIR = ".process-parts"  # <out>/.process-parts/<what>-<i>-of-<n>.jsonl: one process's share


def _share_part(out: Path, what: str, index: int | None = None) -> Path:
    index = jax.process_index() if index is None else index
    (out / SHARE_PARTS_DIR).mkdir(parents=True, exist_ok=True)
    return out / SHARE_PARTS_DIR / f"{what}-{index:05d}-of-{jax.process_count():05d}.jsonl"


def _merged_share_parts(out: Path, what: str, total: int) -> list[dict]:
    """The rows of every process's part of `what`, back in the one-process order (row k of the
    whole is row k // N of process k % N's part)."""
    count = jax.process_count()
    parts = []
    for i in range(count):
        path = _share_part(out, what, i)
        if not path.is_file():
            raise RuntimeError(f"{path}: process {i}'s part is missing although it reported its share done")
        with open(path, encoding="utf-8") as f:
            parts.append([json.loads(line) for line in f if line.strip()])
    if sum(len(p) for p in parts) != total:
        raise RuntimeError(f"{out / SHARE_PARTS_DIR}: the parts of {what} hold {sum(len(p) for p in parts)} rows, "
                           f"expected {total}")
    return [parts[k % count][k // count] for k in range(total)]


def _remove_share_parts(out: Path, what: str) -> None:
    for path in (out / SHARE_PARTS_DIR).glob(f"{what}-*-of-*.jsonl"):
        path.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        (out / SHARE_PARTS_DIR).rmdir()  # when empty


def _require_prompts(config) -> None:
    if not config.prompts:
        raise ValueError("config.prompts is empty: give a prompt JSONL file (--config.prompts=...)")


def run_build_pairs(config) -> int:
    _require_prompts(config)
    if config.build_pairs.kind not in BUILD_KINDS:
        raise ValueError(f"config.build_pairs.kind is {config.build_pairs.kind!r}; expected one of {', '.join(BUILD_KINDS)}")
    records = prompt_records_from_config(config)  # every record checked before any model loads
    check_judge_fits(config, [prompt_text(r) for r in records], config.prompts)  # before any model loads
    # probed and context-checked before the policy loads; a failing judge stops the stage (exit 5)
    judge, detector, budget, servers = _judges_for(config, [prompt_text(r) for r in records])
    triggers = load_triggers(config.triggers_file) if config.triggers_file else DEFAULT_TRIGGERS
    policy = build_policy(config)
    cfg = InterventionConfig(**config.intervention)
    kind, samples = config.build_pairs.kind, config.build_pairs.samples
    provenance = stage_provenance("build-pairs", policy=policy, judge=judge, detector=detector,
                                  prompts_digest=prompts_sha256(records), judge_servers=servers)
    summary = build_pairs(records, config.out, policy, judge, detector, triggers, cfg,
                          process_index=jax.process_index(), process_count=jax.process_count(), kind=kind, samples=samples,
                          judge_budget=budget, provenance=provenance)
    if budget.requests:  # an LLM judge was asked
        logger.info(budget.line())
    if "merged_by_process" in summary:
        logger.info("this process's chunks are done; process 0 writes %s and summary.json", Path(config.out) / "pairs.jsonl")
        return 0
    if "pending_chunks" in summary:
        logger.info("this process is done; chunks %s are still with other processes", summary["pending_chunks"])
        return 0
    shown = (("prompts", "unsafe_share", "cue_found_share", "success_per_round", "generations_per_prompt", "pairs",
              "over_refusal_pairs", "judge_errors", "cut_off_rejected", "cut_off_chosen") if kind == "ipo"
             else ("prompts", "samples", "unsafe_share", "cut_off", "no_safe_sample", "no_unsafe_sample", "pairs", "judge_errors"))
    shown += ("judge_requests", "judge_failed_requests")
    logger.info(json.dumps({k: summary.get(k) for k in shown}, indent=2))
    logger.info("pairs: %s; summary: %s", Path(config.out) / "pairs.jsonl", Path(config.out) / "summary.json")
    return 0


def run_sample(config) -> int:
    """Sample one trajectory per prompt, judge reasoning and answer, write trajectories.jsonl."""
    _require_prompts(config)
    records = prompt_records_from_config(config)  # every record checked before any model loads
    check_judge_fits(config, [prompt_text(r) for r in records], config.prompts, roles=("judge",))
    judge, _, budget, servers = _judges_for(config, [prompt_text(r) for r in records], roles=("judge",))
    policy = build_policy(config)
    provenance = stage_provenance("sample", policy=policy, judge=judge, prompts_digest=prompts_sha256(records),
                                  judge_servers=servers)
    stamp = record_provenance(provenance)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    # several JAX processes: each samples and judges prompts i, i + N, ... (row seeds by position
    # in the prompt file, as one process draws them), writes its part; process 0 merges in order
    mine = my_share(len(records))
    with shares_joined("sample"):
        share = [records[k] for k in mine]
        completions = policy.complete([(prompt_messages(r), "") for r in share], seed=config.intervention.seed,
                                      row_seeds=[row_seed(config.intervention.seed, k) for k in mine])
        parts = [split_completion(c.text) for c in completions]
        budget.start_chunk("the sampled trajectories")
        judged = judge_trajectories(judge, [(prompt_text(r), reasoning, answer) for r, (reasoning, answer, _) in zip(share, parts)])
        budget.end_chunk()
        rows = []
        for record, completion, (reasoning, answer, closed), verdicts in zip(share, completions, parts, judged):
            rows.append(dict(id=record["id"], kind=record["kind"], prompt=record["prompt"], completion=completion.text, completion_ids=list(completion.ids),
                             reasoning=reasoning, answer=answer, think_closed=closed, finish_reason=completion.finish_reason,
                             label=trajectory_label(verdicts), verdicts={k: v.to_dict() for k, v in verdicts.items()}, policy=policy.policy_id,
                             sampling=dataclasses.asdict(policy.sampling), provenance=stamp))
        if jax.process_count() > 1:
            atomic_write_jsonl(_share_part(out, "trajectories"), rows)
    if budget.requests:  # an LLM judge was asked
        logger.info(budget.line())
    if jax.process_count() > 1:
        if not is_main_process():
            logger.info("%d trajectories sampled in this process; process 0 writes %s", len(rows), out / "trajectories.jsonl")
            return 0
        rows = _merged_share_parts(out, "trajectories", len(records))
    counts = {"safe": 0, "unsafe": 0, "error": 0}
    for row in rows:
        counts[row["label"]] += 1
    _write_run_json(out / "sample_run.json", "sample", provenance, prompts=config.prompts, trajectories=len(rows),
                    sampling=dataclasses.asdict(policy.sampling), seed=config.intervention.seed, judge=judge.settings())
    atomic_write_jsonl(out / "trajectories.jsonl", rows)
    _remove_share_parts(out, "trajectories")
    logger.info("%d trajectories: %d unsafe, %d safe, %d judge errors -> %s", len(rows), counts["unsafe"], counts["safe"],
                counts["error"], out / "trajectories.jsonl")
    return 0


def _policy_vocab_size(config, tokenizer) -> int:
    """The ids the policy can take: its model's embedding rows (read from the model spec, no
    weights) for a local policy, the tokenizer's size for an HTTP one (its model is not known)."""
    backend = config.policy.backend if config.get("policy") is not None else "local"
    if backend != "local" or not config.model.init:
        return len(tokenizer)
    return max(len(tokenizer), model_config(config.model.init, vocab_needed=len(tokenizer)).vocab_size)


def run_csr(config) -> int:
    """Continuation safety ratio of each trajectory (per token position or per sentence: csr.granularity), each
    with its own seed; CSV + PNG each, trigger candidates."""
    c = config.csr
    if not c.trajectories:
        raise ValueError("config.csr.trajectories is empty: give a JSONL of trajectories (id, prompt, reasoning)")
    rows = read_trajectories(c.trajectories, kind=c.kind)  # every record checked before any work or output
    check_judge_fits(config, [prompt_text(r) for r in rows], c.trajectories, roles=("judge",))
    tokenizer = load_policy_tokenizer(config)  # the policy's: csr places its cuts on its token ids
    check_trajectory_tokens(rows, c.trajectories, tokenizer, vocab_size=_policy_vocab_size(config, tokenizer))
    # a judged continuation is a trajectory prefix (up to the whole reasoning) + one generation
    longest = max((len(r["completion_ids"]) if isinstance(r.get("completion_ids"), list) else -(-len(r["reasoning"]) // 3)
                   for r in rows), default=0)
    judge, _, budget, servers = _judges_for(
        config, [prompt_text(r) for r in rows], roles=("judge",), trajectory_tokens=longest + config.sampling.max_new_tokens,
        trajectory_setting="the longest trajectory + sampling.max_new_tokens")
    policy = build_policy(config)
    out = Path(config.out)
    provenance = stage_provenance("csr", policy=policy, judge=judge, prompts_digest=prompts_sha256(rows),
                                  judge_servers=servers)
    if is_main_process():
        _write_run_json(out / "csr" / "run.json", "csr", provenance, trajectories=c.trajectories, rows=len(rows),
                        csr={k: c[k] for k in c.keys()}, sampling=dataclasses.asdict(policy.sampling))
    # several JAX processes: each analyses trajectories i, i + N, ... (each with its own seed, so as
    # one process would) and writes their CSV / PNG files; process 0 merges the summary rows in order
    with shares_joined("csr"):
        table = []
        for row in [rows[k] for k in my_share(len(rows))]:
            budget.start_chunk(f"trajectory {row['id']!r}")
            completion_ids = row.get("completion_ids")  # the ids as sampled (ipo-jax sample writes them)
            try:
                result = continuation_safety_ratio(
                    policy, tokenizer, judge, prompt_messages(row), row["reasoning"], num_samples=c.num_samples,
                    seed=c.get("seed", 0), judge_prompt=prompt_text(row),
                    mu=c.mu, eta=c.eta, window=c.window, completion_ids=completion_ids, granularity=c.get("granularity", "token"),
                    token_stride=c.get("token_stride", 1), trace_id=row["id"],  # each trace its own seed
                )
            except ValueError as e:
                raise ValueError(f"{c.trajectories}: trajectory {row['id']!r}: {e}") from None
            budget.end_chunk()  # over judge.max_error_share: stop before this trajectory's outputs are written
            write_csr_outputs(result, out / "csr", row["id"])
            table.append(dict(id=row["id"], sentences=len(result.sentences), triggers=list(result.trigger_indices),
                              cues=list(result.cue_indices), granularity=result.granularity, seed=result.seed,
                              trigger_tokens=list(result.trigger_positions), cue_tokens=list(result.cue_positions), provenance=record_provenance(provenance),
                              candidates=collect_trigger_candidates([result])))
        if jax.process_count() > 1:
            atomic_write_jsonl(_share_part(out, "csr_summary"), table)
    if jax.process_count() > 1:
        if not is_main_process():
            logger.info("%d trajectories analysed in this process; process 0 writes %s", len(table), out / "csr_summary.jsonl")
            return 0
        table = _merged_share_parts(out, "csr_summary", len(rows))
    # the trigger sentences of all trajectories in order, deduplicated as collect_trigger_candidates does
    candidates, seen = [], set()
    for entry in table:
        for sentence in entry.pop("candidates"):
            if sentence.casefold() not in seen:
                seen.add(sentence.casefold())
                candidates.append(sentence)
    if candidates:
        write_trigger_candidates(out / "trigger_candidates.txt", candidates)
    atomic_write_jsonl(out / "csr_summary.jsonl", table)
    _remove_share_parts(out, "csr_summary")
    if budget.requests:  # an LLM judge was asked
        logger.info(budget.line())
    logger.info("%d trajectories analysed; %d compliance cues, %d trigger candidates; CSV and PNG per trajectory in %s",
                len(rows), sum(len(r["cues"]) for r in table), len(candidates), out / "csr")
    return 0
