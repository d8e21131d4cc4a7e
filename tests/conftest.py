"""Shared fixtures: tiny random Hugging Face reference models (PyTorch) saved to temp dirs.

8 simulated CPU devices are requested before jax is imported, so the sharding tests can
build real meshes; single-device code simply runs on the first of them.
"""

import os

_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
    os.environ["XLA_FLAGS"] = (_flags + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One persistent compilation cache for the session, inherited by the CLI subprocesses, so the
# resume tests do not recompile the same train step in every process.
import atexit  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402

if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _cache = tempfile.mkdtemp(prefix="ipo-jax-test-xla-cache-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

FAMILIES = ("llama", "qwen2", "qwen3")

# Small but complete: GQA (4 query heads over 2 kv heads), every family flag exercised.
_COMMON = dict(
    vocab_size=128,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    rms_norm_eps=1e-6,
)
HF_CONFIGS = {
    # Llama-3 RoPE scaling as R1-Distill-Llama-8B has it (original length shrunk to matter here).
    "llama": dict(
        rope_theta=500000.0,
        rope_scaling=dict(
            rope_type="llama3",
            factor=8.0,
            low_freq_factor=1.0,
            high_freq_factor=4.0,
            original_max_position_embeddings=64,
        ),
        tie_word_embeddings=False,
    ),
    # R1-Distill-Qwen style: q/k/v bias, untied embeddings, rope_theta 10000.
    "qwen2": dict(rope_theta=10000.0, tie_word_embeddings=False),
    # Qwen3: q/k RMSNorm, head_dim independent of hidden/heads, tied embeddings.
    "qwen3": dict(rope_theta=1000000.0, head_dim=24, tie_word_embeddings=True),
}


def flat_config(config, prefix: str = "") -> dict:
    """A ConfigDict as {"section.field": value}: configs compared field by field."""
    out = {}
    for key, value in config.items():
        if hasattr(value, "items"):
            out.update(flat_config(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def build_hf_model(family: str, seed: int = 0, **overrides):
    """A random transformers model of `family`; every weight perturbed so biases and norms matter."""
    import torch
    import transformers

    config = transformers.AutoConfig.for_model(family, **{**_COMMON, **HF_CONFIGS[family], **overrides})
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def save_sample_pairs_tokenizer(directory):
    """The tiny BPE tokenizer the pipeline tests share, built from configs/sample_pairs.jsonl, saved to `directory`."""
    import json
    from pathlib import Path

    from ipo_jax.data.tiny_tokenizer import build_tiny_tokenizer

    lines = (Path(__file__).resolve().parents[1] / "configs" / "sample_pairs.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    tokenizer = build_tiny_tokenizer([r[k] for r in rows for k in ("prompt", "prefix", "chosen", "rejected")], vocab_size=400)
    tokenizer.save_pretrained(directory)
    return tokenizer


@pytest.fixture(scope="session")
def hf_dirs(tmp_path_factory):
    """family -> (directory with a saved tiny HF model, the torch model)."""
    out = {}
    for family in FAMILIES:
        model = build_hf_model(family)
        path = tmp_path_factory.mktemp(f"hf-{family}")
        model.save_pretrained(path)
        out[family] = (path, model)
    return out


def random_batch(batch: int, length: int, vocab: int, *, left_pad=(0,), seed: int = 0):
    """Token ids, positions and segment ids; rows listed in left_pad get left padding."""
    rng = np.random.RandomState(seed)
    tokens = rng.randint(0, vocab, (batch, length)).astype(np.int32)
    segment_ids = np.ones((batch, length), np.int32)
    for i, row in enumerate(left_pad):
        if row < batch:
            segment_ids[row, : 2 + 3 * i] = 0
    positions = np.maximum(np.cumsum(segment_ids, axis=1) - 1, 0).astype(np.int32)
    return tokens, positions, segment_ids


def torch_logits(model, tokens, positions, segment_ids) -> np.ndarray:
    import torch

    with torch.no_grad():
        out = model(
            input_ids=torch.tensor(tokens, dtype=torch.long),
            attention_mask=torch.tensor(segment_ids != 0, dtype=torch.long),
            position_ids=torch.tensor(positions, dtype=torch.long),
        )
    return out.logits.float().numpy()
