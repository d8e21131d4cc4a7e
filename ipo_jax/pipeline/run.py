"""The `sample` and `build-pairs` stages: config -> policy, judge, detector, triggers -> files."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax

from ipo_jax.checkpoint.init import load_model, tokenizer_dir_for
from ipo_jax.data.pairs import prompt_messages
from ipo_jax.data.tokenizer import load_tokenizer, stop_token_ids
from ipo_jax.io import atomic_write_jsonl
from ipo_jax.pipeline.intervene import (
    InterventionConfig,
    build_pairs,
    prompt_text,
    read_prompt_records,
)
from ipo_jax.pipeline.judges import PatternCueDetector, PatternJudge, safe_judge_trajectory, trajectory_label
from ipo_jax.pipeline.triggers import DEFAULT_TRIGGERS, load_triggers
from ipo_jax.rollout import Policy, split_completion
from ipo_jax.sampling import Sampler, SamplingConfig
from ipo_jax.sharding import make_mesh


def build_judges(config):
    """(safety judge, cue detector) of the configured backend."""
    j = config.judge
    if j.backend == "pattern":
        if j.patterns_file:
            return PatternJudge.from_file(j.patterns_file), PatternCueDetector.from_file(j.patterns_file)
        return PatternJudge(), PatternCueDetector()
    if not j.model:
        raise ValueError(f"judge.backend {j.backend!r} needs judge.model")
    if j.backend == "llm":
        from ipo_jax.pipeline.llm_judge import build_llm_backends

        return build_llm_backends(j.model, tokenizer_dir_for(j.tokenizer, j.model), mesh=make_mesh(dict(config.mesh)))
    if j.backend == "http":
        from ipo_jax.pipeline.http_judge import HttpCueDetector, HttpJudge

        if not j.base_url:
            raise ValueError("judge.backend 'http' needs judge.base_url (e.g. http://localhost:8000/v1)")
        options = dict(api_key_env=j.api_key_env, timeout=j.timeout, max_retries=j.max_retries, concurrency=j.concurrency)
        return HttpJudge(j.base_url, j.model, **options), HttpCueDetector(j.base_url, j.model, **options)
    raise ValueError(f"judge.backend {j.backend!r}: expected 'pattern', 'llm' or 'http'")


def _require_prompts(config) -> None:
    if not config.prompts:
        raise ValueError("config.prompts is empty: give a prompt JSONL file (--config.prompts=...)")


def build_policy(config) -> Policy:
    """The configured model + tokenizer + sampler + sampling settings, as a text-in/text-out policy."""
    tokenizer = load_tokenizer(tokenizer_dir_for(config.tokenizer, config.model.init))
    mesh = make_mesh(dict(config.mesh))
    model = load_model(config.model.init, mesh=mesh, param_dtype=config.model.param_dtype, dtype=config.model.dtype,
                       vocab_needed=len(tokenizer))
    eos = stop_token_ids(tokenizer)
    sampler = Sampler(model, eos_ids=eos, pad_id=tokenizer.pad_token_id or 0, batch_size=config.sampler.batch_size,
                      max_prompt_length=config.sampler.max_prompt_length, chunk_tokens=config.sampler.chunk_tokens, mesh=mesh)
    sampling = SamplingConfig(temperature=config.sampling.temperature, top_p=config.sampling.top_p,
                              top_k=config.sampling.top_k, max_new_tokens=config.sampling.max_new_tokens)
    return Policy(sampler, tokenizer, sampling, policy_id=config.model.init)


def run_build_pairs(config) -> int:
    _require_prompts(config)
    records = read_prompt_records(config.prompts)
    judge, detector = build_judges(config)
    triggers = load_triggers(config.triggers_file) if config.triggers_file else DEFAULT_TRIGGERS
    policy = build_policy(config)
    cfg = InterventionConfig(**config.intervention)
    summary = build_pairs(records, config.out, policy, judge, detector, triggers, cfg,
                          process_index=jax.process_index(), process_count=jax.process_count())
    if "pending_chunks" in summary:
        print(f"this process is done; chunks {summary['pending_chunks']} are still with other processes")
        return 0
    print(json.dumps({k: summary[k] for k in ("prompts", "unsafe_share", "cue_found_share", "success_per_round",
                                               "generations_per_prompt", "pairs", "over_refusal_pairs", "judge_errors")}, indent=2))
    print(f"pairs: {Path(config.out) / 'pairs.jsonl'}; summary: {Path(config.out) / 'summary.json'}")
    return 0


def run_sample(config) -> int:
    """Sample one trajectory per prompt, judge reasoning and answer, write trajectories.jsonl."""
    _require_prompts(config)
    records = read_prompt_records(config.prompts)
    judge, _ = build_judges(config)
    policy = build_policy(config)
    completions = policy.complete([(prompt_messages(r), "") for r in records], seed=config.intervention.seed)
    rows, counts = [], {"safe": 0, "unsafe": 0, "error": 0}
    for record, completion in zip(records, completions):
        reasoning, answer, closed = split_completion(completion.text)
        verdicts = safe_judge_trajectory(judge, prompt_text(record), reasoning, answer)
        label = trajectory_label(verdicts)
        counts[label] += 1
        rows.append(dict(id=record["id"], kind=record["kind"], prompt=record["prompt"], completion=completion.text,
                         reasoning=reasoning, answer=answer, think_closed=closed, finish_reason=completion.finish_reason,
                         label=label, verdicts={k: v.to_dict() for k, v in verdicts.items()}, policy=policy.policy_id,
                         sampling=dataclasses.asdict(policy.sampling)))
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_jsonl(out / "trajectories.jsonl", rows)
    print(f"{len(rows)} trajectories: {counts['unsafe']} unsafe, {counts['safe']} safe, {counts['error']} judge errors "
          f"-> {out / 'trajectories.jsonl'}")
    return 0


def run_csr(config) -> int:
    """Continuation safety ratio per sentence for each trajectory; CSV + PNG each, trigger candidates."""
    from ipo_jax.data.records import read_jsonl_records
    from ipo_jax.pipeline.csr import (
        collect_trigger_candidates,
        continuation_safety_ratio,
        write_csr_outputs,
        write_trigger_candidates,
    )

    c = config.csr
    if not c.trajectories:
        raise ValueError("config.csr.trajectories is empty: give a JSONL of trajectories (id, prompt, reasoning)")
    rows = read_jsonl_records(c.trajectories, {"id": str, "prompt": (str, list), "reasoning": str}, kind="trajectory")
    rows = [r for r in rows if not c.kind or r.get("kind", "harmful") == c.kind]
    judge, _ = build_judges(config)
    policy = build_policy(config)
    out = Path(config.out)
    results, table = [], []
    for row in rows:
        result = continuation_safety_ratio(
            policy.sampler, policy.tokenizer, judge, prompt_messages(row), row["reasoning"], num_samples=c.num_samples,
            sampling=policy.sampling, judge_prompt=prompt_text(row), mu=c.mu, eta=c.eta, window=c.window,
        )
        write_csr_outputs(result, out / "csr", row["id"])
        results.append(result)
        table.append(dict(id=row["id"], sentences=len(result.sentences), triggers=list(result.trigger_indices),
                          cues=list(result.cue_indices)))
    candidates = collect_trigger_candidates(results)
    if candidates:
        write_trigger_candidates(out / "trigger_candidates.txt", candidates)
    atomic_write_jsonl(out / "csr_summary.jsonl", table)
    print(f"{len(rows)} trajectories analysed; {sum(len(r['cues']) for r in table)} compliance cues, "
          f"{len(candidates)} trigger candidates; CSV and PNG per trajectory in {out / 'csr'}")
    return 0
