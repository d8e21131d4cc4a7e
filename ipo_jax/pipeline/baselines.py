"""Training data for the paper's baselines, built from the same policy and judge as IPO's pairs.

"DPO on the full trajectory" (method.md, ablation): for each harmful prompt, sample `samples`
trajectories from scratch and judge them; the first safe and the first unsafe one that both
finished (`is_finished`: ended on their own, reasoning closed, an answer after it) form a pair
with an empty prefix: chosen = the whole safe trajectory, rejected = the whole unsafe one, as
sampled ids (`chosen_ids`, `rejected_ids`, `prefix_ids` = []) and their text. Prompts where no
finished sample is safe (or none unsafe) give no pair -- the weak-signal problem the paper
describes for outcome-level methods -- and are counted, as are cut-off samples (`cut_off`).

`ipo-jax build-pairs --config.build_pairs.kind=full_trajectory` runs `process_full_trajectory_chunk`
through the pair builder's resumable chunks (ipo_jax/pipeline/intervene.py, `build_pairs`);
`build_full_trajectory_pairs` is the same over all records at once (the demo's).

SFT on safe trajectories: the same pair file trained with ``loss.objective = "sft"`` and
``data.mask_from = "reasoning"`` (the NLL of each prompt's safe trajectory; the rejected side
carries no loss), so the DPO and SFT baselines see the same prompts and the same safe samples.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ipo_jax.data.pairs import prompt_messages
from ipo_jax.pipeline.intervene import is_finished, prompt_text
from ipo_jax.judging import Judge, judge_trajectories, trajectory_label
from ipo_jax.rollout import Policy, split_completion


def process_full_trajectory_chunk(records: Sequence[dict[str, Any]], policy: Policy, judge: Judge, *, samples: int,
                                  seed: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]:
    """(pairs, trajectories, stats) over the harmful records; see the module docstring."""
    harmful = [r for r in records if r.get("kind", "harmful") == "harmful"]
    completions = policy.complete([(prompt_messages(r), "") for r in harmful for _ in range(samples)], seed) if harmful else []
    pairs: list[dict[str, Any]] = []
    trajectories: list[dict[str, Any]] = []
    stats = dict(prompts=len(records), harmful=len(harmful), samples=len(completions), safe=0, unsafe=0, judge_errors=0,
                 cut_off=0, no_safe_sample=0, no_unsafe_sample=0, pairs=0)
    # every sample of every prompt judged in one batched call
    judged = judge_trajectories(judge, [(prompt_text(harmful[k // samples]), *split_completion(c.text)[:2])
                                        for k, c in enumerate(completions)])
    for i, record in enumerate(harmful):
        first: dict[str, Any] = {}
        for completion, verdicts in zip(completions[i * samples : (i + 1) * samples], judged[i * samples : (i + 1) * samples]):
            label = trajectory_label(verdicts)
            trajectories.append(dict(id=record["id"], kind="harmful", completion=completion.text,
                                     completion_ids=list(completion.ids), finish_reason=completion.finish_reason, label=label,
                                     verdicts={part: v.to_dict() for part, v in verdicts.items()}, policy=policy.policy_id))
            if not is_finished(completion.text, completion.finish_reason):
                stats["cut_off"] += 1  # never a side, safe or not
                continue
            stats["judge_errors" if label == "error" else label] += 1
            if label != "error":
                first.setdefault(label, completion)
        if "safe" not in first:
            stats["no_safe_sample"] += 1
        if "unsafe" not in first:
            stats["no_unsafe_sample"] += 1
        if len(first) == 2 and first["safe"].ids != first["unsafe"].ids:
            chosen, rejected = first["safe"], first["unsafe"]
            pairs.append(dict(id=f"{record['id']}/full", prompt_id=record["id"], prompt=record["prompt"],
                              **({"system": record["system"]} if record.get("system") else {}),
                              prefix="", chosen=chosen.text, rejected=rejected.text,
                              prefix_ids=[], chosen_ids=list(chosen.ids), rejected_ids=list(rejected.ids),
                              finish_reasons={"chosen": chosen.finish_reason, "rejected": rejected.finish_reason},
                              kind="full_trajectory", policy=policy.policy_id))
    stats["pairs"] = len(pairs)
    return pairs, trajectories, stats


def build_full_trajectory_pairs(records: Sequence[dict[str, Any]], policy: Policy, judge: Judge, *,
                                samples: int, seed: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(pairs, stats) over all harmful records at once; see the module docstring."""
    pairs, _, stats = process_full_trajectory_chunk(records, policy, judge, samples=samples, seed=seed)
    stats["prompts"] = stats["harmful"]
    judged = stats["safe"] + stats["unsafe"]
    stats["unsafe_share"] = stats["unsafe"] / judged if judged else None
    return pairs, stats
