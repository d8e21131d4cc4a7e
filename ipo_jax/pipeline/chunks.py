"""Chunks, run.json and resuming for `build_pairs`; the pair kinds it builds, chosen by a table.

Work is split into chunks of prompts (file order). A chunk's files are written atomically
(temporary name, fsync, rename) and its progress record last, holding the sha256 of each file;
so a killed run restarted with the same config skips finished chunks and redoes the unfinished
one from scratch, with the same seeds: the same pair set, no duplicates, none lost. A chunk
file that does not match its progress record (cut short or altered after the fact) is never
read as complete: the chunk is reported and redone. Sampling seeds depend on (seed, chunk,
stage), not on the run's history (`ipo_jax.pipeline.records.chunk_seed`).

<out>/run.json records what the pairs depend on (prompts, policy id, sampling, judge, cue
detector, triggers, intervention settings); resuming into an `out` whose run.json differs is an
error naming the fields, so chunks of another run are never mixed in. Other stages' files in
`out` (trajectories.jsonl of `sample`, csr/) are left alone.

Files: <out>/run.json; <out>/chunks/{pairs,trajectories}-NNNNN.jsonl and progress-NNNNN.json per
chunk (the progress record names the chunk's prompts, its counters and each file's sha256 and
line count); then <out>/pairs.jsonl (all pairs, prompt-file order) and <out>/summary.json. With
several JAX processes each takes chunks i, i + N, ... and process 0 merges once all are done.

Pair kinds (`PAIR_KINDS`, kind -> builder and summary): "ipo", IPO's intervened pairs and
over-refusal pairs (`ipo_jax.pipeline.intervene.process_chunk`), and "full_trajectory", the DPO
baseline's (`ipo_jax.pipeline.baselines.process_full_trajectory_chunk`). This module calls the
builders; they never import it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
from tqdm.auto import tqdm

from ipo_jax.distributed import shares_joined
from ipo_jax.io import atomic_write_bytes, jsonl_bytes
from ipo_jax.judging import CueDetector, Judge
from ipo_jax.judging.records import name_of
from ipo_jax.pipeline.baselines import process_full_trajectory_chunk
from ipo_jax.pipeline.intervene import InterventionConfig, process_chunk
from ipo_jax.pipeline.records import (
    FULL_TRAJECTORY_STAGE,
    ChunkResult,
    ChunkStats,
    FullTrajectoryStats,
    PromptRecord,
    chunk_seed,
)
from ipo_jax.provenance import record_provenance
from ipo_jax.rollout import Policy

logger = logging.getLogger(__name__)

RECORD_FORMAT = "token-ids-1"  # in run.json: chunks written before pairs carried ids are never mixed in
FILE_KINDS = ("pairs", "trajectories")  # a chunk's files


class BuildPairsError(ValueError):
    """The output directory holds another run's work, or a chunk's files are inconsistent."""


@dataclasses.dataclass(frozen=True)
class BuildInputs:
    """What a pair builder takes besides its chunk."""

    policy: Policy
    judge: Judge
    detector: CueDetector
    triggers: Sequence[str]
    cfg: InterventionConfig
    samples: int  # full_trajectory: trajectories sampled per harmful prompt


def _ipo_chunk(records: Sequence[PromptRecord], index: int, inputs: BuildInputs) -> ChunkResult:
    return process_chunk(records, index, inputs.policy, inputs.judge, inputs.detector, inputs.triggers, inputs.cfg)


def _full_trajectory_chunk(records: Sequence[PromptRecord], index: int, inputs: BuildInputs) -> ChunkResult:
    seed = chunk_seed(inputs.cfg.seed, index, FULL_TRAJECTORY_STAGE)  # (seed, chunk) only, as the intervention's
    return process_full_trajectory_chunk(records, inputs.policy, inputs.judge, samples=inputs.samples, seed=seed)


@dataclasses.dataclass(frozen=True)
class PairKind:
    build: Callable[[Sequence[PromptRecord], int, BuildInputs], ChunkResult]  # (chunk, chunk index, inputs)
    summary: Callable[[Sequence[dict[str, Any]]], dict[str, Any]]  # the chunks' counters -> summary.json


PAIR_KINDS: dict[str, PairKind] = {
    "ipo": PairKind(_ipo_chunk, ChunkStats.summary),
    "full_trajectory": PairKind(_full_trajectory_chunk, FullTrajectoryStats.summary),
}
BUILD_KINDS = tuple(PAIR_KINDS)


def summarise(stats_list: Sequence[dict[str, Any]], kind: str = "ipo") -> dict[str, Any]:
    """Per-chunk counters summed, with the shares derived from them."""
    return PAIR_KINDS[kind].summary(stats_list)


# ------------------------------------------------------------------------------ run.json


def run_manifest(records, policy: Policy, judge: Judge, detector: CueDetector, triggers, cfg: InterventionConfig,
                 kind: str = "ipo", samples: int | None = None) -> dict[str, Any]:
    """What the pairs of a run depend on; a resumed run must match it field for field."""
    prompts = json.dumps([{k: v for k, v in r.items() if k != "_line"} for r in records], sort_keys=True, ensure_ascii=False)
    return {
        "prompts_sha256": hashlib.sha256(prompts.encode("utf-8")).hexdigest(),
        "prompts": len(records),
        "policy": policy.policy_id,
        "sampling": dataclasses.asdict(policy.sampling),
        "judge": name_of(judge),
        "cue_detector": name_of(detector),
        "triggers": list(triggers),
        "intervention": dataclasses.asdict(cfg),
        "record_format": RECORD_FORMAT,
        "build": {"kind": kind, "samples": samples if kind != "ipo" else None},
    }


def _write_json(path: Path, body: dict[str, Any]) -> None:
    atomic_write_bytes(path, (json.dumps(body, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))


def check_or_write_manifest(out: Path, manifest: dict[str, Any], chunks: list, process_index: int,
                            provenance: dict[str, Any] | None = None) -> None:
    """Check a resumed run's run.json against `manifest` (every field but ``provenance``), or
    write it.  ``provenance`` maps each provenance id to its block (ipo_jax/provenance.py): a
    resume with another code version or policy endpoint adds its block, and its records name it."""
    path = out / "run.json"
    if not path.is_file():
        _check_legacy_progress(out, chunks)
        if process_index == 0:
            _write_json(path, manifest if provenance is None else {**manifest, "provenance": {provenance["id"]: provenance}})
        return
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
        _write_json(path, {**previous, "provenance": {**known, provenance["id"]: provenance}})


def _check_legacy_progress(out: Path, chunks: list) -> None:
    """A run from before run.json existed: its progress records name their prompts."""
    for progress in sorted((out / "chunks").glob("progress-*.json")):
        try:
            done = json.loads(progress.read_text())
            index, ids = int(done["chunk"]), done["prompt_ids"]
        except (ValueError, KeyError, TypeError):
            continue  # unreadable: redone (see chunk_problem)
        if index >= len(chunks) or ids != [r["id"] for r in chunks[index]]:
            raise BuildPairsError(
                f"{progress}: chunk {index} of the run in {out} was built from other prompts or another chunk size; "
                "choose a new out directory"
            )


# -------------------------------------------------------------------------------- chunks


def chunk_files(chunks_dir: Path, i: int) -> dict[str, Path]:
    return {kind: chunks_dir / f"{kind}-{i:05d}.jsonl" for kind in FILE_KINDS}


def progress_path(chunks_dir: Path, i: int) -> Path:
    return chunks_dir / f"progress-{i:05d}.json"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def chunk_problem(chunks_dir: Path, i: int, prompt_ids: list[str]) -> str | None:
    """None when chunk i is complete: its progress record reads back, names these prompts, and
    every file it lists is there with the recorded sha256; else what is wrong."""
    progress = progress_path(chunks_dir, i)
    if not progress.is_file():
        return "not done"
    try:
        done = json.loads(progress.read_text())
        recorded = done["files"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return f"{progress.name} is unreadable or from an older version"
    if done.get("prompt_ids") != prompt_ids:
        return f"{progress.name} names other prompts"
    for kind, path in chunk_files(chunks_dir, i).items():
        if not path.is_file():
            return f"{path.name} is missing"
        if _sha256(path) != recorded.get(kind, {}).get("sha256"):
            return f"{path.name} does not match the sha256 in {progress.name} (cut short or altered)"
    return None


def _remove_stale_temporaries(out: Path, mine: Sequence[int], process_index: int) -> None:
    """Temporary files of a killed run are never read; each process removes only its own ones."""
    chunks_dir = out / "chunks"
    stale = [p for i in mine for p in chunks_dir.glob(f".*-{i:05d}.*.tmp-*")]
    if process_index == 0:
        stale += [p for name in ("pairs.jsonl", "summary.json") for p in out.glob(f".{name}.tmp-*")]
    for path in stale:
        path.unlink(missing_ok=True)


def _finished_chunks(chunks_dir: Path, chunks: list, mine: Sequence[int]) -> set[int]:
    """This process's chunks that are complete; a damaged one is reported (and so redone)."""
    done = set()
    for i in mine:
        problem = chunk_problem(chunks_dir, i, [r["id"] for r in chunks[i]])
        if problem is None:
            done.add(i)
        elif problem != "not done":
            logger.warning("chunk %d: %s; redoing it", i, problem)
    if done:
        logger.info("resuming: %d of %d chunks already done", len(done), len(mine))
    return done


def _write_chunk(chunks_dir: Path, i: int, chunk: Sequence[PromptRecord], result: ChunkResult,
                 stats: dict[str, Any], stamp: dict[str, Any] | None) -> None:
    """The chunk's files, then its progress record (last: the chunk counts as done only when
    everything it lists is on disk)."""
    files = {}
    rows = {"pairs": [p.to_dict() for p in result.pairs], "trajectories": [t.to_dict() for t in result.trajectories]}
    for kind in FILE_KINDS:
        if stamp is not None:
            for row in rows[kind]:
                row["provenance"] = stamp
        data = jsonl_bytes(rows[kind])
        # through this module's name, so a fault-injection test can cut any of these writes short
        atomic_write_bytes(chunk_files(chunks_dir, i)[kind], data)
        files[kind] = {"sha256": hashlib.sha256(data).hexdigest(), "lines": len(rows[kind])}
    progress = dict(chunk=i, prompt_ids=[r["id"] for r in chunk], stats=stats, files=files)
    atomic_write_bytes(progress_path(chunks_dir, i), (json.dumps(progress) + "\n").encode("utf-8"))


def _merge(out: Path, chunks: list, kind: str, process_index: int) -> dict[str, Any]:
    """Process 0: every chunk checked, pairs.jsonl and summary.json written; the summary."""
    chunks_dir = out / "chunks"
    missing = [i for i in range(len(chunks)) if not progress_path(chunks_dir, i).is_file()]
    if missing and jax.process_count() > 1:  # every process reported its chunks done: one is lost
        raise BuildPairsError(f"{chunks_dir}: chunks {missing[:20]} have no progress record although every process "
                              "reported its chunks done (is out a directory all processes share?); rerun to redo them")
    if missing:  # other processes still working: only process 0 merges, once everything is there
        return dict(pending_chunks=missing)
    all_pairs, stats = [], []
    for i in range(len(chunks)):
        problem = chunk_problem(chunks_dir, i, [r["id"] for r in chunks[i]])
        if problem is not None:  # another process's chunk damaged after it finished
            raise BuildPairsError(f"{chunks_dir}: chunk {i}: {problem}; rerun to redo it")
        stats.append(json.loads(progress_path(chunks_dir, i).read_text())["stats"])
        with open(chunk_files(chunks_dir, i)["pairs"], encoding="utf-8") as f:
            all_pairs += [json.loads(line) for line in f if line.strip()]
    summary = summarise(stats, kind)
    if process_index == 0:
        atomic_write_bytes(out / "pairs.jsonl", jsonl_bytes(all_pairs))
        atomic_write_bytes(out / "summary.json", (json.dumps(summary, indent=2) + "\n").encode("utf-8"))
    return summary


def build_pairs(
    records: Sequence[PromptRecord],
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
    """Run (or resume) the pair builder of `kind` over all prompts; returns the summary.

    `judge_budget` (an `ipo_jax.judging.guard.ErrorBudget` shared by the guarded judge and
    detector): each chunk's judge failures are checked before the chunk is written, and a chunk
    over ``max_error_share`` stops the run (`JudgeFailedError`) without being marked done; the
    chunk's request counts join its stats.  `provenance` (``ipo_jax.provenance.stage_provenance``):
    kept in run.json, and each pair and trajectory record names it (``provenance`` key).
    kind "full_trajectory" builds the DPO baseline's pairs (`samples` trajectories per harmful
    prompt). Files: the module docstring.
    """
    if kind not in PAIR_KINDS:
        raise ValueError(f"build_pairs.kind {kind!r}: expected one of {', '.join(BUILD_KINDS)}")
    if kind != "ipo" and (not isinstance(samples, int) or samples < 1):
        raise ValueError(f"build_pairs.samples {samples!r}: expected an integer >= 1")
    out = Path(out_dir)
    chunks_dir = out / "chunks"
    chunks = [records[i : i + cfg.chunk_prompts] for i in range(0, len(records), cfg.chunk_prompts)]
    chunks_dir.mkdir(parents=True, exist_ok=True)
    manifest = run_manifest(records, policy, judge, detector, triggers, cfg, kind=kind, samples=samples)
    check_or_write_manifest(out, manifest, chunks, process_index, provenance)
    stamp = record_provenance(provenance) if provenance is not None else None
    mine = [i for i in range(len(chunks)) if i % process_count == process_index]
    _remove_stale_temporaries(out, mine, process_index)
    done = _finished_chunks(chunks_dir, chunks, mine)
    inputs = BuildInputs(policy, judge, detector, triggers, cfg, samples)
    # several JAX processes: leave only when every process has finished its chunks (one that fails
    # tells the others, which stop instead of waiting); then process 0 alone merges
    with shares_joined("build-pairs"):
        for i in tqdm([i for i in mine if i not in done], desc="build pairs", unit="chunk", disable=None):
            if judge_budget is not None:
                judge_budget.start_chunk(f"chunk {i}")
            result = PAIR_KINDS[kind].build(chunks[i], i, inputs)
            stats = result.stats.to_dict()
            if judge_budget is not None:  # raises before the chunk is written: a rerun redoes it
                stats.update(judge_budget.end_chunk())
            _write_chunk(chunks_dir, i, chunks[i], result, stats, stamp)
            if on_chunk_done is not None:
                on_chunk_done(i)
    if jax.process_count() > 1 and process_index != 0:
        return dict(merged_by_process=0)
    return _merge(out, chunks, kind, process_index)


__all__ = ["BUILD_KINDS", "PAIR_KINDS", "BuildInputs", "BuildPairsError", "PairKind", "build_pairs", "chunk_problem",
           "run_manifest", "summarise"]
