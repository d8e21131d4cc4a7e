"""Batched generation with a KV cache: left-padded prefill, then decoding in jitted chunks.

Shapes are bucketed (prompt lengths to a few buckets, the batch to a fixed size), and the
sampling settings (temperature, top-p, top-k) are traced values, so a pipeline run compiles
one prefill and one decode program per prompt bucket, whatever the settings.

Decoding runs `chunk_tokens` steps per device call inside `lax.while_loop` (leaving early when
every row is done); between chunks the host checks stop strings, so per-row EOS and stop
strings both end a row. Randomness: one key per call from `seed`, folded with the step.
Continuing from a partial reasoning is just a longer prompt: pass prompt + partial ids.

Each `Generation` says how it ended (finish_reason "stop": an end-of-sequence id or a stop
string; "length": max_new_tokens) and carries the ids as sampled (`completion_ids`, the end id
included when the row ended on one), so callers keep the exact token path.
"""

from ipo_jax.sampling.sampler import FINISH_REASONS, Generation, Sampler, SamplingConfig

__all__ = ["FINISH_REASONS", "Generation", "Sampler", "SamplingConfig"]
