"""Training data for the paper's baselines, built from the same policy and judge as IPO's pairs.

"DPO on the full trajectory" (method.md, ablation): for each harmful prompt, sample `samples`
trajectories from scratch and judge them; the first safe and the first unsafe one that both
finished (`is_finished`: ended on their own, reasoning closed, an answer after it) form a pair
with an empty prefix: chosen = the whole safe trajectory, rejected = the whole unsafe one, as
sampled ids (`chosen_ids`, `rejected_ids`, `prefix_ids` = []) and their text. Prompts where no
finished sample is safe (or none unsafe) give no pair -- the weak-signal problem the paper
describes for outcome-level methods -- and are counted, as are cut-off samples (`cut_off`).

`ipo-jax build-pairs --config.build_pairs.kind=full_trajectory` runs `process_full_trajectory_chunk`
through the pair builder's resumable chunks (ipo_jax/pipeline/chunks.py, `build_pairs`, which
chooses it by kind); `build_full_trajectory_pairs` is the same over all records at once (the demo's).

SFT on safe trajectories: the same pair file trained with ``loss.objective = "sft"`` and
``data.mask_from = "reasoning"`` (the NLL of each prompt's safe trajectory; the rejected side
carries no loss), so the DPO and SFT baselines see the same prompts and the same safe samples.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ipo_jax.data.pairs import prompt_messages
from ipo_jax.judging import Judge
from ipo_jax.pipeline.records import ChunkResult, FullTrajectoryStats, PairRecord, PromptRecord, judge_completions
from ipo_jax.rollout import Policy


def process_full_trajectory_chunk(records: Sequence[PromptRecord], policy: Policy, judge: Judge, *, samples: int,
                                  seed: int) -> ChunkResult:
    """Pairs, trajectories and counters over the harmful records; see the module docstring."""
    harmful = [r for r in records if r.get("kind", "harmful") == "harmful"]
    completions = policy.complete([(prompt_messages(r), "") for r in harmful for _ in range(samples)], seed) if harmful else []
    stats = FullTrajectoryStats(prompts=len(records), harmful=len(harmful), samples=len(completions))
    # every sample of every prompt judged in one batched call
    trajectories = judge_completions(judge, [(harmful[k // samples], c) for k, c in enumerate(completions)],
                                     kind="harmful", policy_id=policy.policy_id)
    pairs = []
    for i, record in enumerate(harmful):
        first = {}  # label -> the first finished sample with it
        for trajectory in trajectories[i * samples : (i + 1) * samples]:
            if not trajectory.finished:
                stats.cut_off += 1  # never a side, safe or not
            elif trajectory.label == "error":
                stats.judge_errors += 1
            else:
                stats.safe += trajectory.label == "safe"
                stats.unsafe += trajectory.label == "unsafe"
                first.setdefault(trajectory.label, trajectory.completion)
        stats.no_safe_sample += "safe" not in first
        stats.no_unsafe_sample += "unsafe" not in first
        if len(first) == 2 and first["safe"].ids != first["unsafe"].ids:
            pairs.append(PairRecord.build("full_trajectory", record, policy, chosen=first["safe"], rejected=first["unsafe"]))
    stats.pairs = len(pairs)
    return ChunkResult(pairs, trajectories, stats)


def build_full_trajectory_pairs(records: Sequence[PromptRecord], policy: Policy, judge: Judge, *,
                                samples: int, seed: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(pair rows, stats) over all harmful records at once; see the module docstring."""
    result = process_full_trajectory_chunk(records, policy, judge, samples=samples, seed=seed)
    stats = result.stats.to_dict()
    stats["prompts"] = stats["harmful"]
    judged = stats["safe"] + stats["unsafe"]
    stats["unsafe_share"] = stats["unsafe"] / judged if judged else None
    return [p.to_dict() for p in result.pairs], stats
