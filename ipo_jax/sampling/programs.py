"""The sampler's device side: the jitted prefill, shared-prefix, fork, decode-chunk and insert
programs over a typed decode state (`DecodeState`, a pytree dataclass).

A program takes the model's parameter state (and its per-layer copy, `layers`) as arguments, so
the weights are not baked into the compiled code; its shapes are fixed by the prompt bucket, the
batch and the cache length, and the sampling settings are traced, so one compiled program serves
every call with those shapes. Every state a program returns is pinned to its shardings
(`Layout`), so each chunk meets the same layout and the same compiled program.
"""

from __future__ import annotations

from typing import Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ipo_jax.models.decoder import Decoder, KVCache
from ipo_jax.sampling.draw import row_keys, sample_logits, step_keys
from ipo_jax.sampling.layout import Layout
from ipo_jax.sampling.shared_prefix import hidden_states_with_prefix
from ipo_jax.sampling.types import SamplingConfig

DrawSettings = tuple  # (temperature float32, top_p float32, top_k int32), traced


def draw_settings(config: SamplingConfig) -> DrawSettings:
    return (jnp.float32(config.temperature), jnp.float32(config.top_p), jnp.int32(config.top_k))


@flax.struct.dataclass
class PromptRows:
    """A batch of left-padded prompts (every row ends at the last column) and its row seeds.
    tokens, positions, segment_ids [B,T] (segment 0 = padding); seeds [B]; live [B] (False: a
    padding row, done from the start)."""

    tokens: jax.Array
    positions: jax.Array
    segment_ids: jax.Array
    seeds: jax.Array
    live: jax.Array


@flax.struct.dataclass
class SharedPrefix:
    """A fork batch's view of a shared prefix: one row of keys and values per layer
    ([1,K,P,H], every row reads the same copy) and which slots each row sees ([B,P])."""

    k: tuple[jax.Array, ...]
    v: tuple[jax.Array, ...]
    visible: jax.Array


@flax.struct.dataclass
class DecodeState:
    """Everything a decode chunk carries from one step to the next, per row [B, ...].

    token: the last drawn id; position: the next token's position; done: the row ended (an end
    id, a padding row, or stopped by the host); keys: the row's PRNG key ([B,2]); count: draws
    so far after the first (draw t uses fold_in(key, t)); prefix: a fork batch's shared prefix.
    """

    cache: KVCache
    token: jax.Array
    position: jax.Array
    done: jax.Array
    keys: jax.Array
    count: jax.Array
    prefix: SharedPrefix | None = None

    @property
    def rows(self) -> int:
        return self.token.shape[0]


class Programs:
    """The compiled programs of one model, laid out by `layout`; `state` and `layers` are the
    parameters they run with (`layers`: an unstacked per-layer copy, or None)."""

    def __init__(self, model: Decoder, layout: Layout, eos_ids: Sequence[int], pad_id: int, unstack_layers: bool):
        self.graphdef, self.state = nnx.split(model)
        self.layers = model.layer_states() if unstack_layers else None
        self.layout, self.pad_id = layout, pad_id
        self.eos_ids = np.asarray(eos_ids, np.int32)
        self._prefill = jax.jit(self._prefill_fn, static_argnames=("max_len",))
        self._prefill_prefix = jax.jit(self._prefill_prefix_fn, static_argnames=("max_len",))
        self._fork = jax.jit(self._fork_fn, static_argnames=("shared", "max_len"))
        self._decode_chunk = jax.jit(self._decode_fn, static_argnames=("steps",), donate_argnums=(2,))
        self._insert = jax.jit(self._insert_fn, donate_argnums=(0,))

    # ------------------------------------------------------------------ host entry points

    def prefill(self, rows: PromptRows, settings: DrawSettings, max_len: int) -> DecodeState:
        """Run host prompt rows into a fresh cache of `max_len` slots and draw each row's first token."""
        rows = jax.tree.map(self.layout.put_rows, rows)
        return self._prefill(self.state, self.layers, rows, settings, max_len=max_len)

    def prefill_prefix(self, tokens: np.ndarray, segment_ids: np.ndarray) -> KVCache:
        """The one-row cache of a fork's shared prefix (tokens [1,P]; no token drawn)."""
        put = self.layout.put_replicated
        positions = np.arange(tokens.shape[1], dtype=np.int32)[None]
        return self._prefill_prefix(self.state, self.layers, put(tokens), put(positions), put(segment_ids),
                                    max_len=tokens.shape[1])

    def fork(self, prefix: KVCache, cuts: np.ndarray, rows: PromptRows, settings: DrawSettings, shared: int,
             max_len: int) -> DecodeState:
        """Prefill fork rows (their own tokens) on top of the first `shared` slots of `prefix`."""
        cuts, rows = self.layout.put_rows(cuts), jax.tree.map(self.layout.put_rows, rows)
        return self._fork(self.state, self.layers, prefix, cuts, rows, settings, shared=shared, max_len=max_len)

    def decode_chunk(self, state: DecodeState, settings: DrawSettings, steps: int) -> tuple[DecodeState, np.ndarray]:
        """Up to `steps` decode steps (`state` is donated); the new state and the drawn ids
        [B, steps] (-1 where a row was done)."""
        state, out = self._decode_chunk(self.state, self.layers, state, settings, steps=steps)
        return state, np.asarray(out)

    def insert(self, running: DecodeState, new: DecodeState, rows: np.ndarray) -> DecodeState:
        """Write the prefilled `new` into rows `rows` of the running ring state (donated)."""
        return self._insert(running, new, self.layout.put_replicated(rows))

    def stop_rows(self, state: DecodeState, stopped: np.ndarray) -> DecodeState:
        """`state` with the rows the host ended (`stopped` [B] bool) marked done."""
        return state.replace(done=state.done | self.layout.put_rows(stopped))

    # ------------------------------------------------------------------ jitted bodies

    def _pin(self, state: DecodeState) -> DecodeState:
        """The state constrained to its shardings, so every chunk meets the same layout."""
        layout = self.layout
        if layout.mesh is None:
            return state
        prefix = state.prefix
        if prefix is not None:
            prefix = SharedPrefix(tuple(map(layout.kv, prefix.k)), tuple(map(layout.kv, prefix.v)),
                                  layout.rows(prefix.visible))
        rows = jax.tree.map(layout.rows, state.replace(cache=None, prefix=None))
        shardings = rows.replace(cache=layout.cache_shardings(state.rows, state.cache.max_len), prefix=prefix)
        return jax.lax.with_sharding_constraint(state, shardings)

    @staticmethod
    def _forward(model, layers, tokens, positions, segment_ids, cache, prefix: SharedPrefix | None):
        """The cached forward; with a shared `prefix` the rows attend to it too."""
        if prefix is None:
            return model.hidden_states(tokens, positions, segment_ids, cache=cache, layers=layers)
        return hidden_states_with_prefix(model, tokens, positions, segment_ids, cache, prefix.k, prefix.v,
                                         prefix.visible, layers=layers)

    def _start(self, model, layers, cache, rows: PromptRows, settings, prefix: SharedPrefix | None = None):
        """Run the prompt rows through the cache and draw each row's first token (draw 0)."""
        hidden, cache = self._forward(model, layers, rows.tokens, rows.positions, rows.segment_ids, cache, prefix)
        keys = row_keys(rows.seeds)
        first = sample_logits(model.logits(hidden[:, -1]), step_keys(keys, 0), *settings)
        done = jnp.isin(first, jnp.asarray(self.eos_ids)) | ~rows.live
        count = jnp.zeros(rows.tokens.shape[:1], jnp.int32)
        state = DecodeState(cache, first, rows.positions[:, -1] + 1, done, keys, count, prefix)
        return self._pin(state)

    def _prefill_fn(self, state, layers, rows: PromptRows, settings, max_len: int) -> DecodeState:
        model = nnx.merge(self.graphdef, state)
        cache = self.layout.new_cache(rows.tokens.shape[0], max_len)
        return self._start(model, layers, cache, rows, settings)

    def _prefill_prefix_fn(self, state, layers, tokens, positions, segment_ids, max_len: int) -> KVCache:
        model = nnx.merge(self.graphdef, state)
        cache = self.layout.new_cache(1, max_len)
        _, cache = model.hidden_states(tokens, positions, segment_ids, cache=cache, layers=layers)
        return self.layout.pin_cache(cache)

    def _fork_fn(self, state, layers, prefix: KVCache, cuts, rows: PromptRows, settings, shared: int,
                 max_len: int) -> DecodeState:
        """The batch's view of the prefix: its first `shared` slots (one copy for all rows; row r
        sees the slots before cuts[r]), then each row's own tokens (left-padded) run into a
        fresh per-row cache of `max_len` slots and its first token drawn."""
        model = nnx.merge(self.graphdef, state)
        view = SharedPrefix(
            k=tuple(k[:, :, :shared] for k in prefix.k),
            v=tuple(v[:, :, :shared] for v in prefix.v),
            visible=(jnp.arange(shared)[None, :] < cuts[:, None]) & (prefix.segment_ids[:, :shared] != 0),
        )
        cache = self.layout.new_cache(rows.tokens.shape[0], max_len)
        return self._start(model, layers, cache, rows, settings, prefix=view)

    def _decode_fn(self, state, layers, decode: DecodeState, settings, steps: int):
        """Run up to `steps` decode steps, leaving early when every row is done."""
        model = nnx.merge(self.graphdef, state)
        eos_ids = jnp.asarray(self.eos_ids)

        def cond(loop):
            s, _, i = loop
            return (i < steps) & ~jnp.all(s.done)

        def body(loop):
            s, out, i = loop
            token = s.token[:, None]
            hidden, cache = self._forward(model, layers, token, s.position[:, None], jnp.ones_like(token), s.cache,
                                          s.prefix)
            # draw number count + i + 1: the prefill drew number 0
            new = sample_logits(model.logits(hidden[:, -1]), step_keys(s.keys, s.count + i + 1), *settings)
            new = jnp.where(s.done, self.pad_id, new)
            out = out.at[:, i].set(jnp.where(s.done, -1, new))
            s = s.replace(cache=cache, token=new, position=s.position + 1, done=s.done | jnp.isin(new, eos_ids))
            return s, out, i + 1

        out = jnp.full((decode.rows, steps), -1, jnp.int32)
        end, out, i = jax.lax.while_loop(cond, body, (decode, out, jnp.zeros((), jnp.int32)))
        return self._pin(end.replace(count=end.count + i)), out

    def _insert_fn(self, running: DecodeState, new: DecodeState, rows) -> DecodeState:
        """Write the prefilled state `new` (R rows, a cache of L slots) into rows `rows` [R] of the
        running ring state (an out-of-range row is a padding row, dropped). A new row's L prompt
        slots go to the ring slots just behind the write position, so its decoding continues from
        there; every other slot of the row is emptied (segment 0)."""
        cache, fresh = running.cache, new.cache
        S, L = cache.max_len, fresh.max_len
        shift = (cache.index % S - L) % S

        def place(old, part, slot_axis):
            pad = [(0, 0)] * part.ndim
            pad[slot_axis] = (0, S - L)
            part = jnp.roll(jnp.pad(part, pad), shift, axis=slot_axis)
            return old.at[rows].set(part.astype(old.dtype), mode="drop")

        cache = KVCache(
            tuple(place(o, n, 2) for o, n in zip(cache.k, fresh.k)),
            tuple(place(o, n, 2) for o, n in zip(cache.v, fresh.v)),
            place(cache.segment_ids, fresh.segment_ids, 1),
            place(cache.branch_ids, fresh.branch_ids, 1),
            cache.index,
        )
        per_row = {name: getattr(running, name).at[rows].set(getattr(new, name), mode="drop")
                   for name in ("token", "position", "done", "keys", "count")}
        return self._pin(running.replace(cache=cache, **per_row))
