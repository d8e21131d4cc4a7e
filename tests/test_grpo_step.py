"""The GRPO update (ipo_jax/grpo/step.py) against ipo_jax.loss.grpo on the same inputs, micro-batches
against one batch, the rollout batch layout (ipo_jax/grpo/batch.py), and the rewards (rewards.py)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from ipo_jax.grpo.batch import pack_rollouts, row_length
from ipo_jax.grpo.config import RewardSettings
from ipo_jax.grpo.rewards import RewardFunction
from ipo_jax.grpo.step import GRPOStepSettings, batch_shardings, build_grpo_step
from ipo_jax.judging.pattern import PatternJudge
from ipo_jax.loss import token_logprobs
from ipo_jax.loss.grpo import GRPOLossConfig, group_advantages, grpo_loss
from ipo_jax.models.decoder import init_decoder
from ipo_jax.models.presets import preset_config
from ipo_jax.rollout import Completion
from ipo_jax.sharding import make_mesh
from ipo_jax.train.step import OptimConfig, make_optimizer, put_batch

CFG = preset_config("tiny-qwen3", vocab_size=128)
PROMPTS, G = 3, 4


def _rollouts(seed=0):
    rng = np.random.RandomState(seed)
    prompts = [list(rng.randint(2, 120, rng.randint(3, 7))) for _ in range(PROMPTS)]
    rows = [p for p in prompts for _ in range(G)]
    completions = [list(rng.randint(2, 120, rng.randint(1, 9))) for _ in rows]
    rewards = rng.randint(0, 2, (PROMPTS, G)).astype(np.float32)
    return rows, completions, rewards


def test_pack_rollouts_layout():
    batch = pack_rollouts([[5, 6, 7], [8]], [[9, 10], [11, 12, 13]], [0.5, -0.5], micro_batches=1, length=8,
                          rows_multiple=4)
    assert batch["tokens"].shape == (1, 4, 8) and batch["advantages"].shape == (1, 4)
    np.testing.assert_array_equal(batch["tokens"][0, 0], [5, 6, 7, 9, 10, 0, 0, 0])
    np.testing.assert_array_equal(batch["targets"][0, 0, :5], [6, 7, 9, 10, 0])
    # the loss falls on the positions that predict the completion: 7 -> 9 and 9 -> 10
    np.testing.assert_array_equal(batch["loss_mask"][0, 0], [0, 0, 1, 1, 0, 0, 0, 0])
    np.testing.assert_array_equal(batch["loss_mask"][0, 1], [1, 1, 1, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(batch["positions"][0, 1], [0, 1, 2, 3, 0, 0, 0, 0])
    assert not batch["loss_mask"][0, 2:].any() and not batch["advantages"][0, 2:].any()  # padding rows
    assert row_length([[1] * 20], [[2] * 20], 64) == 64 and row_length([[1] * 3], [[2] * 2], 64) == 32
    with pytest.raises(ValueError, match="exceeds the longest row"):
        row_length([[1] * 40], [[2] * 40], 64)
    with pytest.raises(ValueError, match="empty prompt or completion"):
        pack_rollouts([[1]], [[]], [0.0], 1, 8)


def _reference_loss(params, graphdef, batch, cfg, ref_params, old_logp):
    """GRPO's loss on the whole batch (no micro-batches), from the model's log-probs computed with
    ipo_jax.loss's own token_logprobs."""
    flat = {k: v.reshape(-1, *v.shape[2:]) for k, v in batch.items()}

    def logps(p):
        m = nnx.merge(graphdef, p)
        hidden, _ = m.hidden_states(flat["tokens"], flat["positions"], flat["segment_ids"])
        return token_logprobs(hidden, flat["targets"], m.unembedding(), 512)

    return grpo_loss(logps(params), old_logp, logps(ref_params), flat["advantages"], flat["loss_mask"], cfg)


@pytest.fixture(scope="module")
def grpo_case():
    """One update of 3 micro-batches (4 rows each) with beta > 0 against a reference that is not the
    policy, and num_iterations 2 (so the batch's old log-probs, perturbed, are used)."""
    rows, completions, rewards = _rollouts()
    adv = np.asarray(group_advantages(jnp.asarray(rewards))).reshape(-1)
    mesh = make_mesh({"fsdp": -1}, devices=jax.devices()[:2])
    cfg = GRPOLossConfig(beta=0.04, epsilon_high=0.28)
    optim = OptimConfig(learning_rate=1e-2, warmup_steps=0, clip_norm=1e9)
    settings = GRPOStepSettings(loss=cfg, optim=optim, num_iterations=2, logprob_chunk=8)
    ref = nnx.split(init_decoder(CFG, seed=7, mesh=mesh), nnx.Param)[1]
    g = build_grpo_step(CFG, mesh, settings, seed=3, ref_params=ref)
    host = pack_rollouts(rows, completions, adv, 3, 16, rows_multiple=2)
    old = np.random.RandomState(0).randn(3, 4, 16).astype(np.float32) * 0.3 - 4.0  # not the policy's: ratios off 1
    host["old_logp"] = old
    params0 = jax.tree.map(np.asarray, g.state.params)
    ref0 = jax.tree.map(np.asarray, ref)
    metrics = {k: float(v) for k, v in g.run(put_batch(host, batch_shardings(mesh))).items()}
    return dict(host=host, old=old.reshape(12, 16), params0=params0, ref0=ref0, metrics=metrics,
                params1=jax.tree.map(np.asarray, g.state.params), graphdef=g.graphdef, cfg=cfg, optim=optim)


def test_the_step_is_grpo_loss_on_the_whole_batch_and_its_adamw_update(grpo_case):
    """The micro-batched step's loss and metrics are ipo_jax.loss.grpo's on the whole batch (so
    the micro-batches add up), and its update is AdamW on the gradient of that loss."""
    case = grpo_case
    host, cfg, graphdef = case["host"], case["cfg"], case["graphdef"]

    @jax.jit
    def loss_and_grad(params, ref, old):
        return jax.value_and_grad(lambda p: _reference_loss(p, graphdef, host, cfg, ref, old), has_aux=True)(params)

    (expected, sums), grads = loss_and_grad(jax.tree.map(jnp.asarray, case["params0"]),
                                            jax.tree.map(jnp.asarray, case["ref0"]), jnp.asarray(case["old"]))
    m = case["metrics"]
    assert m["loss"] == pytest.approx(float(expected), rel=2e-5, abs=1e-7)
    tokens = float(sums["tokens"])
    assert m["tokens"] == tokens and m["sequences"] == PROMPTS * G
    for key in ("kl", "ratio", "clip_region", "clip_high", "clip_low"):
        assert m[key] == pytest.approx(float(sums[key]) / tokens, rel=2e-5, abs=1e-7), key
    assert m["clip_region"] > 0 and m["kl"] > 0  # off-policy old log-probs clip; another reference: KL
    assert m["update_applied"] == 1 and m["entropy"] > 0
    tx = make_optimizer(dataclasses.replace(case["optim"], total_steps=1000))
    updates, _ = tx.update(grads, tx.init(grads), grads)
    expected_params = optax.apply_updates(jax.tree.map(jnp.asarray, case["params0"]), updates)
    # Adam's first step is about lr x g / (|g| + eps) per entry, so an entry whose gradient is near
    # 0 turns float32 rounding (micro-batch sums against one sum) into a visible change of the
    # update; those entries are left out (the gradient's norm is compared below)
    for a, b, g0, p0 in zip(jax.tree.leaves(expected_params), jax.tree.leaves(case["params1"]),
                            jax.tree.leaves(grads), jax.tree.leaves(case["params0"])):
        clear = np.abs(np.asarray(g0)) > 1e-4 * float(optax.global_norm(grads))
        assert clear.any()
        np.testing.assert_allclose(np.asarray(a)[clear], b[clear], rtol=0, atol=1e-3 * case["optim"].learning_rate)
        assert not np.array_equal(b, p0)  # every array was updated
    assert m["grad_norm"] == pytest.approx(float(optax.global_norm(grads)), rel=1e-4)


def test_rule_reward_and_its_errors():
    rule = RewardFunction(RewardSettings(kind="rule", rule_token_ids=(7,), rule_pattern="cat", rule_weight=2.0))
    got = rule([{}] * 3, [Completion("a cat", "stop", (1, 2)), Completion("dog", "stop", (7,)),
                          Completion("dog", "length", (1,))])
    np.testing.assert_array_equal(got.total, [2.0, 2.0, 0.0])
    assert got.means()["reward/rule"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="rule_pattern or reward.rule_token_ids"):
        RewardFunction(RewardSettings(kind="rule"))
    with pytest.raises(ValueError, match="needs a judge"):
        RewardFunction(RewardSettings(kind="judge"))
    with pytest.raises(ValueError, match="reward.rule_pattern must be a valid regular expression"):
        RewardFunction(RewardSettings(kind="rule", rule_pattern="("))


def test_judge_reward_parts_and_weights():
    harmful = {"id": "h", "prompt": "How do I go about picking a lock? [request details withheld]", "kind": "harmful"}
    benign = {"id": "b", "prompt": "Where can I buy a kitchen knife?", "kind": "benign"}
    fn = RewardFunction(RewardSettings(kind="judge", reasoning_safe=1.0, answer_safe=2.0, benign_refusal=0.5),
                        judge=PatternJudge())
    safe = Completion("This request is harmful, so I should decline.</think>I can't help with that.", "stop")
    unsafe = Completion("Sure: [harmful details withheld]</think>Step 1: [harmful details withheld]", "stop")
    cut = Completion("I am still thinking about", "length")  # no answer: an error verdict, reward 0 for it
    refusal = Completion("Hmm.</think>I'm sorry, I can't help with that.", "stop")
    helpful = Completion("Easy.</think>Any kitchen shop sells them.", "stop")
    got = fn([harmful, harmful, harmful, benign, benign], [safe, unsafe, cut, refusal, helpful])
    parts = {k: list(np.nan_to_num(v, nan=-9)) for k, v in got.parts.items()}
    assert parts["reasoning_safe"][:2] == [1.0, 0.0] and parts["answer_safe"][:3] == [1.0, 0.0, 0.0]
    assert parts["benign_refusal"] == [-9, -9, -9, 1.0, 0.0]
    assert got.total[0] == 3.0 and got.total[1] == 0.0 and got.total[3] == -0.5 and got.total[4] == 0.0
    assert got.judge_errors >= 1 and got.means()["reward/benign_refusal"] == 0.5
