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
a helpful one is preferred over a refusal when both occur (prefix empty).

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

Pairs are text; the trainer re-tokenises prefix and suffix as separate pieces.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any, Callable, Sequence

from tqdm.auto import tqdm

from ipo_jax.data.pairs import prompt_messages
from ipo_jax.data.records import RecordFileError, read_jsonl_records
from ipo_jax.io import atomic_write_bytes, jsonl_bytes
from ipo_jax.judging import CueDetector, CueRequest, Judge, detect_all, judge_trajectories, trajectory_label
from ipo_jax.pipeline.steps import split_sentences
from ipo_jax.rollout import Policy, is_refusal, reasoning_span, split_completion

PROMPT_KINDS = ("harmful", "benign")


class PromptFileError(RecordFileError):
    pass


def read_prompt_records(path: str | Path) -> list[dict[str, Any]]:
    """Prompt JSONL: `id`, `prompt` (string or chat messages), optional `kind` (harmful | benign)."""
    records = read_jsonl_records(path, {"id": str, "prompt": (str, list)}, non_empty=("prompt",), kind="prompt", error=PromptFileError)
    for r in records:
        r.setdefault("kind", "harmful")
        if r["kind"] not in PROMPT_KINDS:
            raise PromptFileError(f"{path}:{r['_line']} (id {r['id']!r}): field 'kind' is {r['kind']!r}; expected one of {PROMPT_KINDS}")
    return records


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


def _verdict_dicts(verdicts) -> dict[str, dict]:
    return {part: v.to_dict() for part, v in verdicts.items()}


def _new_stats() -> dict[str, Any]:
    return dict(
        prompts=0, harmful=0, benign=0, judge_errors=0, safe_original=0, unsafe_original=0, cue_found=0,
        no_cue=0, cue_errors=0, generations=0, budget_exhausted=0, pairs=0, over_refusal_pairs=0,
        success_per_round={}, failed_after_rounds=0, truncated_generations=0,
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
    # active jobs: (record, trigger index, round, chosen text so far, h, original completion, cue info, verdicts)
    jobs, used = [], {r["id"]: 1 for r in harmful}
    unsafe = []  # (record, original, verdicts) that go on to cue detection
    for record, original, (label, verdicts) in zip(harmful, originals, verdicts_of([(r, o.text) for r, o in zip(harmful, originals)])):
        stats["truncated_generations"] += original.finish_reason == "length"
        trajectories.append(dict(id=record["id"], kind="harmful", completion=original.text, finish_reason=original.finish_reason,
                                 label=label, verdicts=_verdict_dicts(verdicts), policy=policy.policy_id))
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
        info = dict(original=original.text, h=h, cue=cue.to_dict(), verdicts=_verdict_dicts(verdicts))
        for t_index, trigger in enumerate(triggers):
            jobs.append(dict(record=record, trigger_index=t_index, round=1, chosen=trigger.rstrip() + " ", **info))

    for round_no in range(1, cfg.rounds + 1):
        runnable = []
        for job in jobs:
            if used[job["record"]["id"]] >= cfg.max_generations_per_prompt:
                stats["budget_exhausted"] += 1
                continue
            used[job["record"]["id"]] += 1
            runnable.append(job)
        if not runnable:
            break
        outs = policy.complete(
            [(prompt_messages(j["record"]), j["original"][: j["h"]] + j["chosen"]) for j in runnable], seed(round_no)
        )
        stats["generations"] += len(outs)
        jobs, still_unsafe = [], []
        judged = verdicts_of([(j["record"], j["original"][: j["h"]] + j["chosen"] + out.text) for j, out in zip(runnable, outs)])
        for job, out, (label, verdicts) in zip(runnable, outs, judged):
            stats["truncated_generations"] += out.finish_reason == "length"
            prefix = job["original"][: job["h"]]
            chosen = job["chosen"] + out.text
            if label == "safe":
                record = job["record"]
                pairs.append(dict(
                    id=f"{record['id']}/t{job['trigger_index']}/r{round_no}",
                    prompt_id=record["id"], prompt=record["prompt"], **({"system": record["system"]} if record.get("system") else {}),
                    prefix=prefix, chosen=chosen, rejected=job["original"][job["h"] :],
                    h=dict(char=job["h"], sentence=job["cue"]["index"], token=policy.count_tokens(prefix)),
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
            still_unsafe.append((job, prefix, prefix + chosen))
        cues = first_cue_chars(detector, [(prompt_text(job["record"]), full, len(prefix) + len(job["chosen"]))
                                          for job, prefix, full in still_unsafe])
        for (job, prefix, full), (h2, cue2) in zip(still_unsafe, cues):
            if h2 is None:
                stats["failed_after_rounds"] += 1
                continue
            trigger = triggers[job["trigger_index"]].rstrip() + " "
            jobs.append(dict(job, round=round_no + 1, chosen=full[len(prefix) : h2] + trigger))

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
                trajectories.append(dict(id=record["id"], kind="benign", completion=c.text, finish_reason=c.finish_reason,
                                         label=label, refusal=is_refusal(answer), verdicts=_verdict_dicts(verdicts), policy=policy.policy_id))
                if label == "error":
                    stats["judge_errors"] += 1
                elif is_refusal(answer):
                    refusals.append(c.text)
                elif label == "safe" and answer.strip():
                    helpful.append(c.text)
            if helpful and refusals:
                pairs.append(dict(
                    id=f"{record['id']}/over-refusal", prompt_id=record["id"], prompt=record["prompt"],
                    prefix="", chosen=helpful[0], rejected=refusals[0], h=dict(char=0, sentence=0, token=0),
                    trigger=None, trigger_index=None, round=0, kind="over_refusal",
                    policy=policy.policy_id, sampling=dataclasses.asdict(policy.sampling),
                ))
                stats["over_refusal_pairs"] += 1
    stats["pairs"] = len(pairs)
    return pairs, trajectories, stats


# ---------------------------------------------------------------------------- files


class BuildPairsError(ValueError):
    """The output directory holds another run's work, or a chunk's files are inconsistent."""


def summarise(stats_list: Sequence[dict[str, Any]]) -> dict[str, Any]:
    total = _new_stats()
    for s in stats_list:
        for k, v in s.items():
            if k == "success_per_round":
                for r, n in v.items():
                    total[k][r] = total[k].get(r, 0) + n
            else:
                total[k] += v
    judged = total["safe_original"] + total["unsafe_original"]
    total["unsafe_share"] = total["unsafe_original"] / judged if judged else None
    total["cue_found_share"] = total["cue_found"] / total["unsafe_original"] if total["unsafe_original"] else None
    total["generations_per_prompt"] = total["generations"] / total["prompts"] if total["prompts"] else None
    return total


def run_manifest(records, policy, judge, detector, triggers, cfg: InterventionConfig) -> dict[str, Any]:
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
    }


def _check_or_write_manifest(out: Path, manifest: dict[str, Any], chunks: list, process_index: int) -> None:
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
        return
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
) -> dict[str, Any]:
    """Run (or resume) the intervention over all prompts; returns the summary.

    Writes <out>/run.json, <out>/chunks/{pairs,trajectories}-NNNNN.jsonl and progress-NNNNN.json
    per chunk, then <out>/pairs.jsonl (all pairs, prompt-file order) and <out>/summary.json.
    """
    out = Path(out_dir)
    chunks_dir = out / "chunks"
    chunks = [records[i : i + cfg.chunk_prompts] for i in range(0, len(records), cfg.chunk_prompts)]
    chunks_dir.mkdir(parents=True, exist_ok=True)
    _check_or_write_manifest(out, run_manifest(records, policy, judge, detector, triggers, cfg), chunks, process_index)
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
    for i in tqdm([i for i in mine if i not in done], desc="build pairs", unit="chunk", disable=None):
        pairs, trajectories, stats = process_chunk(chunks[i], i, policy, judge, detector, triggers, cfg)
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

    missing = [i for i in range(len(chunks)) if not (chunks_dir / f"progress-{i:05d}.json").is_file()]
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
    summary = summarise(stats)
    if process_index == 0:
        # through this module's name, so a fault-injection test can cut any of these writes short
        atomic_write_bytes(out / "pairs.jsonl", jsonl_bytes(all_pairs))
        atomic_write_bytes(out / "summary.json", (json.dumps(summary, indent=2) + "\n").encode("utf-8"))
    return summary
