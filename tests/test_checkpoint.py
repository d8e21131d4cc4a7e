"""HF -> ours -> HF round trip, transformers loading our exports, orbax save/restore, and bad inputs."""

import json

import jax.numpy as jnp
import numpy as np
import pytest
import transformers
from conftest import FAMILIES, build_hf_model, random_batch, torch_logits
from safetensors.numpy import load_file, save_file

from ipo_jax.checkpoint import CheckpointError, UnsafeCheckpointError, load_hf, load_orbax, save_hf, save_orbax
from ipo_jax.models.config import UnsupportedModelError


def _read_all(model_dir):
    tensors = {}
    for f in sorted(model_dir.glob("*.safetensors")):
        tensors.update(load_file(f))
    return tensors


@pytest.mark.parametrize("family", FAMILIES)
def test_round_trip_is_bitwise_and_transformers_loads_export(family, hf_dirs, tmp_path):
    src, torch_model = hf_dirs[family]
    model = load_hf(src)
    out = save_hf(model, tmp_path / "export")
    before, after = _read_all(src), _read_all(out)
    assert sorted(before) == sorted(after)
    for name in before:
        assert before[name].dtype == after[name].dtype and np.array_equal(before[name], after[name]), name

    reloaded = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    tokens, positions, segment_ids = random_batch(2, 10, 128, left_pad=(1,), seed=4)
    real = segment_ids != 0
    ours, _ = model(jnp.asarray(tokens), jnp.asarray(positions), jnp.asarray(segment_ids))
    np.testing.assert_array_equal(
        torch_logits(reloaded, tokens, positions, segment_ids)[real],
        torch_logits(torch_model, tokens, positions, segment_ids)[real],
    )
    np.testing.assert_allclose(np.asarray(ours)[real], torch_logits(reloaded, tokens, positions, segment_ids)[real], atol=1e-4)
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == family and (out / "generation_config.json").is_file()


def test_sharded_export_bf16_with_index_and_tokenizer(hf_dirs, tmp_path):
    from ipo_jax.data.tokenizer import packaged_qwen3_tokenizer_dir

    src, _ = hf_dirs["qwen2"]
    model = load_hf(src)
    out = save_hf(model, tmp_path / "bf16", dtype="bfloat16", max_shard_size="40KB", tokenizer_dir=packaged_qwen3_tokenizer_dir())
    shards = sorted(out.glob("model-*-of-*.safetensors"))
    assert len(shards) > 2
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == {s.name for s in shards}
    assert (out / "tokenizer.json").is_file() and (out / "tokenizer_config.json").is_file()
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(out)
    assert str(reloaded.dtype) == "torch.bfloat16"
    original = _read_all(src)
    for name, value in _read_all(out).items():
        assert value.dtype.name == "bfloat16"
        np.testing.assert_array_equal(value, original[name].astype(value.dtype))
    # bf16 -> ours (bf16) -> bf16 is bitwise too
    again = save_hf(load_hf(out, param_dtype="bfloat16"), tmp_path / "again", max_shard_size="40KB")
    for name, value in _read_all(again).items():
        assert np.array_equal(value.view(np.uint16), _read_all(out)[name].view(np.uint16)), name


def test_export_refuses_non_empty_dir_unless_overwrite(hf_dirs, tmp_path):
    model = load_hf(hf_dirs["llama"][0])
    target = tmp_path / "busy"
    target.mkdir()
    (target / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not empty"):
        save_hf(model, target)
    assert (target / "notes.txt").read_text() == "keep me"
    save_hf(model, target, overwrite=True)
    assert not (target / "notes.txt").exists() and (target / "model.safetensors").is_file()
    assert not list(tmp_path.glob(".busy.*"))  # no temporary directories left behind


def test_orbax_save_restore_exact(hf_dirs, tmp_path):
    model = load_hf(hf_dirs["qwen3"][0])
    save_orbax(model, tmp_path / "ckpt")
    restored = load_orbax(tmp_path / "ckpt")
    assert restored.cfg == model.cfg
    tokens, positions, segment_ids = random_batch(2, 9, 128, seed=5)
    a, _ = model(jnp.asarray(tokens), jnp.asarray(positions), jnp.asarray(segment_ids))
    b, _ = restored(jnp.asarray(tokens), jnp.asarray(positions), jnp.asarray(segment_ids))
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(FileExistsError):
        save_orbax(model, tmp_path / "ckpt")


# ----------------------------------------------------------------------------- bad inputs


@pytest.fixture
def qwen2_copy(hf_dirs, tmp_path):
    src, _ = hf_dirs["qwen2"]
    dst = tmp_path / "copy"
    dst.mkdir()
    (dst / "config.json").write_text((src / "config.json").read_text())
    return dst, load_file(src / "model.safetensors")


def test_wrong_shape_names_tensor_and_both_shapes(qwen2_copy):
    path, tensors = qwen2_copy
    tensors["model.layers.1.mlp.up_proj.weight"] = np.zeros((95, 64), np.float32)
    save_file(tensors, str(path / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"model\.layers\.1\.mlp\.up_proj\.weight .* shape \[95, 64\], expected \[96, 64\]"):
        load_hf(path)


def test_missing_and_unexpected_tensors_are_named(qwen2_copy):
    path, tensors = qwen2_copy
    del tensors["model.layers.0.self_attn.k_proj.bias"]
    tensors["model.layers.0.extra.weight"] = np.zeros(3, np.float32)
    save_file(tensors, str(path / "model.safetensors"))
    with pytest.raises(CheckpointError) as err:
        load_hf(path)
    assert "missing tensor model.layers.0.self_attn.k_proj.bias" in str(err.value)
    assert "unexpected tensor model.layers.0.extra.weight" in str(err.value)


def test_pickle_checkpoint_is_refused(qwen2_copy):
    path, _ = qwen2_copy
    (path / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(UnsafeCheckpointError, match="pytorch_model.bin.*never loaded"):
        load_hf(path)


def test_index_naming_a_missing_shard(qwen2_copy):
    path, _ = qwen2_copy
    (path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "gone.safetensors"}}))
    with pytest.raises(CheckpointError, match="gone.safetensors"):
        load_hf(path)


def test_unsupported_architecture(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "mixtral", "architectures": ["MixtralForCausalLM"]}))
    with pytest.raises(UnsupportedModelError, match="mixtral.*expected one of"):
        load_hf(tmp_path)


def test_missing_config(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_hf(tmp_path)


def test_sliding_window_config_is_refused(tmp_path):
    model = build_hf_model("qwen2", use_sliding_window=True, sliding_window=8)
    model.save_pretrained(tmp_path)
    with pytest.raises(UnsupportedModelError, match="use_sliding_window"):
        load_hf(tmp_path)


# ---------------------------------------------------------------------------- array checksums


def test_every_single_bit_flip_changes_the_array_checksum():
    import jax

    from ipo_jax.checkpoint.orbax import _array_checksum

    x = np.random.RandomState(0).randn(4, 8).astype(np.float32)
    bits = x.view(np.uint32).reshape(-1)
    flipped = np.repeat(bits[None], bits.size * 32, axis=0)  # row i * 32 + b: bit b of element i flipped
    for i in range(bits.size):
        for b in range(32):
            flipped[i * 32 + b, i] ^= np.uint32(1) << np.uint32(b)
    flipped = flipped.view(np.float32).reshape(-1, 4, 8)
    original = int(_array_checksum(jnp.asarray(x)))
    sums = np.asarray(jax.vmap(_array_checksum)(jnp.asarray(flipped)))
    assert sums.shape == (4 * 8 * 32,) and (sums != original).all()
    swapped = x.copy()
    swapped[0, 0], swapped[0, 1] = x[0, 1], x[0, 0]  # same values, other places
    assert int(_array_checksum(jnp.asarray(swapped))) != original


def test_checksums_do_not_depend_on_sharding_and_cover_every_dtype():
    import jax
    from jax.sharding import NamedSharding, PartitionSpec

    from ipo_jax.checkpoint.orbax import array_checksums, checksum_mismatches
    from ipo_jax.sharding import make_mesh

    rng = np.random.RandomState(1)
    tree = {"w": jnp.asarray(rng.randn(16, 8).astype(np.float32)), "b": jnp.asarray(rng.randn(8)).astype(jnp.bfloat16),
            "count": jnp.asarray(7, jnp.int32), "mask": jnp.asarray([True, False, True])}
    mesh = make_mesh({"fsdp": 8})
    sharded = dict(tree, w=jax.device_put(tree["w"], NamedSharding(mesh, PartitionSpec("fsdp", None))))
    assert len(sharded["w"].addressable_shards) == 8
    sums = array_checksums(tree)
    assert set(sums) == {"w", "b", "count", "mask"} and sums == array_checksums(sharded)
    assert checksum_mismatches(sums, sharded) == []
    changed = dict(tree, count=jnp.asarray(8, jnp.int32))
    assert checksum_mismatches(sums, changed) == [f"count: checksum {array_checksums(changed)['count']:#010x}, recorded {sums['count']:#010x}"]


def test_orbax_model_directory_records_checksums(hf_dirs, tmp_path):
    from ipo_jax.checkpoint.orbax import CHECKSUMS_KEY

    save_orbax(load_hf(hf_dirs["qwen2"][0]), tmp_path / "m")
    recorded = json.loads((tmp_path / "m" / "model_config.json").read_text())[CHECKSUMS_KEY]
    assert "blocks/mlp/up_proj/kernel" in recorded and all(isinstance(v, int) for v in recorded.values())
