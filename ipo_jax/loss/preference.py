"""Preference losses over summed sequence log-probs: IPO (partial DPO + SFT) and the baselines.

With log-probs summed over each side's loss tokens (TRL's convention):
  h      = (logp_c - ref_c) - (logp_r - ref_r)
  dpo    : -(1 - eps) * log sigmoid(beta * h) - eps * log sigmoid(-beta * h)   (eps > 0: conservative DPO)
  ipo_azar: (h - 1 / (2 * beta))^2            (Azar et al.'s squared loss; not our IPO)
  sft    : 0                                   (only the NLL term)
  loss   = preference + alpha * NLL,  NLL = -logp_c / n_c  (nll_norm 'mean': per chosen loss token, as RPO)
                                      NLL = -logp_c        (nll_norm 'sum': the suffix's total)
For sft the NLL weight is 1 (alpha is ignored). The paper does not say how its SFT term is
normalised; 'mean' keeps alpha comparable across suffix lengths, 'sum' weights long suffixes more.

Our IPO is objective 'dpo' with alpha 0.2 and the loss mask starting at the compliance cue
(positions >= h); which tokens count is decided by the batch's masks, not here. The paper's
baselines are the same function with other settings (see configs/).

All functions are pure: arrays in, arrays out. Losses and metrics come back as *sums* over
valid pairs with the pair count, so micro-batches add up exactly to the full batch.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

Array = jax.Array
OBJECTIVES = ("dpo", "ipo_azar", "sft")
NLL_NORMS = ("mean", "sum")


@dataclasses.dataclass(frozen=True)
class LossConfig:
    objective: str = "dpo"  # dpo (IPO's partial DPO with alpha > 0) | ipo_azar (Azar et al.'s squared loss) | sft
    beta: float = 0.1  # DPO temperature
    alpha: float = 0.2  # weight of the NLL on the chosen suffix (paper: 0.2)
    label_smoothing: float = 0.0  # conservative DPO when > 0
    nll_norm: str = "mean"  # NLL on the chosen suffix: mean over its tokens (RPO) or their sum

    def __post_init__(self):
        if self.objective not in OBJECTIVES:
            raise ValueError(f"loss.objective must be one of {OBJECTIVES}, got {self.objective!r}")
        if self.nll_norm not in NLL_NORMS:
            raise ValueError(f"loss.nll_norm must be one of {NLL_NORMS}, got {self.nll_norm!r}")
        if not (self.beta > 0 and math.isfinite(self.beta)):
            raise ValueError(f"loss.beta must be a finite number > 0, got {self.beta}")
        if not (self.alpha >= 0 and math.isfinite(self.alpha)):
            raise ValueError(f"loss.alpha must be a finite number >= 0, got {self.alpha}")
        if not 0.0 <= self.label_smoothing < 0.5:
            raise ValueError(f"loss.label_smoothing must be in [0, 0.5), got {self.label_smoothing}")

    @property
    def needs_reference(self) -> bool:
        return self.objective != "sft"


def pair_logps(token_logps: Array, pair_ids: Array, chosen_mask: Array, rejected_mask: Array, num_pairs: int):
    """Sum token log-probs into per-pair sequence log-probs.

    token_logps [R,S] float32; pair_ids [R,S] int in [0, num_pairs) (any value for masked slots);
    chosen_mask / rejected_mask [R,S] bool: which slots count for each side of their pair.
    Returns logp_chosen, logp_rejected, n_chosen, n_rejected, each [num_pairs].
    """
    ids = jnp.clip(pair_ids, 0, num_pairs - 1).reshape(-1)
    lp = token_logps.reshape(-1)

    def total(values, mask):
        return jax.ops.segment_sum(jnp.where(mask.reshape(-1), values, 0.0), ids, num_segments=num_pairs)

    ones = jnp.ones_like(lp)
    return total(lp, chosen_mask), total(lp, rejected_mask), total(ones, chosen_mask), total(ones, rejected_mask)


def preference_loss(
    logp_c: Array,
    logp_r: Array,
    ref_c: Array,
    ref_r: Array,
    n_c: Array,
    n_r: Array,
    valid: Array,
    cfg: LossConfig,
) -> tuple[Array, dict[str, Array]]:
    """Sum of per-pair losses over valid pairs, and metric sums (divide by metrics['pairs'])."""
    valid = valid.astype(jnp.float32)
    beta = cfg.beta
    chosen_reward = beta * (logp_c - ref_c)
    rejected_reward = beta * (logp_r - ref_r)
    h = (logp_c - ref_c) - (logp_r - ref_r)
    if cfg.objective == "dpo":
        eps = cfg.label_smoothing
        pref = -(1 - eps) * jax.nn.log_sigmoid(beta * h) - eps * jax.nn.log_sigmoid(-beta * h)
    elif cfg.objective == "ipo_azar":
        pref = (h - 1.0 / (2.0 * beta)) ** 2
    else:
        pref = jnp.zeros_like(h)
    nll = -logp_c / jnp.maximum(n_c, 1.0) if cfg.nll_norm == "mean" else -logp_c
    nll_weight = 1.0 if cfg.objective == "sft" else cfg.alpha
    loss = pref + nll_weight * nll

    def s(x):
        return jnp.sum(jnp.where(valid > 0, x, 0.0))

    metrics = {
        "loss": s(loss),
        "preference_loss": s(pref),
        "nll": s(nll),
        "reward_chosen": s(chosen_reward),
        "reward_rejected": s(rejected_reward),
        "reward_accuracy": s((chosen_reward > rejected_reward).astype(jnp.float32)),
        "reward_margin": s(chosen_reward - rejected_reward),
        "logp_chosen": s(logp_c),
        "logp_rejected": s(logp_r),
        "loss_tokens": s(n_c + n_r),
        "pairs": jnp.sum(valid),
    }
    return metrics["loss"], metrics


METRIC_KEYS = (
    "loss",
    "preference_loss",
    "nll",
    "reward_chosen",
    "reward_rejected",
    "reward_accuracy",
    "reward_margin",
    "logp_chosen",
    "logp_rejected",
    "loss_tokens",
    "pairs",
)
# Metrics that are totals, not per-pair means.
TOTAL_METRICS = ("loss_tokens", "pairs")


def average_metrics(sums: dict[str, Array]) -> dict[str, Array]:
    """Per-pair means from metric sums (totals stay totals)."""
    pairs = jnp.maximum(sums["pairs"], 1.0)
    return {k: (v if k in TOTAL_METRICS else v / pairs) for k, v in sums.items()}
