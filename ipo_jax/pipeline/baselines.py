"""Training data for the paper's baselines, built from the same policy and judge as IPO's pairs.

`build_full_trajectory_pairs`: for "DPO on the full trajectory" (method.md, ablation).  For each
harmful prompt, sample `samples` trajectories from scratch and judge them; the first safe and
the first unsafe one form a pair with an empty prefix (chosen = the whole safe trajectory,
rejected = the whole unsafe one).  Prompts where every sample is unsafe (or every one safe)
give no pair -- the weak-signal problem the paper describes for outcome-level methods -- and
are counted.  SFT on safe trajectories needs no extra data: it trains on IPO's pairs with the
loss over prefix + chosen (``data.mask_from = "reasoning"``, ``loss.objective = "sft"``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ipo_jax.data.pairs import prompt_messages
from ipo_jax.pipeline.intervene import prompt_text
from ipo_jax.judging import Judge, judge_trajectories, trajectory_label
from ipo_jax.rollout import Policy, split_completion


def build_full_trajectory_pairs(records: Sequence[dict[str, Any]], policy: Policy, judge: Judge, *,
                                samples: int, seed: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(pairs, stats) over the harmful records; see the module docstring."""
    harmful = [r for r in records if r.get("kind", "harmful") == "harmful"]
    completions = policy.complete([(prompt_messages(r), "") for r in harmful for _ in range(samples)], seed)
    pairs: list[dict[str, Any]] = []
    stats = dict(prompts=len(harmful), samples=len(completions), safe=0, unsafe=0, judge_errors=0,
                 no_safe_sample=0, no_unsafe_sample=0, pairs=0)
    # every sample of every prompt judged in one batched call
    judged = judge_trajectories(judge, [(prompt_text(harmful[k // samples]), *split_completion(c.text)[:2])
                                        for k, c in enumerate(completions)])
    for i, record in enumerate(harmful):
        first: dict[str, str] = {}
        for completion, verdicts in zip(completions[i * samples : (i + 1) * samples], judged[i * samples : (i + 1) * samples]):
            label = trajectory_label(verdicts)
            stats["judge_errors" if label == "error" else label] += 1
            if label != "error":
                first.setdefault(label, completion.text)
        if "safe" not in first:
            stats["no_safe_sample"] += 1
        if "unsafe" not in first:
            stats["no_unsafe_sample"] += 1
        if len(first) == 2 and first["safe"] != first["unsafe"]:
            pairs.append(dict(id=f"{record['id']}/full", prompt_id=record["id"], prompt=record["prompt"], prefix="",
                              chosen=first["safe"], rejected=first["unsafe"], kind="full_trajectory",
                              policy=policy.policy_id))
    stats["pairs"] = len(pairs)
    judged = stats["safe"] + stats["unsafe"]
    stats["unsafe_share"] = stats["unsafe"] / judged if judged else None
    return pairs, stats
