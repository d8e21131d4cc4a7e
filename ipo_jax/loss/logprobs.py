"""Per-token log-probs of target tokens without materialising [batch, length, vocab] logits.

The vocabulary projection and log-softmax run over the sequence in chunks inside a scan.
Each chunk has a hand-written VJP: the backward pass recomputes the chunk's logits from the
saved hidden states (so at most one chunk of logits, [rows, chunk, vocab] float32, is alive at
a time, forward or backward) and forms d(logits) = g * (onehot(target) - softmax) in one fused
elementwise pass, then the two matmuls. Autodiff of the same function (take_along_axis +
logsumexp under jax.checkpoint) scattered into a zeroed [rows, chunk, vocab] buffer and made
several more passes over the logits: on a 2-core CPU, vocabulary 32768, the head's backward
went from 2.5 s to 1.7 s per 1280 tokens. The target logit is picked by a compare-and-sum
against an iota (fused, no gather), which also keeps a vocabulary-sharded head local.
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
    _, out = jax.lax.scan(lambda c, x: (c, _chunk_logprobs(x[0], w, x[1])), None, (hidden, targets))
    return out.swapaxes(0, 1).reshape(rows, n_chunks * chunk)[:, :slots]


def _logits_and_target_mask(h: Array, w: Array, t: Array) -> tuple[Array, Array]:
    logits = jnp.einsum("rcd,dv->rcv", h, w, preferred_element_type=jnp.float32)
    is_target = jax.lax.broadcasted_iota(jnp.int32, logits.shape, 2) == t[..., None].astype(jnp.int32)
    return logits, is_target


@jax.custom_vjp
def _chunk_logprobs(h: Array, w: Array, t: Array) -> Array:
    """log_softmax(h @ w)[target] for one chunk: h [R,C,D], w [D,V], t [R,C] -> float32 [R,C]."""
    logits, is_target = _logits_and_target_mask(h, w, t)
    return jnp.sum(jnp.where(is_target, logits, 0.0), axis=-1) - jax.nn.logsumexp(logits, axis=-1)


def _chunk_forward(h, w, t):
    return _chunk_logprobs(h, w, t), (h, w, t)


def _chunk_backward(residuals, g):
    h, w, t = residuals
    logits, is_target = _logits_and_target_mask(h, w, t)  # recomputed: nothing [R,C,V] was saved
    d_logits = (g[..., None] * (is_target.astype(jnp.float32) - jax.nn.softmax(logits, axis=-1))).astype(h.dtype)
    d_h = jnp.einsum("rcv,dv->rcd", d_logits, w, preferred_element_type=jnp.float32).astype(h.dtype)
    d_w = jnp.einsum("rcd,rcv->dv", h, d_logits, preferred_element_type=jnp.float32).astype(w.dtype)
    return d_h, d_w, None


_chunk_logprobs.defvjp(_chunk_forward, _chunk_backward)
