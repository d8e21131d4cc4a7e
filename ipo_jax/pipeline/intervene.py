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

Work is split into chunks of prompts (file order). A chunk's files are written atomically
(temporary name, fsync, rename) and its progress record last, holding the sha256 of each file;
so a killed run restarted with the same config skips finished chunks and redoes the unfinished
one from scratch, with the same seeds: the same pair set, no duplicates, none lost. A chunk
file that does not match its progress record (cut short or altered after the fact) is never
read as complete: the chunk is reported and redone. Sampling seeds depend on (seed, chunk,
round), not on the run's history.

<out>/run.json records what the pairs depend on (prompts, policy id, sampling, judge, cue
detector, triggers, intervention settings); resuming into an `out` whose run.json differs is an
error naming the fields, so chunks of another run are never mixed in. Other stages' files in
`out` (trajectories.jsonl of `sample`, csr/) are left alone.

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

`build_pairs(kind="full_trajectory")` builds the paper's DPO-on-the-full-trajectory baseline
instead (independent safe and unsafe trajectories of each prompt, ipo_jax/pipeline/baselines.py)
through the same chunks, progress records and run.json.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any, Callable, Sequence

import jax
from tqdm.auto import tqdm

from ipo_jax.data.pairs import prompt_messages
from ipo_jax.distributed import shares_joined
from ipo_jax.data.prompts import PROMPT_KINDS, PromptFileError, load_prompt_records  # noqa: F401 (re-exported)
from ipo_jax.io import atomic_write_bytes, jsonl_bytes
from ipo_jax.judging import CueDetector, CueRequest, Judge, detect_all, judge_trajectories, trajectory_label
from ipo_jax.pipeline.steps import split_sentences, text_in_context, token_boundary_at_char
from ipo_jax.rollout import Policy, is_refusal, reasoning_span, split_completion

RECORD_FORMAT = "token-ids-1"  # in run.json: chunks written before pairs carried ids are never mixed in
BUILD_KINDS = ("ipo", "full_trajectory")
ENDED = ("stop", "eos")  # finish reasons of a generation that ended its turn ("eos": older policies' word)


def read_prompt_records(path: str | Path) -> list[dict[str, Any]]:
    """Prompt records from a JSONL file or any source of `ipo_jax.data.prompts.load_prompt_records`
    (default field mapping; kind defaults to harmful)."""
    return load_prompt_records(path)


def is_finished(text: str, finish_reason: str) -> bool:
    """Whether a trajectory can be a pair side: it ended on its own, its reasoning is closed and
    an answer follows (a cut-off or answerless trajectory is never safe, chosen or rejected)."""
    _, answer, closed = split_completion(text)
    return finish_reason in ENDED and closed and bool(answer.strip())


def prompt_text(record: dict[str, Any]) -> str:
    """The user's words, for judges and detectors."""
    return "\n".join(m["content"] for m in prompt_messages(record) if m["role"] == "user")


@dataclasses.dataclass(frozen=True)
class InterventionConfig:
    rounds: int = 3
    max_generations_per_prompt: int = 14  # the original sample included (paper: at most 14)
    chunk_prompts: int = 8  # prompts per resumable unit of work
    benign_candidates: int = 4
    seed: int = 0


def first_cue_chars(detector: CueDetector, items: Sequence[tuple[str, str, int]]):
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


def complete_by_forks(policy: Policy, jobs: Sequence[dict[str, Any]], seed: int) -> list:
    """`policy.complete` on the jobs' prompts (chat prompt + prefix_ids + chosen_ids) under
    `seed`, with the shared z[<h] prefilled once: consecutive jobs of one prompt record with the
    same prefix_ids are forks of it (``cut=len(prefix_ids)``, suffix the job's chosen ids, n=1),
    each with the row seed `complete` would give its row (``row_seed(seed, r)``, r its index in
    `jobs`), so the completions are the same as `complete`'s."""
    from ipo_jax.sampling import Fork, row_seed

    outs: list = []
    start = 0
    while start < len(jobs):
        first, end = jobs[start], start + 1
        while end < len(jobs) and jobs[end]["record"] is first["record"] and jobs[end]["prefix_ids"] == first["prefix_ids"]:
            end += 1
        forks = [Fork(cut=len(first["prefix_ids"]), suffix=tuple(job["chosen_ids"]), n=1, row_seeds=(row_seed(seed, start + k),))
                 for k, job in enumerate(jobs[start:end])]
        outs += [group[0] for group in policy.complete_forks(prompt_messages(first["record"]), first["prefix_ids"], forks, seed)]
        start = end
    return outs


def _verdict_dicts(verdicts) -> dict[str, dict]:
    return {part: v.to_dict() for part, v in verdicts.items()}


def _new_stats() -> dict[str, Any]:
    return dict(
        prompts=0, harmful=0, benign=0, judge_errors=0, safe_original=0, unsafe_original=0, cue_found=0,
        no_cue=0, cue_errors=0, generations=0, budget_exhausted=0, pairs=0, over_refusal_pairs=0,
        success_per_round={}, failed_after_rounds=0, truncated_generations=0,
        cut_off_original=0, cut_off_rejected=0, cut_off_chosen=0, cut_off_benign=0, prompt_too_long=0,
    )


def process_chunk(
    records: Sequence[dict[str, Any]],
    chunk_index: int,
    policy: Policy,
    judge: Judge,
    detector: CueDetector,
    triggers: Sequence[str],
    cfg: InterventionConfig,
) -> tuple[list[dict], list[dict], dict[str, Any]]:
    """(pairs, trajectories, stats) for one chunk of prompt records."""
    stats = _new_stats()
    pairs, trajectories = [], []
    seed = lambda stage: (cfg.seed * 1_000_003 + chunk_index) * 101 + stage  # noqa: E731
    harmful = [r for r in records if r["kind"] == "harmful"]
    benign = [r for r in records if r["kind"] == "benign"]
    stats.update(prompts=len(records), harmful=len(harmful), benign=len(benign))

    def verdicts_of(items):
        """[(label, verdicts)] for (record, completion text) items: ONE judge call for them all."""
        parts = [(prompt_text(record), *split_completion(text)[:2]) for record, text in items]
        return [(trajectory_label(v), v) for v in judge_trajectories(judge, parts)]

    originals = policy.complete([(prompt_messages(r), "") for r in harmful], seed(0)) if harmful else []
    stats["generations"] += len(originals)
    # active jobs: record, trigger index, round, prefix_ids (z[<h]), chosen_ids so far (trigger included),
    # rejected_ids (z[>=h]) and its finish reason, cue info, the original's verdicts
    jobs, used = [], {r["id"]: 1 for r in harmful}
    unsafe = []  # (record, original, verdicts) that go on to cue detection
    for record, original, (label, verdicts) in zip(harmful, originals, verdicts_of([(r, o.text) for r, o in zip(harmful, originals)])):
        stats["truncated_generations"] += original.finish_reason == "length"
        trajectories.append(dict(id=record["id"], kind="harmful", completion=original.text, completion_ids=list(original.ids),
                                 finish_reason=original.finish_reason, label=label, verdicts=_verdict_dicts(verdicts),
                                 policy=policy.policy_id))
        if not is_finished(original.text, original.finish_reason):
            # never a rejected side; unsafe ones are counted as such, the rest (often judge errors
            # on the missing answer) as cut off
            stats["unsafe_original" if label == "unsafe" else "cut_off_original"] += 1
            stats["cut_off_rejected"] += label == "unsafe"
            continue
        if label == "error":
            stats["judge_errors"] += 1
            continue
        if label == "safe":
            stats["safe_original"] += 1
            continue
        stats["unsafe_original"] += 1
        unsafe.append((record, original, verdicts))
    cues = first_cue_chars(detector, [(prompt_text(record), original.text, 0) for record, original, _ in unsafe])
    for (record, original, verdicts), (h, cue) in zip(unsafe, cues):
        if cue.is_error:
            stats["cue_errors"] += 1
            continue
        if h is None:
            stats["no_cue"] += 1
            continue
        stats["cue_found"] += 1
        ids = list(original.ids)
        t = token_boundary_at_char(policy.decode, ids, h)
        prefix = policy.decode(ids[:t])
        info = dict(prefix_ids=ids[:t], rejected_ids=ids[t:], rejected_finish=original.finish_reason, cue=cue.to_dict(),
                    verdicts=_verdict_dicts(verdicts))
        for t_index, trigger in enumerate(triggers):
            chosen_ids = policy.encode_text(text_in_context(prefix, trigger))
            jobs.append(dict(record=record, trigger_index=t_index, round=1, chosen_ids=chosen_ids, **info))

    # an intervention prompt (chat prompt + prefix + trigger, and in later rounds the kept part of
    # the last continuation) can outgrow the sampler's longest prompt: such jobs are dropped and counted
    limit = getattr(policy, "max_prompt_tokens", None)
    prompt_tokens: dict[str, int] = {}
    for round_no in range(1, cfg.rounds + 1):
        runnable = []
        for job in jobs:
            record_id = job["record"]["id"]
            if limit is not None:
                if record_id not in prompt_tokens:
                    prompt_tokens[record_id] = policy.prompt_tokens(prompt_messages(job["record"]))
                if prompt_tokens[record_id] + len(job["prefix_ids"]) + len(job["chosen_ids"]) > limit:
                    stats["prompt_too_long"] += 1
                    continue
            if used[job["record"]["id"]] >= cfg.max_generations_per_prompt:
                stats["budget_exhausted"] += 1
                continue
            used[job["record"]["id"]] += 1
            runnable.append(job)
        if not runnable:
            break
        if getattr(policy, "forks_prefix", False):  # z[<h] prefilled once per prompt, then each trigger
            outs = complete_by_forks(policy, runnable, seed(round_no))
        else:
            outs = policy.complete(
                [(prompt_messages(j["record"]), j["prefix_ids"] + j["chosen_ids"]) for j in runnable], seed(round_no)
            )
        stats["generations"] += len(outs)
        jobs, still_unsafe = [], []
        # the whole intervened trajectory, as ids and as their decode (what the judge reads)
        fulls = [j["prefix_ids"] + j["chosen_ids"] + list(out.ids) for j, out in zip(runnable, outs)]
        texts = [policy.decode(ids) for ids in fulls]
        judged = verdicts_of([(j["record"], text) for j, text in zip(runnable, texts)])
        for job, out, full_ids, full_text, (label, verdicts) in zip(runnable, outs, fulls, texts, judged):
            stats["truncated_generations"] += out.finish_reason == "length"
            prefix_ids = job["prefix_ids"]
            if label != "unsafe" and not is_finished(full_text, out.finish_reason):
                stats["cut_off_chosen"] += 1  # not unsafe so far, but cut off: never a chosen side
                continue
            if label == "safe":
                record = job["record"]
                chosen_ids = full_ids[len(prefix_ids) :]
                prefix = policy.decode(prefix_ids)
                pairs.append(dict(
                    id=f"{record['id']}/t{job['trigger_index']}/r{round_no}",
                    prompt_id=record["id"], prompt=record["prompt"], **({"system": record["system"]} if record.get("system") else {}),
                    prefix=prefix, chosen=policy.decode(chosen_ids), rejected=policy.decode(job["rejected_ids"]),
                    prefix_ids=prefix_ids, chosen_ids=chosen_ids, rejected_ids=job["rejected_ids"],
                    finish_reasons={"chosen": out.finish_reason, "rejected": job["rejected_finish"]},
                    h=dict(char=len(prefix), sentence=job["cue"]["index"], token=len(prefix_ids)),
                    trigger=triggers[job["trigger_index"]], trigger_index=job["trigger_index"], round=round_no, kind="intervention",
                    verdicts=dict(original=job["verdicts"], cue=job["cue"], intervened=_verdict_dicts(verdicts)),
                    policy=policy.policy_id, sampling=dataclasses.asdict(policy.sampling),
                ))
                stats["success_per_round"][str(round_no)] = stats["success_per_round"].get(str(round_no), 0) + 1
                continue
            if label == "error":
                stats["judge_errors"] += 1
                continue
            # still unsafe: intervene again at the first cue after the last trigger
            if round_no == cfg.rounds:
                stats["failed_after_rounds"] += 1
                continue
            still_unsafe.append((job, full_ids, full_text))
        # the next cue is looked for after the last trigger (the chosen ids so far)
        cues = first_cue_chars(detector, [(prompt_text(job["record"]), text, len(policy.decode(job["prefix_ids"] + job["chosen_ids"])))
                                          for job, _, text in still_unsafe])
        for (job, full_ids, _), (h2, cue2) in zip(still_unsafe, cues):
            if h2 is None:
                stats["failed_after_rounds"] += 1
                continue
            kept_from = len(job["prefix_ids"])
            t2 = max(token_boundary_at_char(policy.decode, full_ids, h2), kept_from + len(job["chosen_ids"]))
            trigger_ids = policy.encode_text(text_in_context(policy.decode(full_ids[:t2]), triggers[job["trigger_index"]]))
            jobs.append(dict(job, round=round_no + 1, chosen_ids=full_ids[kept_from:t2] + trigger_ids))

    if benign:
        candidates = policy.complete([(prompt_messages(r), "") for r in benign for _ in range(cfg.benign_candidates)], seed(99))
        stats["generations"] += len(candidates)
        k = cfg.benign_candidates
        judged = verdicts_of([(record, c.text) for i, record in enumerate(benign) for c in candidates[i * k : (i + 1) * k]])
        for i, record in enumerate(benign):
            mine = candidates[i * k : (i + 1) * k]
            helpful, refusals = [], []
            for c, (label, verdicts) in zip(mine, judged[i * k : (i + 1) * k]):
                answer = split_completion(c.text)[1]
                trajectories.append(dict(id=record["id"], kind="benign", completion=c.text, completion_ids=list(c.ids),
                                         finish_reason=c.finish_reason, label=label, refusal=is_refusal(answer),
                                         verdicts=_verdict_dicts(verdicts), policy=policy.policy_id))
                if not is_finished(c.text, c.finish_reason):
                    stats["cut_off_benign"] += 1  # neither a helpful nor a refusing side
                elif label == "error":
                    stats["judge_errors"] += 1
                elif is_refusal(answer):
                    refusals.append(c)
                elif label == "safe":
                    helpful.append(c)
            if helpful and refusals:
                chosen, rejected = helpful[0], refusals[0]
                pairs.append(dict(
                    id=f"{record['id']}/over-refusal", prompt_id=record["id"], prompt=record["prompt"],
                    **({"system": record["system"]} if record.get("system") else {}),
                    prefix="", chosen=chosen.text, rejected=rejected.text,
                    prefix_ids=[], chosen_ids=list(chosen.ids), rejected_ids=list(rejected.ids),
                    finish_reasons={"chosen": chosen.finish_reason, "rejected": rejected.finish_reason},
                    h=dict(char=0, sentence=0, token=0),
                    trigger=None, trigger_index=None, round=0, kind="over_refusal",
                    policy=policy.policy_id, sampling=dataclasses.asdict(policy.sampling),
                ))
                stats["over_refusal_pairs"] += 1
    stats["pairs"] = len(pairs)
    return pairs, trajectories, stats


# ---------------------------------------------------------------------------- files


class BuildPairsError(ValueError):
    """The output directory holds another run's work, or a chunk's files are inconsistent."""


def summarise(stats_list: Sequence[dict[str, Any]], kind: str = "ipo") -> dict[str, Any]:
    """Per-chunk counters summed, with the shares derived from them."""
    if kind != "ipo":  # the baselines' counters (ipo_jax/pipeline/baselines.py)
        total: dict[str, Any] = {}
        for s in stats_list:
            for k, v in s.items():
                total[k] = total.get(k, 0) + v
        judged = total.get("safe", 0) + total.get("unsafe", 0)
        total["unsafe_share"] = total.get("unsafe", 0) / judged if judged else None
        return dict(kind=kind, **total)
    total = _new_stats()
    for s in stats_list:
        for k, v in s.items():
            if k == "success_per_round":
                for r, n in v.items():
                    total[k][r] = total[k].get(r, 0) + n
            else:
                total[k] = total.get(k, 0) + v
    judged = total["safe_original"] + total["unsafe_original"]
    total["unsafe_share"] = total["unsafe_original"] / judged if judged else None
    total["cue_found_share"] = total["cue_found"] / total["unsafe_original"] if total["unsafe_original"] else None
    total["generations_per_prompt"] = total["generations"] / total["prompts"] if total["prompts"] else None
    return total


def run_manifest(records, policy, judge, detector, triggers, cfg: InterventionConfig, kind: str = "ipo",
                 samples: int | None = None) -> dict[str, Any]:
    """What the pairs of a run depend on; a resumed run must match it field for field."""
    prompts = json.dumps([{k: v for k, v in r.items() if k != "_line"} for r in records], sort_keys=True, ensure_ascii=False)
    sampling = getattr(policy, "sampling", None)
    return {
        "prompts_sha256": hashlib.sha256(prompts.encode("utf-8")).hexdigest(),
        "prompts": len(records),
        "policy": getattr(policy, "policy_id", type(policy).__name__),
        "sampling": dataclasses.asdict(sampling) if dataclasses.is_dataclass(sampling) else repr(sampling),
        "judge": getattr(judge, "name", type(judge).__name__),
        "cue_detector": getattr(detector, "name", type(detector).__name__),
        "triggers": list(triggers),
        "intervention": dataclasses.asdict(cfg),
        "record_format": RECORD_FORMAT,
        "build": {"kind": kind, "samples": samples if kind != "ipo" else None},
    }


def _check_or_write_manifest(out: Path, manifest: dict[str, Any], chunks: list, process_index: int,
                             provenance: dict[str, Any] | None = None) -> None:
    """Check a resumed run's run.json against `manifest` (every field but ``provenance``), or
    write it.  ``provenance`` maps each provenance id to its block (ipo_jax/provenance.py): a
    resume with another code version or policy endpoint adds its block, and its records name it."""
    path = out / "run.json"
    if path.is_file():
        try:
            previous = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise BuildPairsError(f"{path}: not valid JSON ({e}); remove it only if {out} holds no run you want to keep") from None
        changed = [f"{k}: was {previous.get(k)!r}, now {manifest[k]!r}" for k in manifest if previous.get(k) != manifest[k]]
        if changed:
            raise BuildPairsError(
                f"{out} holds pairs of another build-pairs run (see {path}); resuming would mix the two:\n  "
                + "\n  ".join(changed) + "\nrerun with the same settings, or choose a new out directory"
            )
        known = previous.get("provenance") if isinstance(previous.get("provenance"), dict) else {}
        if provenance is not None and provenance["id"] not in known and process_index == 0:
            previous["provenance"] = {**known, provenance["id"]: provenance}
            atomic_write_bytes(path, (json.dumps(previous, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))
        return
    if provenance is not None:
        manifest = {**manifest, "provenance": {provenance["id"]: provenance}}
    # A run from before run.json existed: its progress records name their prompts.
    for progress in sorted((out / "chunks").glob("progress-*.json")):
        try:
            done = json.loads(progress.read_text())
            index, ids = int(done["chunk"]), done["prompt_ids"]
        except (ValueError, KeyError, TypeError):
            continue  # unreadable: redone (see _chunk_is_done)
        if index >= len(chunks) or ids != [r["id"] for r in chunks[index]]:
            raise BuildPairsError(
                f"{progress}: chunk {index} of the run in {out} was built from other prompts or another chunk size; "
                "choose a new out directory"
            )
    if process_index == 0:
        atomic_write_bytes(path, (json.dumps(manifest, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))


def _chunk_files(chunks_dir: Path, i: int) -> dict[str, Path]:
    return {kind: chunks_dir / f"{kind}-{i:05d}.jsonl" for kind in ("pairs", "trajectories")}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _chunk_problem(chunks_dir: Path, i: int, prompt_ids: list[str]) -> str | None:
    """None when chunk i is complete: its progress record reads back, names these prompts, and
    every file it lists is there with the recorded sha256; else what is wrong."""
    progress = chunks_dir / f"progress-{i:05d}.json"
    if not progress.is_file():
        return "not done"
    try:
        done = json.loads(progress.read_text())
        recorded = done["files"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return f"{progress.name} is unreadable or from an older version"
    if done.get("prompt_ids") != prompt_ids:
        return f"{progress.name} names other prompts"
    for kind, path in _chunk_files(chunks_dir, i).items():
        if not path.is_file():
            return f"{path.name} is missing"
        if _sha256(path) != recorded.get(kind, {}).get("sha256"):
            return f"{path.name} does not match the sha256 in {progress.name} (cut short or altered)"
    return None


def build_pairs(
    records: Sequence[dict[str, Any]],
    out_dir: str | Path,
    policy: Policy,
    judge: Judge,
    detector: CueDetector,
    triggers: Sequence[str],
    cfg: InterventionConfig,
    *,
    process_index: int = 0,
    process_count: int = 1,
    on_chunk_done: Callable[[int], None] | None = None,
    kind: str = "ipo",
    samples: int = 8,
    judge_budget=None,
    provenance: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run (or resume) the intervention over all prompts; returns the summary.

    `judge_budget` (an `ipo_jax.judging.guard.ErrorBudget` shared by the guarded judge and
    detector): each chunk's judge failures are checked before the chunk is written, and a chunk
    over ``max_error_share`` stops the run (`JudgeFailedError`) without being marked done; the
    chunk's request counts join its stats.  `provenance` (``ipo_jax.provenance.stage_provenance``):
    kept in run.json, and each pair and trajectory record names it (``provenance`` key).

    Writes <out>/run.json, <out>/chunks/{pairs,trajectories}-NNNNN.jsonl and progress-NNNNN.json
    per chunk, then <out>/pairs.jsonl (all pairs, prompt-file order) and <out>/summary.json.
    kind "full_trajectory" builds the DPO baseline's pairs instead (`samples` trajectories per
    harmful prompt; ipo_jax/pipeline/baselines.py) through the same resumable chunks.
    """
    out = Path(out_dir)
    chunks_dir = out / "chunks"
    chunks = [records[i : i + cfg.chunk_prompts] for i in range(0, len(records), cfg.chunk_prompts)]
    chunks_dir.mkdir(parents=True, exist_ok=True)
    if kind not in BUILD_KINDS:
        raise ValueError(f"build_pairs.kind {kind!r}: expected one of {', '.join(BUILD_KINDS)}")
    if kind != "ipo" and (not isinstance(samples, int) or samples < 1):
        raise ValueError(f"build_pairs.samples {samples!r}: expected an integer >= 1")
    build_kind = kind  # (the file loop below reuses the name `kind`)
    manifest = run_manifest(records, policy, judge, detector, triggers, cfg, kind=build_kind, samples=samples)
    _check_or_write_manifest(out, manifest, chunks, process_index, provenance)
    if provenance is not None:
        from ipo_jax.provenance import record_provenance

        stamp = record_provenance(provenance)
    mine = [i for i in range(len(chunks)) if i % process_count == process_index]
    # temporary files of a killed run are never read; each process removes only its own ones
    stale = [p for i in mine for p in chunks_dir.glob(f".*-{i:05d}.*.tmp-*")]
    if process_index == 0:
        stale += [p for name in ("pairs.jsonl", "summary.json") for p in out.glob(f".{name}.tmp-*")]
    for path in stale:
        path.unlink(missing_ok=True)
    done = set()
    for i in mine:
        problem = _chunk_problem(chunks_dir, i, [r["id"] for r in chunks[i]])
        if problem is None:
            done.add(i)
        elif problem != "not done":
            print(f"chunk {i}: {problem}; redoing it")
    if done:
        print(f"resuming: {len(done)} of {len(mine)} chunks already done")
    # several JAX processes: leave only when every process has finished its chunks (one that fails
    # tells the others, which stop instead of waiting); then process 0 alone merges
    with shares_joined("build-pairs"):
        for i in tqdm([i for i in mine if i not in done], desc="build pairs", unit="chunk", disable=None):
            if judge_budget is not None:
                judge_budget.start_chunk(f"chunk {i}")
            if build_kind == "ipo":
                pairs, trajectories, stats = process_chunk(chunks[i], i, policy, judge, detector, triggers, cfg)
            else:
                from ipo_jax.pipeline.baselines import process_full_trajectory_chunk

                # seeds depend on (seed, chunk) only, as the intervention's, so a resumed chunk samples the same
                seed = (cfg.seed * 1_000_003 + i) * 101 + 77
                pairs, trajectories, stats = process_full_trajectory_chunk(chunks[i], policy, judge, samples=samples, seed=seed)
            if judge_budget is not None:  # raises before the chunk is written: a rerun redoes it
                stats.update(judge_budget.end_chunk())
            if provenance is not None:
                for row in (*pairs, *trajectories):
                    row["provenance"] = stamp
            files = {}
            for kind, rows in (("pairs", pairs), ("trajectories", trajectories)):
                data = jsonl_bytes(rows)
                atomic_write_bytes(_chunk_files(chunks_dir, i)[kind], data)
                files[kind] = {"sha256": hashlib.sha256(data).hexdigest(), "lines": len(rows)}
            progress = dict(chunk=i, prompt_ids=[r["id"] for r in chunks[i]], stats=stats, files=files)
            # written last: the chunk counts as done only when everything it lists is on disk
            atomic_write_bytes(chunks_dir / f"progress-{i:05d}.json", (json.dumps(progress) + "\n").encode("utf-8"))
            if on_chunk_done is not None:
                on_chunk_done(i)

    if jax.process_count() > 1 and process_index != 0:
        return dict(merged_by_process=0)
    missing = [i for i in range(len(chunks)) if not (chunks_dir / f"progress-{i:05d}.json").is_file()]
    if missing and jax.process_count() > 1:  # every process reported its chunks done: one is lost
        raise BuildPairsError(f"{chunks_dir}: chunks {missing[:20]} have no progress record although every process "
                              "reported its chunks done (is out a directory all processes share?); rerun to redo them")
    if missing:  # other processes still working: only process 0 merges, once everything is there
        return dict(pending_chunks=missing)
    all_pairs, stats = [], []
    for i in range(len(chunks)):
        problem = _chunk_problem(chunks_dir, i, [r["id"] for r in chunks[i]])
        if problem is not None:  # another process's chunk damaged after it finished
            raise BuildPairsError(f"{chunks_dir}: chunk {i}: {problem}; rerun to redo it")
        stats.append(json.loads((chunks_dir / f"progress-{i:05d}.json").read_text())["stats"])
        with open(_chunk_files(chunks_dir, i)["pairs"], encoding="utf-8") as f:
            all_pairs += [json.loads(line) for line in f if line.strip()]
    summary = summarise(stats, build_kind)
    if process_index == 0:
        # through this module's name, so a fault-injection test can cut any of these writes short
        atomic_write_bytes(out / "pairs.jsonl", jsonl_bytes(all_pairs))
        atomic_write_bytes(out / "summary.json", (json.dumps(summary, indent=2) + "\n").encode("utf-8"))
    return summary
