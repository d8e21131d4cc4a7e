"""The sampler on the 8-device CPU mesh: the same tokens as on one device, the KV cache laid out
as claimed (rows over data x fsdp, KV heads over tensor where they divide; a fork's shared
prefix on every device, heads split the same way), batch checks."""

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from ipo_jax.models.decoder import init_decoder
from ipo_jax.models.presets import preset_config
from ipo_jax.sampling import Fork, Sampler, SamplerShardingError, SamplingConfig
from ipo_jax.sharding import LOGICAL_RULES, make_mesh, shard_model

GREEDY = SamplingConfig(temperature=0.0, max_new_tokens=9)
SAMPLED = SamplingConfig(temperature=1.0, top_p=0.95, max_new_tokens=9, seed=3)
NO_EOS = 10_000
CFG = preset_config("tiny-qwen2")  # 4 query heads over 2 KV heads


def _prompts():
    rng = np.random.RandomState(0)
    return [rng.randint(3, 250, n).tolist() for n in (5, 9, 3, 7, 12, 4, 6, 8, 10, 2)]


@pytest.fixture(scope="module")
def reference():
    """Tokens of the single-device sampler (greedy, sampled, forks)."""
    sampler = Sampler(init_decoder(CFG, seed=0), eos_ids=[NO_EOS], batch_size=8, prompt_buckets=[16], chunk_tokens=4)
    return {
        "greedy": [g.tokens for g in sampler.generate(_prompts(), GREEDY)],
        "sampled": [g.tokens for g in sampler.generate(_prompts(), SAMPLED)],
        "forks": [[g.tokens for g in gs] for gs in sampler.generate_forks(_prompts()[4], _FORKS, SAMPLED)],
    }


_FORKS = [Fork(cut=3, n=3), Fork(cut=12, n=2), Fork(cut=7, suffix=(5, 6, 7), n=4)]


def _spy_caches(sampler):
    """Record (shape, sharding, per-device shapes) of the KV cache arrays every decode chunk
    receives (the chunk donates them, so read them before)."""
    seen = []
    decode = sampler.programs.decode_chunk

    def layout(array):
        return array.shape, array.sharding, {s.data.shape for s in array.addressable_shards}

    def spy(state, *args, **kwargs):
        cache, prefix = state.cache, state.prefix
        shared = [layout(a) for a in prefix.k + prefix.v] if prefix is not None else []
        seen.append(([layout(a) for a in cache.k + cache.v], layout(cache.segment_ids), shared))
        return decode(state, *args, **kwargs)

    sampler.programs.decode_chunk = spy
    return seen


# mesh, the rules the parameters are sharded with, whether 2 KV heads split over tensor
MESHES = [
    ({"data": 8}, LOGICAL_RULES, True),
    ({"data": 2, "fsdp": 2, "tensor": 2}, LOGICAL_RULES, True),
    # 2 KV heads do not divide tensor=4: the k/v projections (and the cache heads) replicated
    ({"data": 2, "tensor": 4}, {**LOGICAL_RULES, "kv_heads": None}, False),
]


@pytest.mark.parametrize("shape, rules, heads_split", MESHES, ids=["data8", "data2-fsdp2-tensor2", "data2-tensor4"])
def test_sharded_sampler_matches_one_device_and_lays_out_the_cache(reference, shape, rules, heads_split):
    mesh = make_mesh(shape)
    model = shard_model(init_decoder(CFG, seed=0), mesh, rules)
    sampler = Sampler(model, eos_ids=[NO_EOS], batch_size=8, prompt_buckets=[16], chunk_tokens=4, mesh=mesh)
    caches = _spy_caches(sampler)
    assert [g.tokens for g in sampler.generate(_prompts(), GREEDY)] == reference["greedy"]
    assert [g.tokens for g in sampler.generate(_prompts(), SAMPLED)] == reference["sampled"]
    forks = sampler.generate_forks(_prompts()[4], _FORKS, SAMPLED)
    assert [[g.tokens for g in gs] for gs in forks] == reference["forks"]

    tensor = mesh.shape["tensor"] if heads_split else 1
    rows = mesh.shape["data"] * mesh.shape["fsdp"]
    kv_spec = PartitionSpec(("data", "fsdp"), "tensor" if heads_split else None, None, None)
    assert len(caches) >= 3 * 3  # three calls, each a prefill + at least 2 chunks
    assert any(shared for _, _, shared in caches)
    for kv, ids, shared in caches:  # prefill's and every chunk's output
        # a fork's shared prefix: one row on every device, its KV heads split as the cache's
        for (one, K, P, H), sharding, pieces in shared:
            assert one == 1 and sharding.is_equivalent_to(
                NamedSharding(mesh, PartitionSpec(None, "tensor" if heads_split else None)), 4)
            assert pieces == {(1, K // tensor, P, H)}
        for (B, K, S, H), sharding, pieces in kv:
            assert sharding.is_equivalent_to(NamedSharding(mesh, kv_spec), 4)
            assert pieces == {(B // rows, K // tensor, S, H)}
        (B, S), sharding, pieces = ids
        assert sharding.is_equivalent_to(NamedSharding(mesh, PartitionSpec(("data", "fsdp"))), 2)
        assert pieces == {(B // rows, S)}
    # the parameters stay as they were sharded
    assert sampler.state["blocks"]["mlp"]["up_proj"]["kernel"][...].sharding == model.blocks.mlp.up_proj.kernel[...].sharding


def test_no_recompilation_between_calls_on_a_mesh():
    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    sampler = Sampler(shard_model(init_decoder(CFG, seed=0), mesh), eos_ids=[NO_EOS], batch_size=4,
                      prompt_buckets=[16], chunk_tokens=4, mesh=mesh)
    sampler.generate(_prompts()[:6], GREEDY)
    compiles = []

    def listener(event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            compiles.append(event)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        sampler.generate(_prompts()[3:], SAMPLED)  # other prompts and settings, same bucket
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    assert compiles == []


def test_a_batch_the_mesh_rows_do_not_divide_is_refused():
    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    model = shard_model(init_decoder(CFG, seed=0), mesh)
    with pytest.raises(SamplerShardingError, match=r"batch_size 6 is not divisible .*\(size 4"):
        Sampler(model, eos_ids=[NO_EOS], batch_size=6, prompt_buckets=[16], mesh=mesh)
