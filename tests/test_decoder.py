"""The decoder against transformers (float32 parity) and its own masks: packing, branches, KV cache."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import FAMILIES, random_batch, torch_logits

from ipo_jax.checkpoint import load_hf
from ipo_jax.models.decoder import KVCache, positions_from_segments


@pytest.fixture(scope="module")
def models(hf_dirs):
    return {family: load_hf(path) for family, (path, _) in hf_dirs.items()}


@pytest.mark.parametrize("family", FAMILIES)
def test_logits_match_transformers_fp32(family, models, hf_dirs):
    _, torch_model = hf_dirs[family]
    tokens, positions, segment_ids = random_batch(4, 16, 128, left_pad=(1, 3), seed=1)
    ours, _ = models[family](jnp.asarray(tokens), jnp.asarray(positions), jnp.asarray(segment_ids))
    ref = torch_logits(torch_model, tokens, positions, segment_ids)
    real = segment_ids != 0
    diff = np.abs(np.asarray(ours) - ref)[real].max()
    print(f"{family}: max |logit diff| = {diff:.2e} (logit scale {np.abs(ref).max():.2f})")
    assert np.abs(ref).max() > 1.0  # the comparison is not between near-zero numbers
    assert diff <= 1e-4


def test_llama3_rope_frequencies_match_transformers(models, hf_dirs):
    _, torch_model = hf_dirs["llama"]
    ours = models["llama"].cfg.rope_inv_freq()
    theirs = torch_model.model.rotary_emb.inv_freq.numpy()
    plain = 1.0 / (500000.0 ** (np.arange(0, 16, 2) / 16))
    assert not np.allclose(theirs, plain)  # scaling really changes the low frequencies
    np.testing.assert_allclose(ours, theirs, rtol=1e-6)


@pytest.mark.parametrize("family", FAMILIES)
def test_packed_segments_equal_separate_rows(family, models):
    model = models[family]
    a, b = np.arange(3, 10), np.arange(20, 29)
    packed = jnp.asarray(np.concatenate([a, b])[None])
    seg = jnp.asarray(np.array([[1] * len(a) + [2] * len(b)]))
    logits, _ = model(packed, positions_from_segments(seg), seg)
    for ids, part in ((a, logits[0, : len(a)]), (b, logits[0, len(a) :])):
        alone, _ = model(jnp.asarray(ids[None]), jnp.arange(len(ids))[None], jnp.ones((1, len(ids)), jnp.int32))
        np.testing.assert_allclose(np.asarray(part), np.asarray(alone[0]), atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_prefix_shared_branches_equal_duplicated_rows(family, models):
    """Trunk once, then branch 1 and branch 2 (positions restart) == two full rows."""
    model = models[family]
    trunk, chosen, rejected = np.arange(5, 15), np.arange(40, 46), np.arange(60, 64)
    shared = np.concatenate([trunk, chosen, rejected])[None]
    branch = np.array([[0] * len(trunk) + [1] * len(chosen) + [2] * len(rejected)])
    pos = np.concatenate([np.arange(len(trunk) + len(chosen)), len(trunk) + np.arange(len(rejected))])[None]
    ones = jnp.ones(shared.shape, jnp.int32)
    logits, _ = model(jnp.asarray(shared), jnp.asarray(pos), ones, jnp.asarray(branch))
    for suffix, start in ((chosen, len(trunk)), (rejected, len(trunk) + len(chosen))):
        row = np.concatenate([trunk, suffix])[None]
        full, _ = model(jnp.asarray(row), jnp.arange(row.shape[1])[None], jnp.ones(row.shape, jnp.int32))
        np.testing.assert_allclose(
            np.asarray(logits[0, start : start + len(suffix)]), np.asarray(full[0, len(trunk) :]), atol=1e-5
        )
        np.testing.assert_allclose(np.asarray(logits[0, : len(trunk)]), np.asarray(full[0, : len(trunk)]), atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_kv_cache_prefill_then_decode_equals_full_forward(family, models):
    model = models[family]
    tokens, positions, segment_ids = random_batch(3, 14, 128, left_pad=(0, 2), seed=2)
    full, _ = model(jnp.asarray(tokens), jnp.asarray(positions), jnp.asarray(segment_ids))
    prompt_len = 8
    step = jax.jit(lambda t, p, s, c: model(t, p, s, cache=c))
    cache = KVCache.init(model.cfg, batch=3, max_len=20)
    logits, cache = step(tokens[:, :prompt_len], positions[:, :prompt_len], segment_ids[:, :prompt_len], cache)
    pieces = [logits]
    for t in range(prompt_len, tokens.shape[1]):
        logits, cache = step(tokens[:, t : t + 1], positions[:, t : t + 1], segment_ids[:, t : t + 1], cache)
        pieces.append(logits)
    assert int(cache.index) == tokens.shape[1]
    decoded = np.concatenate([np.asarray(p) for p in pieces], axis=1)
    real = segment_ids != 0
    np.testing.assert_allclose(decoded[real], np.asarray(full)[real], atol=1e-5)


def test_bfloat16_compute_tracks_float32(hf_dirs):
    path, torch_model = hf_dirs["qwen3"]
    tokens, positions, segment_ids = random_batch(2, 12, 128, seed=3)
    ref = torch_logits(torch_model, tokens, positions, segment_ids)
    model = load_hf(path, param_dtype="bfloat16")
    assert model.embed[...].dtype == jnp.bfloat16
    ours, _ = model(jnp.asarray(tokens), jnp.asarray(positions), jnp.asarray(segment_ids))
    assert ours.dtype == jnp.float32
    real = segment_ids != 0
    ours, ref = np.asarray(ours)[real], ref[real]
    rel = np.abs(ours - ref).max() / np.abs(ref).max()
    assert rel < 0.05, rel  # bf16 rounding, not a layout error (those give O(1) differences)
    assert (ours.argmax(-1) == ref.argmax(-1)).mean() > 0.8
