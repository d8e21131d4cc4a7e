"""The sampler's public values: its settings (`SamplingConfig`), what a caller asks for beyond
plain prompts (`Fork`, per-row seeds), and what it gets back (`Generation`).

Host values only (numpy, no jax): the device side (`programs`, `draw`, `layout`) never appears
in what a caller hands in or gets back.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

FINISH_REASONS = ("stop", "length")

SEED_LIMIT = 1 << 31  # row seeds are 31-bit, so PRNGKey(seed) is the same traced as int32 or eager


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    temperature: float = 0.6  # 0 = greedy (paper's evaluation decoding: 0.6, top-p 0.95)
    top_p: float = 0.95  # 1.0 = off
    top_k: int = 0  # 0 = off
    max_new_tokens: int = 1024
    seed: int = 0

    def __post_init__(self):
        if self.temperature < 0 or not 0 < self.top_p <= 1 or self.top_k < 0 or self.max_new_tokens < 1:
            raise ValueError(f"bad sampling settings: {self}")


@dataclasses.dataclass(frozen=True)
class SamplerSettings:
    """The sampler's batching defaults: `Sampler`'s keyword defaults and the config's ``sampler``
    section (ipo_jax/rollout/config.py, which adds help and range checks) are these."""

    batch_size: int = 8
    chunk_tokens: int = 32
    max_prompt_length: int = 4096
    continuous_batching: bool = True


def row_seed(seed: int, row: int) -> int:
    """The default seed of row `row` of a `generate` call with `SamplingConfig.seed` `seed`: a
    stable hash of the pair (numpy's SeedSequence), a non-negative 31-bit int. Row r draws
    from PRNGKey(row_seed(seed, r)) whatever batch it lands in."""
    state = np.random.SeedSequence([int(seed) % (1 << 64), int(row) % (1 << 64)]).generate_state(1, np.uint32)
    return int(state[0]) % SEED_LIMIT


def checked_row_seeds(row_seeds: Sequence[int] | None, count: int, seed: int, name: str) -> list[int]:
    """`count` row seeds: the given ones checked (ints in [0, 2**31), one per row; ValueError
    naming `name` otherwise), or by default `row_seed(seed, r)` for r in range(count)."""
    if row_seeds is None:
        return [row_seed(seed, r) for r in range(count)]
    row_seeds = list(row_seeds)
    if len(row_seeds) != count:
        raise ValueError(f"{name}: {len(row_seeds)} seeds for {count} rows")
    bad = [s for s in row_seeds if isinstance(s, bool) or not isinstance(s, (int, np.integer))
           or not 0 <= s < SEED_LIMIT]
    if bad:
        raise ValueError(f"{name}: seeds must be ints in [0, 2**31), got {bad[0]!r}")
    return [int(s) for s in row_seeds]


class ForkError(ValueError):
    """A `Fork` that does not fit its prefix (cut out of range, empty prompt, seeds miscounted)."""


@dataclasses.dataclass(frozen=True)
class Fork:
    """Continue `n` times from `prefix[:cut] + suffix` (`Sampler.generate_forks`).

    row_seeds: one seed per continuation (each in [0, 2**31)); None = `row_seed(config.seed, r)`
    with r the continuation's row in the flattened, fork-major list of every fork's rows.
    """

    cut: int
    suffix: tuple[int, ...] = ()
    n: int = 1
    row_seeds: tuple[int, ...] | None = None


@dataclasses.dataclass
class Generation:
    """One generated row.

    finish_reason is "stop" when the row ended on an end-of-sequence id (`end_id`) or on a stop
    string, "length" when it reached max_new_tokens (an end id sampled past the limit does not
    count). `completion_ids` are the ids exactly as sampled, without padding: `tokens` plus the
    end id when the row ended on one, so a continuation from them retraces the sampled path.
    """

    tokens: list[int]  # the new tokens, without the prompt (and without the end-of-sequence id)
    finish_reason: str  # 'stop' | 'length' (FINISH_REASONS)
    text: str | None = None  # decoded `tokens`, when the sampler has a decode function
    end_id: int | None = None  # the end-of-sequence id the row ended on (finish 'stop'), else None

    @property
    def completion_ids(self) -> list[int]:
        return list(self.tokens) + ([self.end_id] if self.end_id is not None else [])
