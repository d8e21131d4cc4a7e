"""Blockwise (flash-style) attention equals dense attention: on the kernel, through the decoder
(logits and parameter gradients), on the KV-cache path, and in the real train step on the
8-device mesh; it skips fully masked blocks and keeps nothing [T,S]-sized for the backward."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from ipo_jax.checkpoint.init import load_model
from ipo_jax.models import attention as attn
from ipo_jax.models.config import ModelConfig
from ipo_jax.models.decoder import KVCache, init_decoder
from ipo_jax.models.presets import preset_config

TOL = 1e-5


# ------------------------------------------------------------------------------- layouts


def _left_padded(B=3, T=29):
    seg = np.ones((B, T), np.int32)
    seg[1, :5], seg[2, :17] = 0, 0
    return seg, np.zeros((B, T), np.int32)


def _packed(B=2, T=31):
    """Several segments per row, a padding tail, segment numbers not starting at 1."""
    seg = np.zeros((B, T), np.int32)
    seg[0, :7], seg[0, 7:19], seg[0, 19:27] = 1, 2, 3
    seg[1, :13], seg[1, 13:30] = 4, 5
    return seg, np.zeros((B, T), np.int32)


def _prefix_shared(B=2, T=34):
    """Trunk (branch 0) then chosen (1) and rejected (2) suffixes, right padding."""
    seg, br = np.zeros((B, T), np.int32), np.zeros((B, T), np.int32)
    for row, (trunk, c, r) in enumerate(((14, 9, 8), (20, 5, 7))):
        seg[row, : trunk + c + r] = 1
        br[row, trunk : trunk + c], br[row, trunk + c : trunk + c + r] = 1, 2
    return seg, br


def _mostly_padding(B=2, T=40):
    """Long padding stretches: whole blocks with no visible key."""
    seg = np.zeros((B, T), np.int32)
    seg[0, 24:], seg[1, 30:] = 1, 1
    return seg, np.zeros((B, T), np.int32)


LAYOUTS = {"left padding": _left_padded, "packing": _packed, "prefix shared": _prefix_shared,
           "mostly padding": _mostly_padding}


def _ids(seg, br, q_slot=None, k_seg=None, k_br=None):
    B, T = seg.shape
    slot = np.broadcast_to(np.arange(T, dtype=np.int32), (B, T))
    k_seg = seg if k_seg is None else k_seg
    k_br = br if k_br is None else k_br
    k_slot = np.broadcast_to(np.arange(k_seg.shape[1], dtype=np.int32), k_seg.shape)
    return attn.MaskIds(*(jnp.asarray(a) for a in (seg, br, slot if q_slot is None else q_slot, k_seg, k_br, k_slot)))


def _assert_close(a, b, what):
    a, b = np.asarray(a), np.asarray(b)
    diff = np.abs(a - b).max()
    print(f"{what}: max |diff| {diff:.1e} (scale {np.abs(b).max():.2f})")
    assert np.abs(b).max() > 0.1  # not a comparison of near-zero numbers
    assert diff <= TOL, f"{what}: {diff}"


# --------------------------------------------------------------------------------- kernel


KERNEL_CASES = [(layout, (6, 11)) for layout in LAYOUTS]  # block sizes that do not divide the lengths
KERNEL_CASES += [("prefix shared", (8, 8)), ("prefix shared", (64, 64))]  # dividing; one block


@pytest.mark.parametrize("layout, blocks", KERNEL_CASES, ids=lambda x: str(x))
def test_kernel_output_and_gradients_equal_dense(layout, blocks):
    seg, br = LAYOUTS[layout]()
    B, T = seg.shape
    K, G, H = 2, 3, 8
    rng = np.random.default_rng(0)
    q, k, v = (jnp.asarray(rng.standard_normal(s), jnp.float32) for s in ((B, T, K, G, H), (B, T, K, H), (B, T, K, H)))
    ids = _ids(seg, br)
    valid = jnp.asarray(seg != 0)[:, :, None, None, None]  # padding queries see nothing: outputs unused
    weights = jnp.asarray(rng.standard_normal((B, T, K, G, H)), jnp.float32) * valid
    mask, plan = attn.attention_mask(ids), attn.plan_blocks(ids, *blocks)
    dense = lambda q, k, v: attn.dense_attention(q, k, v, mask, heads_first=False)  # noqa: E731
    block = lambda q, k, v: attn.blockwise_attention(q, k, v, plan, heads_first=False)  # noqa: E731
    _assert_close(jax.jit(block)(q, k, v) * valid, jax.jit(dense)(q, k, v) * valid, "output")
    grads = [jax.jit(jax.grad(lambda *a, f=f: (f(*a) * weights).sum(), argnums=(0, 1, 2)))(q, k, v)
             for f in (block, dense)]
    for name, g_block, g_dense in zip("qkv", *grads):
        _assert_close(g_block, g_dense, f"d{name}")


def test_fully_masked_blocks_are_skipped():
    T, b = 64, 8  # 8 x 8 blocks
    causal = attn.plan_blocks(_ids(np.ones((1, T), np.int32), np.zeros((1, T), np.int32)), b, b)
    assert int(causal.num_pairs) == 8 * 9 // 2  # the lower triangle only
    # trunk 32 | chosen 16 | rejected 16: the rejected queries' blocks skip the chosen keys' blocks
    seg, br = np.ones((1, T), np.int32), np.repeat([0, 1, 2], [32, 16, 16])[None].astype(np.int32)
    shared = attn.plan_blocks(_ids(seg, br), b, b)
    pairs = {tuple(p) for p in np.asarray(shared.pairs[: int(shared.num_pairs)])}
    assert int(shared.num_pairs) == 8 * 9 // 2 - 4 and (6, 4) not in pairs and (6, 6) in pairs
    # left padding: key blocks wholly padding are never visited
    pad = np.ones((2, T), np.int32)
    pad[:, :20] = 0
    padded = attn.plan_blocks(_ids(pad, np.zeros_like(pad)), b, b)
    kept = np.asarray(padded.pairs[: int(padded.num_pairs)])
    assert kept[:, 1].min() == 2 and kept[:, 0].min() == 2 and int(padded.num_pairs) == 6 * 7 // 2


def test_cache_layout_kernel_equals_dense():
    """Queries at slots index..index+T over a cache of S slots, empty slots beyond the index."""
    B, T, S, index, K, G, H = 2, 5, 23, 9, 2, 2, 8
    rng = np.random.default_rng(1)
    k_seg = np.zeros((B, S), np.int32)
    k_seg[0, : index + T], k_seg[1, 3 : index + T] = 1, 1
    q_slot = np.broadcast_to(index + np.arange(T, dtype=np.int32), (B, T))
    ids = _ids(np.ones((B, T), np.int32), np.zeros((B, T), np.int32), q_slot, k_seg, np.zeros((B, S), np.int32))
    q = jnp.asarray(rng.standard_normal((B, T, K, G, H)), jnp.float32)
    k, v = (jnp.asarray(rng.standard_normal((B, K, S, H)), jnp.float32) for _ in range(2))
    plan = attn.plan_blocks(ids, 4, 4)
    assert int(plan.num_pairs) == 2 * 4  # 2 query blocks x the 4 key blocks holding slots < 14
    dense = attn.dense_attention(q, k, v, attn.attention_mask(ids), heads_first=True)
    _assert_close(attn.blockwise_attention(q, k, v, plan, heads_first=True), dense, "cache output")


# -------------------------------------------------------------------------------- decoder


def _decoders(blocks=(8, 8), preset="tiny-qwen2"):
    cfg = preset_config(preset, initializer_range=0.2)
    blockwise = cfg.replace(attention="blockwise", attention_block_q=blocks[0], attention_block_k=blocks[1])
    return init_decoder(cfg, seed=3), init_decoder(blockwise, seed=3)


@pytest.mark.parametrize("layout", ["left padding", "packing", "prefix shared"])
def test_decoder_logits_and_parameter_gradients_equal_dense(layout):
    seg, br = LAYOUTS[layout]()
    dense, block = _decoders(blocks=(8, 6))
    rng = np.random.default_rng(2)
    tokens = jnp.asarray(rng.integers(0, dense.cfg.vocab_size, seg.shape), jnp.int32)
    positions = jnp.asarray(np.maximum(np.cumsum(seg != 0, axis=1) - 1, 0), jnp.int32)
    valid = jnp.asarray(seg != 0)

    def loss(params, graphdef):
        logits, _ = nnx.merge(graphdef, params)(tokens, positions, jnp.asarray(seg), jnp.asarray(br))
        logp = jax.nn.log_softmax(logits[:, :-1])
        picked = jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1)[..., 0]
        counted = valid[:, :-1] & valid[:, 1:]  # a padding query's output is unused (it sees no key)
        return -(picked * counted).sum() / counted.sum(), logits

    results = {}
    for name, model in (("dense", dense), ("blockwise", block)):
        graphdef, params = nnx.split(model, nnx.Param)
        grad_fn = jax.jit(jax.value_and_grad(functools.partial(loss, graphdef=graphdef), has_aux=True))
        (_, logits), grads = grad_fn(params)
        results[name] = (logits, grads)
    _assert_close(results["blockwise"][0] * valid[..., None], results["dense"][0] * valid[..., None], "logits")
    flat_b, flat_d = (jax.tree.leaves(results[n][1]) for n in ("blockwise", "dense"))
    assert len(flat_b) == len(flat_d) > 5
    worst = max(float(np.abs(np.asarray(a) - np.asarray(b)).max()) for a, b in zip(flat_b, flat_d))
    scale = max(float(np.abs(np.asarray(b)).max()) for b in flat_d)
    print(f"{layout}: max |grad diff| {worst:.1e} (largest gradient {scale:.2f})")
    assert scale > 0.1 and worst <= TOL


def test_kv_cache_prefill_and_greedy_decode_equal_dense():
    dense, block = _decoders(blocks=(4, 8))
    B, prompt, new, max_len = 3, 11, 6, 21
    seg = np.ones((B, prompt), np.int32)
    seg[1, :3], seg[2, :6] = 0, 0  # left padding
    positions = np.maximum(np.cumsum(seg, axis=1) - 1, 0).astype(np.int32)
    tokens = np.random.default_rng(4).integers(0, dense.cfg.vocab_size, (B, prompt)).astype(np.int32)

    def greedy(model):
        step = jax.jit(lambda t, p, s, c: model(t, p, s, cache=c))
        cache = KVCache.init(model.cfg, batch=B, max_len=max_len)
        logits, cache = step(tokens, positions, seg, cache)
        out, last, pos = [logits[:, -1]], logits[:, -1], positions[:, -1:]
        picked = []
        for _ in range(new):
            nxt = jnp.argmax(last, axis=-1)[:, None].astype(jnp.int32)
            picked.append(np.asarray(nxt[:, 0]))
            pos = pos + 1
            logits, cache = step(nxt, pos, jnp.ones_like(nxt), cache)
            last = logits[:, -1]
            out.append(last)
        return np.stack(picked, 1), np.stack([np.asarray(x) for x in out], 1)

    tokens_d, logits_d = greedy(dense)
    tokens_b, logits_b = greedy(block)
    np.testing.assert_array_equal(tokens_b, tokens_d)
    _assert_close(logits_b, logits_d, "prefill + decode logits")


# ----------------------------------------------------------------------- mesh, config, memory


def test_train_step_on_8_device_mesh_equals_dense_single_device():
    """The real jitted train step (fsdp 4 x tensor 2, blockwise) against one device (dense)."""
    from test_train import _batch, _pairs

    from ipo_jax.loss import LossConfig
    from ipo_jax.sharding import make_mesh, shard_model
    from ipo_jax.train.step import batch_shardings, init_train_state, jit_train_step, make_train_step, put_batch

    batch = _batch(_pairs(8), 1)

    def sgd_step(attention, mesh):
        cfg = preset_config("tiny-qwen3", initializer_range=0.2, attention=attention,
                            attention_block_q=8, attention_block_k=8)
        model = shard_model(init_decoder(cfg, seed=1), mesh)
        graphdef, params = nnx.split(model, nnx.Param)
        before = jax.tree.map(np.asarray, params)
        tx = optax.sgd(1.0)
        state, shardings = init_train_state(params, tx, mesh)
        step = jit_train_step(make_train_step(graphdef, tx, LossConfig(), optax.constant_schedule(1.0), chunk_size=8,
                                              mesh=mesh), shardings, mesh)
        state, metrics = step(state, put_batch(batch, batch_shardings(mesh)), None)
        return jax.tree.map(lambda b, a: b - np.asarray(a), before, state.params), jax.device_get(metrics)

    grads_d, metrics_d = sgd_step("dense", make_mesh({"data": 1}, devices=jax.devices()[:1]))
    grads_b, metrics_b = sgd_step("blockwise", make_mesh({"fsdp": 4, "tensor": 2}))
    assert abs(float(metrics_b["loss"]) - float(metrics_d["loss"])) <= TOL
    diffs = jax.tree.leaves(jax.tree.map(lambda a, b: float(np.abs(a - b).max()), grads_b, grads_d))
    scale = max(float(np.abs(g).max()) for g in jax.tree.leaves(grads_d))
    print(f"mesh: |loss diff| {abs(float(metrics_b['loss']) - float(metrics_d['loss'])):.1e}, "
          f"max |grad diff| {max(diffs):.1e} (largest {scale:.2f})")
    assert scale > 0.01 and max(diffs) <= TOL


def test_attention_kind_is_validated_and_stays_out_of_the_hf_config():
    cfg = preset_config("tiny-qwen2")
    assert cfg.attention == "dense"
    with pytest.raises(ValueError, match=r"attention must be one of \('dense', 'blockwise'\), got 'flash'"):
        cfg.replace(attention="flash")
    with pytest.raises(ValueError, match="attention_block_k must be a positive integer"):
        cfg.replace(attention_block_k=0)
    hf = cfg.replace(attention="blockwise", attention_block_q=64, attention_block_k=32).to_hf_dict()
    assert hf == cfg.to_hf_dict()  # a runtime choice, like dtype and remat: not part of config.json
    assert ModelConfig.from_hf_dict(hf).attention == "dense"
    assert load_model("preset:tiny-qwen2", attention="blockwise").cfg.attention == "blockwise"
    assert attn.ATTENTION_KINDS == ("dense", "blockwise")


def test_compiled_gradient_keeps_no_scores_sized_buffer():
    """XLA's memory analysis of a compiled grad: blockwise temporaries stay well below one
    [B,N,T,S] float32 score tensor, which dense attention needs (and keeps for its backward)."""
    B, T, K, G, H = 2, 2048, 2, 2, 16
    seg, br = np.ones((B, T), np.int32), np.zeros((B, T), np.int32)
    ids = _ids(seg, br)
    shapes = [jax.ShapeDtypeStruct(s, jnp.float32) for s in ((B, T, K, G, H), (B, T, K, H), (B, T, K, H))]

    def temp_bytes(kind):
        def loss(q, k, v):
            if kind == "dense":
                return attn.dense_attention(q, k, v, attn.attention_mask(ids), heads_first=False).sum()
            return attn.blockwise_attention(q, k, v, attn.plan_blocks(ids, 256, 256), heads_first=False).sum()

        compiled = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(*shapes).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    scores = B * K * G * T * T * 4
    dense, block = temp_bytes("dense"), temp_bytes("blockwise")
    print(f"grad temporaries: dense {dense / 2**20:.1f} MiB, blockwise {block / 2**20:.1f} MiB, "
          f"one score tensor {scores / 2**20:.1f} MiB")
    assert dense >= scores  # the dense kernel really does hold the scores
    assert block < scores / 8
