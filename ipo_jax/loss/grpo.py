"""GRPO's loss as pure functions: group-normalised advantages, the clipped policy-gradient
objective per token, the k3 KL to a frozen reference, and the token aggregations TRL offers.

The formulas are TRL's `GRPOTrainer` (1.16; tools/check_grpo_trl.py runs both on the same
tensors):

  advantage   A = (r - mean of r's group) / (std + eps)
                scale_rewards 'group': the std of the group; 'batch': the std of every reward in
                the batch (the mean stays per group, as PPO-Lite); 'none': no division (Dr. GRPO).
                The std has Bessel's correction (reward_std_ddof=1, torch.std's and TRL's);
                reward_std_ddof=0 takes the population std. A group of one has std 0.
  ratio       rho = exp(logp - old_logp)              (old_logp None: on-policy, stop_gradient(logp))
  objective   -min(rho A, clip(rho, 1 - eps_low, 1 + eps_high) A)       (PPO's pessimistic bound)
  KL (k3)     exp(ref - logp) - (ref - logp) - 1       (DeepSeekMath eq. 4: >= 0, unbiased for KL(pi || ref))
                times rho when kl_bias_correction (TRL 1.16's use_bias_correction_kl, on by default,
                from DeepSeek-V3.2: the tokens were sampled by the old policy, rho reweights them; rho
                is differentiated, so this changes the KL gradient even on-policy where rho is 1)
  per token   objective + beta KL

A token is clipped when rho is strictly past its bound on the side the advantage pushes
(rho > 1 + eps_high with A > 0, rho < 1 - eps_low with A < 0): there its gradient is 0; at the
bound itself it keeps the unclipped gradient A rho, as torch's min/clamp give TRL.

Aggregation over the completion mask m (`loss_type`):

  grpo     mean over sequences of  sum_t l m / max(sum_t m, 1)      (the GRPO paper; length bias)
  bnpo     sum l m / max(sum m, 1) over the batch given              (TRL: "the local batch")
  dr_grpo  sum l m / (sequences x max_completion_length)             (Dr. GRPO)
  dapo     sum l m / the tokens of the whole optimizer batch         (DAPO; TRL's default)

Micro-batches: pass the whole batch's `total_sequences` and `total_tokens`, and the losses of
its micro-batches add up exactly to the whole batch's for grpo, dr_grpo and dapo (their
gradients too). bnpo is normalised by the batch it is given, by definition; TRL averages it
over accumulated micro-batches, and so should a step that splits one.

Masked slots are inert: the log-ratio and the reference difference are zeroed there before
any exp, so padding may hold anything (0, -inf, NaN) without reaching the loss or a gradient.

All functions are pure: arrays in, arrays out. Metrics come back as sums over loss tokens with
the token count (divide with `average_grpo_metrics`), so micro-batches add up.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

Array = jax.Array

LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo")
SCALE_REWARDS = ("group", "batch", "none")


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _count(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


# The range of each GRPO loss setting: None when fine, else what is expected (as preference.FIELD_CHECKS).
GRPO_FIELD_CHECKS = {
    "loss_type": lambda v: None if v in LOSS_TYPES else "one of " + ", ".join(map(repr, LOSS_TYPES)),
    "beta": lambda v: None if _finite(v) and v >= 0 else "a finite number >= 0 (0: no KL term)",
    "kl_bias_correction": lambda v: None if isinstance(v, bool) else "True or False",
    "epsilon_low": lambda v: None if _finite(v) and 0 <= v < 1 else "a finite number in [0, 1)",
    "epsilon_high": lambda v: None if _finite(v) and v >= 0 else "a finite number >= 0",
    "scale_rewards": lambda v: None if v in SCALE_REWARDS else "one of " + ", ".join(map(repr, SCALE_REWARDS)),
    "reward_std_ddof": lambda v: None if v in (0, 1) and _count(v) else "0 (population std) or 1 (Bessel's, TRL's)",
    "advantage_eps": lambda v: None if _finite(v) and v > 0 else "a finite number > 0",
    "max_completion_length": lambda v: None if v is None or (_count(v) and v > 0) else "an int > 0, or None",
}


@dataclasses.dataclass(frozen=True)
class GRPOLossConfig:
    """GRPO's loss settings; the defaults are TRL 1.16's GRPOConfig (loss_type 'dapo', beta 0,
    epsilon 0.2 both sides, scale_rewards 'group', use_bias_correction_kl True)."""

    loss_type: str = "dapo"  # how token losses become one number (see the module docstring)
    beta: float = 0.0  # weight of the k3 KL to the frozen reference (DeepSeekMath 0.04, DeepSeek-R1 0.001)
    kl_bias_correction: bool = True  # KL x rho (DeepSeek-V3.2, TRL's default); False: DeepSeekMath's k3 alone
    epsilon_low: float = 0.2  # ratio clipped below at 1 - epsilon_low
    epsilon_high: float = 0.2  # ratio clipped above at 1 + epsilon_high (DAPO's clip-higher: 0.28)
    scale_rewards: str = "group"  # advantage divided by the group's std, the batch's, or nothing (Dr. GRPO)
    reward_std_ddof: int = 1  # 1: Bessel's correction (TRL, torch.std); 0: population std
    advantage_eps: float = 1e-4  # added to the std (TRL's 1e-4)
    max_completion_length: int | None = None  # dr_grpo's constant normaliser: the sampler's token budget

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            expected = GRPO_FIELD_CHECKS[field.name](value)
            if expected:
                raise ValueError(f"grpo.{field.name} must be {expected}, got {value!r}")
        if self.loss_type == "dr_grpo" and self.max_completion_length is None:
            raise ValueError("grpo.loss_type 'dr_grpo' divides by sequences x max_completion_length: "
                             "set grpo.max_completion_length (the sampler's max new tokens)")


def group_advantages(rewards: Array, scale: str = "group", ddof: int = 1, eps: float = 1e-4) -> Array:
    """rewards [prompts, G] -> advantages [prompts, G]: each reward less its group's mean, over a std.

    scale 'group' divides by the group's std + eps, 'batch' by the std of all rewards + eps,
    'none' not at all. A group whose rewards are all equal gets advantage 0 (no NaN)."""
    if scale not in SCALE_REWARDS:
        raise ValueError(f"scale must be one of {SCALE_REWARDS}, got {scale!r}")
    centered = rewards - jnp.mean(rewards, axis=1, keepdims=True)
    if scale == "none":
        return centered

    def std(values, axis):
        n = values.size if axis is None else values.shape[axis]
        if n <= ddof:  # one sample: no spread to measure (TRL: std 0)
            return jnp.zeros((), values.dtype)
        dev = values - jnp.mean(values, axis=axis, keepdims=axis is not None)
        return jnp.sqrt(jnp.sum(dev * dev, axis=axis, keepdims=axis is not None) / (n - ddof))

    spread = std(rewards, 1) if scale == "group" else std(rewards, None)
    return centered / (spread + eps)


def k3_kl(logp: Array, ref_logp: Array) -> Array:
    """The k3 estimator of KL(policy || reference) per token: exp(d) - d - 1 with d = ref - logp."""
    d = ref_logp - logp
    return jnp.exp(d) - d - 1.0


def clipped_objective(log_ratio: Array, advantages: Array, epsilon_low: float, epsilon_high: float):
    """-min(rho A, clip(rho) A) per token with rho = exp(log_ratio), and where the clip held.

    log_ratio [R,T]; advantages [R] (one per sequence) or [R,T]. Returns (per-token loss, rho,
    clipped_low, clipped_high); clipped_* are strict (at the bound the gradient is A rho)."""
    adv = advantages[:, None] if advantages.ndim == 1 else advantages
    ratio = jnp.exp(log_ratio)
    low, high = 1.0 - epsilon_low, 1.0 + epsilon_high
    clipped_low = (ratio < low) & (adv < 0)
    clipped_high = (ratio > high) & (adv > 0)
    # where min() takes the clipped term it is a constant: written as a select, so the gradient
    # at the bound itself is the unclipped one (jnp.minimum would split a tie half and half)
    bound = jnp.where(clipped_low, low, high)
    surrogate = jnp.where(clipped_low | clipped_high, bound * adv, ratio * adv)
    return -surrogate, ratio, clipped_low, clipped_high


def aggregate_token_loss(
    per_token_loss: Array,
    mask: Array,
    loss_type: str,
    *,
    max_completion_length: int | None = None,
    total_sequences: Array | int | None = None,
    total_tokens: Array | int | None = None,
) -> Array:
    """One loss from per-token losses [R,T] under mask [R,T] (see the module docstring).

    total_sequences / total_tokens: the whole optimizer batch's, when this is a micro-batch of it
    (default: this batch's rows / loss tokens). bnpo ignores them."""
    mask = mask.astype(bool)
    masked = jnp.where(mask, per_token_loss, 0.0)
    rows = per_token_loss.shape[0] if total_sequences is None else total_sequences
    if loss_type == "grpo":
        per_sequence = jnp.sum(masked, axis=-1) / jnp.maximum(jnp.sum(mask, axis=-1), 1)
        return jnp.sum(per_sequence) / rows
    if loss_type == "bnpo":
        return jnp.sum(masked) / jnp.maximum(jnp.sum(mask), 1)
    if loss_type == "dr_grpo":
        if max_completion_length is None:
            raise ValueError("loss_type 'dr_grpo' needs max_completion_length")
        return jnp.sum(masked) / (rows * max_completion_length)
    if loss_type == "dapo":
        tokens = jnp.sum(mask) if total_tokens is None else total_tokens
        return jnp.sum(masked) / jnp.maximum(tokens, 1)
    raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")


def grpo_loss(
    logp: Array,
    old_logp: Array | None,
    ref_logp: Array | None,
    advantages: Array,
    mask: Array,
    cfg: GRPOLossConfig,
    *,
    total_sequences: Array | int | None = None,
    total_tokens: Array | int | None = None,
) -> tuple[Array, dict[str, Array]]:
    """GRPO's loss for a batch of completions, and metric sums (see `average_grpo_metrics`).

    logp [R,T] float: the policy's log-probs of the completion tokens (differentiated);
    old_logp [R,T]: the sampling policy's (None: on-policy, stop_gradient(logp), ratio 1);
    ref_logp [R,T]: the frozen reference's (needed when cfg.beta > 0; given with beta 0 it is
    only measured); advantages [R] (rows in group order, `group_advantages(...).reshape(-1)`)
    or [R,T]; mask [R,T]: the completion's loss tokens.

    Metrics: 'loss' (the value returned), sums over loss tokens of 'ratio', 'clip_low',
    'clip_high', 'clip_region' (TRL's clip_ratio/*) and 'kl' (when ref_logp is given: the KL
    term as the loss has it, x rho under kl_bias_correction, as TRL logs it), and the counts
    'tokens' and 'sequences'."""
    if cfg.beta > 0 and ref_logp is None:
        raise ValueError(f"grpo.beta={cfg.beta} weights a KL to the reference: ref_logp is needed")
    mask = mask.astype(bool)
    if old_logp is None:
        old_logp = jax.lax.stop_gradient(logp)
    log_ratio = jnp.where(mask, logp - old_logp, 0.0)
    per_token, ratio, clipped_low, clipped_high = clipped_objective(
        log_ratio, advantages, cfg.epsilon_low, cfg.epsilon_high)
    kl = None
    if ref_logp is not None:
        ref_minus_policy = jnp.where(mask, ref_logp - logp, 0.0)
        kl = jnp.exp(ref_minus_policy) - ref_minus_policy - 1.0  # k3_kl on the masked difference
        if cfg.kl_bias_correction:
            kl = kl * ratio
        if cfg.beta > 0:
            per_token = per_token + cfg.beta * kl
    loss = aggregate_token_loss(
        per_token, mask, cfg.loss_type, max_completion_length=cfg.max_completion_length,
        total_sequences=total_sequences, total_tokens=total_tokens)

    def s(x):
        return jnp.sum(jnp.where(mask, x.astype(per_token.dtype), 0.0))

    metrics = {
        "loss": loss,
        "ratio": s(ratio),
        "clip_low": s(clipped_low),
        "clip_high": s(clipped_high),
        "clip_region": s(clipped_low | clipped_high),
        "tokens": jnp.sum(mask).astype(per_token.dtype),
        "sequences": jnp.asarray(mask.shape[0], per_token.dtype),
    }
    if kl is not None:
        metrics["kl"] = s(kl)
    return loss, metrics


# Metrics that are summed per loss token (average_grpo_metrics divides them by the token count).
TOKEN_METRICS = ("ratio", "clip_low", "clip_high", "clip_region", "kl")


def average_grpo_metrics(sums: dict[str, Array]) -> dict[str, Array]:
    """Per-token means (TRL's kl, clip_ratio/low_mean, high_mean, region_mean, and the mean ratio)
    from metric sums; 'loss', 'tokens' and 'sequences' stay as they are."""
    tokens = jnp.maximum(sums["tokens"], 1.0)
    return {k: (v / tokens if k in TOKEN_METRICS else v) for k, v in sums.items()}
