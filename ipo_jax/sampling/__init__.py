"""Batched generation with a KV cache: left-padded prefill, then decoding in jitted chunks.

Shapes are bucketed (prompt lengths to a few buckets, the batch to a fixed size), and the
sampling settings (temperature, top-p, top-k) are traced values, so a pipeline run compiles
one prefill and one decode program per prompt bucket, whatever the settings.

Decoding runs `chunk_tokens` steps per device call inside `lax.while_loop` (leaving early when
every row is done); between chunks the host checks stop strings, so per-row EOS and stop
strings both end a row. Randomness is per row: row r of a call draws from PRNGKey(row seed),
draw t from fold_in(that key, t), the row seed `row_seed(config.seed, r)` unless the caller
passes `row_seeds`; so a row's tokens do not depend on the batch it is decoded in.
Continuing from a partial reasoning is just a longer prompt: pass prompt + partial ids.

`Sampler.generate_forks(prefix, [Fork(cut, suffix, n), ...])` prefills a shared prefix once and
continues from `prefix[:cut] + suffix` for each fork (CSR's sentence positions, intervention
triggers), giving the same tokens as `generate` on the spelled-out prompts with the same seeds.
With a mesh, the KV cache is made straight into its shardings (rows over data x fsdp, KV heads
over tensor where they divide) and the parameters are used as sharded for training.

Each `Generation` says how it ended (finish_reason "stop": an end-of-sequence id or a stop
string; "length": max_new_tokens) and carries the ids as sampled (`completion_ids`, the end id
included when the row ended on one), so callers keep the exact token path.

Modules, from the caller down:
    sampler.py       `Sampler`, the public face: checks a request, hands it on
    scheduler.py     the host's decode loops: `Row` slots, static and continuous batches
    forks.py         a shared prefix's fork rows and their host arrays
    programs.py      the jitted prefill / fork / decode-chunk / insert programs over `DecodeState`
    layout.py        the shardings of rows and caches on a mesh
    shared_prefix.py the decoder's forward with a one-row shared prefix cache
    draw.py          temperature / top-k / top-p and the per-row key streams
    types.py         `SamplingConfig`, `Fork`, `Generation`, `row_seed` (host-only)
Bucket lengths come from `ipo_jax.buckets`, which training's batches use too.
"""

from ipo_jax.sampling.layout import SamplerShardingError
from ipo_jax.sampling.sampler import Sampler
from ipo_jax.sampling.types import (
    FINISH_REASONS,
    Fork,
    ForkError,
    Generation,
    SamplingConfig,
    row_seed,
)

__all__ = [
    "FINISH_REASONS",
    "Fork",
    "ForkError",
    "Generation",
    "Sampler",
    "SamplerShardingError",
    "SamplingConfig",
    "row_seed",
]
