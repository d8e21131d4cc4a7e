"""Rollouts as the GRPO step's batch: host numpy arrays [micro_batches, rows, length] (the layout
is ipo_jax/grpo/step.py's), and the group-normalised advantages they carry.

Each row is one prompt's ids followed by one completion's ids (as sampled, the end id included
when the completion ended on one), right-padded with segment 0. The loss mask marks the positions
whose next token is a completion token. Rows are in group order (prompt-major: the G completions
of prompt 0, then of prompt 1, ...); rows added to fill the last micro-batch or to split over the
mesh are padding (no loss token, advantage 0).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ipo_jax.buckets import bucket_length, default_buckets


def row_length(prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]], max_length: int,
               buckets: Sequence[int] | None = None) -> int:
    """The bucketed length of the longest prompt + completion (so a run compiles one step per bucket)."""
    longest = max(len(p) + len(c) for p, c in zip(prompts, completions))
    if longest > max_length:
        raise ValueError(f"a rollout of {longest} tokens (prompt + completion) exceeds the longest row, {max_length}")
    return bucket_length(longest, list(buckets or default_buckets(max_length, smallest=32)))


def pack_rollouts(prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]], advantages,
                  micro_batches: int, length: int, rows_multiple: int = 1, old_logp=None) -> dict[str, np.ndarray]:
    """The step's batch of rows prompts[i] + completions[i] (module docstring).

    advantages [R]: one per row; micro_batches: M (the rows are padded to M x r, r a multiple of
    `rows_multiple`: the batch mesh axes); old_logp: [R, length] or None (zeros)."""
    rows = len(prompts)
    if len(completions) != rows or len(advantages) != rows:
        raise ValueError(f"{rows} prompts, {len(completions)} completions and {len(advantages)} advantages: "
                         "expected one of each per row")
    per_micro = -(-rows // micro_batches)
    per_micro = -(-per_micro // rows_multiple) * rows_multiple
    total = per_micro * micro_batches
    shape = (total, length)
    tokens = np.zeros(shape, np.int32)
    segment_ids = np.zeros(shape, np.int32)
    loss_mask = np.zeros(shape, bool)
    for i, (p, c) in enumerate(zip(prompts, completions)):
        ids = list(p) + list(c)
        if len(ids) > length:
            raise ValueError(f"row {i}: {len(ids)} tokens, longer than the batch's {length}")
        if not p or not c:
            raise ValueError(f"row {i}: an empty prompt or completion")
        tokens[i, : len(ids)] = ids
        segment_ids[i, : len(ids)] = 1
        loss_mask[i, len(p) - 1 : len(ids) - 1] = True  # position t predicts token t + 1
    positions = np.where(segment_ids > 0, np.arange(length, dtype=np.int32)[None], 0).astype(np.int32)
    targets = np.zeros(shape, np.int32)
    targets[:, :-1] = tokens[:, 1:]
    adv = np.zeros(total, np.float32)
    adv[:rows] = np.asarray(advantages, np.float32)
    old = np.zeros(shape, np.float32)
    if old_logp is not None:
        old[:rows] = np.asarray(old_logp, np.float32)
    batch = {"tokens": tokens, "positions": positions, "segment_ids": segment_ids, "targets": targets,
             "loss_mask": loss_mask, "old_logp": old, "advantages": adv}
    return {k: v.reshape(micro_batches, per_micro, *v.shape[1:]) for k, v in batch.items()}


__all__ = ["pack_rollouts", "row_length"]
