"""Drawing tokens from logits, on the device: temperature, top-k / top-p filtering and one
inverse-CDF draw per row, plus the per-row key streams that make a row's tokens independent of
its batch (row r draws from PRNGKey(row seed), draw t from fold_in(that key, t)).

Every setting is a traced value, so one compiled program serves all settings.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp


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


def row_keys(seeds: jax.Array) -> jax.Array:
    """[B] int32 seeds -> [B,2] PRNG keys, PRNGKey(seed) per row."""
    return jax.vmap(jax.random.PRNGKey)(seeds)


def step_keys(keys: jax.Array, step) -> jax.Array:
    """The keys of draw `step` (0 = the token sampled after the prompt; a scalar or one per row):
    fold_in(row key, step)."""
    return jax.vmap(jax.random.fold_in)(keys, jnp.broadcast_to(step, keys.shape[:1]))
