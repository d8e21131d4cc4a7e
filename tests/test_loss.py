"""The loss against an independent NumPy implementation, its named presets, chunked log-probs, pair records and layouts."""

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ipo_jax.buckets import bucket_length, default_buckets
from ipo_jax.data.pairs import (
    PairBatches,
    PairFileError,
    TokenizedPair,
    fit_to_length,
    length_problem,
    pack_pairs,
    pair_length,
    read_pair_records,
    tokenize_pair,
)
from ipo_jax.loss import PRESETS, LossConfig, pair_logps, preference_loss, token_logprobs
from ipo_jax.loss.preference import cross_field_problem
from ipo_jax.models.decoder import init_decoder
from ipo_jax.models.presets import preset_config
from ipo_jax.train.step import policy_pair_logps

# ----------------------------------------------------------------------------- the formula in NumPy


def _log_sigmoid(x):
    return -np.logaddexp(0.0, -x)


def numpy_loss(lp, chosen_mask, rejected_mask, pair_of_row, ref_c, ref_r, valid, objective, beta, alpha, eps, nll_norm="mean"):
    """Straight from method.md: sums over each side's loss tokens, then the per-pair loss, mean over pairs."""
    P = len(ref_c)
    logp_c, logp_r, n_c = np.zeros(P), np.zeros(P), np.zeros(P)
    for row in range(lp.shape[0]):
        for s in range(lp.shape[1]):
            p = pair_of_row[row]
            if chosen_mask[row, s]:
                logp_c[p] += lp[row, s]
                n_c[p] += 1
            if rejected_mask[row, s]:
                logp_r[p] += lp[row, s]
    h = (logp_c - ref_c) - (logp_r - ref_r)
    nll = -logp_c / np.maximum(n_c, 1) if nll_norm == "mean" else -logp_c
    if objective == "dpo":
        pref = -(1 - eps) * _log_sigmoid(beta * h) - eps * _log_sigmoid(-beta * h)
        loss = pref + alpha * nll
    elif objective == "ipo_azar":
        loss = (h - 1 / (2 * beta)) ** 2 + alpha * nll
    else:
        loss = nll
    acc = (beta * (logp_c - ref_c) > beta * (logp_r - ref_r)).astype(float)
    return loss[valid].mean(), acc[valid].mean(), logp_c, logp_r


VARIANTS = {
    "ipo (partial dpo + sft)": dict(objective="dpo", beta=0.1, alpha=0.2, label_smoothing=0.0),
    "dpo": dict(objective="dpo", beta=0.5, alpha=0.0, label_smoothing=0.0),
    "conservative dpo": dict(objective="dpo", beta=0.1, alpha=0.0, label_smoothing=0.2),
    "ipo_azar": dict(objective="ipo_azar", beta=0.1, alpha=0.0, label_smoothing=0.0),
    "sft": dict(objective="sft", beta=0.1, alpha=0.2, label_smoothing=0.0),
    "ipo, nll summed": dict(objective="dpo", beta=0.1, alpha=0.2, label_smoothing=0.0, nll_norm="sum"),
    "sft, nll summed": dict(objective="sft", beta=0.1, alpha=0.2, label_smoothing=0.0, nll_norm="sum"),
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_loss_matches_numpy_formula(variant):
    # float64 on both sides: this checks the formula, not float32 rounding of a loss of ~25
    with jax.enable_x64(True):
        _check_loss_against_numpy(variant)


def _check_loss_against_numpy(variant):
    _check_config_against_numpy(LossConfig(**VARIANTS[variant]), VARIANTS[variant]["objective"], VARIANTS[variant]["alpha"])


def _check_config_against_numpy(cfg, objective, alpha, mask_from="cue"):
    rng = np.random.RandomState(0)
    R, S, P = 4, 12, 2  # duplicated layout: rows (c0, r0, c1, r1)
    lp = -rng.uniform(0.1, 5.0, (R, S))
    pair_of_row = np.array([0, 0, 1, 1])
    # Slots 0-1 are the prompt, 2-4 the prefix (pair 1: 2-6); the loss starts at the cue (after the
    # prefix) or at the reasoning's start (the prefix counts too); tails are padding.
    start = {"cue": (5, 7), "reasoning": (2, 2)}[mask_from]
    chosen = np.zeros((R, S), bool)
    rejected = np.zeros((R, S), bool)
    chosen[0, start[0]:10], rejected[1, start[0]:12], chosen[2, start[1]:9], rejected[3, start[1]:11] = True, True, True, True
    ref_c, ref_r = np.array([-20.0, -9.0]), np.array([-25.0, -13.0])
    valid = np.array([True, True])
    slot_pair = np.repeat(pair_of_row[:, None], S, axis=1)
    logp_c, logp_r, n_c, n_r = pair_logps(jnp.asarray(lp), jnp.asarray(slot_pair), jnp.asarray(chosen), jnp.asarray(rejected), P)
    loss_sum, metrics = preference_loss(logp_c, logp_r, jnp.asarray(ref_c), jnp.asarray(ref_r), n_c, n_r, jnp.asarray(valid), cfg)
    want_loss, want_acc, want_c, want_r = numpy_loss(
        lp, chosen, rejected, pair_of_row, ref_c, ref_r, valid, objective, cfg.beta, alpha, cfg.label_smoothing,
        cfg.nll_norm,
    )
    np.testing.assert_allclose(np.asarray(logp_c), want_c, atol=1e-6)
    np.testing.assert_allclose(np.asarray(logp_r), want_r, atol=1e-6)
    assert abs(float(loss_sum) / float(metrics["pairs"]) - want_loss) <= 1e-6
    assert float(metrics["reward_accuracy"]) / 2 == want_acc
    assert float(metrics["loss_tokens"]) == chosen.sum() + rejected.sum()
    # each named term's weighted share is logged, and the shares add up to the loss
    shares = {k: float(v) for k, v in metrics.items() if k.startswith("loss/")}
    assert set(shares) == {f"loss/{t.name}" for t in cfg.terms}
    assert abs(sum(shares.values()) - float(loss_sum)) <= 1e-9


# What each preset is, written from method.md (objective, NLL weight, loss tokens), not read from PRESETS.
PRESET_MEANING = {
    "ipo": ("dpo", 0.2, "cue"),  # the paper: DPO after the cue + 0.2 x NLL of the chosen suffix
    "dpo_after_cue": ("dpo", 0.0, "cue"),  # the ablation: partial DPO alone
    "dpo_full": ("dpo", 0.0, "reasoning"),  # the baseline: DPO on whole trajectories
    "sft": ("sft", 1.0, "reasoning"),  # the baseline: the NLL of the safe trajectory
}


def test_every_preset_has_an_oracle():
    assert set(PRESETS) == set(PRESET_MEANING)


@pytest.mark.parametrize("preset", PRESET_MEANING)
def test_each_preset_matches_the_numpy_formula_on_its_own_mask(preset):
    objective, alpha, mask_from = PRESET_MEANING[preset]
    cfg = LossConfig(preset=preset)
    assert cfg.mask_problem(mask_from) is None
    assert cfg.mask_problem({"cue": "reasoning", "reasoning": "cue"}[mask_from])  # the other mask is refused
    assert cfg.needs_reference == (objective != "sft")
    with jax.enable_x64(True):
        _check_config_against_numpy(cfg, objective, alpha, mask_from)


def _legacy_loss(logp_c, logp_r, ref_c, ref_r, n_c, n_r, valid, objective, beta, alpha, eps, nll_norm):
    """The loss as ipo_jax computed it before presets (objective / alpha), kept to pin the numbers."""
    h = (logp_c - ref_c) - (logp_r - ref_r)
    if objective == "dpo":
        pref = -(1 - eps) * jax.nn.log_sigmoid(beta * h) - eps * jax.nn.log_sigmoid(-beta * h)
    elif objective == "ipo_azar":
        pref = (h - 1.0 / (2.0 * beta)) ** 2
    else:
        pref = jnp.zeros_like(h)
    nll = -logp_c / jnp.maximum(n_c, 1.0) if nll_norm == "mean" else -logp_c
    loss = pref + (1.0 if objective == "sft" else alpha) * nll
    return jnp.sum(jnp.where(valid, loss, 0.0))


@pytest.mark.parametrize("preset, old_spelling", [
    ("ipo", dict(objective="dpo", alpha=0.2)),  # with data.mask_from 'cue', as before
    ("dpo_after_cue", dict(objective="dpo", alpha=0.0)),
    ("dpo_full", dict(objective="dpo", alpha=0.0)),
    ("sft", dict(objective="sft", alpha=1.0)),
])
@pytest.mark.parametrize("nll_norm", ["mean", "sum"])
def test_presets_give_bitwise_the_numbers_of_the_old_spelling(preset, old_spelling, nll_norm):
    """float32, jitted, loss and gradient: the preset, the old fields and the pre-preset code agree bit for bit."""
    rng = np.random.RandomState(5)
    logp_c, logp_r = (jnp.asarray(-rng.uniform(5, 60, 16), jnp.float32) for _ in range(2))
    ref_c, ref_r = (jnp.asarray(-rng.uniform(5, 60, 16), jnp.float32) for _ in range(2))
    n_c, n_r = (jnp.asarray(rng.randint(0, 30, 16), jnp.float32) for _ in range(2))
    valid = jnp.asarray(rng.rand(16) > 0.2)
    named, old = LossConfig(preset=preset, nll_norm=nll_norm), LossConfig(**old_spelling, nll_norm=nll_norm)
    assert named.terms == old.terms

    def legacy(c, r):
        return _legacy_loss(c, r, ref_c, ref_r, n_c, n_r, valid, old_spelling["objective"], named.beta,
                            old_spelling["alpha"], named.label_smoothing, nll_norm)

    for transform in (lambda f: f, jax.jit):  # op by op, and compiled as the train step is
        want = transform(jax.value_and_grad(legacy, argnums=(0, 1)))(logp_c, logp_r)
        for cfg in (named, old):
            got = transform(jax.value_and_grad(lambda c, r: preference_loss(c, r, ref_c, ref_r, n_c, n_r, valid, cfg)[0],
                                               argnums=(0, 1)))(logp_c, logp_r)
            for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
                assert np.array_equal(np.asarray(a), np.asarray(b))


def test_the_old_spelling_runs_and_says_which_preset_it_is():
    """Configs that set loss.objective / loss.alpha keep working (the demo's baselines do); the run names
    the preset it amounts to, and a named preset's mask is only required of the preset taken whole."""
    sft = LossConfig(objective="sft", alpha=1.0)
    assert "same as preset sft" in sft.describe("reasoning") and sft.mask_problem("reasoning") is None
    assert "same as preset dpo_full" in LossConfig(objective="dpo", alpha=0.0).describe("reasoning")
    assert LossConfig().describe("cue") == (
        "dpo x 1 + nll_chosen x 0.2 on the tokens after the cue (preset ipo; beta 0.1, NLL mean per token)")
    assert "label_smoothing 0.1" in LossConfig(label_smoothing=0.1).describe("cue")  # conservative DPO says so
    assert LossConfig(alpha=0.5).terms[1].weight == 0.5  # IPO with another NLL weight
    custom = LossConfig(preset="custom", objective="ipo_azar", alpha=0.1)
    assert [str(t) for t in custom.terms] == ["ipo_azar x 1", "nll_chosen x 0.1"] and custom.mask_problem("reasoning") is None


def test_a_named_preset_on_another_mask_is_refused_before_training(tmp_path):
    from ipo_jax.train.config import base_config
    from ipo_jax.validation import settings_problems

    config = base_config()
    config.model.init, config.data.pairs, config.train.out = "preset:tiny-qwen3", "pairs.jsonl", str(tmp_path / "out")
    assert settings_problems("train", config) == []
    config.loss.preset = "sft"
    assert settings_problems("train", config) == [
        "config.loss.preset 'sft' is nll_chosen x 1 on the whole completion, so it needs data.mask_from='reasoning' "
        "(got 'cue'); set data.mask_from=reasoning, or compose another loss with loss.objective / loss.alpha "
        "(loss.preset=custom)"]
    config.data.mask_from = "reasoning"
    assert settings_problems("train", config) == []
    config.loss.preset = "custom"
    assert "loss.preset 'custom' composes the loss from loss.objective and loss.alpha" in settings_problems("train", config)[0]
    config.loss.objective, config.loss.alpha = "dpo", 0.0
    assert settings_problems("train", config) == []
    assert cross_field_problem(dict(config.loss, preset="nope"), "cue") is None  # left to the field's own check


def test_train_help_shows_the_preset_and_what_it_expands_to():
    from ipo_jax.cli import parse_config, stage_help

    row = next(line for line in stage_help("train", []).splitlines() if line.startswith("  loss.preset"))
    assert "'ipo'" in row and "ipo = dpo x 1 + nll_chosen x 0.2 on the tokens after the cue" in row
    assert all(f"{name} = " in row for name in PRESETS) and "custom = " in row
    # the None ('the preset's') defaults still take typed overrides
    tiny = str(Path(__file__).resolve().parents[1] / "configs" / "train_tiny_cpu.py")
    config = parse_config(["--config", tiny, "--config.loss.alpha=1", "--config.loss.objective=sft"], "train")
    assert config.loss.alpha == 1.0 and isinstance(config.loss.alpha, float) and LossConfig(**config.loss).terms[0].name == "nll_chosen"


def test_padding_pairs_do_not_count():
    cfg = LossConfig()
    args = [jnp.array([-3.0, jnp.nan]), jnp.array([-5.0, jnp.nan]), jnp.zeros(2), jnp.zeros(2), jnp.array([2.0, 0.0]), jnp.array([3.0, 0.0])]
    loss_sum, metrics = preference_loss(*args, jnp.array([True, False]), cfg)
    assert np.isfinite(float(loss_sum)) and float(metrics["pairs"]) == 1.0


def test_loss_config_rejects_bad_values():
    with pytest.raises(ValueError, match="loss.preset must be one of ipo = "):
        LossConfig(preset="rpo")
    with pytest.raises(ValueError, match="'custom' composes the loss from loss.objective and loss.alpha"):
        LossConfig(preset="custom", objective="dpo")
    with pytest.raises(ValueError, match="objective"):
        LossConfig(objective="ipo")
    with pytest.raises(ValueError, match="beta"):
        LossConfig(beta=0.0)
    with pytest.raises(ValueError, match="alpha"):
        LossConfig(alpha=float("nan"))
    with pytest.raises(ValueError, match="nll_norm"):
        LossConfig(nll_norm="token")


def test_config_defaults_come_from_the_dataclasses():
    """One source for defaults: the train config's loss and optim sections are the dataclasses'."""
    import dataclasses

    from ipo_jax.train.config import base_config
    from ipo_jax.train.step import OptimConfig

    c = base_config()
    assert dict(c.loss) == dataclasses.asdict(LossConfig())
    assert dict(c.optim) == {k: v for k, v in dataclasses.asdict(OptimConfig()).items() if k != "total_steps"}
    assert LossConfig(**c.loss) == LossConfig() and OptimConfig(**c.optim) == OptimConfig()


# ----------------------------------------------------------------------------- chunked log-probs


@pytest.mark.parametrize("chunk", [1, 5, 7, 64])
def test_chunked_token_logprobs_equal_full_log_softmax(chunk):
    rng = np.random.RandomState(1)
    hidden = jnp.asarray(rng.randn(3, 13, 8).astype(np.float32))
    unembed = jnp.asarray(rng.randn(8, 50).astype(np.float32))
    targets = jnp.asarray(rng.randint(0, 50, (3, 13)))

    def full(h, w):
        logits = jnp.einsum("rsd,dv->rsv", h, w)
        return jnp.take_along_axis(jax.nn.log_softmax(logits), targets[..., None], -1)[..., 0]

    np.testing.assert_allclose(token_logprobs(hidden, targets, unembed, chunk), full(hidden, unembed), atol=1e-5)
    # a different weight per slot, so the hand-written VJP is checked against autodiff for any cotangent
    weights = jnp.asarray(rng.randn(3, 13).astype(np.float32))
    g_chunked = jax.grad(lambda h, w: (weights * token_logprobs(h, targets, w, chunk)).sum(), argnums=(0, 1))(hidden, unembed)
    g_full = jax.grad(lambda h, w: (weights * full(h, w)).sum(), argnums=(0, 1))(hidden, unembed)
    for a, b in zip(g_chunked, g_full):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_chunked_logprobs_gradients_keep_bfloat16_inputs_bfloat16():
    rng = np.random.RandomState(2)
    hidden = jnp.asarray(rng.randn(2, 9, 8), jnp.bfloat16)
    unembed = jnp.asarray(rng.randn(8, 40), jnp.bfloat16)
    targets = jnp.asarray(rng.randint(0, 40, (2, 9)))
    g_h, g_w = jax.grad(lambda h, w: token_logprobs(h, targets, w, 4).sum(), argnums=(0, 1))(hidden, unembed)
    assert g_h.dtype == jnp.bfloat16 and g_w.dtype == jnp.bfloat16  # no float32 copy of the head's gradient
    f32 = jax.grad(lambda h, w: token_logprobs(h, targets, w, 4).sum(), argnums=(0, 1))(
        hidden.astype(jnp.float32), unembed.astype(jnp.float32))
    np.testing.assert_allclose(np.asarray(g_w, np.float32), f32[1], atol=0.1, rtol=0.05)


def test_chunked_logprobs_never_build_full_logits():
    hidden = jax.ShapeDtypeStruct((2, 1024, 16), jnp.float32)
    targets = jax.ShapeDtypeStruct((2, 1024), jnp.int32)
    unembed = jax.ShapeDtypeStruct((16, 4096), jnp.float32)
    fn = jax.jit(jax.grad(lambda h, t, w: token_logprobs(h, t, w, 128).sum()))
    lowered = fn.lower(hidden, targets, unembed)
    hlo = lowered.as_text()
    assert "2x1024x4096" not in hlo  # the [R,S,V] logits never exist
    assert "2x128x4096" in hlo  # only one chunk's worth at a time
    full_logits_bytes = 2 * 1024 * 4096 * 4
    memory = lowered.compile().memory_analysis()
    if memory is not None:  # backends without the analysis still ran the shape checks above
        assert memory.temp_size_in_bytes < full_logits_bytes / 2, memory.temp_size_in_bytes


# ----------------------------------------------------------------------------- records and tokenisation


def _write(tmp_path, lines):
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(l if isinstance(l, str) else json.dumps(l) for l in lines) + "\n")
    return path


GOOD = {"id": "a", "prompt": "What is 2 + 3?", "prefix": "We add the numbers. ", "chosen": "2 + 3 = 5.\n</think>\n\n5", "rejected": "It is 6.\n</think>\n\n6"}


@pytest.mark.parametrize(
    "line, message",
    [
        ("{not json", r"pairs.jsonl:2: not valid JSON"),
        ({k: v for k, v in GOOD.items() if k != "chosen"} | {"id": "b"}, r"pairs.jsonl:2: field 'chosen' is missing"),
        (GOOD | {"id": "b", "prefix": 3}, r"pairs.jsonl:2: field 'prefix' should be str, got int"),
        (GOOD | {"id": "b", "prompt": "  "}, r"pairs.jsonl:2 \(id 'b'\): field 'prompt' is empty"),
        (GOOD | {"id": "b", "rejected": GOOD["chosen"]}, r"chosen and rejected are identical"),
        (GOOD, r"pairs.jsonl:2: id 'a' repeats line 1"),
        ("[1, 2]", r"pairs.jsonl:2: expected a JSON object"),
    ],
)
def test_malformed_pair_file_names_line_and_field(tmp_path, line, message):
    with pytest.raises(PairFileError, match=message):
        read_pair_records(_write(tmp_path, [GOOD, line]))


@pytest.fixture(scope="module")
def tiny_tokenizer():
    from ipo_jax.data.tiny_tokenizer import build_tiny_tokenizer

    corpus = ["What is 2 + 3? We add the numbers. 2 + 3 = 5. It is 6. The answer is five."] * 3
    return build_tiny_tokenizer(corpus, vocab_size=300)


def test_tokenized_pair_keeps_trunk_identical_and_masks_only_the_suffix(tiny_tokenizer):
    from ipo_jax.data.tokenizer import encode_chat

    pair = tokenize_pair(tiny_tokenizer, GOOD)
    for suffix, ids in ((GOOD["chosen"], pair.chosen), (GOOD["rejected"], pair.rejected)):
        prompt_ids, completion = encode_chat(tiny_tokenizer, [{"role": "user", "content": GOOD["prompt"]}], [GOOD["prefix"], suffix])
        assert prompt_ids == list(pair.prompt)
        assert completion == list(pair.prefix) + list(ids)  # prefix ids are the same on both sides
    assert tiny_tokenizer.decode(pair.prompt).endswith("<|Assistant|><think>\n")
    for layout in ("duplicated", "prefix_shared"):
        cue = pack_pairs([pair], layout=layout, mask_from="cue", length=96)
        full = pack_pairs([pair], layout=layout, mask_from="reasoning", length=96)
        assert cue["slot_chosen"].sum() == len(pair.chosen) and cue["slot_rejected"].sum() == len(pair.rejected)
        assert full["slot_chosen"].sum() == len(pair.prefix) + len(pair.chosen)
        # the loss-carrying targets of the chosen side are exactly the chosen suffix tokens
        targets = cue["slot_target"][cue["slot_chosen"]]
        np.testing.assert_array_equal(targets, pair.chosen)


def _random_pairs(n, seed=0, vocab=256):
    rng = np.random.RandomState(seed)
    ids = lambda k: rng.randint(3, vocab, k).astype(np.int32)  # noqa: E731
    return [TokenizedPair(str(i), ids(rng.randint(3, 7)), ids(rng.randint(0, 9)), ids(rng.randint(1, 8)), ids(rng.randint(1, 8))) for i in range(n)]


@pytest.mark.parametrize("mask_from", ["cue", "reasoning"])
def test_duplicated_and_prefix_shared_layouts_give_equal_logps_and_gradients(mask_from):
    model = init_decoder(preset_config("tiny-qwen3", initializer_range=0.2))
    graphdef, params = nnx.split(model, nnx.Param)
    pairs = _random_pairs(6, seed=3)
    cfg = LossConfig()
    results = {}
    for layout in ("duplicated", "prefix_shared"):
        batch = {k: jnp.asarray(v) for k, v in pack_pairs(pairs, layout=layout, mask_from=mask_from, length=40).items()}

        def loss(p):
            logp_c, logp_r, n_c, n_r = policy_pair_logps(p, graphdef, batch, chunk_size=16)
            ref = jnp.full_like(logp_c, -30.0)
            return preference_loss(logp_c, logp_r, ref, ref - 2, n_c, n_r, batch["pair_valid"], cfg)[0], (logp_c, logp_r)

        (value, logps), grads = jax.value_and_grad(loss, has_aux=True)(params)
        results[layout] = (value, logps, grads)
    (v1, l1, g1), (v2, l2, g2) = results["duplicated"], results["prefix_shared"]
    assert abs(float(v1) - float(v2)) <= 1e-5
    for a, b in zip(l1, l2):
        np.testing.assert_allclose(a, b, atol=1e-5)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_prefix_shared_layout_saves_tokens():
    pairs = _random_pairs(20, seed=4)
    dup = sum(2 * p.row_length("duplicated") for p in pairs)
    shared = sum(p.row_length("prefix_shared") for p in pairs)
    assert shared < dup


def test_fit_to_length_keeps_a_pair_whole_or_drops_it():
    """prompt + prefix + chosen + rejected = 31 tokens: kept whole at 31 and above, dropped below
    (never cut), whatever the layout; the reason says whether prompt + prefix alone leave no room."""
    pair = TokenizedPair("x", np.arange(10), np.arange(10), np.arange(8), np.arange(3))
    assert pair_length(pair) == pair.row_length("prefix_shared") == 31 and pair.row_length("duplicated") == 28
    assert fit_to_length(pair, 31) is pair and fit_to_length(pair, 100) is pair and length_problem(pair, 31) is None
    for max_length in (30, 28, 26, 22):  # 28: its duplicated rows would fit, the pair does not
        assert fit_to_length(pair, max_length) is None and length_problem(pair, max_length) == "pair_too_long"
    assert length_problem(pair, 21) == "trunk_too_long"  # 20 trunk tokens + one of each side do not fit


def test_bucketing_bounds_the_number_of_shapes():
    pairs = _random_pairs(40, seed=5)
    buckets = default_buckets(64, smallest=8)
    assert buckets == [8, 16, 32, 64] and bucket_length(9, buckets) == 16
    assert default_buckets(300, smallest=64, steps_per_octave=2) == [64, 96, 128, 192, 256, 300]
    assert bucket_length(140, default_buckets(4096, steps_per_octave=2)) == 192  # 256 with powers of two only
    batches = PairBatches(pairs, pairs_per_micro=3, micro_batches=1, layout="duplicated", mask_from="cue", buckets=buckets)
    shapes = {batches.batch(0, i)[0]["tokens"].shape for i in range(batches.batches_per_epoch)}
    assert len(shapes) <= len(buckets)
    last, idx = batches.batch(0, batches.batches_per_epoch - 1)
    assert (idx == -1).sum() == 2 and last["pair_valid"].sum() == 1  # 40 = 13 * 3 + 1: padded, not dropped
    # every pair is visited exactly once per epoch, and the order is reproducible
    seen = np.concatenate([batches.batch(1, i)[1] for i in range(batches.batches_per_epoch)])
    assert sorted(seen[seen >= 0].tolist()) == list(range(40))
    assert np.array_equal(batches.order(1), PairBatches(pairs, 3, 1, "duplicated", "cue", buckets).order(1))
    assert not np.array_equal(batches.order(0), batches.order(1))
