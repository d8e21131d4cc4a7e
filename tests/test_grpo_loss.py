"""GRPO's loss (ipo_jax/loss/grpo.py) against a float64 NumPy oracle written from the formulas
(loops over groups, sequences and tokens, Python floats), its gradient against finite
differences of the oracle, and the edges: equal rewards, fully masked rows, ratios at the clip
bounds, garbage in padding, micro-batches. TRL's own GRPOTrainer on the same tensors is
tools/check_grpo_trl.py (it needs torch and trl, which the test venv does not have)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ipo_jax.loss import GRPOLossConfig, average_grpo_metrics, group_advantages, grpo_loss
from ipo_jax.loss.grpo import LOSS_TYPES, SCALE_REWARDS, aggregate_token_loss

# jitted: one compile per configuration and shape instead of one per operation (eager dispatch)
jit_loss = jax.jit(grpo_loss, static_argnames=("cfg",))
jit_advantages = jax.jit(group_advantages, static_argnums=(1, 2, 3))

# ----------------------------------------------------------------------------- the oracle


def oracle_advantages(rewards, scale, ddof, eps):
    """(r - group mean) / (std + eps): std of the group, of every reward ('batch'), or none."""
    prompts, group = len(rewards), len(rewards[0])
    everything = [float(r) for row in rewards for r in row]

    def std(values):
        if len(values) <= ddof:
            return 0.0
        m = sum(values) / len(values)
        return math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - ddof))

    out = np.zeros((prompts, group))
    for p in range(prompts):
        row = [float(r) for r in rewards[p]]
        mean = sum(row) / group
        denom = 1.0 if scale == "none" else std(row if scale == "group" else everything) + eps
        for g in range(group):
            out[p, g] = (row[g] - mean) / denom
    return out


def oracle_token_terms(lp, old, ref, adv, mask, eps_low, eps_high, beta, kl_correction):
    """Per-token loss -min(rho A, clip(rho) A) + beta KL, the KL (k3, x rho under kl_correction),
    rho and the clip flags (0 off the mask)."""
    rows, slots = lp.shape
    loss, kl, ratio = np.zeros((rows, slots)), np.zeros((rows, slots)), np.zeros((rows, slots))
    low, high = np.zeros((rows, slots)), np.zeros((rows, slots))
    for i in range(rows):
        a = float(adv[i])
        for t in range(slots):
            if not mask[i, t]:
                continue
            rho = math.exp(lp[i, t] - old[i, t])
            clipped = min(max(rho, 1.0 - eps_low), 1.0 + eps_high)
            d = ref[i, t] - lp[i, t]
            kl[i, t] = (math.exp(d) - d - 1.0) * (rho if kl_correction else 1.0)
            loss[i, t] = -min(rho * a, clipped * a) + beta * kl[i, t]
            ratio[i, t] = rho
            low[i, t] = rho < 1.0 - eps_low and a < 0
            high[i, t] = rho > 1.0 + eps_high and a > 0
    return loss, kl, ratio, low, high


def oracle_aggregate(per_token, mask, loss_type, max_len=None):
    rows, slots = per_token.shape
    if loss_type == "grpo":
        total = 0.0
        for i in range(rows):
            n = sum(1 for t in range(slots) if mask[i, t])
            total += sum(per_token[i, t] for t in range(slots) if mask[i, t]) / max(n, 1)
        return total / rows
    masked_sum = sum(per_token[i, t] for i in range(rows) for t in range(slots) if mask[i, t])
    tokens = sum(1 for i in range(rows) for t in range(slots) if mask[i, t])
    if loss_type in ("bnpo", "dapo"):  # one whole batch: the local and the global token count agree
        return masked_sum / max(tokens, 1)
    if loss_type == "dr_grpo":
        return masked_sum / (rows * max_len)
    raise AssertionError(loss_type)


def oracle_loss(lp, old, ref, adv, mask, cfg):
    per_token = oracle_token_terms(lp, old, ref, adv, mask, cfg.epsilon_low, cfg.epsilon_high, cfg.beta,
                                   cfg.kl_bias_correction)[0]
    return oracle_aggregate(per_token, mask, cfg.loss_type, cfg.max_completion_length)


# ----------------------------------------------------------------------------- the batch

PROMPTS, G, T = 3, 4, 7


def make_batch(seed=0):
    """3 prompts x 4 completions of up to 7 tokens: ragged lengths, one completion fully masked,
    ratios inside and outside the clip range, a reference near and far from the policy."""
    rng = np.random.RandomState(seed)
    rewards = rng.choice([0.0, 0.5, 1.0, 2.0], size=(PROMPTS, G))
    rewards[1] = [1.0, 0.0, 0.0, 1.0]  # two-valued group
    rows = PROMPTS * G
    lp = -rng.uniform(0.05, 4.0, (rows, T))
    old = lp - rng.uniform(-0.6, 0.6, (rows, T))  # ratios from 0.55 to 1.8
    ref = lp + rng.normal(0.0, 0.5, (rows, T))
    lengths = rng.randint(2, T + 1, rows)
    lengths[5] = 0  # a completion with no loss token
    mask = np.arange(T)[None, :] < lengths[:, None]
    return rewards, lp, old, ref, mask


CONFIGS = {
    "grpo": dict(loss_type="grpo", beta=0.04),
    "bnpo": dict(loss_type="bnpo", beta=0.04),
    "dr_grpo": dict(loss_type="dr_grpo", beta=0.04, max_completion_length=T + 3),
    "dapo (TRL default, beta 0)": dict(loss_type="dapo"),
    "dapo, clip-higher, KL": dict(loss_type="dapo", beta=0.1, epsilon_high=0.28),
    "dapo, KL without the ratio (DeepSeekMath)": dict(loss_type="dapo", beta=0.1, kl_bias_correction=False),
    "grpo, KL without the ratio": dict(loss_type="grpo", beta=0.04, kl_bias_correction=False),
    "grpo, asymmetric clip": dict(loss_type="grpo", epsilon_low=0.1, epsilon_high=0.3),
}


def _jax_loss(cfg, lp, old, ref, adv, mask, dtype):
    return jit_loss(jnp.asarray(lp, dtype), jnp.asarray(old, dtype), jnp.asarray(ref, dtype),
                     jnp.asarray(adv, dtype), jnp.asarray(mask), cfg)


# ----------------------------------------------------------------------------- advantages


@pytest.mark.parametrize("scale", SCALE_REWARDS)
@pytest.mark.parametrize("ddof", (1, 0))
def test_advantages_match_oracle_float64(scale, ddof):
    rewards = make_batch()[0]
    want = oracle_advantages(rewards, scale, ddof, 1e-4)
    with jax.enable_x64(True):
        got = np.asarray(jit_advantages(jnp.asarray(rewards, jnp.float64), scale, ddof, 1e-4))
    np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-13)


def test_advantage_scales_differ():
    """The three scalings give three different answers on this batch (so the test above tells them apart)."""
    rewards = jnp.asarray(make_batch()[0], jnp.float32)
    group, batch, none = (np.asarray(jit_advantages(rewards, s)) for s in SCALE_REWARDS)
    assert np.abs(group - batch).max() > 0.1 and np.abs(group - none).max() > 0.1 and np.abs(batch - none).max() > 0.1
    np.testing.assert_allclose(none.sum(axis=1), 0.0, atol=1e-6)  # each group centred


def test_advantages_equal_rewards_are_zero_not_nan():
    rewards = jnp.asarray([[0.7, 0.7, 0.7, 0.7], [1.0, 0.0, 1.0, 1.0]], jnp.float32)
    for scale in SCALE_REWARDS:
        for ddof in (0, 1):
            adv = np.asarray(jit_advantages(rewards, scale, ddof))
            assert np.isfinite(adv).all()
            assert (adv[0] == 0.0).all(), (scale, ddof, adv[0])
            assert np.abs(adv[1]).min() > 0.1
    # a group of one (no spread to measure) is 0 too, not 0/0
    assert np.asarray(jit_advantages(jnp.asarray([[3.0], [1.0]]), "group", 1)).tolist() == [[0.0], [0.0]]


# ----------------------------------------------------------------------------- the loss


@pytest.mark.parametrize("name", CONFIGS)
def test_loss_and_metrics_match_oracle_float64(name):
    cfg = GRPOLossConfig(**CONFIGS[name])
    rewards, lp, old, ref, mask = make_batch()
    adv = oracle_advantages(rewards, cfg.scale_rewards, cfg.reward_std_ddof, cfg.advantage_eps).reshape(-1)
    _, kl, ratio, low, high = oracle_token_terms(lp, old, ref, adv, mask, cfg.epsilon_low, cfg.epsilon_high, cfg.beta,
                                                 cfg.kl_bias_correction)
    assert low.sum() > 0 and high.sum() > 0 and (~mask).sum() > T  # the batch exercises both clips and padding
    with jax.enable_x64(True):
        loss, sums = _jax_loss(cfg, lp, old, ref, adv, mask, jnp.float64)
        means = average_grpo_metrics(sums)
        assert loss.dtype == jnp.float64
        np.testing.assert_allclose(float(loss), oracle_loss(lp, old, ref, adv, mask, cfg), rtol=1e-12, atol=1e-14)
    tokens = mask.sum()
    assert float(sums["tokens"]) == tokens and float(sums["sequences"]) == PROMPTS * G
    np.testing.assert_allclose(float(means["kl"]), kl.sum() / tokens, rtol=1e-12)
    np.testing.assert_allclose(float(means["ratio"]), ratio.sum() / tokens, rtol=1e-12)
    np.testing.assert_allclose(float(means["clip_low"]), low.sum() / tokens, rtol=1e-12)
    np.testing.assert_allclose(float(means["clip_high"]), high.sum() / tokens, rtol=1e-12)
    np.testing.assert_allclose(float(means["clip_region"]), (low + high).sum() / tokens, rtol=1e-12)


def test_loss_types_differ():
    """grpo, bnpo and dr_grpo give three different numbers on this batch (the test above can tell
    them apart); bnpo and dapo agree on a whole batch by definition and part on micro-batches
    (test_micro_batches_add_up_to_the_whole_batch)."""
    rewards, lp, old, ref, mask = make_batch()
    adv = oracle_advantages(rewards, "group", 1, 1e-4).reshape(-1)
    values = {lt: oracle_loss(lp, old, ref, adv, mask, GRPOLossConfig(loss_type=lt, beta=0.04, max_completion_length=T))
              for lt in ("grpo", "bnpo", "dr_grpo")}
    assert min(abs(a - b) for a, b in [(values["grpo"], values["bnpo"]), (values["grpo"], values["dr_grpo"]),
                                       (values["bnpo"], values["dr_grpo"])]) > 1e-3, values


# float32 against the float64 oracle: inputs are rounded to float32 first, so what is measured is
# float32 arithmetic on ~80 terms of size <= ~4 (relative rounding 6e-8 each)
F32_RTOL, F32_ATOL = 2e-6, 1e-7


@pytest.mark.parametrize("name", ["grpo", "dr_grpo", "dapo, clip-higher, KL"])
def test_loss_float32_within_tolerance(name):
    cfg = GRPOLossConfig(**CONFIGS[name])
    rewards, lp, old, ref, mask = make_batch(seed=1)
    lp, old, ref = (x.astype(np.float32).astype(np.float64) for x in (lp, old, ref))
    adv = oracle_advantages(rewards, "group", 1, 1e-4).astype(np.float32).astype(np.float64).reshape(-1)
    loss, sums = _jax_loss(cfg, lp, old, ref, adv, mask, jnp.float32)
    assert loss.dtype == jnp.float32
    np.testing.assert_allclose(float(loss), oracle_loss(lp, old, ref, adv, mask, cfg), rtol=F32_RTOL, atol=F32_ATOL)
    kl = oracle_token_terms(lp, old, ref, adv, mask, 0.2, 0.2, 0.0, cfg.kl_bias_correction)[1]
    np.testing.assert_allclose(float(sums["kl"]), kl.sum(), rtol=F32_RTOL)
    adv32 = jit_advantages(jnp.asarray(rewards, jnp.float32))
    np.testing.assert_allclose(np.asarray(adv32), oracle_advantages(rewards, "group", 1, 1e-4),
                               rtol=F32_RTOL, atol=F32_ATOL)


# ----------------------------------------------------------------------------- gradients


def _finite_difference(f, x, h=1e-6):
    grad = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        up, down = x.copy(), x.copy()
        up[idx] += h
        down[idx] -= h
        grad[idx] = (f(up) - f(down)) / (2 * h)
    return grad


@pytest.mark.parametrize("loss_type, kl_correction", [(lt, True) for lt in LOSS_TYPES] + [("dapo", False)])
def test_gradient_matches_finite_differences_of_oracle(loss_type, kl_correction):
    """d loss / d logp on a tiny case (2 prompts x 2, 3 tokens) with the KL on, clipped and unclipped tokens."""
    cfg = GRPOLossConfig(loss_type=loss_type, beta=0.3, epsilon_low=0.2, epsilon_high=0.25, max_completion_length=4,
                         kl_bias_correction=kl_correction)
    lp = np.array([[-1.0, -0.5, -2.0], [-0.3, -1.2, -0.8], [-2.5, -0.1, -1.5], [-0.7, -0.9, -3.0]])
    # ratios 1.1, 1.5 (high clip with A>0), 0.6 (low clip with A<0), ..., all >= 0.01 from a bound
    log_ratio = np.log(np.array([[1.1, 1.5, 0.9], [0.6, 1.05, 0.95], [1.3, 0.7, 1.0], [0.85, 1.4, 1.15]]))
    old = lp - log_ratio
    ref = lp + np.array([[0.2, -0.4, 0.1], [0.5, 0.0, -0.3], [-0.6, 0.3, 0.2], [0.1, -0.2, 0.4]])
    adv = np.array([1.0, -1.0, 0.5, -0.5])
    mask = np.array([[1, 1, 1], [1, 1, 0], [1, 1, 1], [1, 0, 0]], bool)
    assert np.abs(np.exp(log_ratio)[..., None] - np.array([0.8, 1.25])).min() > 0.01
    want = _finite_difference(lambda x: oracle_loss(x, old, ref, adv, mask, cfg), lp)
    with jax.enable_x64(True):
        got = np.asarray(jax.grad(lambda x: jit_loss(x, jnp.asarray(old), jnp.asarray(ref), jnp.asarray(adv),
                                                      jnp.asarray(mask), cfg)[0])(jnp.asarray(lp)))
    np.testing.assert_allclose(got, want, rtol=1e-7, atol=1e-9)
    assert (got[~mask] == 0).all() and np.abs(got[mask]).min() > 0  # the KL moves every loss token, even clipped ones


def test_on_policy_gradient_is_advantage_times_mask():
    """old_logp None: ratio 1, and the policy part's gradient is -A m / normaliser (TRL's
    old_per_token_logps = per_token_logps.detach() when num_iterations is 1)."""
    rewards, lp, _, ref, mask = make_batch()
    adv = np.asarray(jit_advantages(jnp.asarray(rewards))).reshape(-1)
    cfg = GRPOLossConfig(loss_type="dapo")
    grad = np.asarray(jax.grad(lambda x: jit_loss(x, None, None, jnp.asarray(adv), jnp.asarray(mask), cfg)[0])(
        jnp.asarray(lp, jnp.float32)))
    np.testing.assert_allclose(grad, -adv[:, None] * mask / mask.sum(), rtol=1e-6, atol=1e-9)
    _, sums = jit_loss(jnp.asarray(lp, jnp.float32), None, jnp.asarray(ref, jnp.float32), jnp.asarray(adv),
                        jnp.asarray(mask), cfg)
    assert float(sums["ratio"]) == mask.sum() and float(sums["clip_region"]) == 0 and float(sums["kl"]) > 0


# ----------------------------------------------------------------------------- edges


def test_equal_reward_group_gives_no_policy_gradient_and_no_nan():
    rewards = np.array([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]])
    lp = -np.linspace(0.5, 2.0, 18).reshape(6, 3)
    cfg = GRPOLossConfig(loss_type="grpo")
    everything = jnp.ones((6, 3), bool)
    for scale in SCALE_REWARDS:
        adv = jit_advantages(jnp.asarray(rewards), scale).reshape(-1)
        loss, grad = jax.value_and_grad(
            lambda x, a=adv: jit_loss(x, jnp.asarray(lp + 0.3), None, a, everything, cfg)[0])(jnp.asarray(lp))
        assert float(loss) == 0.0 and np.isfinite(np.asarray(grad)).all() and not np.asarray(grad).any()


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_fully_masked_rows_and_padding_garbage_are_inert(loss_type):
    """A row with no loss token adds nothing (grpo still counts it among the sequences, as TRL's
    mean over rows); NaN / -inf / huge values in masked slots reach neither the loss nor a gradient."""
    rewards, lp, old, ref, mask = make_batch()
    adv = oracle_advantages(rewards, "group", 1, 1e-4).reshape(-1)
    cfg = GRPOLossConfig(loss_type=loss_type, beta=0.04, max_completion_length=T)
    dirty_lp, dirty_old, dirty_ref = lp.copy(), old.copy(), ref.copy()
    dirty_lp[~mask], dirty_old[~mask], dirty_ref[~mask] = -np.inf, np.nan, 1e30
    assert not mask[5].any()

    def value_and_grad(x, o, r):
        return jax.value_and_grad(lambda v: jit_loss(v, jnp.asarray(o), jnp.asarray(r), jnp.asarray(adv),
                                                       jnp.asarray(mask), cfg)[0])(jnp.asarray(x))

    with jax.enable_x64(True):
        clean, clean_grad = value_and_grad(lp, old, ref)
        dirty, dirty_grad = value_and_grad(dirty_lp, dirty_old, dirty_ref)
        np.testing.assert_allclose(float(clean), oracle_loss(lp, old, ref, adv, mask, cfg), rtol=1e-12)
        assert float(dirty) == float(clean)
        np.testing.assert_array_equal(np.asarray(dirty_grad), np.asarray(clean_grad))
        assert not np.asarray(clean_grad)[~mask].any()
        # every row masked: the loss is 0, not 0/0
        nothing = jnp.zeros(mask.shape, bool)
        none, none_grad = jax.value_and_grad(lambda v: jit_loss(
            v, jnp.asarray(old), jnp.asarray(ref), jnp.asarray(adv), nothing, cfg)[0])(jnp.asarray(lp))
        assert float(none) == 0.0 and not np.asarray(none_grad).any()


@pytest.mark.parametrize("side", ["high", "low"])
def test_ratio_exactly_at_the_clip_bound_keeps_its_gradient(side):
    """At rho == 1 + eps_high (A > 0) or rho == 1 - eps_low (A < 0) the token is not clipped: its
    gradient is -A rho / n (what torch's min/clamp give TRL), not half of it (jnp.minimum's tie);
    1e-12 past the bound it is clipped: gradient 0."""
    sign = 1.0 if side == "high" else -1.0
    log_ratio = 0.25 if side == "high" else -0.25
    with jax.enable_x64(True):
        lp = jnp.asarray([[-1.0, -2.0]])
        old_first = -1.0 - log_ratio
        rho = float(jnp.exp(lp[0, 0] - old_first))  # the ratio grpo_loss will compute, bit for bit
        eps = rho - 1.0 if side == "high" else 1.0 - rho  # exact: Sterbenz
        assert (1.0 + eps if side == "high" else 1.0 - eps) == rho
        cfg = GRPOLossConfig(loss_type="bnpo", epsilon_low=eps if side == "low" else 0.2,
                             epsilon_high=eps if side == "high" else 0.2)
        adv = jnp.asarray([sign * 0.5])
        mask = jnp.ones((1, 2), bool)

        def loss_at(old_first):
            """(loss, d loss / d logp, metric sums) with the first token's old log-prob old_first."""
            old = jnp.asarray([[old_first, -2.0]])
            (value, sums), grad = jax.value_and_grad(lambda v: jit_loss(v, old, None, adv, mask, cfg), has_aux=True)(lp)
            return value, grad, sums

        value, grad, sums = loss_at(old_first)
        np.testing.assert_allclose(float(value), -(sign * 0.5 * rho + sign * 0.5) / 2, rtol=1e-15)
        assert float(grad[0, 0]) == -(sign * 0.5) * rho / 2
        assert float(sums["clip_region"]) == 0
        _, grad_past, sums_past = loss_at(old_first - sign * 1e-12)
        assert float(grad_past[0, 0]) == 0.0 and float(sums_past["clip_" + side]) == 1


def test_micro_batches_add_up_to_the_whole_batch():
    """grpo, dr_grpo and dapo: micro-batch losses with the whole batch's totals sum to the whole
    loss; normalised by their own totals (or bnpo, which ignores them) they do not."""
    rewards, lp, old, ref, mask = make_batch()
    adv = oracle_advantages(rewards, "group", 1, 1e-4).reshape(-1)
    halves = (slice(0, len(adv) // 2), slice(len(adv) // 2, None))  # equal shapes: one compile per loss type
    with jax.enable_x64(True):
        for loss_type in LOSS_TYPES:
            cfg = GRPOLossConfig(loss_type=loss_type, beta=0.04, max_completion_length=T)
            whole, whole_sums = _jax_loss(cfg, lp, old, ref, adv, mask, jnp.float64)

            def micro_batches(own_totals, cfg=cfg):
                return [jit_loss(*(jnp.asarray(x[rows]) for x in (lp, old, ref, adv, mask)), cfg,
                                 total_sequences=len(adv[rows]) if own_totals else len(adv),
                                 total_tokens=int(mask[rows].sum()) if own_totals else int(mask.sum()))
                        for rows in halves]

            parts, own = micro_batches(own_totals=False), micro_batches(own_totals=True)
            for key in ("kl", "clip_high", "tokens", "sequences"):
                added_up = float(parts[0][1][key] + parts[1][1][key])
                np.testing.assert_allclose(added_up, float(whole_sums[key]), rtol=1e-13)
            added, added_own = float(parts[0][0] + parts[1][0]), float(own[0][0] + own[1][0])
            assert abs(added_own - float(whole)) > 1e-6
            if loss_type == "bnpo":
                assert abs(added - float(whole)) > 1e-6  # local by definition: the totals change nothing
            else:
                np.testing.assert_allclose(added, float(whole), rtol=1e-13)


def test_aggregate_rejects_unknown_and_incomplete():
    x, m = jnp.ones((2, 3)), jnp.ones((2, 3), bool)
    with pytest.raises(ValueError, match="loss_type"):
        aggregate_token_loss(x, m, "sum")
    with pytest.raises(ValueError, match="max_completion_length"):
        aggregate_token_loss(x, m, "dr_grpo")
    with pytest.raises(ValueError, match="ref_logp"):
        grpo_loss(x, None, None, jnp.ones(2), m, GRPOLossConfig(beta=0.1))


@pytest.mark.parametrize("field, value", [
    ("loss_type", "ppo"), ("beta", -0.1), ("beta", float("nan")), ("epsilon_low", 1.0), ("epsilon_high", -0.1),
    ("scale_rewards", True), ("kl_bias_correction", 1), ("reward_std_ddof", 2), ("advantage_eps", 0.0),
    ("max_completion_length", 0),
])
def test_config_refuses_out_of_range(field, value):
    with pytest.raises(ValueError, match=f"grpo.{field} must be"):
        GRPOLossConfig(**{field: value})


def test_config_dr_grpo_needs_max_completion_length():
    with pytest.raises(ValueError, match="max_completion_length"):
        GRPOLossConfig(loss_type="dr_grpo")
    assert GRPOLossConfig(loss_type="dr_grpo", max_completion_length=64).max_completion_length == 64
