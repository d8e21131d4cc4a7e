"""Packing several prefix-shared pairs per row (ipo_jax/data/pairs.py): the bin packing, the batches
(static shapes, every pair once per epoch, resumable order, padding), and the numbers: per-pair
log-probs, the train step's loss and gradients equal to the unpacked layout's."""

import numpy as np
import jax
import optax
import pytest
from flax import nnx

from ipo_jax.buckets import default_buckets
from ipo_jax.data.pairs import (
    PairBatches,
    TokenizedPair,
    best_fit_decreasing,
    fit_to_length,
    pack_pairs,
    pack_rows,
)
from ipo_jax.loss import LossConfig
from ipo_jax.models.decoder import init_decoder
from ipo_jax.models.presets import preset_config
from ipo_jax.sharding import make_mesh, shard_model
from ipo_jax.train.step import batch_shardings, init_train_state, jit_train_step, make_train_step, policy_pair_logps, put_batch

ONE_DEVICE = dict(shape={"data": 1}, devices=jax.devices()[:1])


def _pairs(n, seed=0):
    rng = np.random.RandomState(seed)
    ids = lambda k: rng.randint(3, 256, k).astype(np.int32)  # noqa: E731
    return [TokenizedPair(str(i), ids(rng.randint(3, 9)), ids(rng.randint(0, 9)), ids(rng.randint(1, 9)), ids(rng.randint(1, 9))) for i in range(n)]


def realistic_pairs(n=600, max_length=8192, seed=0):
    """Lengths only (token ids 0): trunks 200-6000, suffixes 100-2000, log-normal around 1200 / 400."""
    rng = np.random.default_rng(seed)
    draw = lambda lo, hi, median: np.clip(rng.lognormal(np.log(median), 0.8, n), lo, hi).astype(int)  # noqa: E731
    trunk, chosen, rejected = draw(200, 6000, 1200), draw(100, 2000, 400), draw(100, 2000, 400)
    zeros = lambda k: np.zeros(k, np.int32)  # noqa: E731
    pairs = [TokenizedPair(str(i), zeros(64), zeros(t - 64), zeros(c), zeros(r)) for i, (t, c, r) in enumerate(zip(trunk, chosen, rejected))]
    return [f for f in (fit_to_length(p, max_length) for p in pairs) if f is not None]  # longer pairs dropped


# ----------------------------------------------------------------------------- bin packing


def test_best_fit_decreasing_places_every_item_once_within_capacity_and_is_deterministic():
    rng = np.random.default_rng(3)
    lengths = rng.integers(1, 100, 300)
    tie = rng.permutation(300)
    bins = best_fit_decreasing(lengths, 128, tie)
    assert sorted(i for b in bins for i in b) == list(range(300))
    assert all(sum(lengths[i] for i in b) <= 128 for b in bins)
    assert bins == best_fit_decreasing(lengths, 128, tie)
    # close to the lower bound: at most one bin beyond ceil(total / capacity) * 11/9 + 1 (FFD/BFD's bound)
    assert len(bins) <= np.ceil(lengths.sum() / 128) * 11 / 9 + 1
    with pytest.raises(ValueError, match="longer than the row length 128"):
        best_fit_decreasing([129], 128, [0])


def test_equal_lengths_are_grouped_by_the_tie_break():
    lengths = [5] * 6
    a = best_fit_decreasing(lengths, 10, [0, 1, 2, 3, 4, 5])
    b = best_fit_decreasing(lengths, 10, [5, 4, 3, 2, 1, 0])
    assert a == [[0, 1], [2, 3], [4, 5]] and b == [[5, 4], [3, 2], [1, 0]]


# ----------------------------------------------------------------------------- batches


def test_packed_epoch_holds_every_pair_once_with_static_shapes_and_resumable_order():
    pairs = realistic_pairs(300)
    buckets = default_buckets(8192, steps_per_octave=2)
    batches = PairBatches(pairs, 2, 3, "prefix_shared", "cue", buckets, seed=5, packing=True)
    again = PairBatches(pairs, 2, 3, "prefix_shared", "cue", buckets, seed=5, packing=True)
    for epoch in (0, 1):
        seen, shapes = [], set()
        for b in range(batches.batches_per_epoch):
            batch, idx = batches.batch(epoch, b)
            seen += idx[idx >= 0].tolist()
            assert batch["pair_valid"].reshape(-1).sum() == (idx >= 0).sum()
            np.testing.assert_array_equal(batch["pair_valid"].reshape(-1), idx >= 0)
            shapes.add((batch["tokens"].shape[:2], batch["pair_valid"].shape))
            assert batch["tokens"].shape[-1] in buckets
        assert sorted(seen) == list(range(len(pairs)))  # each pair exactly once per epoch
        assert shapes == {((3, 2), (3, batches.pair_slots))}  # rows and pair slots never change shape
    # (epoch, batch) alone decides a batch: a fresh object, asked out of order, gives the same arrays
    for epoch, b in ((1, 4), (0, 2), (1, 0)):
        (x, ix), (y, iy) = batches.batch(epoch, b), again.batch(epoch, b)
        np.testing.assert_array_equal(ix, iy)
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])
    assert not np.array_equal(batches.order(0), batches.order(1))  # epochs visit the rows in other orders
    other_seed = PairBatches(pairs, 2, 3, "prefix_shared", "cue", buckets, seed=6, packing=True)
    assert not np.array_equal(batches.order(0), other_seed.order(0))


def test_packing_keeps_padding_under_ten_percent_on_a_realistic_length_mix():
    # 2000 pairs: with 32 rows per step the epoch's last, part-empty step weighs ~1 / 21 of the
    # epoch (with 600 pairs it was 1 / 7 and the padding 14%; see tools/layout_savings.py)
    pairs = realistic_pairs(2000)
    buckets = default_buckets(8192, steps_per_octave=2)
    unpacked = PairBatches(pairs, 8, 4, "prefix_shared", "cue", buckets)
    packed = PairBatches(pairs, 8, 4, "prefix_shared", "cue", buckets, packing=True)
    print(f"padding: unpacked {unpacked.padding_share():.1%}, packed {packed.padding_share():.1%}")
    assert packed.padding_share() <= 0.10 < unpacked.padding_share()
    # the share computed from lengths is the share of segment id 0 in the batches actually built
    built = [packed.batch(0, b)[0]["segment_ids"] for b in range(packed.batches_per_epoch)]
    measured = 1 - sum(int((s != 0).sum()) for s in built) / sum(s.size for s in built)
    assert abs(measured - packed.padding_share()) < 1e-12


def test_packing_needs_the_prefix_shared_layout(tmp_path):
    import ml_collections

    from ipo_jax.train.data import fit_pairs
    from ipo_jax.train.errors import TrainingError

    with pytest.raises(ValueError, match="packing needs layout 'prefix_shared'"):
        PairBatches(_pairs(4), 2, 1, "duplicated", "cue", [64], packing=True)
    config = ml_collections.ConfigDict({"data": {"packing": True, "layout": "duplicated", "max_length": 64}})
    with pytest.raises(TrainingError, match="data.packing needs data.layout 'prefix_shared', got 'duplicated'"):
        fit_pairs(_pairs(4), config)  # said before the model loads


def test_a_packed_row_keeps_pairs_apart():
    pairs = _pairs(3, seed=4)
    out = pack_rows([pairs], mask_from="cue", length=128, num_rows=2, pair_slots=4)
    lengths = [p.row_length("prefix_shared") for p in pairs]
    ends = np.cumsum(lengths)
    np.testing.assert_array_equal(out["segment_ids"][0, : ends[-1]], np.repeat([1, 2, 3], lengths))
    assert not out["segment_ids"][0, ends[-1]:].any() and not out["segment_ids"][1].any()
    np.testing.assert_array_equal(out["pair_valid"], [True, True, True, False])
    counted = out["slot_chosen"] | out["slot_rejected"]
    for end in ends:  # a segment's last token predicts nothing: it would cross into the next pair
        assert not counted[0, end - 1]
    slots = np.flatnonzero(counted[0])  # each counted slot reads and predicts inside one pair's segment
    segments = out["segment_ids"][0]
    np.testing.assert_array_equal(segments[out["slot_source"][0, slots]], segments[slots + 1])
    np.testing.assert_array_equal(out["slot_target"][0, slots], out["tokens"][0, slots + 1])
    with pytest.raises(ValueError, match="pair slots"):
        pack_rows([pairs], mask_from="cue", length=128, num_rows=1, pair_slots=2)


# ----------------------------------------------------------------------------- numbers equal to unpacked


def _model_and_params():
    mesh = make_mesh(**ONE_DEVICE)
    model = shard_model(init_decoder(preset_config("tiny-qwen3", initializer_range=0.2), seed=1), mesh)
    graphdef, params = nnx.split(model, nnx.Param)
    return mesh, graphdef, params


def _packed_micro(pairs, rows, length, num_rows, pair_slots):
    """A packed micro-batch and the pair index of each slot (-1 = padding)."""
    mb = pack_rows([[pairs[i] for i in row] for row in rows], mask_from="cue", length=length, num_rows=num_rows, pair_slots=pair_slots)
    slots = np.full(pair_slots, -1)
    flat = [i for row in rows for i in row]
    slots[: len(flat)] = flat
    return mb, slots


def test_packed_per_pair_log_probs_equal_unpacked():
    pairs = _pairs(8, seed=11)
    mesh, graphdef, params = _model_and_params()
    unpacked = pack_pairs(pairs, layout="prefix_shared", mask_from="cue", length=32)
    rows = best_fit_decreasing([p.row_length("prefix_shared") for p in pairs], 96, range(8))
    assert len(rows) < len(pairs)  # really several pairs per row
    packed, slots = _packed_micro(pairs, rows, 96, len(rows), 8)
    logps = jax.jit(lambda p, mb: policy_pair_logps(p, graphdef, mb, 8))
    c0, r0, nc0, nr0 = map(np.asarray, logps(params, unpacked))
    c1, r1, nc1, nr1 = map(np.asarray, logps(params, packed))
    print(f"max |log-prob diff| {max(np.abs(c1 - c0[slots]).max(), np.abs(r1 - r0[slots]).max()):.1e}")
    np.testing.assert_allclose(c1, c0[slots], atol=1e-5, rtol=0)
    np.testing.assert_allclose(r1, r0[slots], atol=1e-5, rtol=0)
    np.testing.assert_array_equal(nc1, nc0[slots])
    np.testing.assert_array_equal(nr1, nr0[slots])
    assert (nc0 > 0).all() and (nr0 > 0).all()


def _sgd_step(graphdef, params, mesh, batch):
    """One step with plain SGD (lr 1): the update is the gradient."""
    before = jax.tree.map(np.asarray, params)
    params = jax.tree.map(lambda x: x.copy(), params)  # the step donates its state
    tx = optax.sgd(1.0)
    state, shardings = init_train_state(params, tx, mesh)
    step = jit_train_step(make_train_step(graphdef, tx, LossConfig(), optax.constant_schedule(1.0), chunk_size=8, mesh=mesh), shardings, mesh)
    state, metrics = step(state, put_batch(batch, batch_shardings(mesh)), None)
    return jax.tree.map(lambda b, a: b - np.asarray(a), before, state.params), jax.device_get(metrics)


def test_packed_train_step_equals_unpacked_with_uneven_pair_counts_per_micro_batch():
    pairs = _pairs(8, seed=12)
    mesh, graphdef, params = _model_and_params()
    rng = np.random.RandomState(7)
    ref_c, ref_r = -rng.uniform(10, 40, 8).astype(np.float32), -rng.uniform(10, 40, 8).astype(np.float32)

    unpacked = {k: v[None] for k, v in pack_pairs(pairs, layout="prefix_shared", mask_from="cue", length=32).items()}
    unpacked["ref_chosen"], unpacked["ref_rejected"] = ref_c[None], ref_r[None]

    # two micro-batches of 2 rows holding 5 and 3 pairs: the step must average over the 8 valid pairs
    micro = [_packed_micro(pairs, [[0, 1, 2], [3, 4]], 96, 2, 5), _packed_micro(pairs, [[5, 6], [7]], 96, 2, 5)]
    packed = {k: np.stack([mb[k] for mb, _ in micro]) for k in micro[0][0]}
    slots = np.stack([s for _, s in micro])
    packed["ref_chosen"] = np.where(slots >= 0, ref_c[np.maximum(slots, 0)], 0).astype(np.float32)
    packed["ref_rejected"] = np.where(slots >= 0, ref_r[np.maximum(slots, 0)], 0).astype(np.float32)

    g0, m0 = _sgd_step(graphdef, params, mesh, unpacked)
    g1, m1 = _sgd_step(graphdef, params, mesh, packed)
    assert m0["pairs"] == m1["pairs"] == 8
    print(f"|loss diff| {abs(m0['loss'] - m1['loss']):.1e}, max |grad diff| "
          f"{max(float(np.abs(a - b).max()) for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1))):.1e}")
    for key in ("loss", "reward_margin", "nll", "loss_tokens"):
        assert abs(float(m0[key]) - float(m1[key])) <= 1e-5, key
    assert max(float(np.abs(g).max()) for g in jax.tree.leaves(g0)) > 1e-3  # the gradient is not trivially zero
    for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)
