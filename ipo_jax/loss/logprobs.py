"""Per-token log-probs of target tokens without materialising [batch, length, vocab] logits.

The vocabulary projection and log-softmax run over the sequence in chunks inside a scan;
each chunk is rematerialised in the backward pass (jax.checkpoint), so at most one chunk of
logits, [rows, chunk, vocab] float32, is alive at a time, forward or backward.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def gather_positions(hidden: Array, source: Array) -> Array:
    """hidden [R,T,D], source [R,S] int -> [R,S,D]: the hidden state that predicts each target."""
    return jnp.take_along_axis(hidden, source[..., None].astype(jnp.int32), axis=1)


def token_logprobs(hidden: Array, targets: Array, unembed: Array, chunk_size: int = 512) -> Array:
    """log p(target | hidden) for every slot, float32 [R,S].

    hidden [R,S,D] (compute dtype), targets [R,S] int, unembed [D,V] (the output projection).
    """
    def target_logprobs(logits, t):
        target_logit = jnp.take_along_axis(logits, t[..., None].astype(jnp.int32), axis=-1)[..., 0]
        return target_logit - jax.nn.logsumexp(logits, axis=-1)

    return map_logit_chunks(hidden, targets, unembed, chunk_size, target_logprobs)


def map_logit_chunks(hidden: Array, targets: Array, unembed: Array, chunk_size: int, per_chunk):
    """`per_chunk(logits [R,c,V] float32, targets [R,c])` -> a pytree of [R,c] arrays, over chunks of
    `chunk_size` slots of the sequence, each chunk's logits rematerialised in the backward pass (the
    full [R,S,V] logits are never built); the pytree of [R,S] arrays."""
    rows, slots, dim = hidden.shape
    chunk = min(chunk_size, slots)
    n_chunks = -(-slots // chunk)
    pad = n_chunks * chunk - slots
    if pad:
        hidden = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0)))
        targets = jnp.pad(targets, ((0, 0), (0, pad)))
    hidden = hidden.reshape(rows, n_chunks, chunk, dim).swapaxes(0, 1)  # [C,R,chunk,D]
    targets = targets.reshape(rows, n_chunks, chunk).swapaxes(0, 1)
    w = unembed.astype(hidden.dtype)

    @jax.checkpoint
    def one_chunk(h, t):
        return per_chunk(jnp.einsum("rcd,dv->rcv", h, w, preferred_element_type=jnp.float32), t)

    _, out = jax.lax.scan(lambda c, x: (c, one_chunk(*x)), None, (hidden, targets))
    return jax.tree.map(lambda x: x.swapaxes(0, 1).reshape(rows, n_chunks * chunk)[:, :slots], out)
