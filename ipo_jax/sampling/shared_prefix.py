"""The decoder's cached forward with a shared prefix: one copy of a prefix's keys and values
serves every row of a batch (the prefix fork, `Sampler.generate_forks`).

Each row attends to the shared prefix slots it may see (those before its cut) and to its own
cache (its own tokens and what it decoded); one softmax spans both. The prefix scores are one
matrix product per layer with the rows as its M dimension, so a decode step reads the prefix's
keys and values once for the batch instead of once per row -- at batch 32 and a 1024-token
prefix that is most of a small model's decode step.

The layer is the decoder's own (`DecoderBlock`: its projections, norms, RoPE and MLP); only the
attention over the two caches is written here, following `attention.dense_attention` (scores
in float32, scaled after the product, masked with the same finite minimum).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from ipo_jax.models.attention import MaskIds, attention_mask
from ipo_jax.models.decoder import Decoder, KVCache, apply_rope

_NEG = jnp.finfo(jnp.float32).min


def attend_with_prefix(q, prefix_k, prefix_v, visible, k, v, mask):
    """q [B,T,K,G,H]; prefix_k, prefix_v [1,K,P,H] (shared); visible [B,P] (prefix slots a row
    sees); k, v [B,K,S,H] (the rows' own cache); mask [B,T,S]. Returns [B,T,K,G,H]."""
    scale = q.shape[-1] ** -0.5
    shared = jnp.einsum("btkgh,kph->bkgtp", q, prefix_k[0].astype(q.dtype), preferred_element_type=jnp.float32)
    shared = jnp.where(visible[:, None, None, None, :], shared * scale, _NEG)
    own = jnp.einsum("btkgh,bksh->bkgts", q, k.astype(q.dtype), preferred_element_type=jnp.float32)
    own = jnp.where(mask[:, None, None, :, :], own * scale, _NEG)
    probs = jax.nn.softmax(jnp.concatenate([shared, own], axis=-1), axis=-1).astype(q.dtype)
    P = prefix_k.shape[2]
    out = jnp.einsum("bkgtp,kph->bkgth", probs[..., :P], prefix_v[0].astype(q.dtype))
    out = out + jnp.einsum("bkgts,bksh->bkgth", probs[..., P:], v.astype(q.dtype))
    return out.transpose(0, 3, 1, 2, 4)


def hidden_states_with_prefix(
    model: Decoder, tokens, positions, segment_ids, cache: KVCache, prefix_k, prefix_v, visible, layers=None
):
    """As `Decoder.hidden_states` with a cache, plus the shared prefix (per-layer [1,K,P,H] keys
    and values, `visible` [B,P]): final-normed hidden states [B,T,D] and the updated own cache."""
    cfg = model.cfg
    B, T = tokens.shape
    x = jnp.take(model.embed[...], tokens, axis=0).astype(jnp.dtype(cfg.dtype))
    inv_freq = jnp.asarray(cfg.rope_inv_freq())
    index = cache.index
    zeros = jnp.zeros_like(segment_ids)
    seg = jax.lax.dynamic_update_slice_in_dim(cache.segment_ids, segment_ids.astype(jnp.int32), index, axis=1)
    br = jax.lax.dynamic_update_slice_in_dim(cache.branch_ids, zeros.astype(jnp.int32), index, axis=1)
    q_slot = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T)) + index
    k_slot = jnp.broadcast_to(jnp.arange(cache.max_len, dtype=jnp.int32), (B, cache.max_len))
    mask = attention_mask(MaskIds(segment_ids, zeros, q_slot, seg, br, k_slot))
    graphdef, layer_state = nnx.split(model.blocks)
    if layers is None:
        layers = [jax.tree.map(lambda a, i=i: a[i], layer_state) for i in range(cfg.num_layers)]
    new_k, new_v = [], []
    for i, params in enumerate(layers):
        block = nnx.merge(graphdef, params)
        attn = block.attn
        h = block.input_norm(x)
        q, k, v = attn.q_proj(h), attn.k_proj(h), attn.v_proj(h)
        if attn.q_norm is not None:
            q, k = attn.q_norm(q), attn.k_norm(k)
        q, k = apply_rope(q, positions, inv_freq), apply_rope(k, positions, inv_freq)
        q = q.reshape(B, T, attn.num_kv_heads, attn.group_size, attn.head_dim)
        start = (0, 0, index, 0)
        ck = jax.lax.dynamic_update_slice(cache.k[i], k.transpose(0, 2, 1, 3).astype(cache.k[i].dtype), start)
        cv = jax.lax.dynamic_update_slice(cache.v[i], v.transpose(0, 2, 1, 3).astype(cache.v[i].dtype), start)
        new_k.append(ck)
        new_v.append(cv)
        out = attend_with_prefix(q, prefix_k[i], prefix_v[i], visible, ck, cv, mask)
        x = x + attn.o_proj(out.reshape(B, T, -1, attn.head_dim))
        x = x + block.mlp(block.post_attn_norm(x))
    return model.final_norm(x), KVCache(tuple(new_k), tuple(new_v), seg, br, index + T)
