"""Preference losses over summed sequence log-probs: IPO (partial DPO + SFT) and the baselines.

The loss is a weighted sum of named terms (ipo_jax/loss/presets.py): `dpo`, `ipo_azar`,
`nll_chosen`, with log-probs summed over each side's loss tokens (TRL's convention):
  h      = (logp_c - ref_c) - (logp_r - ref_r)
  NLL    = -logp_c / n_c  (nll_norm 'mean': per chosen loss token, as RPO)
         = -logp_c        (nll_norm 'sum': the suffix's total)
The paper does not say how its SFT term is normalised; 'mean' keeps alpha comparable across
suffix lengths, 'sum' weights long suffixes more.

`loss.preset` names the composition: 'ipo' (the default) is dpo x 1 + nll_chosen x 0.2 on the
tokens after the compliance cue -- which tokens count is decided by the batch's masks
(data.mask_from), not here; `mask_problem` keeps a named preset and the data's mask agreeing.
The paper's baselines are other presets (dpo_after_cue, dpo_full, sft).

All functions are pure: arrays in, arrays out. Losses and metrics come back as *sums* over
valid pairs with the pair count, so micro-batches add up exactly to the full batch.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from ipo_jax.loss.presets import (
    CUSTOM, MASK_MEANING, NLL_TERM, OBJECTIVES, PRESETS, LossTerm, compose_terms, matching_preset, preset_problem,
    terms_text,
)

Array = jax.Array
NLL_NORMS = ("mean", "sum")


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


# The range of each loss setting: None when fine, else what is expected. LossConfig checks its
# fields with these and ipo_jax/validation.py reports them, so each range is written once.
FIELD_CHECKS = {
    "preset": preset_problem,
    "objective": lambda v: None if v is None or v in OBJECTIVES else (
        "one of " + ", ".join(map(repr, OBJECTIVES)) + ", or None (the preset's)"),
    "beta": lambda v: None if _finite(v) and v > 0 else "a finite number > 0",
    "alpha": lambda v: None if v is None or (_finite(v) and v >= 0) else "a finite number >= 0, or None (the preset's)",
    "label_smoothing": lambda v: None if _finite(v) and 0 <= v < 0.5 else "a finite number in [0, 0.5)",
    "nll_norm": lambda v: None if v in NLL_NORMS else "one of " + ", ".join(map(repr, NLL_NORMS)),
}


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """The loss of a training run. `preset` names it; `objective` and `alpha` left None take the
    preset's values, given they override them (their older spelling: objective 'dpo' + alpha 0.2
    on data.mask_from 'cue' is the preset 'ipo'). `terms` is what the step computes."""

    preset: str = "ipo"  # the loss by name: its terms, their weights and its loss tokens (data.mask_from)
    objective: str | None = None  # overrides the preset's preference term (sft: none, the NLL alone)
    beta: float = 0.1  # DPO temperature
    alpha: float | None = None  # weight of the NLL on the chosen suffix, overriding the preset's (paper: 0.2)
    label_smoothing: float = 0.0  # conservative DPO when > 0
    nll_norm: str = "mean"  # NLL on the chosen suffix: mean over its tokens (RPO) or their sum

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            expected = FIELD_CHECKS[field.name](value)
            if expected:
                raise ValueError(f"loss.{field.name} must be {expected}, got {value!r}")
        if self.preset == CUSTOM and (self.objective is None or (self.alpha is None and self.objective != "sft")):
            raise ValueError(
                f"loss.preset 'custom' composes the loss from loss.objective and loss.alpha; got objective "
                f"{self.objective!r}, alpha {self.alpha!r}: set both (alpha 0 for no NLL), or name a preset"
            )

    @property
    def terms(self) -> tuple[LossTerm, ...]:
        """The named terms and weights the step sums (see ipo_jax/loss/presets.py)."""
        preset = PRESETS.get(self.preset)
        objective = self.objective if self.objective is not None else preset.objective
        alpha = self.alpha if self.alpha is not None else preset.alpha
        return compose_terms(objective, alpha)

    @property
    def is_preset_whole(self) -> bool:
        """A named preset whose terms no explicit objective / alpha changed: its mask applies."""
        return self.preset in PRESETS and self.terms == PRESETS[self.preset].terms

    @property
    def needs_reference(self) -> bool:
        return any(term.name != NLL_TERM for term in self.terms)

    @property
    def metric_keys(self) -> tuple[str, ...]:
        """The step's metrics for this loss: the common ones, then loss/<term> per term."""
        return METRIC_KEYS + tuple(f"loss/{term.name}" for term in self.terms)

    def mask_problem(self, mask_from: str) -> str | None:
        """None when the data's mask is the preset's (or the loss is composed by hand), else why not."""
        if not self.is_preset_whole or PRESETS[self.preset].mask_from == mask_from:
            return None
        want = PRESETS[self.preset].mask_from
        return (f"loss.preset {self.preset!r} is {terms_text(self.terms)} on {MASK_MEANING[want]}, so it needs "
                f"data.mask_from={want!r} (got {mask_from!r}); set data.mask_from={want}, or compose another "
                "loss with loss.objective / loss.alpha (loss.preset=custom)")

    def describe(self, mask_from: str | None = None) -> str:
        """What runs, e.g. "dpo x 1 + nll_chosen x 0.2 on the tokens after the cue (preset ipo; beta 0.1, NLL mean per token)"."""
        text = terms_text(self.terms) + (f" on {MASK_MEANING[mask_from]}" if mask_from in MASK_MEANING else "")
        names = {t.name for t in self.terms}
        parameters = "; " + ", ".join(
            ([f"beta {self.beta:g}"] if names - {NLL_TERM} else [])
            + ([f"label_smoothing {self.label_smoothing:g}"] if "dpo" in names and self.label_smoothing else [])
            + ([f"NLL {'mean per token' if self.nll_norm == 'mean' else 'summed'}"] if NLL_TERM in names else []))
        if self.is_preset_whole:
            return f"{text} (preset {self.preset}{parameters})"
        match = matching_preset(self.terms, mask_from) if mask_from else None
        given = ", ".join(f"loss.{k}={getattr(self, k)!r}" for k in ("objective", "alpha") if getattr(self, k) is not None)
        source = "loss.preset custom" if self.preset == CUSTOM else f"loss.preset {self.preset!r} with {given}"
        return f"{text} ({source}{f', the same as preset {match}' if match else ''}{parameters})"


def cross_field_problem(loss_settings, mask_from) -> str | None:
    """The loss's rules across fields, for ipo_jax/validation.py (which checks each field with
    FIELD_CHECKS): 'custom' names its objective and alpha, and a named preset taken whole trains
    on its own mask (data.mask_from). Settings a field check refuses are left to that check."""
    settings = dict(loss_settings)
    if any(name not in FIELD_CHECKS or FIELD_CHECKS[name](value) for name, value in settings.items()):
        return None
    try:
        cfg = LossConfig(**settings)
    except ValueError as e:
        return str(e)
    return cfg.mask_problem(mask_from)


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
    """Sum of per-pair losses over valid pairs, and metric sums (divide by metrics['pairs']).

    The loss is the sum of cfg.terms, each weight x its per-pair value; metrics['loss/<term>']
    is each term's weighted share (they add up to metrics['loss']), 'preference_loss' and 'nll'
    the unweighted preference term (0 without one) and NLL."""
    valid = valid.astype(jnp.float32)
    beta = cfg.beta
    chosen_reward = beta * (logp_c - ref_c)
    rejected_reward = beta * (logp_r - ref_r)
    h = (logp_c - ref_c) - (logp_r - ref_r)
    nll = -logp_c / jnp.maximum(n_c, 1.0) if cfg.nll_norm == "mean" else -logp_c
    values = {NLL_TERM: nll}
    for term in cfg.terms:
        if term.name == "dpo":
            eps = cfg.label_smoothing
            values["dpo"] = -(1 - eps) * jax.nn.log_sigmoid(beta * h) - eps * jax.nn.log_sigmoid(-beta * h)
        elif term.name == "ipo_azar":
            values["ipo_azar"] = (h - 1.0 / (2.0 * beta)) ** 2
    # a weight of 1 multiplies nothing, so 'ipo' is the expression pref + 0.2 * nll it always was
    shares = {t.name: values[t.name] if t.weight == 1.0 else t.weight * values[t.name] for t in cfg.terms}
    loss = None
    for share in shares.values():
        loss = share if loss is None else loss + share
    preference = next((values[t.name] for t in cfg.terms if t.name != NLL_TERM), jnp.zeros_like(h))

    def s(x):
        return jnp.sum(jnp.where(valid > 0, x, 0.0))

    metrics = {
        "loss": s(loss),
        "preference_loss": s(preference),
        "nll": s(nll),
        "reward_chosen": s(chosen_reward),
        "reward_rejected": s(rejected_reward),
        "reward_accuracy": s((chosen_reward > rejected_reward).astype(jnp.float32)),
        "reward_margin": s(chosen_reward - rejected_reward),
        "logp_chosen": s(logp_c),
        "logp_rejected": s(logp_r),
        "loss_tokens": s(n_c + n_r),
        "pairs": jnp.sum(valid),
        **{f"loss/{name}": s(share) for name, share in shares.items()},
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
