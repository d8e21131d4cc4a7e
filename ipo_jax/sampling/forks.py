"""The host side of the prefix fork (`Sampler.generate_forks`): one `ForkRow` per continuation,
checked against its prefix, and the host arrays of the shared prefix and of a batch of rows.

Layout: the prefix's KV cache is one row, shared by every row of a decode batch
(`shared_prefix`), each row seeing the prefix slots before its cut only; a row's own tokens --
the last token before its cut (so the first draw comes from a fresh forward, whatever the cut)
and its suffix -- go into the row's own cache, left-padded, their positions continuing from the
cut, followed by what it decodes.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from ipo_jax.sampling.programs import PromptRows
from ipo_jax.sampling.types import Fork, ForkError, row_seed


@dataclasses.dataclass(frozen=True)
class ForkRow:
    """Continuation `continuation` of forks[`fork`]: it reads the first `kept` prefix tokens from
    the shared cache and runs its `own` tokens itself, drawing from PRNGKey(`seed`)."""

    fork: int
    continuation: int
    kept: int
    own: tuple[int, ...]
    seed: int


def _check_fork(i: int, fork, prefix_length: int) -> None:
    if not isinstance(fork, Fork):
        raise ForkError(f"forks[{i}]: expected a Fork, got {type(fork).__name__}")
    if not 0 <= fork.cut <= prefix_length:
        raise ForkError(f"forks[{i}]: cut {fork.cut} is outside the prefix of {prefix_length} tokens")
    if fork.n < 1:
        raise ForkError(f"forks[{i}]: n must be at least 1, got {fork.n}")
    if fork.cut == 0 and not fork.suffix:
        raise ForkError(f"forks[{i}]: empty prompt (cut 0 and no suffix): a prompt needs at least one token")
    if fork.row_seeds is not None and len(fork.row_seeds) != fork.n:
        raise ForkError(f"forks[{i}]: {len(fork.row_seeds)} row_seeds for n={fork.n} continuations")


def fork_rows(prefix: Sequence[int], forks: Sequence[Fork], seed: int) -> list[ForkRow]:
    """Every fork's continuations, fork-major; a continuation without a given seed gets
    `row_seed(seed, r)` with r its place in that order. ForkError for a fork that does not fit."""
    rows: list[ForkRow] = []
    for i, fork in enumerate(forks):
        _check_fork(i, fork, len(prefix))
        kept = max(fork.cut - 1, 0)
        own = tuple(prefix[kept : fork.cut]) + tuple(int(t) for t in fork.suffix)
        for j in range(fork.n):
            row = fork.row_seeds[j] if fork.row_seeds is not None else row_seed(seed, len(rows))
            rows.append(ForkRow(i, j, kept, own, row))
    return rows


def prefix_arrays(prefix: Sequence[int], shared: int, length: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """The one-row tokens and segment ids [1,length] of the prefix's first `shared` tokens."""
    tokens = np.full((1, length), pad_id, np.int32)
    tokens[0, :shared] = prefix[:shared]
    return tokens, (np.arange(length) < shared).astype(np.int32)[None]


def fork_batch(batch: list[ForkRow], rows: int, length: int, pad_id: int) -> tuple[np.ndarray, PromptRows]:
    """The cuts [rows] (prefix slots each row sees) and the own tokens of `batch` as a `rows`-row
    batch left-padded to `length`; padding rows repeat the first row and are dead."""
    live = len(batch)
    batch = batch + [batch[0]] * (rows - live)
    tokens = np.full((rows, length), pad_id, np.int32)
    segment_ids = np.zeros((rows, length), np.int32)
    positions = np.zeros((rows, length), np.int32)
    for b, row in enumerate(batch):
        tokens[b, length - len(row.own) :] = row.own
        segment_ids[b, length - len(row.own) :] = 1
        positions[b, length - len(row.own) :] = row.kept + np.arange(len(row.own))
    cuts = np.asarray([row.kept for row in batch], np.int32)
    seeds = np.asarray([row.seed for row in batch], np.int32)
    return cuts, PromptRows(tokens, positions, segment_ids, seeds, np.arange(rows) < live)
