"""Mixed precision as the paper configs use it: float32 master weights and Adam moments, bfloat16
compute. At the paper's learning rate (2e-6) an update is below bfloat16's resolution for almost
every weight, so weights stored in bfloat16 barely move; float32 masters must move, and the loss
curve must follow an all-float32 run."""

import json
from pathlib import Path

import jax
import ml_dtypes
import numpy as np
import pytest
from flax import nnx

from ipo_jax.checkpoint import load_orbax
from ipo_jax.checkpoint.init import load_model
from ipo_jax.cli import parse_config
from ipo_jax.data.tokenizer import load_tokenizer
from ipo_jax.train.loop import train
from ipo_jax.train.step import OptimConfig, make_optimizer

REPO = Path(__file__).resolve().parents[1]
# Qwen3's paper config on the tiny Qwen3 preset: its embedding is tied to the output layer, so
# every weight (each embedding row included) gets a gradient at every step.
PAPER_CONFIG = str(REPO / "configs" / "train_qwen3_8b.py")
STEPS = 4


def _paper_config_on_tiny(out: Path, *overrides: str):
    """The paper config (dtypes, remat, attention, loss, optimiser as shipped) on the tiny Qwen3
    preset and the shipped sample pairs, at lr 2e-6 from the first step."""
    return parse_config([
        "--config", PAPER_CONFIG,
        "--config.model.init=preset:tiny-qwen3",
        "--config.tokenizer=tiny",
        f"--config.data.pairs={REPO / 'configs' / 'sample_pairs.jsonl'}",
        "--config.data.max_length=256",
        "--config.data.buckets=(128, 256)",
        "--config.data.micro_batches=1",
        "--config.reference.mode=on_the_fly",
        "--config.optim.warmup_steps=0",  # the paper's 2e-6 from step 1, not a warmup's fraction of it
        f"--config.train.max_steps={STEPS}",
        "--config.train.logprob_chunk=64",
        f"--config.train.out={out}",
        *overrides,
    ], "train")


def _flat(tree) -> dict[str, np.ndarray]:
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {jax.tree_util.keystr(path).replace(".value", ""): np.asarray(leaf) for path, leaf in flat}


def _initial_params(config, vocab: int) -> dict[str, np.ndarray]:
    """The run's starting weights, rebuilt (preset init is deterministic in train.seed)."""
    model = load_model(config.model.init, param_dtype=config.model.param_dtype, seed=config.train.seed,
                       vocab_needed=vocab)
    return _flat(nnx.split(model, nnx.Param)[1])


def _final_params(run: Path) -> dict[str, np.ndarray]:
    return _flat(nnx.split(load_orbax(run / "final"), nnx.Param)[1])


def _losses(run: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def _changed_share(a: dict, b: dict) -> float:
    return sum(int(np.sum(a[k] != b[k])) for k in a) / sum(v.size for v in a.values())


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("mixed")
    made = {}
    for name, overrides in {"paper": (), "float32": ("--config.model.dtype=float32",)}.items():
        config = _paper_config_on_tiny(root / name, *overrides)
        assert train(config) == 0
        made[name] = root / name
    config = _paper_config_on_tiny(root / "paper")
    assert (config.model.param_dtype, config.model.dtype) == ("float32", "bfloat16")
    vocab = len(load_tokenizer(str(root / "paper" / "tokenizer")))
    made["initial"] = _initial_params(config, vocab)
    return made


def test_float32_masters_move_at_the_paper_learning_rate(runs):
    final, initial = _final_params(runs["paper"]), runs["initial"]
    assert final.keys() == initial.keys()
    assert all(v.dtype == np.float32 for v in final.values())  # the final model holds the masters
    share = _changed_share(final, initial)
    print(f"float32 masters moved in {STEPS} steps: {share:.2%}")
    assert share >= 0.99, f"only {share:.1%} of the float32 master weights moved in {STEPS} steps at lr 2e-6"


def test_the_same_updates_would_vanish_in_bfloat16_weights(runs):
    """The failure the masters fix: the run's own updates, added to weights stored in bfloat16
    (8 bits of mantissa), leave most of them unchanged."""
    final, initial = _final_params(runs["paper"]), runs["initial"]
    stored = {k: v.astype(ml_dtypes.bfloat16) for k, v in initial.items()}
    updated = {k: (stored[k].astype(np.float32) + (final[k] - initial[k])).astype(ml_dtypes.bfloat16) for k in initial}
    share = _changed_share(updated, stored)
    print(f"the same updates applied to bfloat16-stored weights move {share:.2%} of them")
    assert share < 0.5


def test_loss_curve_follows_an_all_float32_run(runs):
    """bfloat16 compute carries ~3 significant digits; over 4 steps the losses (about ln 2 + 0.2 *
    NLL, ~2) stay within 2e-2 of the float32 run's, and the curves differ (bf16 is in use)."""
    mixed, full = np.array(_losses(runs["paper"])), np.array(_losses(runs["float32"]))
    assert len(mixed) == len(full) == STEPS
    np.testing.assert_allclose(mixed, full, atol=2e-2, rtol=0)
    assert not np.array_equal(mixed, full)


def test_bfloat16_moments_are_stored_low_and_updated_in_float32():
    params = {"w": jax.numpy.full((4, 4), 0.5, jax.numpy.float32)}
    grads = {"w": jax.numpy.full((4, 4), 1e-3, jax.numpy.float32)}
    low = make_optimizer(OptimConfig(learning_rate=1e-2, warmup_steps=0, moment_dtype="bfloat16"))
    full = make_optimizer(OptimConfig(learning_rate=1e-2, warmup_steps=0))
    s_low, s_full = low.init(params), full.init(params)
    moments = [x for x in jax.tree.leaves(s_low) if x.ndim == 2]
    assert moments and all(x.dtype == jax.numpy.bfloat16 for x in moments)
    for _ in range(3):
        u_low, s_low = low.update(grads, s_low, params)
        u_full, s_full = full.update(grads, s_full, params)
        assert u_low["w"].dtype == np.float32
        np.testing.assert_allclose(np.asarray(u_low["w"]), np.asarray(u_full["w"]), rtol=2e-2)
    assert all(x.dtype == jax.numpy.bfloat16 for x in jax.tree.leaves(s_low) if x.ndim == 2)
    with pytest.raises(ValueError, match="moment_dtype"):
        OptimConfig(moment_dtype="float16")
