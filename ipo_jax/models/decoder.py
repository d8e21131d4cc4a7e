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
prefix-shared pair starts at the same position as the chosen one). The attention kernels
(`cfg.attention`: dense or blockwise) live in `ipo_jax.models.attention`.
"""

from __future__ import annotations

import functools

import math
from typing import Sequence

import flax.struct
import jax
import jax.numpy as jnp
from flax import nnx

from ipo_jax.models import attention as attn_kernels
from ipo_jax.models.attention import MaskIds
from ipo_jax.models.config import ModelConfig
from ipo_jax.sharding import param_shardings

Array = jax.Array


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
        # One plain [tokens, in] x [in, out] matmul: XLA:CPU runs the backward of a dot that
        # contracts over (batch, length) well below its 2-D rate (a 6-layer MLP stack's backward:
        # 1.84 s as tensordot, 1.29 s as 2-D dots); merging leading dims keeps every sharding.
        lead, out_shape = x.shape[: x.ndim - self.num_in], kernel.shape[self.num_in :]
        fan_in = math.prod(kernel.shape[: self.num_in])
        y = (x.reshape(-1, fan_in) @ kernel.reshape(fan_in, -1)).reshape(*lead, *out_shape)
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
    return attn_kernels.attention_mask(MaskIds(q_seg, q_branch, q_slot, k_seg, k_branch, k_slot))


def attention_inputs(cfg: ModelConfig, ids: MaskIds):
    """What the configured kernel reads, made once per forward and shared by every layer:
    the dense [B,T,S] mask, or the blockwise kernel's plan of visible blocks."""
    if cfg.attention == "blockwise":
        return attn_kernels.plan_blocks(ids, cfg.attention_block_q, cfg.attention_block_k)
    return attn_kernels.attention_mask(ids)


@flax.struct.dataclass
class KVCache:
    """Keys and values of every layer plus the ids of the tokens in each slot.

    k, v: one [B,K,S,H] array per layer (a tuple of L; heads before slots, so attention reads
    them without a transpose); segment_ids, branch_ids: [B,S] (segment 0 = empty slot);
    index: the next free slot (rows are left-padded, so one index serves the batch). An index
    of max_len or more makes the cache a ring (the sampler's continuous batching): the next write
    goes to slot index mod max_len, and as a query's slot (index) exceeds every slot, a decoding
    row attends to all its filled slots, whatever their order; its segment ids say which.

    One buffer per layer, not one stacked [L,...] array: a step writes its new entries into a
    layer's buffer in place and attention then reads that whole buffer, which XLA does without
    copying it; slicing a layer out of a stacked cache costs a copy of the layer's cache per
    step on CPU (and a transpose for the dot), several times the attention's own reads.
    """

    k: tuple[Array, ...]
    v: tuple[Array, ...]
    segment_ids: Array
    branch_ids: Array
    index: Array

    @classmethod
    def init(cls, cfg: ModelConfig, batch: int, max_len: int, dtype=None) -> KVCache:
        dtype = jnp.dtype(dtype or cfg.dtype)
        shape = (batch, cfg.num_kv_heads, max_len, cfg.head_dim)
        zeros = tuple(jnp.zeros(shape, dtype) for _ in range(cfg.num_layers))
        ids = jnp.zeros((batch, max_len), jnp.int32)
        return cls(zeros, tuple(jnp.zeros(shape, dtype) for _ in range(cfg.num_layers)), ids, ids, jnp.zeros((), jnp.int32))

    @staticmethod
    def nbytes(cfg: ModelConfig, batch: int, max_len: int, dtype=None) -> int:
        """The bytes `init(cfg, batch, max_len, dtype)` allocates (keys, values, two int32 id arrays, the index)."""
        per_slot = 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * jnp.dtype(dtype or cfg.dtype).itemsize + 2 * 4
        return batch * max_len * per_slot + 4

    @property
    def max_len(self) -> int:
        return self.k[0].shape[2]


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
        self.kind = cfg.attention

    def __call__(self, x, positions, inv_freq, mask, cache_kv):
        """x: [B,T,D]; mask: `attention_inputs` (a [B,T,S] mask or a block plan);
        cache_kv: None or (this layer's k, v [B,K,S,H], index).

        Returns the output [B,T,D] and the layer's updated (k, v) (None without a cache).
        With a cache, this step's T new entries are written into the layer's buffers in place
        first, then the queries attend over the whole buffer (empty and future slots masked).
        """
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)  # [B,T,N,H], [B,T,K,H]
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rope(q, positions, inv_freq), apply_rope(k, positions, inv_freq)
        B, T = x.shape[:2]
        q = q.reshape(B, T, self.num_kv_heads, self.group_size, self.head_dim)  # [B,T,K,G,H]
        if cache_kv is None:
            new_kv = None
        else:
            cache_k, cache_v, index = cache_kv  # [B,K,S,H]
            start = (0, 0, index % cache_k.shape[2], 0)  # a ring past max_len (KVCache)
            cache_k = jax.lax.dynamic_update_slice(cache_k, k.transpose(0, 2, 1, 3).astype(cache_k.dtype), start)
            cache_v = jax.lax.dynamic_update_slice(cache_v, v.transpose(0, 2, 1, 3).astype(cache_v.dtype), start)
            new_kv = (cache_k, cache_v)
            k, v = cache_k.astype(x.dtype), cache_v.astype(x.dtype)
        kernel = attn_kernels.blockwise_attention if self.kind == "blockwise" else attn_kernels.dense_attention
        out = kernel(q, k, v, mask, heads_first=cache_kv is not None)  # [B,T,K,G,H]
        out = out.reshape(B, T, -1, self.head_dim)  # [B,T,N,H]
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

    def hidden_states(
        self, tokens, positions, segment_ids, branch_ids=None, cache: KVCache | None = None, layers=None
    ):
        """Final-normed hidden states [B,T,D] (compute dtype); the loss projects them in chunks.

        Without a cache the layers run as one `lax.scan` (one layer compiled, remat applies).
        With a cache (prefill and decoding) they are unrolled: each layer updates and reads its
        own cache buffers, and its weights are `layers[l]` when given (per-layer states from
        `layer_states`, made once outside the jitted program) or a static slice of the stacked
        weights otherwise.
        """
        cfg = self.cfg
        compute = jnp.dtype(cfg.dtype)
        B, T = tokens.shape
        if branch_ids is None:
            branch_ids = jnp.zeros_like(segment_ids)
        x = jnp.take(self.embed[...], tokens, axis=0).astype(compute)
        inv_freq = jnp.asarray(cfg.rope_inv_freq())
        q_slot = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
        graphdef, layer_state = nnx.split(self.blocks)
        if cache is None:
            mask = attention_inputs(cfg, MaskIds(segment_ids, branch_ids, q_slot, segment_ids, branch_ids, q_slot))

            def layer(x, params):
                x, _ = nnx.merge(graphdef, params)(x, positions, inv_freq, mask, None)
                return x, None

            if cfg.remat_policy != "none":
                layer = jax.checkpoint(layer, policy=_REMAT_POLICIES[cfg.remat_policy], prevent_cse=False)
            x, _ = jax.lax.scan(layer, x, layer_state)
            return self.final_norm(x), None

        index = cache.index
        slot = index % cache.max_len  # the write position (a ring past max_len)
        seg = jax.lax.dynamic_update_slice_in_dim(cache.segment_ids, segment_ids.astype(jnp.int32), slot, axis=1)
        br = jax.lax.dynamic_update_slice_in_dim(cache.branch_ids, branch_ids.astype(jnp.int32), slot, axis=1)
        k_slot = jnp.broadcast_to(jnp.arange(cache.max_len, dtype=jnp.int32), (B, cache.max_len))
        mask = attention_inputs(cfg, MaskIds(segment_ids, branch_ids, q_slot + index, seg, br, k_slot))
        if layers is None:
            layers = [jax.tree.map(lambda a, i=i: a[i], layer_state) for i in range(cfg.num_layers)]
        new_k, new_v = [], []
        for i, params in enumerate(layers):
            x, (k, v) = nnx.merge(graphdef, params)(x, positions, inv_freq, mask, (cache.k[i], cache.v[i], index))
            new_k.append(k)
            new_v.append(v)
        return self.final_norm(x), KVCache(tuple(new_k), tuple(new_v), seg, br, index + T)

    def layer_states(self) -> list[nnx.State]:
        """The stacked blocks' weights as one State per layer (new arrays: a copy of the weights).

        Passing these to `hidden_states(..., layers=...)` spares the cached (decoding) path a
        slice of every stacked weight per step, which XLA's CPU backend materialises as a copy.
        """
        _, state = nnx.split(self.blocks)
        return _unstack_layers(state, self.cfg.num_layers)

    def unembedding(self) -> Array:
        """The output projection [D,V] (the embedding table, transposed, when tied)."""
        return self.embed[...].T if self.lm_head is None else self.lm_head[...]

    def logits(self, hidden: Array) -> Array:
        """Project hidden states [..., D] to float32 logits [..., V]."""
        w = self.unembedding().astype(hidden.dtype)
        return jnp.einsum("...d,dv->...v", hidden, w, preferred_element_type=jnp.float32)


@functools.partial(jax.jit, static_argnums=1)
def _unstack_layers(state: nnx.State, num_layers: int) -> list[nnx.State]:
    """One State per layer from the stacked blocks' State: compiled once per model shape (a jitted
    lambda made per call compiled again at every call, e.g. at each GRPO weight refresh)."""
    return [jax.tree.map(lambda a, i=i: a[i], state) for i in range(num_layers)]


def init_decoder(cfg: ModelConfig, seed: int = 0, mesh: jax.sharding.Mesh | None = None) -> Decoder:
    """A randomly initialised decoder (normal weights of std cfg.initializer_range, unit norms, zero biases).

    Initialised by one jitted program straight into the parameter shardings of `mesh` (one
    device without a mesh): fast, and a large model is never materialised on one device.
    """

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
