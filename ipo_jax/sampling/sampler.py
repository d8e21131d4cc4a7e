"""The sampler: see the package docstring."""

from __future__ import annotations

import collections
import dataclasses
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ipo_jax.data.pairs import bucket_length, default_buckets
from ipo_jax.models.decoder import Decoder, KVCache
from ipo_jax.sampling.shared_prefix import hidden_states_with_prefix
from ipo_jax.sharding import logical_to_spec


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    temperature: float = 0.6  # 0 = greedy (paper's evaluation decoding: 0.6, top-p 0.95)
    top_p: float = 0.95  # 1.0 = off
    top_k: int = 0  # 0 = off
    max_new_tokens: int = 256
    seed: int = 0

    def __post_init__(self):
        if self.temperature < 0 or not 0 < self.top_p <= 1 or self.top_k < 0 or self.max_new_tokens < 1:
            raise ValueError(f"bad sampling settings: {self}")


FINISH_REASONS = ("stop", "length")

_SEED_LIMIT = 1 << 31  # row seeds are 31-bit, so PRNGKey(seed) is the same traced as int32 or eager


def row_seed(seed: int, row: int) -> int:
    """The default seed of row `row` of a `generate` call with `SamplingConfig.seed` `seed`: a
    stable hash of the pair (numpy's SeedSequence), a non-negative 31-bit int. Row r draws
    from PRNGKey(row_seed(seed, r)) whatever batch it lands in."""
    state = np.random.SeedSequence([int(seed) % (1 << 64), int(row) % (1 << 64)]).generate_state(1, np.uint32)
    return int(state[0]) % _SEED_LIMIT


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


def _threshold(values: jax.Array, enough: Callable[[jax.Array], jax.Array], iterations: int = 32) -> jax.Array:
    """Per row, the largest t (to 2^-iterations of the row's range) with enough(values >= t) true.

    Bisection instead of a sort over the vocabulary: O(iterations * V) elementwise work, which
    is much cheaper than sorting 150k logits per row at every decode step.
    """
    lo = jnp.min(values, axis=-1, keepdims=True)
    hi = jnp.max(values, axis=-1, keepdims=True)

    def step(_, bounds):
        lo, hi = bounds
        mid = (lo + hi) / 2
        ok = enough(values >= mid)
        return jnp.where(ok, mid, lo), jnp.where(ok, hi, mid)

    lo, _ = jax.lax.fori_loop(0, iterations, step, (lo, hi))
    return lo


def filter_logits(logits: jax.Array, temperature, top_p, top_k) -> jax.Array:
    """Temperature-scaled logits with the tokens outside top-k / top-p set to -inf.

    top-k keeps the tokens whose logit is at least the k-th largest; top-p then keeps the most
    probable tokens whose total probability reaches top_p (ties at the edge kept).
    """
    return _filter_scaled(logits / jnp.maximum(temperature, 1e-6), top_p, top_k)


def _filter_scaled(scaled: jax.Array, top_p, top_k) -> jax.Array:
    kth = _threshold(scaled, lambda keep: jnp.sum(keep, axis=-1, keepdims=True) >= top_k)
    scaled = jnp.where((top_k > 0) & (scaled < kth), -jnp.inf, scaled)
    probs = jax.nn.softmax(scaled, axis=-1)
    cut = _threshold(probs, lambda keep: jnp.sum(jnp.where(keep, probs, 0.0), axis=-1, keepdims=True) >= top_p)
    return jnp.where((top_p < 1.0) & (probs < cut), -jnp.inf, scaled)


def _pick(weights: jax.Array, target: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per row of non-negative weights [B,n]: the first index whose running sum exceeds target [B],
    kept on a positive weight whatever the rounding, and what is left of target before it."""
    n = weights.shape[-1]
    running = jnp.cumsum(weights, axis=-1)
    index = jnp.sum(running <= target[:, None], axis=-1)
    positive = weights > 0
    first = jnp.argmax(positive, axis=-1)
    last = n - 1 - jnp.argmax(positive[:, ::-1], axis=-1)
    index = jnp.clip(index, first, last)
    before = jnp.take_along_axis(running - weights, index[:, None], axis=-1)[:, 0]
    return index, target - before


def _uniforms(key, rows: int) -> jax.Array:
    """One float32 uniform per row: from one key (drawn together), or from a key per row
    ([B,2] raw or [B] typed keys), each row's uniform drawn from its own key alone."""
    per_row = key.ndim == 2 or (jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key) and key.ndim == 1)
    if per_row:
        return jax.vmap(lambda k: jax.random.uniform(k, (), jnp.float32))(key)
    return jax.random.uniform(key, (rows,), jnp.float32)


def sample_weights(weights: jax.Array, key, block: int = 256) -> jax.Array:
    """One index per row of non-negative weights [B,V] (each row with a positive sum), drawn with
    probability proportional to the weight: inverse-CDF sampling with one uniform per row.
    `key`: one key for the batch, or one key per row (then a row's draw depends on its key only).

    Two levels (a block of `block` entries, then an entry inside it) keep the running sums short.
    `jax.random.categorical` draws a Gumbel variate per vocabulary entry instead: B*V random
    numbers per step, which on CPU costs more than the rest of a small model's decode step.
    A weight of zero is never drawn.
    """
    B, V = weights.shape
    u = _uniforms(key, B)
    if V <= 4 * block:  # a small vocabulary: one level is fewer operations
        return _pick(weights, u * jnp.sum(weights, axis=-1))[0].astype(jnp.int32)
    pad = (-V) % block
    blocks = jnp.pad(weights, ((0, 0), (0, pad))).reshape(B, -1, block)
    sums = jnp.sum(blocks, axis=-1)
    which, rest = _pick(sums, u * jnp.sum(sums, axis=-1))
    inside, _ = _pick(jnp.take_along_axis(blocks, which[:, None, None], axis=1)[:, 0], rest)
    return (which * block + inside).astype(jnp.int32)


def sample_logits(logits: jax.Array, key, temperature, top_p, top_k) -> jax.Array:
    """One token per row from float32 logits [B,V]; temperature 0 = argmax. All settings traced.
    `key`: one key for the batch or one per row (`sample_weights`).

    Greedy decoding skips the sampling work, and sampling skips the top-k / top-p thresholds
    when both are off (`lax.cond` on the traced settings, one compiled program for all).
    """

    def greedy(logits):
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)

    def sample(logits):
        scaled = logits / jnp.maximum(temperature, 1e-6)
        filtering = (top_k > 0) | (top_p < 1.0)
        scaled = jax.lax.cond(filtering, lambda x: _filter_scaled(x, top_p, top_k), lambda x: x, scaled)
        return sample_weights(jnp.exp(scaled - jnp.max(scaled, axis=-1, keepdims=True)), key)

    return jax.lax.cond(temperature <= 0, greedy, sample, logits)


class SamplerShardingError(ValueError):
    """The sampler's batch does not fit its mesh."""


def _row_keys(seeds: jax.Array) -> jax.Array:
    """[B] int32 seeds -> [B,2] PRNG keys, PRNGKey(seed) per row."""
    return jax.vmap(jax.random.PRNGKey)(seeds)


def _step_keys(keys: jax.Array, step) -> jax.Array:
    """The keys of draw `step` (0 = the token sampled after the prompt; a scalar or one per row):
    fold_in(row key, step)."""
    return jax.vmap(jax.random.fold_in)(keys, jnp.broadcast_to(step, keys.shape[:1]))


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
        batch_size: int = 8,
        max_prompt_length: int = 4096,
        prompt_buckets: Sequence[int] | None = None,
        chunk_tokens: int = 32,
        mesh: Mesh | None = None,
        decode: Callable[[list[int]], str] | None = None,
        unstack_layers: bool | None = None,
        continuous_batching: bool = True,
    ):
        """unstack_layers: keep a per-layer copy of the block weights for decoding (one more copy
        of the weights in memory), so a decode step reads each weight once instead of slicing it
        out of the stacked array. Default: on CPU, where XLA copies such slices every step.

        continuous_batching: when `generate` has more prompts than `batch_size`, a row that
        finishes takes the next prompt at the next chunk boundary (its prompt prefilled apart and
        written into the row's part of the cache, `_insert_fn`) instead of idling until the
        batch's longest row ends; the cache then runs as a ring (`KVCache`)."""
        self.cfg = model.cfg
        self.graphdef, self.state = nnx.split(model)
        if unstack_layers is None:
            unstack_layers = all(d.platform == "cpu" for d in model.embed[...].devices())
        self.layers = model.layer_states() if unstack_layers else None
        self.eos_ids = np.asarray(sorted(set(eos_ids)), np.int32)
        if self.eos_ids.size == 0:
            raise ValueError("eos_ids must name at least one end-of-sequence token")
        self.pad_id, self.batch_size, self.chunk_tokens = pad_id, batch_size, chunk_tokens
        self.buckets = list(prompt_buckets or default_buckets(max_prompt_length, smallest=32))
        # a fork's own tokens (the last prefix token + its suffix) are usually short: CSR has none
        self.suffix_buckets = [b for b in (1 << i for i in range(32)) if b < max(self.buckets)] + [max(self.buckets)]
        self.decode = decode
        self.mesh = mesh
        self._row_count = 1  # devices the rows are split over: a batch must be a multiple
        if mesh is not None:
            row_axes = logical_to_spec(("batch",))[0]
            row_axes = (row_axes,) if isinstance(row_axes, str) else tuple(row_axes or ())
            rows = self._row_count = int(np.prod([mesh.shape[a] for a in row_axes]))
            if batch_size % rows:
                raise SamplerShardingError(
                    f"sampler batch_size {batch_size} is not divisible by the mesh's row axes {row_axes} "
                    f"(size {rows}, mesh {dict(mesh.shape)}); choose a batch size that is a multiple of {rows}"
                )
        # Every input placed explicitly (committed), so the first decode chunk, fed by the prefill
        # and by the host, hits the same compiled program as the later ones, fed by the last chunk.
        if mesh is not None:
            self.replicated = NamedSharding(mesh, PartitionSpec())
        else:
            self.replicated = jax.sharding.SingleDeviceSharding(next(iter(model.embed[...].devices())))
        self._prefill = jax.jit(self._prefill_fn, static_argnames=("max_len",))
        self._prefill_prefix = jax.jit(self._prefill_prefix_fn, static_argnames=("max_len",))
        self._fork = jax.jit(self._fork_fn, static_argnames=("shared", "max_len"))
        self._decode_chunk = jax.jit(self._decode_fn, static_argnames=("steps",), donate_argnums=(2,))
        self._insert = jax.jit(self._insert_fn, donate_argnums=(0,))
        self.continuous_batching = continuous_batching

    # ------------------------------------------------------------------ shardings

    def _spec(self, logical: Sequence[str | None], shape: Sequence[int]) -> PartitionSpec:
        """logical_to_spec, with every dim the mesh does not divide replicated instead."""
        spec = []
        for axes, size in zip(logical_to_spec(logical), shape):
            names = (axes,) if isinstance(axes, str) else tuple(axes or ())
            spec.append(axes if size % int(np.prod([self.mesh.shape[a] for a in names])) == 0 else None)
        return PartitionSpec(*spec)

    def _sharding(self, logical: Sequence[str | None], shape: Sequence[int]):
        if self.mesh is None:
            return self.replicated
        return NamedSharding(self.mesh, self._spec(logical, shape))

    def cache_shardings(self, batch: int, max_len: int) -> KVCache:
        """The shardings of a `batch`-row cache (a KVCache of shardings): k, v [B,K,S,H] over
        ('batch', 'kv_heads', -, -), ids [B,S] over ('batch', -), each dim the mesh does not
        divide replicated (a 1-row prefix cache, or 2 KV heads on tensor=4); the index replicated."""
        kv = self._sharding(("batch", "kv_heads", "length", "head_dim"),
                            (batch, self.cfg.num_kv_heads, max_len, self.cfg.head_dim))
        ids = self._sharding(("batch", "length"), (batch, max_len))
        layers = (kv,) * self.cfg.num_layers
        return KVCache(layers, layers, ids, ids, self.replicated)

    def _carry_shardings(self, carry: dict) -> dict:
        out = {}
        for name, value in carry.items():
            if name == "cache":
                out[name] = self.cache_shardings(value.k[0].shape[0], value.max_len)
            elif name in ("prefix_k", "prefix_v"):  # one row, shared: rows replicated, heads as the cache's
                out[name] = tuple(self._sharding(("batch", "kv_heads", "length", "head_dim"), a.shape) for a in value)
            else:
                out[name] = self._sharding(("batch",) + (None,) * (value.ndim - 1), value.shape) if value.ndim else self.replicated
        return out

    def _pin(self, carry: dict) -> dict:
        """The decode carry constrained to its shardings, so every chunk meets the same layout."""
        if self.mesh is None:
            return carry
        return jax.lax.with_sharding_constraint(carry, self._carry_shardings(carry))

    def _new_cache(self, batch: int, max_len: int) -> KVCache:
        """An empty cache, made in the calling jitted program straight into its shardings."""
        cache = KVCache.init(self.cfg, batch, max_len)
        if self.mesh is None:
            return cache
        return jax.lax.with_sharding_constraint(cache, self.cache_shardings(batch, max_len))

    # ------------------------------------------------------------------ device programs

    @staticmethod
    def _forward(model, layers, tokens, positions, segment_ids, cache, shared: dict | None):
        """The cached forward; with `shared` (a fork's prefix_k, prefix_v, visible) the rows
        attend to the shared prefix too (`hidden_states_with_prefix`)."""
        if shared is None:
            return model.hidden_states(tokens, positions, segment_ids, cache=cache, layers=layers)
        return hidden_states_with_prefix(model, tokens, positions, segment_ids, cache, shared["prefix_k"],
                                         shared["prefix_v"], shared["visible"], layers=layers)

    def _start(self, model, layers, cache, tokens, positions, segment_ids, seeds, live, settings,
               shared: dict | None = None) -> dict:
        """Run the prompt tokens (left-padded: every row ends at the last column) through the
        cache and draw each row's first token; returns the decode carry."""
        hidden, cache = self._forward(model, layers, tokens, positions, segment_ids, cache, shared)
        keys = _row_keys(seeds)
        first = sample_logits(model.logits(hidden[:, -1]), _step_keys(keys, 0), *settings)
        done = jnp.isin(first, jnp.asarray(self.eos_ids)) | ~live
        carry = dict(cache=cache, token=first, position=positions[:, -1] + 1, done=done, keys=keys,
                     count=jnp.zeros(tokens.shape[:1], jnp.int32), **(shared or {}))
        return self._pin(carry)

    def _prefill_fn(self, state, layers, tokens, positions, segment_ids, seeds, live, settings, max_len: int):
        model = nnx.merge(self.graphdef, state)
        cache = self._new_cache(tokens.shape[0], max_len)
        return self._start(model, layers, cache, tokens, positions, segment_ids, seeds, live, settings)

    def _prefill_prefix_fn(self, state, layers, tokens, positions, segment_ids, max_len: int) -> KVCache:
        """The one-row cache of a fork's shared prefix (no token drawn)."""
        model = nnx.merge(self.graphdef, state)
        _, cache = model.hidden_states(tokens, positions, segment_ids, cache=self._new_cache(1, max_len), layers=layers)
        if self.mesh is not None:
            cache = jax.lax.with_sharding_constraint(cache, self.cache_shardings(1, max_len))
        return cache

    def _fork_fn(self, state, layers, prefix: KVCache, cuts, tokens, positions, segment_ids, seeds, live, settings,
                 shared: int, max_len: int):
        """The batch's view of the prefix: its first `shared` slots (one copy for all rows; row r
        sees the slots before cuts[r]), then each row's own tokens (left-padded) run into a
        fresh per-row cache of `max_len` slots and its first token drawn."""
        model = nnx.merge(self.graphdef, state)
        B = tokens.shape[0]
        view = dict(
            prefix_k=tuple(k[:, :, :shared] for k in prefix.k),
            prefix_v=tuple(v[:, :, :shared] for v in prefix.v),
            visible=(jnp.arange(shared)[None, :] < cuts[:, None]) & (prefix.segment_ids[:, :shared] != 0),
        )
        return self._start(model, layers, self._new_cache(B, max_len), tokens, positions, segment_ids, seeds, live,
                           settings, shared=view)

    def _decode_fn(self, state, layers, carry, settings, steps: int):
        """Run up to `steps` decode steps; carry = (cache, last token, position, done, keys, count:
        each row's draws so far after its first)."""
        model = nnx.merge(self.graphdef, state)
        eos_ids = jnp.asarray(self.eos_ids)

        def cond(c):
            return (c["i"] < steps) & ~jnp.all(c["done"])

        def body(c):
            token = c["token"][:, None]
            shared = {k: c[k] for k in ("prefix_k", "prefix_v", "visible")} if "visible" in c else None
            hidden, cache = self._forward(model, layers, token, c["position"][:, None], jnp.ones_like(token),
                                          c["cache"], shared)
            # draw number count + i + 1: the prefill drew number 0
            step_keys = _step_keys(c["keys"], c["count"] + c["i"] + 1)
            new = sample_logits(model.logits(hidden[:, -1]), step_keys, *settings)
            new = jnp.where(c["done"], self.pad_id, new)
            done = c["done"] | jnp.isin(new, eos_ids)
            out = c["out"].at[:, c["i"]].set(jnp.where(c["done"], -1, new))
            return dict(c, cache=cache, token=new, position=c["position"] + 1, done=done, out=out, i=c["i"] + 1)

        start = dict(carry, out=jnp.full((carry["token"].shape[0], steps), -1, jnp.int32), i=jnp.zeros((), jnp.int32))
        end = jax.lax.while_loop(cond, body, start)
        carry = {k: end[k] for k in carry}
        carry["count"] = carry["count"] + end["i"]
        return self._pin(carry), end["out"]

    def _insert_fn(self, carry, new, rows):
        """Write the prefilled carry `new` (R rows, a cache of L slots) into rows `rows` [R] of the
        running ring carry (an out-of-range row is a padding row, dropped). A new row's L prompt
        slots go to the ring slots just behind the write position, so its decoding continues from
        there; every other slot of the row is emptied (segment 0)."""
        cache, fresh = carry["cache"], new["cache"]
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
        out = dict(carry, cache=cache)
        for name in ("token", "position", "done", "keys", "count"):
            out[name] = carry[name].at[rows].set(new[name], mode="drop")
        return self._pin(out)

    # ------------------------------------------------------------------ host side

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
        self._check_stop_strings(stop_strings)
        row_seeds = self._row_seeds(row_seeds, len(prompts), config.seed, "generate: row_seeds")
        if any(len(p) == 0 for p in prompts):
            raise ValueError("empty prompt: every prompt needs at least one token")
        if self.continuous_batching and len(prompts) > self.batch_size:
            return self._generate_continuous(prompts, row_seeds, config, stop_strings)
        results: list[Generation] = []
        for start in range(0, len(prompts), self.batch_size):
            stop = start + self.batch_size
            results += self._generate_batch(prompts[start:stop], row_seeds[start:stop], config, stop_strings)
        return results

    def generate_forks(
        self, prefix: Sequence[int], forks: Sequence[Fork], config: SamplingConfig, stop_strings: Sequence[str] = ()
    ) -> list[list[Generation]]:
        """For each fork, `fork.n` continuations of `prefix[:fork.cut] + fork.suffix`; the prefix
        is prefilled once.

        The same tokens as ``generate([prefix[:f.cut] + list(f.suffix) for f in forks for _ in
        range(f.n)], config, row_seeds=...)`` (up to float rounding), flattened row r (fork-major)
        seeded with ``f.row_seeds[j]`` when given, else ``row_seed(config.seed, r)``.

        Layout: the prefix's KV cache is one row, shared by every row of a decode batch
        (`shared_prefix`), each row seeing the prefix slots before its cut only; a row's own
        tokens -- the last token before its cut (so the first draw comes from a fresh forward,
        whatever the cut) and its suffix -- go into the row's own cache, left-padded, their
        positions continuing from the cut, followed by what it decodes. Rows are batched in
        order of cut (a row's tokens do not depend on its batch), and a batch attends only to the
        prefix slots up to the bucket of its largest cut.
        """
        self._check_stop_strings(stop_strings)
        prefix = [int(t) for t in prefix]
        rows = []  # (fork, continuation, prefix tokens the row keeps in the shared cache, its own tokens, seed)
        for i, fork in enumerate(forks):
            if not isinstance(fork, Fork):
                raise ForkError(f"forks[{i}]: expected a Fork, got {type(fork).__name__}")
            if not 0 <= fork.cut <= len(prefix):
                raise ForkError(f"forks[{i}]: cut {fork.cut} is outside the prefix of {len(prefix)} tokens")
            if fork.n < 1:
                raise ForkError(f"forks[{i}]: n must be at least 1, got {fork.n}")
            if fork.cut == 0 and not fork.suffix:
                raise ForkError(f"forks[{i}]: empty prompt (cut 0 and no suffix): a prompt needs at least one token")
            if fork.row_seeds is not None and len(fork.row_seeds) != fork.n:
                raise ForkError(f"forks[{i}]: {len(fork.row_seeds)} row_seeds for n={fork.n} continuations")
            kept = max(fork.cut - 1, 0)
            own = prefix[kept : fork.cut] + [int(t) for t in fork.suffix]
            for j in range(fork.n):
                seed = fork.row_seeds[j] if fork.row_seeds is not None else row_seed(config.seed, len(rows))
                rows.append((i, j, kept, own, seed))
        results: list[list[Generation | None]] = [[None] * fork.n for fork in forks]
        if not rows:
            return results
        self._row_seeds([r[4] for r in rows], len(rows), config.seed, "generate_forks: Fork.row_seeds")
        rows.sort(key=lambda r: (r[2], len(r[3])))
        shared = max(r[2] for r in rows)
        P = bucket_length(max(shared, 1), self.buckets)
        tokens = np.full((1, P), self.pad_id, np.int32)
        tokens[0, :shared] = prefix[:shared]
        segment_ids = (np.arange(P) < shared).astype(np.int32)[None]
        positions = np.arange(P, dtype=np.int32)[None]
        put = lambda x: jax.device_put(jnp.asarray(x), self.replicated)  # noqa: E731
        prefix_cache = self._prefill_prefix(self.state, self.layers, put(tokens), put(positions), put(segment_ids),
                                            max_len=P)
        settings = self._settings(config)
        B = self.batch_size
        for start in range(0, len(rows), B):
            batch = rows[start : start + B]
            n = len(batch)
            batch = batch + [batch[0]] * (B - n)  # padding rows repeat a row
            length = bucket_length(max(len(r[3]) for r in batch), self.suffix_buckets)
            batch_shared = bucket_length(max(max(r[2] for r in batch), 1), self.buckets)
            tokens = np.full((B, length), self.pad_id, np.int32)
            segment_ids = np.zeros((B, length), np.int32)
            positions = np.zeros((B, length), np.int32)
            for b, (_, _, kept, own, _) in enumerate(batch):
                tokens[b, length - len(own) :] = own
                segment_ids[b, length - len(own) :] = 1
                positions[b, length - len(own) :] = kept + np.arange(len(own))
            cuts = np.asarray([r[2] for r in batch], np.int32)
            seeds = np.asarray([r[4] for r in batch], np.int32)
            carry = self._fork(
                self.state, self.layers, prefix_cache, self._put(cuts), self._put(tokens), self._put(positions),
                self._put(segment_ids), self._put(seeds), self._put(np.arange(B) < n), settings,
                shared=batch_shared, max_len=length + self._decode_slots(config),
            )
            for (i, j, *_), generation in zip(batch, self._decode_rows(carry, n, config, stop_strings)):
                results[i][j] = generation
        return results

    def _check_stop_strings(self, stop_strings):
        if stop_strings and self.decode is None:
            raise ValueError("stop_strings need the sampler's `decode` function (token ids -> text)")

    @staticmethod
    def _row_seeds(row_seeds, count: int, seed: int, name: str) -> list[int]:
        if row_seeds is None:
            return [row_seed(seed, r) for r in range(count)]
        row_seeds = list(row_seeds)
        if len(row_seeds) != count:
            raise ValueError(f"{name}: {len(row_seeds)} seeds for {count} rows")
        bad = [s for s in row_seeds if isinstance(s, bool) or not isinstance(s, (int, np.integer))
               or not 0 <= s < _SEED_LIMIT]
        if bad:
            raise ValueError(f"{name}: seeds must be ints in [0, 2**31), got {bad[0]!r}")
        return [int(s) for s in row_seeds]

    @staticmethod
    def _settings(config: SamplingConfig):
        return (jnp.float32(config.temperature), jnp.float32(config.top_p), jnp.int32(config.top_k))

    def _decode_slots(self, config: SamplingConfig) -> int:
        """Cache slots for decoding: every decode call runs whole chunks (the first writes the
        prefill's token), so the rounded-up number of steps, plus one."""
        return 1 + -(-(config.max_new_tokens - 1) // self.chunk_tokens) * self.chunk_tokens

    def _put(self, x):
        x = jnp.asarray(x)
        if self.mesh is None or not x.ndim:
            return jax.device_put(x, self.replicated)
        return jax.device_put(x, self._sharding(("batch",) + (None,) * (x.ndim - 1), x.shape))

    def _generate_batch(self, prompts, seeds, config, stop_strings) -> list[Generation]:
        carry = self._prefill_jobs(prompts, seeds, list(range(len(prompts))), self.batch_size, config,
                                   extra_slots=self._decode_slots(config))
        return self._decode_rows(carry, len(prompts), config, stop_strings)

    def _decode_rows(self, carry, n: int, config, stop_strings) -> list[Generation]:
        """Decode in chunks from a prefilled carry until the first `n` rows end; their Generations."""
        settings = self._settings(config)
        eos_set = set(self.eos_ids.tolist())
        generated = [[int(t)] for t in np.asarray(carry["token"])]
        finish = ["eos" if bool(d) else None for d in np.asarray(carry["done"])]
        remaining = config.max_new_tokens - 1
        while remaining > 0 and not all(f is not None for f in finish[:n]):
            steps = min(self.chunk_tokens, remaining)
            carry, out = self._decode_chunk(self.state, self.layers, carry, settings, steps=self.chunk_tokens)
            out = np.asarray(out)[:, :steps]
            remaining -= steps
            done = np.asarray(carry["done"])
            for i in range(n):
                if finish[i] is None:
                    finish[i] = self._extend_row(generated[i], out[i], bool(done[i]), eos_set, stop_strings)
            if stop_strings:  # rows stopped on the host stop decoding on the device too
                stopped = np.array([f == "stop" for f in finish])
                carry["done"] = carry["done"] | self._put(stopped)
        return [self._generation(generated[i], finish[i], config, stop_strings) for i in range(n)]

    def _extend_row(self, ids: list[int], chunk, device_done: bool, eos_set: set, stop_strings) -> str | None:
        """Append a row's drawn ids of one chunk (within its budget; -1 = none) to `ids`; 'eos' or
        'stop' when the row ended in them, else None. An EOS past the budget (the chunk runs whole)
        is not in `chunk`, so it does not count."""
        new = [int(t) for t in chunk if t >= 0]
        ids.extend(new)
        if device_done and eos_set.intersection(new):
            return "eos"
        if stop_strings and any(s in self.decode(ids) for s in stop_strings):
            return "stop"
        return None

    def _generation(self, generated: list[int], finish: str | None, config, stop_strings) -> Generation:
        """A row's Generation from the ids it drew and why it ended (None: the token limit)."""
        ids = generated[: config.max_new_tokens]
        reason, end_id = finish or "length", None
        if reason == "eos":
            eos_set = set(self.eos_ids.tolist())
            cut = next(j for j, t in enumerate(ids) if t in eos_set)
            ids, end_id, reason = ids[:cut], ids[cut], "stop"
        elif reason == "stop":  # keep tokens up to the one that completes the first stop string
            ids = ids[: next(k for k in range(1, len(ids) + 1) if any(s in self.decode(ids[:k]) for s in stop_strings))]
        text = self.decode(ids) if self.decode else None
        return Generation(ids, reason, text, end_id)

    def _prefill_jobs(self, prompts, seeds, jobs: list[int], rows: int, config, max_len: int | None = None,
                      extra_slots: int = 0):
        """Prefill prompts[jobs] as a `rows`-row batch (left-padded to their bucket; padding rows
        repeat the first and are dead) into a cache of `max_len` slots (default: the bucket plus
        `extra_slots`); returns the decode carry."""
        length = bucket_length(max(len(prompts[j]) for j in jobs), self.buckets)
        tokens = np.full((rows, length), self.pad_id, np.int32)
        segment_ids = np.zeros((rows, length), np.int32)
        for i in range(rows):
            ids = np.asarray(prompts[jobs[i] if i < len(jobs) else jobs[0]], np.int32)
            tokens[i, length - len(ids) :] = ids
            segment_ids[i, length - len(ids) :] = 1
        positions = np.maximum(np.cumsum(segment_ids, axis=1) - 1, 0).astype(np.int32)
        row_seeds = np.asarray([seeds[j] for j in jobs] + [0] * (rows - len(jobs)), np.int32)
        return self._prefill(
            self.state, self.layers, self._put(tokens), self._put(positions), self._put(segment_ids),
            self._put(row_seeds), self._put(np.arange(rows) < len(jobs)), self._settings(config),
            max_len=max_len or length + extra_slots,
        )

    # ------------------------------------------------------------------ continuous batching

    def _refill_rows(self, count: int) -> int:
        """The batch a refill of `count` prompts is prefilled in: a power of two (few programs to
        compile) that the mesh's row devices divide, at most the batch size."""
        for size in (1 << i for i in range(self.batch_size.bit_length() + 1)):
            if count <= size < self.batch_size and size % self._row_count == 0:
                return size
        return self.batch_size

    def _generate_continuous(self, prompts, seeds, config, stop_strings) -> list[Generation]:
        """`generate` with continuous batching: the first `batch_size` prompts are prefilled
        together; from then on, at every chunk boundary, rows whose generation ended take the
        next prompts (prefilled apart, then written into those rows: `_insert_fn`). Every row
        keeps its own seed, draw count and token budget, so it samples what `_generate_batch`
        samples (up to float rounding: its keys and values sit at other cache slots)."""
        B, n = self.batch_size, len(prompts)
        settings = self._settings(config)
        eos_set = set(self.eos_ids.tolist())
        # room for the longest prompt's bucket plus a whole row's decoding, so a row never
        # overwrites its own prompt while the ring turns
        max_len = bucket_length(max(len(p) for p in prompts), self.buckets) + self._decode_slots(config)
        queue = collections.deque(range(n))
        job: list[int | None] = [None] * B
        ids: list[list[int]] = [[] for _ in range(B)]
        finish: list[str | None] = [None] * B
        left = [0] * B  # tokens a row may still draw
        results: list[Generation | None] = [None] * n

        def start(rows: list[int], jobs: list[int], carry) -> None:
            first, done = np.asarray(carry["token"]), np.asarray(carry["done"])
            for k, (r, j) in enumerate(zip(rows, jobs)):
                job[r], ids[r], left[r] = j, [int(first[k])], config.max_new_tokens - 1
                finish[r] = "eos" if bool(done[k]) else (None if left[r] > 0 else "length")

        first = [queue.popleft() for _ in range(B)]
        carry = self._prefill_jobs(prompts, seeds, first, B, config, max_len=max_len)
        start(list(range(B)), first, carry)
        carry["cache"] = carry["cache"].replace(index=carry["cache"].index + max_len)  # a ring from here on
        while True:
            for r in range(B):  # rows that ended hand in their generation
                if job[r] is not None and finish[r] is not None:
                    results[job[r]] = self._generation(ids[r], finish[r], config, stop_strings)
                    job[r] = None
            free = [r for r in range(B) if job[r] is None]
            if free and queue:
                jobs = [queue.popleft() for _ in range(min(len(free), len(queue)))]
                size = self._refill_rows(len(jobs))
                new = self._prefill_jobs(prompts, seeds, jobs, size, config)
                rows = np.full(size, B, np.int32)  # B: out of range, a padding row dropped
                rows[: len(jobs)] = free[: len(jobs)]
                carry = self._insert(carry, new, jax.device_put(jnp.asarray(rows), self.replicated))
                start(free[: len(jobs)], jobs, new)
                continue  # a refilled row may have ended on its first token
            if all(j is None for j in job):
                break
            idle = np.array([job[r] is None or finish[r] is not None for r in range(B)])
            carry["done"] = carry["done"] | self._put(idle)
            carry, out = self._decode_chunk(self.state, self.layers, carry, settings, steps=self.chunk_tokens)
            out, done = np.asarray(out), np.asarray(carry["done"])
            for r in range(B):
                if job[r] is None or finish[r] is not None:
                    continue
                steps = min(self.chunk_tokens, left[r])
                left[r] -= steps
                finish[r] = self._extend_row(ids[r], out[r, :steps], bool(done[r]), eos_set, stop_strings)
                if finish[r] is None and left[r] == 0:
                    finish[r] = "length"
        return results
