"""The `Sampler`: the public face of generation (see the package docstring). It checks what it is
asked for and hands the work to the device programs (`programs`), laid out by `layout`, and the
host scheduler (`scheduler`: static or continuous batches; `forks`: a shared prefix's rows).

The names callers import from here -- the settings, result and fork types (`types`) and the
token draws (`draw`) -- stay importable from this module.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
from jax.sharding import Mesh

from ipo_jax.buckets import bucket_length, default_buckets, power_of_two_buckets
from ipo_jax.models.decoder import Decoder, KVCache
from ipo_jax.sampling.draw import filter_logits, sample_logits, sample_weights
from ipo_jax.sampling.forks import ForkRow, fork_batch, fork_rows, prefix_arrays
from ipo_jax.sampling.layout import Layout, SamplerShardingError
from ipo_jax.sampling.programs import DrawSettings, Programs, draw_settings
from ipo_jax.sampling.scheduler import Ending, Scheduler
from ipo_jax.sampling.types import (
    FINISH_REASONS,
    Fork,
    ForkError,
    Generation,
    SamplerSettings,
    SamplingConfig,
    checked_row_seeds,
    row_seed,
)

__all__ = [
    "FINISH_REASONS", "Fork", "ForkError", "Generation", "Sampler", "SamplerShardingError", "SamplingConfig",
    "filter_logits", "row_seed", "sample_logits", "sample_weights",
]


class Sampler:
    """Generate from token-id prompts with one model; compiled programs are reused across calls.

    With a `mesh`, the parameters are used as they are sharded (as loaded for training) and
    every per-row array -- the KV cache above all -- is made inside the jitted programs straight
    into its sharding: rows over the logical 'batch' axis (data x fsdp), KV heads over
    'kv_heads' (tensor) when the mesh divides them, else replicated (`cache_shardings`).
    """

    def __init__(
        self,
        model: Decoder,
        *,
        eos_ids: Sequence[int],
        pad_id: int = 0,
        batch_size: int = SamplerSettings.batch_size,  # the config's sampler section (one default)
        max_prompt_length: int = SamplerSettings.max_prompt_length,
        prompt_buckets: Sequence[int] | None = None,
        chunk_tokens: int = SamplerSettings.chunk_tokens,
        mesh: Mesh | None = None,
        decode: Callable[[list[int]], str] | None = None,
        unstack_layers: bool | None = None,
        continuous_batching: bool = SamplerSettings.continuous_batching,
    ):
        """unstack_layers: keep a per-layer copy of the block weights for decoding (one more copy
        of the weights in memory), so a decode step reads each weight once instead of slicing it
        out of the stacked array. Default: on CPU, where XLA copies such slices every step.

        continuous_batching: when `generate` has more prompts than `batch_size`, a row that
        finishes takes the next prompt at the next chunk boundary (its prompt prefilled apart and
        written into the row's part of the cache) instead of idling until the batch's longest row
        ends; the cache then runs as a ring (`KVCache`)."""
        self.cfg = model.cfg
        devices = model.embed[...].devices()
        if unstack_layers is None:
            unstack_layers = all(d.platform == "cpu" for d in devices)
        self.eos_ids = np.asarray(sorted(set(eos_ids)), np.int32)
        if self.eos_ids.size == 0:
            raise ValueError("eos_ids must name at least one end-of-sequence token")
        self.pad_id, self.batch_size, self.chunk_tokens = pad_id, batch_size, chunk_tokens
        self.buckets = list(prompt_buckets or default_buckets(max_prompt_length, smallest=32))
        # a fork's own tokens (the last prefix token + its suffix) are usually short: CSR has none
        self.suffix_buckets = power_of_two_buckets(max(self.buckets))
        self.decode, self.mesh, self.continuous_batching = decode, mesh, continuous_batching
        self.layout = Layout(self.cfg, mesh, next(iter(devices)))
        self.layout.check_batch(batch_size)
        self.programs = Programs(model, self.layout, self.eos_ids, pad_id, unstack_layers)
        self.scheduler = Scheduler(self.programs, batch_size, chunk_tokens, self.buckets, pad_id,
                                   self.layout.row_devices)

    @property
    def graphdef(self):
        return self.programs.graphdef

    @property
    def state(self):
        """The model's parameter state the programs run with (as sharded for training)."""
        return self.programs.state

    @property
    def layers(self):
        return self.programs.layers

    @property
    def replicated(self):
        return self.layout.replicated

    def cache_shardings(self, batch: int, max_len: int) -> KVCache:
        """The shardings of a `batch`-row cache of `max_len` slots (`Layout.cache_shardings`)."""
        return self.layout.cache_shardings(batch, max_len)

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        config: SamplingConfig,
        stop_strings: Sequence[str] = (),
        row_seeds: Sequence[int] | None = None,
    ) -> list[Generation]:
        """One `Generation` per prompt, in order.

        Row r draws from its own key stream PRNGKey(row_seeds[r]) (default `row_seed(config.seed,
        r)`), draw t with fold_in(key, t), so its tokens depend on its prompt, its seed and the
        settings only -- not on the batch size, the padding rows or the other prompts.
        """
        ending = self._ending(config, stop_strings)
        row_seeds = checked_row_seeds(row_seeds, len(prompts), config.seed, "generate: row_seeds")
        if any(len(p) == 0 for p in prompts):
            raise ValueError("empty prompt: every prompt needs at least one token")
        self._check_context(max((len(p) for p in prompts), default=0), config.max_new_tokens)
        settings = draw_settings(config)
        if self.continuous_batching and len(prompts) > self.batch_size:
            return self.scheduler.run_continuous(prompts, row_seeds, settings, ending)
        results: list[Generation] = []
        for start in range(0, len(prompts), self.batch_size):
            stop = start + self.batch_size
            results += self.scheduler.run_static(prompts[start:stop], row_seeds[start:stop], settings, ending)
        return results

    def generate_forks(
        self, prefix: Sequence[int], forks: Sequence[Fork], config: SamplingConfig, stop_strings: Sequence[str] = ()
    ) -> list[list[Generation]]:
        """For each fork, `fork.n` continuations of `prefix[:fork.cut] + fork.suffix`; the prefix
        is prefilled once.

        The same tokens as ``generate([prefix[:f.cut] + list(f.suffix) for f in forks for _ in
        range(f.n)], config, row_seeds=...)`` (up to float rounding), flattened row r (fork-major)
        seeded with ``f.row_seeds[j]`` when given, else ``row_seed(config.seed, r)``.

        The prefix's cache is one row shared by every decode row (`forks` has the layout). Rows
        are batched in order of cut (a row's tokens do not depend on its batch), and a batch
        attends only to the prefix slots up to the bucket of its largest cut.
        """
        ending = self._ending(config, stop_strings)
        prefix = [int(t) for t in prefix]
        rows = fork_rows(prefix, forks, config.seed)
        results: list[list[Generation | None]] = [[None] * fork.n for fork in forks]
        if not rows:
            return results
        checked_row_seeds([r.seed for r in rows], len(rows), config.seed, "generate_forks: Fork.row_seeds")
        self._check_context(max(r.kept + len(r.own) for r in rows), config.max_new_tokens)
        rows.sort(key=lambda r: (r.kept, len(r.own)))
        shared = max(r.kept for r in rows)
        prefix_cache = self.programs.prefill_prefix(
            *prefix_arrays(prefix, shared, bucket_length(max(shared, 1), self.buckets), self.pad_id))
        settings = draw_settings(config)
        for start in range(0, len(rows), self.batch_size):
            batch = rows[start : start + self.batch_size]
            for row, generation in zip(batch, self._fork_batch(prefix_cache, batch, settings, ending)):
                results[row.fork][row.continuation] = generation
        return results

    def _fork_batch(self, prefix_cache: KVCache, batch: list[ForkRow], settings: DrawSettings,
                    ending: Ending) -> list[Generation]:
        """One batch of fork rows: their own tokens prefilled on the shared prefix, then decoded."""
        length = bucket_length(max(len(r.own) for r in batch), self.suffix_buckets)
        shared = bucket_length(max(max(r.kept for r in batch), 1), self.buckets)
        cuts, inputs = fork_batch(batch, self.batch_size, length, self.pad_id)
        max_len = length + self.scheduler.decode_slots(ending.max_new_tokens)
        state = self.programs.fork(prefix_cache, cuts, inputs, settings, shared=shared, max_len=max_len)
        return self.scheduler.decode(state, len(batch), settings, ending)

    def _check_context(self, longest_prompt: int, max_new_tokens: int) -> None:
        """A row may not run past the model's context: beyond max_position_embeddings the model
        never saw a position in training, so its tokens there would be silently off-distribution."""
        context = self.cfg.max_position_embeddings
        if longest_prompt + max_new_tokens > context:
            raise ValueError(
                f"a prompt of {longest_prompt:,} tokens + {max_new_tokens:,} new tokens (sampling.max_new_tokens) needs "
                f"{longest_prompt + max_new_tokens:,} positions, more than the model's context of {context:,} "
                "(max_position_embeddings); lower sampling.max_new_tokens or sampler.max_prompt_length")

    def _ending(self, config: SamplingConfig, stop_strings: Sequence[str]) -> Ending:
        if stop_strings and self.decode is None:
            raise ValueError("stop_strings need the sampler's `decode` function (token ids -> text)")
        return Ending(frozenset(self.eos_ids.tolist()), config.max_new_tokens, tuple(stop_strings), self.decode)
