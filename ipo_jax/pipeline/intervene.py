"""Corrective intervention: sample, judge, find the first compliance cue, substitute a safety
trigger, continue, and write preference pairs (method.md, "Building the training pairs").

For each harmful prompt:
  1. sample a trajectory z (reasoning + answer) from the policy;
  2. judge reasoning and answer; only unsafe trajectories are intervened on (a judge error is
     counted and the prompt skipped, never treated as safe or unsafe);
  3. split the reasoning into sentences; the cue detector gives the first compliance cue, whose
     first character is h;
  4. for each trigger t: continue from z[<h] + t; judge the whole new trajectory; if it is still
     unsafe, find the first cue after the last intervention, substitute the trigger there and
     continue again, up to `rounds` rounds and `max_generations_per_prompt` generations;
  5. every safe intervened trajectory z~ gives a pair: prefix z[<h], chosen z~[>=h], rejected z[>=h].
For each benign prompt (kind "benign", the over-refusal set) several completions are sampled;
a helpful one is preferred over a refusal when both occur (prefix empty); a refusal is decided by
the project's one refusal rule, `ipo_jax.rollout.is_refusal` (a refusal phrase at the START of
the answer, as the evaluation decides it), so a helpful answer that mentions legality is helpful.

The steps of one chunk (`process_chunk`), each a short function over lists of typed records
(ipo_jax/pipeline/records.py): `sample_originals` (1-2) -> `locate_cues` (3; round-1
`InterventionJob`s) -> `admitted` + `intervention_round` per round (4; `next_round_jobs` for the
still unsafe) -> `benign_pairs`. Sampling seeds depend on (seed, chunk, stage) only
(`records.chunk_seed`). Chunks, run.json and resuming are ipo_jax/pipeline/chunks.py's.

Token-exact records. Every trajectory record carries `completion_ids` (the policy's ids exactly
as sampled) and `finish_reason` ("stop": the model ended its turn; "length": cut off at the token
limit). Every pair record keeps the text for people (`prefix`, `chosen`, `rejected`, each the
decode of its ids) and carries `prefix_ids`, `chosen_ids`, `rejected_ids` and
`finish_reasons: {"chosen": ..., "rejected": ...}`, with prefix_ids + rejected_ids == the original
trajectory's completion_ids (same `prompt_id`). The end-of-turn id is part of the ids as sampled:
a side whose finish reason is "stop" ends with the end-of-turn id the model produced, and the
trainer appends nothing to it (ipo_jax/data/pairs.py: ids ending in a stop token are used as
they are). h lies on a token boundary of the sampled ids: the first token whose decoded span
covers the cue sentence's first character starts the suffix (so "...chemistry. Let me" splits
as '.' | ' Let', the space staying with its word), found from decodes of the sampled ids, never
by re-tokenising text (`ipo_jax.pipeline.steps.token_boundary_at_char`); `h.char` is the length
of the prefix text and `h.token` of prefix_ids. A trigger is tokenised in context (with a
leading space after a non-space character: ' Wait', one token, never a lone ' '), and the
intervention continues from prompt + prefix_ids + trigger ids as token ids.

Cut-off generations never become pairs: a side must have finished on its own (finish reason
"stop") with a closed reasoning and a non-empty answer after it (`is_finished`). Unsafe
originals that are cut off are counted as `cut_off_rejected` (and in `unsafe_original`), other
cut-off originals as `cut_off_original`, continuations that are cut off before turning unsafe as
`cut_off_chosen`, unfinished benign candidates as `cut_off_benign` (summary.json); a judge error
on an unfinished generation (no answer to judge) counts as cut off, not as a judge error. An
intervention whose prompt would exceed the sampler's longest prompt (`Policy.max_prompt_tokens`)
is dropped and counted as `prompt_too_long`.

Prefix forks. With a policy whose sampler forks its KV cache (`Policy.forks_prefix`), the
continuations of each round are sampled per prompt record as forks of one prefill of
prompt + z[<h] (`complete_by_forks`: one fork per trigger, its ids as the suffix), under the
row seeds `complete` would use, so the pairs are the same as through `complete`.

`ipo_jax.pipeline.chunks.build_pairs` runs `process_chunk` over every chunk (its kind "ipo"); its
kind "full_trajectory" builds the paper's DPO-on-the-full-trajectory baseline instead
(ipo_jax/pipeline/baselines.py) through the same chunks, progress records and run.json.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence

from ipo_jax.data.pairs import prompt_messages
from ipo_jax.data.prompts import PROMPT_KINDS, PromptFileError, load_prompt_records  # noqa: F401 (re-exported)
from ipo_jax.judging import CueDetector, CueRequest, CueResult, Judge, detect_all
from ipo_jax.pipeline.config import InterventionConfig  # noqa: F401 (re-exported: the loop's settings)
from ipo_jax.pipeline.records import (
    BENIGN_STAGE,
    ORIGINALS_STAGE,
    ChunkResult,
    ChunkStats,
    InterventionJob,
    PairRecord,
    PromptRecord,
    Trajectory,
    chunk_seed,
    is_finished,  # noqa: F401 (re-exported)
    judge_completions,
    prompt_text,
    verdict_dicts,
)
from ipo_jax.pipeline.steps import split_sentences, text_in_context, token_boundary_at_char
from ipo_jax.rollout import Completion, Policy, reasoning_span
from ipo_jax.sampling import Fork, row_seed


def read_prompt_records(path) -> list[PromptRecord]:
    """Prompt records from a JSONL file or any source of `ipo_jax.data.prompts.load_prompt_records`
    (default field mapping; kind defaults to harmful)."""
    return load_prompt_records(path)


@dataclasses.dataclass(frozen=True)
class Intervention:
    """What every step of one chunk's intervention uses."""

    policy: Policy
    judge: Judge
    detector: CueDetector
    triggers: Sequence[str]
    cfg: InterventionConfig
    seed: Callable[[int], int]  # stage -> this chunk's sampling seed (`chunk_seed`)

    def judged(self, items: Sequence[tuple[PromptRecord, Completion]], kind: str) -> list[Trajectory]:
        return judge_completions(self.judge, items, kind=kind, policy_id=self.policy.policy_id)


def first_cue_chars(detector: CueDetector, items: Sequence[tuple[str, str, int]]) -> list[tuple[int | None, CueResult]]:
    """[(absolute char of the first cue sentence starting at or after `after`, CueResult)] for
    (prompt, completion, after) items, all detected in ONE call."""
    requests, starts = [], []
    for prompt, completion, after in items:
        start, end, _ = reasoning_span(completion)
        sentences = [s for s in split_sentences(completion[start:end]) if start + s.start >= after]
        requests.append(CueRequest(prompt, tuple(s.text for s in sentences)))
        starts.append([start + s.start for s in sentences])
    out = []
    for cue, offsets in zip(detect_all(detector, requests), starts):
        out.append((None, cue) if cue.is_error or cue.index is None else (offsets[cue.index], cue))
    return out


def complete_by_forks(policy: Policy, jobs: Sequence[InterventionJob], seed: int) -> list[Completion]:
    """`policy.complete` on the jobs' prompts (chat prompt + prefix_ids + chosen_ids) under
    `seed`, with the shared z[<h] prefilled once: consecutive jobs of one prompt record with the
    same prefix_ids are forks of it (``cut=len(prefix_ids)``, suffix the job's chosen ids, n=1),
    each with the row seed `complete` would give its row (``row_seed(seed, r)``, r its index in
    `jobs`), so the completions are the same as `complete`'s."""
    outs: list[Completion] = []
    start = 0
    while start < len(jobs):
        first, end = jobs[start], start + 1
        while end < len(jobs) and jobs[end].record is first.record and jobs[end].prefix_ids == first.prefix_ids:
            end += 1
        forks = [Fork(cut=len(first.prefix_ids), suffix=tuple(job.chosen_ids), n=1, row_seeds=(row_seed(seed, start + k),))
                 for k, job in enumerate(jobs[start:end])]
        outs += [group[0] for group in policy.complete_forks(prompt_messages(first.record), first.prefix_ids, forks, seed)]
        start = end
    return outs


# ------------------------------------------------------------------------------ the steps


def sample_originals(run: Intervention, harmful: Sequence[PromptRecord], stats: ChunkStats
                     ) -> tuple[list[Trajectory], list[Trajectory]]:
    """(every original, the finished unsafe ones): one trajectory z per harmful prompt, judged."""
    completions = run.policy.complete([(prompt_messages(r), "") for r in harmful], run.seed(ORIGINALS_STAGE)) if harmful else []
    stats.generations += len(completions)
    originals = run.judged(list(zip(harmful, completions)), "harmful")
    unsafe = []
    for original in originals:
        stats.truncated_generations += original.completion.finish_reason == "length"
        if not original.finished:
            # never a rejected side; unsafe ones are counted as such, the rest (often judge errors
            # on the missing answer) as cut off
            stats.unsafe_original += original.label == "unsafe"
            stats.cut_off_original += original.label != "unsafe"
            stats.cut_off_rejected += original.label == "unsafe"
        elif original.label == "error":
            stats.judge_errors += 1
        elif original.label == "safe":
            stats.safe_original += 1
        else:
            stats.unsafe_original += 1
            unsafe.append(original)
    return originals, unsafe


def locate_cues(run: Intervention, unsafe: Sequence[Trajectory], stats: ChunkStats) -> list[InterventionJob]:
    """Round-1 jobs: each unsafe original's first compliance cue h (one detector call for all),
    z[<h] on a token boundary of the sampled ids, one job per trigger."""
    policy, jobs = run.policy, []
    cues = first_cue_chars(run.detector, [(prompt_text(t.record), t.completion.text, 0) for t in unsafe])
    for original, (h, cue) in zip(unsafe, cues):
        if cue.is_error or h is None:
            stats.cue_errors += cue.is_error
            stats.no_cue += not cue.is_error
            continue
        stats.cue_found += 1
        ids = list(original.completion.ids)
        t = token_boundary_at_char(policy.decode, ids, h)
        prefix = policy.decode(ids[:t])
        for index, trigger in enumerate(run.triggers):
            jobs.append(InterventionJob(original, cue, index, 1, ids[:t], policy.encode_text(text_in_context(prefix, trigger))))
    return jobs


def admitted(run: Intervention, jobs: Sequence[InterventionJob], used: dict[str, int], prompt_tokens: dict[str, int],
             stats: ChunkStats) -> list[InterventionJob]:
    """The jobs that may run this round: an intervention prompt (chat prompt + prefix + chosen so
    far) longer than the policy's longest prompt is dropped and counted, as is a job whose prompt
    has used its generation budget; `used` and `prompt_tokens` (per record id) carry over rounds."""
    limit, runnable = run.policy.max_prompt_tokens, []
    for job in jobs:
        record_id = job.record["id"]
        if limit is not None:
            if record_id not in prompt_tokens:
                prompt_tokens[record_id] = run.policy.prompt_tokens(prompt_messages(job.record))
            if prompt_tokens[record_id] + len(job.prompt_ids) > limit:
                stats.prompt_too_long += 1
                continue
        if used[record_id] >= run.cfg.max_generations_per_prompt:
            stats.budget_exhausted += 1
            continue
        used[record_id] += 1
        runnable.append(job)
    return runnable


def intervention_round(run: Intervention, jobs: Sequence[InterventionJob], round_no: int, stats: ChunkStats
                       ) -> tuple[list[PairRecord], list[InterventionJob]]:
    """Continue every job, judge each whole intervened trajectory (one call): a safe finished one
    is a pair; an unsafe one goes on to the next round's jobs (`next_round_jobs`)."""
    policy = run.policy
    if policy.forks_prefix:  # z[<h] prefilled once per prompt, then each trigger
        outs = complete_by_forks(policy, jobs, run.seed(round_no))
    else:  # one batch across prompts
        outs = policy.complete([(prompt_messages(j.record), j.prompt_ids) for j in jobs], run.seed(round_no))
    stats.generations += len(outs)
    # the whole intervened trajectory, as ids and as their decode (what the judge reads)
    wholes = [j.prompt_ids + list(out.ids) for j, out in zip(jobs, outs)]
    intervened = run.judged([(j.record, Completion(policy.decode(ids), out.finish_reason, tuple(ids)))
                             for j, out, ids in zip(jobs, outs, wholes)], "harmful")
    pairs, still_unsafe = [], []
    for job, trajectory in zip(jobs, intervened):
        stats.truncated_generations += trajectory.completion.finish_reason == "length"
        if trajectory.label != "unsafe" and not trajectory.finished:
            stats.cut_off_chosen += 1  # not unsafe so far, but cut off: never a chosen side
        elif trajectory.label == "safe":
            pairs.append(intervention_pair(run, job, trajectory, round_no))
            stats.count_success(round_no)
        elif trajectory.label == "error":
            stats.judge_errors += 1
        elif round_no == run.cfg.rounds:
            stats.failed_after_rounds += 1
        else:
            still_unsafe.append((job, trajectory))
    return pairs, next_round_jobs(run, still_unsafe, round_no, stats)


def intervention_pair(run: Intervention, job: InterventionJob, intervened: Trajectory, round_no: int) -> PairRecord:
    """prefix z[<h], chosen z~[>=h] (the safe intervened trajectory), rejected z[>=h]."""
    decode, original = run.policy.decode, job.original
    chosen_ids = list(intervened.completion.ids)[len(job.prefix_ids) :]
    return PairRecord.build(
        "intervention", job.record, run.policy, prefix=decode(job.prefix_ids), prefix_ids=job.prefix_ids,
        chosen=Completion(decode(chosen_ids), intervened.completion.finish_reason, tuple(chosen_ids)),
        rejected=Completion(decode(job.rejected), original.completion.finish_reason, tuple(job.rejected)),
        cue_sentence=job.cue.index, trigger=run.triggers[job.trigger_index], trigger_index=job.trigger_index,
        round_no=round_no, verdicts=dict(original=verdict_dicts(original.verdicts), cue=job.cue.to_dict(),
                                         intervened=verdict_dicts(intervened.verdicts)),
    )


def next_round_jobs(run: Intervention, still_unsafe: Sequence[tuple[InterventionJob, Trajectory]], round_no: int,
                    stats: ChunkStats) -> list[InterventionJob]:
    """Intervene again at the first cue after the last trigger (one detector call for all): keep
    the continuation up to that cue, append the job's trigger; no such cue: failed."""
    decode, jobs = run.policy.decode, []
    cues = first_cue_chars(run.detector, [(prompt_text(job.record), t.completion.text, len(decode(job.prompt_ids)))
                                          for job, t in still_unsafe])
    for (job, trajectory), (h, _) in zip(still_unsafe, cues):
        if h is None:
            stats.failed_after_rounds += 1
            continue
        whole, kept_from = list(trajectory.completion.ids), len(job.prefix_ids)
        t = max(token_boundary_at_char(decode, whole, h), kept_from + len(job.chosen_ids))
        trigger_ids = run.policy.encode_text(text_in_context(decode(whole[:t]), run.triggers[job.trigger_index]))
        jobs.append(dataclasses.replace(job, round=round_no + 1, chosen_ids=whole[kept_from:t] + trigger_ids))
    return jobs


def benign_pairs(run: Intervention, benign: Sequence[PromptRecord], stats: ChunkStats
                 ) -> tuple[list[Trajectory], list[PairRecord]]:
    """(candidates, over-refusal pairs): `benign_candidates` samples per benign prompt, judged in
    one call; the first helpful one is preferred over the first refusal when both occur."""
    if not benign:
        return [], []
    k = run.cfg.benign_candidates
    completions = run.policy.complete([(prompt_messages(r), "") for r in benign for _ in range(k)], run.seed(BENIGN_STAGE))
    stats.generations += len(completions)
    candidates = run.judged([(record, c) for i, record in enumerate(benign) for c in completions[i * k : (i + 1) * k]],
                            "benign")
    pairs = []
    for i, record in enumerate(benign):
        helpful, refusals = [], []
        for candidate in candidates[i * k : (i + 1) * k]:
            if not candidate.finished:
                stats.cut_off_benign += 1  # neither a helpful nor a refusing side
            elif candidate.label == "error":
                stats.judge_errors += 1
            elif candidate.is_refusal:
                refusals.append(candidate.completion)
            elif candidate.label == "safe":
                helpful.append(candidate.completion)
        if helpful and refusals:
            pairs.append(PairRecord.build("over_refusal", record, run.policy, chosen=helpful[0], rejected=refusals[0]))
            stats.over_refusal_pairs += 1
    return candidates, pairs


def process_chunk(records: Sequence[PromptRecord], chunk_index: int, policy: Policy, judge: Judge, detector: CueDetector,
                  triggers: Sequence[str], cfg: InterventionConfig) -> ChunkResult:
    """Pairs, trajectories and counters of one chunk of prompt records: sample originals -> locate
    cues -> intervention rounds -> benign pairs."""
    run = Intervention(policy, judge, detector, tuple(triggers), cfg, functools.partial(chunk_seed, cfg.seed, chunk_index))
    harmful = [r for r in records if r["kind"] == "harmful"]
    benign = [r for r in records if r["kind"] == "benign"]
    stats = ChunkStats(prompts=len(records), harmful=len(harmful), benign=len(benign))
    originals, unsafe = sample_originals(run, harmful, stats)
    jobs, pairs = locate_cues(run, unsafe, stats), []
    used, prompt_tokens = {r["id"]: 1 for r in harmful}, {}  # generations per prompt (the original counts)
    for round_no in range(1, cfg.rounds + 1):
        runnable = admitted(run, jobs, used, prompt_tokens, stats)
        if not runnable:
            break
        new_pairs, jobs = intervention_round(run, runnable, round_no, stats)
        pairs += new_pairs
    candidates, over_refusals = benign_pairs(run, benign, stats)
    pairs += over_refusals
    stats.pairs = len(pairs)
    return ChunkResult(pairs, originals + candidates, stats)


__all__ = ["InterventionConfig", "complete_by_forks", "first_cue_chars", "process_chunk", "read_prompt_records"]
