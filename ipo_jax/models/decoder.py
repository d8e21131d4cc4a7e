"""The decoder: one Flax NNX implementation for Llama, Qwen2 and Qwen3, with a KV cache.

Shapes (letters used in einsum strings and comments):
  B batch, T query tokens, S key tokens, D hidden, N query heads, K key/value heads,
  G = N / K query heads per kv head, H head_dim, F mlp hidden, V vocab, L layers.

Every weight carries `logical_axes` metadata (e.g. ('embed', 'q_heads', 'head_dim')) that
`ipo_jax.sharding` maps to mesh axes through one rules table.

Layers are stacked (leading L axis, logical axis 'layers') and run with `lax.scan`, so a
32-layer model compiles one layer, and the remat policy is a single setting.

Which key a query may attend to is decided by three per-token integer arrays, so left
padding, several sequences packed in one row and the prefix-shared preference-pair layout
all use the same code path:
  segment_ids  0 = padding, otherwise the sequence a token belongs to (same segment only);
  branch_ids   0 = shared trunk, b > 0 = branch b; a token sees the trunk and its own branch;
  slots        position in the row (or in the cache); causal order is by slot.
RoPE uses the explicit `positions`, which may restart (the rejected suffix of a
prefix-shared pair starts at the same position as the chosen one).
"""

from __future__ import annotations

from typing import Sequence

import flax.struct
import jax
import jax.numpy as jnp
from flax import nnx

from ipo_jax.models.config import ModelConfig

Array = jax.Array
_NEG = jnp.finfo(jnp.float32).min  # finite, so a fully masked (padding) row stays finite


def _init(rngs: nnx.Rngs, shape: Sequence[int], cfg: ModelConfig) -> Array:
    dtype = jnp.dtype(cfg.param_dtype)
    return cfg.initializer_range * jax.random.normal(rngs.params(), tuple(shape), dtype=dtype)


class Projection(nnx.Module):
    """y = x · W (+ b), contracting the trailing input dims of x with the leading dims of W.

    W has shape (*in_shape, *out_shape) with one logical axis name per dim, so an attention
    projection is written with its heads visible: (D) -> (N, H) has W of shape (D, N, H).
    """

    def __init__(self, in_shape, out_shape, in_axes, out_axes, *, bias: bool, stack: tuple, cfg: ModelConfig, rngs):
        dtype = jnp.dtype(cfg.param_dtype)
        stack_axes = ("layers",) * len(stack)
        self.num_in = len(in_shape)
        self.kernel = nnx.Param(
            _init(rngs, (*stack, *in_shape, *out_shape), cfg),
            logical_axes=(*stack_axes, *in_axes, *out_axes),
            num_in=len(in_shape),  # tells the HF converter where (out, in) splits
        )
        self.bias = (
            nnx.Param(jnp.zeros((*stack, *out_shape), dtype), logical_axes=(*stack_axes, *out_axes)) if bias else None
        )

    def __call__(self, x: Array) -> Array:
        kernel = self.kernel[...].astype(x.dtype)
        y = jnp.tensordot(x, kernel, axes=self.num_in)
        if self.bias is not None:
            y = y + self.bias[...].astype(x.dtype)
        return y


class RMSNorm(nnx.Module):
    """x / rms(x) * weight, the statistics taken in float32 (as transformers does)."""

    def __init__(self, dim: int, axis: str, *, eps: float, stack: tuple, cfg: ModelConfig):
        self.eps = eps
        self.weight = nnx.Param(
            jnp.ones((*stack, dim), jnp.dtype(cfg.param_dtype)), logical_axes=(*("layers",) * len(stack), axis)
        )

    def __call__(self, x: Array) -> Array:
        xf = x.astype(jnp.float32)
        xf = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.eps)
        return self.weight[...].astype(x.dtype) * xf.astype(x.dtype)


def apply_rope(x: Array, positions: Array, inv_freq: Array) -> Array:
    """Rotary embedding, half-split ("rotate_half") convention. x: [B,T,heads,H], positions: [B,T]."""
    angles = positions[..., None].astype(jnp.float32) * inv_freq  # [B,T,H/2]
    cos = jnp.cos(angles)[:, :, None, :].astype(x.dtype)
    sin = jnp.sin(angles)[:, :, None, :].astype(x.dtype)
    x1, x2 = jnp.split(x, 2, axis=-1)
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


def attention_mask(q_seg, q_branch, q_slot, k_seg, k_branch, k_slot) -> Array:
    """[B,T,S] bool: same non-padding segment, causal by slot, and trunk-or-same-branch."""
    same_segment = (q_seg[:, :, None] == k_seg[:, None, :]) & (k_seg[:, None, :] != 0)
    causal = k_slot[:, None, :] <= q_slot[:, :, None]
    branch_visible = (k_branch[:, None, :] == 0) | (k_branch[:, None, :] == q_branch[:, :, None])
    return same_segment & causal & branch_visible


@flax.struct.dataclass
class KVCache:
    """Keys and values of all layers plus the ids of the tokens in each slot.

    k, v: [L,B,S,K,H]; segment_ids, branch_ids: [B,S] (segment 0 = empty slot);
    index: the next free slot (rows are left-padded, so one index serves the batch).
    """

    k: Array
    v: Array
    segment_ids: Array
    branch_ids: Array
    index: Array

    @classmethod
    def init(cls, cfg: ModelConfig, batch: int, max_len: int, dtype=None) -> KVCache:
        dtype = jnp.dtype(dtype or cfg.dtype)
        shape = (cfg.num_layers, batch, max_len, cfg.num_kv_heads, cfg.head_dim)
        ids = jnp.zeros((batch, max_len), jnp.int32)
        return cls(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype), ids, ids, jnp.zeros((), jnp.int32))

    @property
    def max_len(self) -> int:
        return self.k.shape[2]


class Attention(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, stack: tuple, rngs: nnx.Rngs):
        D, N, K, H = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        common = dict(stack=stack, cfg=cfg, rngs=rngs)
        self.q_proj = Projection((D,), (N, H), ("embed",), ("q_heads", "head_dim"), bias=cfg.qkv_bias, **common)
        self.k_proj = Projection((D,), (K, H), ("embed",), ("kv_heads", "head_dim"), bias=cfg.qkv_bias, **common)
        self.v_proj = Projection((D,), (K, H), ("embed",), ("kv_heads", "head_dim"), bias=cfg.qkv_bias, **common)
        self.o_proj = Projection((N, H), (D,), ("q_heads", "head_dim"), ("embed",), bias=cfg.o_bias, **common)
        if cfg.qk_norm:
            self.q_norm = RMSNorm(H, "head_dim", eps=cfg.rms_norm_eps, stack=stack, cfg=cfg)
            self.k_norm = RMSNorm(H, "head_dim", eps=cfg.rms_norm_eps, stack=stack, cfg=cfg)
        else:
            self.q_norm = self.k_norm = None
        self.num_kv_heads, self.group_size, self.head_dim = K, cfg.group_size, H

    def __call__(self, x, positions, inv_freq, mask, cache_kv):
        """x: [B,T,D]; mask: [B,T,S]; cache_kv: None or (all layers' k, v, this layer, index).

        Returns the output [B,T,D] and the updated (k, v) of all layers (None without cache).
        Only this step's T new entries are written into the stacked cache, in place, so a decode
        step costs O(new tokens) of cache writes, not a copy of the cache.
        """
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)  # [B,T,N,H], [B,T,K,H]
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rope(q, positions, inv_freq), apply_rope(k, positions, inv_freq)
        new_kv = None
        if cache_kv is not None:
            cache_k, cache_v, layer, index = cache_kv  # [L,B,S,K,H]
            start = (layer, 0, index, 0, 0)
            cache_k = jax.lax.dynamic_update_slice(cache_k, k[None].astype(cache_k.dtype), start)
            cache_v = jax.lax.dynamic_update_slice(cache_v, v[None].astype(cache_v.dtype), start)
            new_kv = (cache_k, cache_v)
            k = jax.lax.dynamic_index_in_dim(cache_k, layer, 0, keepdims=False).astype(x.dtype)
            v = jax.lax.dynamic_index_in_dim(cache_v, layer, 0, keepdims=False).astype(x.dtype)
        B, T = x.shape[:2]
        q = q.reshape(B, T, self.num_kv_heads, self.group_size, self.head_dim)  # [B,T,K,G,H]
        scores = jnp.einsum("btkgh,bskh->bkgts", q, k, preferred_element_type=jnp.float32)
        scores = scores * (self.head_dim**-0.5)
        scores = jnp.where(mask[:, None, None, :, :], scores, _NEG)
        probs = jax.nn.softmax(scores, axis=-1).astype(x.dtype)
        out = jnp.einsum("bkgts,bskh->btkgh", probs, v).reshape(B, T, -1, self.head_dim)  # [B,T,N,H]
        return self.o_proj(out), new_kv


class MLP(nnx.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, cfg: ModelConfig, *, stack: tuple, rngs: nnx.Rngs):
        D, F = cfg.hidden_size, cfg.intermediate_size
        common = dict(bias=cfg.mlp_bias, stack=stack, cfg=cfg, rngs=rngs)
        self.gate_proj = Projection((D,), (F,), ("embed",), ("mlp",), **common)
        self.up_proj = Projection((D,), (F,), ("embed",), ("mlp",), **common)
        self.down_proj = Projection((F,), (D,), ("mlp",), ("embed",), **common)

    def __call__(self, x):
        return self.down_proj(jax.nn.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderBlock(nnx.Module):
    """Pre-norm residual block. Built with stack=(L,) its weights hold all L layers at once."""

    def __init__(self, cfg: ModelConfig, *, stack: tuple = (), rngs: nnx.Rngs):
        self.input_norm = RMSNorm(cfg.hidden_size, "embed", eps=cfg.rms_norm_eps, stack=stack, cfg=cfg)
        self.attn = Attention(cfg, stack=stack, rngs=rngs)
        self.post_attn_norm = RMSNorm(cfg.hidden_size, "embed", eps=cfg.rms_norm_eps, stack=stack, cfg=cfg)
        self.mlp = MLP(cfg, stack=stack, rngs=rngs)

    def __call__(self, x, positions, inv_freq, mask, cache_kv):
        attn_out, new_kv = self.attn(self.input_norm(x), positions, inv_freq, mask, cache_kv)
        x = x + attn_out
        x = x + self.mlp(self.post_attn_norm(x))
        return x, new_kv


_REMAT_POLICIES = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots_saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


class Decoder(nnx.Module):
    """Causal LM: embed -> L decoder blocks (scanned) -> final RMSNorm -> vocab projection."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.embed = nnx.Param(_init(rngs, (cfg.vocab_size, cfg.hidden_size), cfg), logical_axes=("vocab", "embed"))
        self.blocks = DecoderBlock(cfg, stack=(cfg.num_layers,), rngs=rngs)
        self.final_norm = RMSNorm(cfg.hidden_size, "embed", eps=cfg.rms_norm_eps, stack=(), cfg=cfg)
        self.lm_head = (
            None
            if cfg.tie_word_embeddings
            else nnx.Param(
                _init(rngs, (cfg.hidden_size, cfg.vocab_size), cfg), logical_axes=("embed", "vocab"), num_in=1
            )
        )

    def __call__(self, tokens, positions, segment_ids, branch_ids=None, cache: KVCache | None = None):
        """Logits [B,T,V] (float32) and the updated cache (None if no cache was given)."""
        hidden, cache = self.hidden_states(tokens, positions, segment_ids, branch_ids, cache)
        return self.logits(hidden), cache

    def hidden_states(self, tokens, positions, segment_ids, branch_ids=None, cache: KVCache | None = None):
        """Final-normed hidden states [B,T,D] (compute dtype); the loss projects them in chunks."""
        cfg = self.cfg
        compute = jnp.dtype(cfg.dtype)
        B, T = tokens.shape
        if branch_ids is None:
            branch_ids = jnp.zeros_like(segment_ids)
        x = jnp.take(self.embed[...], tokens, axis=0).astype(compute)
        inv_freq = jnp.asarray(cfg.rope_inv_freq())
        q_slot = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
        if cache is None:
            mask = attention_mask(segment_ids, branch_ids, q_slot, segment_ids, branch_ids, q_slot)
        else:
            index = cache.index
            seg = jax.lax.dynamic_update_slice_in_dim(cache.segment_ids, segment_ids.astype(jnp.int32), index, axis=1)
            br = jax.lax.dynamic_update_slice_in_dim(cache.branch_ids, branch_ids.astype(jnp.int32), index, axis=1)
            k_slot = jnp.broadcast_to(jnp.arange(cache.max_len, dtype=jnp.int32), (B, cache.max_len))
            mask = attention_mask(segment_ids, branch_ids, q_slot + index, seg, br, k_slot)

        graphdef, layer_state = nnx.split(self.blocks)

        # The stacked cache rides in the scan carry (updated in place), not in xs/ys (copied).
        def layer(carry, per_layer):
            x, kv = carry
            params, index_of_layer = per_layer
            block = nnx.merge(graphdef, params)
            cache_kv = None if cache is None else (*kv, index_of_layer, cache.index)
            x, new_kv = block(x, positions, inv_freq, mask, cache_kv)
            return (x, new_kv), None

        if cfg.remat_policy != "none":
            layer = jax.checkpoint(layer, policy=_REMAT_POLICIES[cfg.remat_policy], prevent_cse=False)
        kv = None if cache is None else (cache.k, cache.v)
        (x, kv), _ = jax.lax.scan(layer, (x, kv), (layer_state, jnp.arange(cfg.num_layers)))
        if cache is not None:
            cache = KVCache(kv[0], kv[1], seg, br, cache.index + T)
        return self.final_norm(x), cache

    def unembedding(self) -> Array:
        """The output projection [D,V] (the embedding table, transposed, when tied)."""
        return self.embed[...].T if self.lm_head is None else self.lm_head[...]

    def logits(self, hidden: Array) -> Array:
        """Project hidden states [..., D] to float32 logits [..., V]."""
        w = self.unembedding().astype(hidden.dtype)
        return jnp.einsum("...d,dv->...v", hidden, w, preferred_element_type=jnp.float32)


def init_decoder(cfg: ModelConfig, seed: int = 0, mesh: jax.sharding.Mesh | None = None) -> Decoder:
    """A randomly initialised decoder (normal weights of std cfg.initializer_range, unit norms, zero biases).

    Initialised by one jitted program straight into the parameter shardings of `mesh` (one
    device without a mesh): fast, and a large model is never materialised on one device.
    """
    from ipo_jax.sharding import param_shardings

    def build():
        return Decoder(cfg, rngs=nnx.Rngs(params=seed))

    graphdef, abstract_state = nnx.split(nnx.eval_shape(build))
    shardings = param_shardings(abstract_state, mesh)
    state = jax.jit(lambda: nnx.split(build())[1], out_shardings=shardings)()
    return nnx.merge(graphdef, state)


def positions_from_segments(segment_ids: Array) -> Array:
    """Positions 0, 1, 2, ... restarting at each segment; padding gets 0. segment_ids: [B,T]."""
    T = segment_ids.shape[1]
    idx = jnp.broadcast_to(jnp.arange(T), segment_ids.shape)
    starts = jnp.concatenate(
        [jnp.ones_like(segment_ids[:, :1], bool), segment_ids[:, 1:] != segment_ids[:, :-1]], axis=1
    )
    start_idx = jax.lax.cummax(jnp.where(starts, idx, 0), axis=1)
    return jnp.where(segment_ids != 0, idx - start_idx, 0).astype(jnp.int32)
