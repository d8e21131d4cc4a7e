"""Attention kernels: the dense reference and a blockwise (flash-style) kernel, side by side.

Which key a query may see is decided by per-token integer ids (`MaskIds`), never by a stored
mask, so both kernels serve every layout the decoder uses (left padding, packed segments, the
prefix-shared pair layout, the KV cache):
  segment   0 = padding, otherwise the sequence a token belongs to (same segment only);
  branch    0 = shared trunk, b > 0 = branch b; a query sees the trunk and its own branch;
  slot      position in the row (or in the cache); causal order is by slot.

`dense_attention` materialises float32 scores [B,K,G,T,S] and a [B,T,S] mask: simple, and the
fastest for short rows. `blockwise_attention` never does: it walks the (query block, key
block) pairs that hold at least one visible (query, key) pair (found once per forward from
per-block summaries of the ids, `plan_blocks`), keeps an online softmax per query, and builds
each block's mask from the ids on the fly. Its backward is the flash recomputation (a
`custom_vjp`): only q, k, v, the output and the per-query log-sum-exp are kept, so nothing
[T,S]-sized survives into the backward pass, and skipped blocks cost nothing either way.

Shapes: B batch, T queries, S keys, K kv heads, G query heads per kv head, H head_dim.
"""

from __future__ import annotations

import functools

import flax.struct
import jax
import jax.numpy as jnp

Array = jax.Array
ATTENTION_KINDS = ("dense", "blockwise")
_NEG = jnp.finfo(jnp.float32).min  # finite, so a fully masked (padding) row stays finite


@flax.struct.dataclass
class MaskIds:
    """Per-token ids of the queries [B,T] and the keys [B,S] (int32)."""

    q_segment: Array
    q_branch: Array
    q_slot: Array
    k_segment: Array
    k_branch: Array
    k_slot: Array


def attention_mask(ids: MaskIds) -> Array:
    """[B,T,S] bool: same non-padding segment, causal by slot, and trunk-or-same-branch."""
    return _visible(ids.q_segment[:, :, None], ids.q_branch[:, :, None], ids.q_slot[:, :, None],
                    ids.k_segment[:, None, :], ids.k_branch[:, None, :], ids.k_slot[:, None, :])


def _visible(q_seg, q_br, q_slot, k_seg, k_br, k_slot) -> Array:
    """The mask rule on broadcastable id arrays (one rule for the dense mask and every block)."""
    return (q_seg == k_seg) & (k_seg != 0) & (k_slot <= q_slot) & ((k_br == 0) | (k_br == q_br))


# ---------------------------------------------------------------------------------- dense


def dense_attention(q: Array, k: Array, v: Array, mask: Array, *, heads_first: bool) -> Array:
    """softmax(q k^T / sqrt(H), masked) v. q [B,T,K,G,H]; k, v [B,K,S,H] when `heads_first`
    (the KV cache's layout) else [B,S,K,H]; mask [B,T,S]. Returns [B,T,K,G,H]."""
    kv = "bksh" if heads_first else "bskh"
    scores = jnp.einsum(f"btkgh,{kv}->bkgts", q, k, preferred_element_type=jnp.float32)
    scores = scores * (q.shape[-1] ** -0.5)
    scores = jnp.where(mask[:, None, None, :, :], scores, _NEG)
    probs = jax.nn.softmax(scores, axis=-1).astype(q.dtype)
    if not heads_first:
        return jnp.einsum("bkgts,bskh->btkgh", probs, v)
    # [B,K,G,T,H] first: XLA:CPU then runs one batched matmul, ~3x faster than into [B,T,K,G,H]
    return jnp.einsum("bkgts,bksh->bkgth", probs, v).transpose(0, 3, 1, 2, 4)


# ------------------------------------------------------------------------------ blockwise


@flax.struct.dataclass
class BlockPlan:
    """The ids padded to whole blocks and the (query block, key block) pairs worth computing.

    pairs: [P,2] int32 (query block, key block), the first `num_pairs` of them real; a pair is
    listed when some query of the block may see some key of the block in some row (judged from
    per-block ranges of the ids, so it may list a pair whose mask turns out empty, never omit
    one that is not). Made once per forward and shared by every layer.
    """

    ids: MaskIds
    pairs: Array
    num_pairs: Array
    block_q: int = flax.struct.field(pytree_node=False)
    block_k: int = flax.struct.field(pytree_node=False)
    num_queries: int = flax.struct.field(pytree_node=False)  # T before padding
    num_keys: int = flax.struct.field(pytree_node=False)  # S before padding


def _pad_to(x: Array, multiple: int, axis: int) -> Array:
    extra = -x.shape[axis] % multiple
    if not extra:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, extra)
    return jnp.pad(x, widths)  # zeros: segment 0 = padding, invisible


def plan_blocks(ids: MaskIds, block_q: int, block_k: int) -> BlockPlan:
    """Pad the ids to whole blocks (a short sequence is one block) and list the visible block pairs."""
    T, S = ids.q_segment.shape[1], ids.k_segment.shape[1]
    bq, bk = min(block_q, T), min(block_k, S)
    pad_q = lambda a: _pad_to(a.astype(jnp.int32), bq, 1)  # noqa: E731
    pad_k = lambda a: _pad_to(a.astype(jnp.int32), bk, 1)  # noqa: E731
    ids = MaskIds(pad_q(ids.q_segment), pad_q(ids.q_branch), pad_q(ids.q_slot),
                  pad_k(ids.k_segment), pad_k(ids.k_branch), pad_k(ids.k_slot))
    big = jnp.iinfo(jnp.int32).max

    def summary(seg, br, slot, block):
        """Per block (over its non-padding tokens): any, segment min/max, branch min/max, slot min/max."""
        B, n = seg.shape[0], seg.shape[1] // block
        real = (seg != 0).reshape(B, n, block)
        lo = lambda a: jnp.where(real, a.reshape(B, n, block), big).min(-1)  # noqa: E731
        hi = lambda a: jnp.where(real, a.reshape(B, n, block), -big).max(-1)  # noqa: E731
        return real.any(-1), lo(seg), hi(seg), lo(br), hi(br), lo(slot), hi(slot)

    q_any, q_seg_lo, q_seg_hi, q_br_lo, q_br_hi, _, q_slot_hi = [
        a[:, :, None] for a in summary(ids.q_segment, ids.q_branch, ids.q_slot, bq)]
    k_any, k_seg_lo, k_seg_hi, k_br_lo, k_br_hi, k_slot_lo, _ = [
        a[:, None, :] for a in summary(ids.k_segment, ids.k_branch, ids.k_slot, bk)]
    visible = (
        q_any & k_any
        & (k_slot_lo <= q_slot_hi)  # causal: some key not after the block's last query
        & (k_seg_lo <= q_seg_hi) & (q_seg_lo <= k_seg_hi)  # segment ranges overlap
        & ((k_br_lo == 0) | ((k_br_lo <= q_br_hi) & (q_br_lo <= k_br_hi)))  # a trunk key, or branches overlap
    ).any(0)  # [nq, nk]: one loop serves the batch, so a pair is computed if any row needs it
    nk = visible.shape[1]
    (flat,) = jnp.nonzero(visible.reshape(-1), size=visible.size, fill_value=0)
    pairs = jnp.stack([flat // nk, flat % nk], axis=-1).astype(jnp.int32)
    return BlockPlan(ids, pairs, visible.sum().astype(jnp.int32), bq, bk, T, S)


def blockwise_attention(q: Array, k: Array, v: Array, plan: BlockPlan, *, heads_first: bool) -> Array:
    """The same function as `dense_attention`, computed block by block (shapes as there)."""
    B, T, K, G, H = q.shape
    if not heads_first:
        k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
    # queries as [B,K,T*G,H]: a block of bq queries is bq*G contiguous rows, one matmul per kv head
    q = q.transpose(0, 2, 1, 3, 4)
    q = _pad_to(q, plan.block_q, 2).reshape(B, K, -1, H)
    k, v = _pad_to(k, plan.block_k, 2), _pad_to(v, plan.block_k, 2)
    out = _flash(q, k, v, plan, G)
    return out.reshape(B, K, -1, G, H)[:, :, :T].transpose(0, 2, 1, 3, 4)


def _block_mask(ids: MaskIds, i: Array, j: Array, bq: int, bk: int) -> Array:
    """[B,bq,bk] mask of query block i against key block j, from the ids."""
    qs = lambda a: jax.lax.dynamic_slice_in_dim(a, i * bq, bq, axis=1)[:, :, None]  # noqa: E731
    ks = lambda a: jax.lax.dynamic_slice_in_dim(a, j * bk, bk, axis=1)[:, None, :]  # noqa: E731
    return _visible(qs(ids.q_segment), qs(ids.q_branch), qs(ids.q_slot),
                    ks(ids.k_segment), ks(ids.k_branch), ks(ids.k_slot))


class _Blocks:
    """Slicing helpers for one (query block, key block) pair of the [B,K,rows,...] operands."""

    def __init__(self, plan: BlockPlan, group: int, p: Array):
        self.i, self.j = plan.pairs[p, 0], plan.pairs[p, 1]
        self.rows = plan.block_q * group  # query rows of a block (bq queries x G heads)
        self.bq, self.bk, self.group = plan.block_q, plan.block_k, group
        self.mask = _block_mask(plan.ids, self.i, self.j, plan.block_q, plan.block_k)

    def q(self, a):  # a [B,K,T*G,...] -> the block's rows
        return jax.lax.dynamic_slice_in_dim(a, self.i * self.rows, self.rows, axis=2)

    def k(self, a):  # a [B,K,S,...] -> the block's keys
        return jax.lax.dynamic_slice_in_dim(a, self.j * self.bk, self.bk, axis=2)

    def put_q(self, a, x):
        return jax.lax.dynamic_update_slice_in_dim(a, x, self.i * self.rows, axis=2)

    def put_k(self, a, x):
        return jax.lax.dynamic_update_slice_in_dim(a, x, self.j * self.bk, axis=2)

    def masked(self, s: Array, fill) -> Array:
        """Apply the [B,bq,bk] mask to block scores [B,K,bq*G,bk] (each query's G heads share it)."""
        B, K = s.shape[:2]
        s = s.reshape(B, K, self.bq, self.group, self.bk)
        return jnp.where(self.mask[:, None, :, None, :], s, fill).reshape(B, K, self.rows, self.bk)


def _scores(q_blk: Array, k_blk: Array) -> Array:
    scale = q_blk.shape[-1] ** -0.5
    return jnp.einsum("bkqh,bksh->bkqs", q_blk, k_blk, preferred_element_type=jnp.float32) * scale


def _flash_forward(q, k, v, plan: BlockPlan, group: int):
    """Online softmax over the plan's pairs. Returns out [B,K,T*G,H] and log-sum-exp [B,K,T*G]."""
    B, K, R, H = q.shape
    m0 = jnp.full((B, K, R), _NEG, jnp.float32)  # running max
    l0 = jnp.zeros((B, K, R), jnp.float32)  # running sum of exp(score - max)
    acc0 = jnp.zeros((B, K, R, H), jnp.float32)  # running sum of exp(score - max) * v

    def body(p, carry):
        m, l, acc = carry
        blk = _Blocks(plan, group, p)
        s = blk.masked(_scores(blk.q(q), blk.k(k)), _NEG)
        m_old, l_old, acc_old = blk.q(m), blk.q(l), blk.q(acc)
        m_new = jnp.maximum(m_old, s.max(-1))
        probs = blk.masked(jnp.exp(s - m_new[..., None]), 0.0)  # masked keys add exactly 0
        correction = jnp.exp(m_old - m_new)
        l_new = l_old * correction + probs.sum(-1)
        pv = jnp.einsum("bkqs,bksh->bkqh", probs.astype(v.dtype), blk.k(v), preferred_element_type=jnp.float32)
        acc_new = acc_old * correction[..., None] + pv
        return blk.put_q(m, m_new), blk.put_q(l, l_new), blk.put_q(acc, acc_new)

    m, l, acc = jax.lax.fori_loop(0, plan.num_pairs, body, (m0, l0, acc0))
    seen = l > 0  # a query that sees no key (padding) gets 0, not NaN
    out = acc / jnp.where(seen, l, 1.0)[..., None]
    lse = jnp.where(seen, m + jnp.log(jnp.where(seen, l, 1.0)), 0.0)
    return out.astype(q.dtype), lse


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _flash(q, k, v, plan: BlockPlan, group: int) -> Array:
    return _flash_forward(q, k, v, plan, group)[0]


def _flash_fwd(q, k, v, plan, group):
    out, lse = _flash_forward(q, k, v, plan, group)
    return out, (q, k, v, plan, out, lse)


def _flash_bwd(group, residuals, d_out):
    """The flash backward: per pair, recompute the block's probabilities from the saved
    log-sum-exp and add its share to dq, dk, dv (float32 accumulators of the operands' size)."""
    q, k, v, plan, out, lse = residuals
    d_out = d_out.astype(q.dtype)
    delta = jnp.einsum("bkqh,bkqh->bkq", d_out.astype(jnp.float32), out.astype(jnp.float32))
    scale = q.shape[-1] ** -0.5

    def body(p, carry):
        dq, dk, dv = carry
        blk = _Blocks(plan, group, p)
        q_blk, k_blk, v_blk, do_blk = blk.q(q), blk.k(k), blk.k(v), blk.q(d_out)
        probs = blk.masked(jnp.exp(_scores(q_blk, k_blk) - blk.q(lse)[..., None]), 0.0)
        dv_blk = jnp.einsum("bkqs,bkqh->bksh", probs.astype(v.dtype), do_blk, preferred_element_type=jnp.float32)
        dp = jnp.einsum("bkqh,bksh->bkqs", do_blk, v_blk, preferred_element_type=jnp.float32)
        ds = (probs * (dp - blk.q(delta)[..., None]) * scale).astype(q.dtype)
        dq_blk = jnp.einsum("bkqs,bksh->bkqh", ds, k_blk, preferred_element_type=jnp.float32)
        dk_blk = jnp.einsum("bkqs,bkqh->bksh", ds, q_blk, preferred_element_type=jnp.float32)
        return blk.put_q(dq, blk.q(dq) + dq_blk), blk.put_k(dk, blk.k(dk) + dk_blk), blk.put_k(dv, blk.k(dv) + dv_blk)

    zeros = lambda a: jnp.zeros(a.shape, jnp.float32)  # noqa: E731
    dq, dk, dv = jax.lax.fori_loop(0, plan.num_pairs, body, (zeros(q), zeros(k), zeros(v)))
    return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), None


_flash.defvjp(_flash_fwd, _flash_bwd)
