"""Named loss terms and the named presets that compose them, so a config reads as the paper.

A loss is a weighted sum of named terms over each pair's loss tokens, as TRL's
`loss_type=["sigmoid", "sft"]` with `loss_weights` names it:

  dpo         -(1 - eps) * log sigmoid(beta * h) - eps * log sigmoid(-beta * h)   (eps > 0: conservative DPO)
  ipo_azar    (h - 1 / (2 * beta))^2     (Azar et al.'s squared loss; not our IPO)
  nll_chosen  the NLL of the chosen side's loss tokens (mean per token or sum: loss.nll_norm)

with h = (logp_c - ref_c) - (logp_r - ref_r). Which tokens are loss tokens is the data's mask
(`data.mask_from`): 'cue' = the suffix after the compliance cue, 'reasoning' = the whole completion.

A preset names the terms, their weights and the mask together:

  ipo            dpo x 1 + nll_chosen x 0.2 after the cue        IPO, the paper's method
  dpo_after_cue  dpo x 1 after the cue                           the paper's ablation (partial DPO, no NLL)
  dpo_full       dpo x 1 over the whole completion               baseline: DPO on full-trajectory pairs
  sft            nll_chosen x 1 over the whole completion        baseline: SFT on the safe trajectories
  custom         the terms of loss.objective and loss.alpha, the mask of data.mask_from

Each preset is also written as an objective ('dpo' | 'ipo_azar' | 'sft') and an NLL weight
alpha, the loss's older spelling; `loss.objective` / `loss.alpha` given explicitly override the
preset's (a config that sets them keeps the numbers it had), and the run then says which
composition it trains (ipo_jax/loss/preference.py, `LossConfig.describe`).
"""

from __future__ import annotations

import dataclasses

OBJECTIVES = ("dpo", "ipo_azar", "sft")  # sft: no preference term, the NLL alone with weight 1
TERM_NAMES = ("dpo", "ipo_azar", "nll_chosen")
NLL_TERM = "nll_chosen"
CUSTOM = "custom"
# what the data's mask (data.mask_from) puts under the loss
MASK_MEANING = {"cue": "the tokens after the cue", "reasoning": "the whole completion"}


@dataclasses.dataclass(frozen=True)
class LossTerm:
    name: str  # one of TERM_NAMES
    weight: float

    def __str__(self) -> str:
        return f"{self.name} x {self.weight:g}"


def compose_terms(objective: str, alpha: float) -> tuple[LossTerm, ...]:
    """The terms an objective and an NLL weight stand for (a zero weight drops its term)."""
    if objective == "sft":  # the NLL alone, weight 1 (alpha does not apply)
        return (LossTerm(NLL_TERM, 1.0),)
    return (LossTerm(objective, 1.0),) + ((LossTerm(NLL_TERM, float(alpha)),) if alpha else ())


def terms_text(terms: tuple[LossTerm, ...]) -> str:
    return " + ".join(str(t) for t in terms)


@dataclasses.dataclass(frozen=True)
class LossPreset:
    objective: str  # the preference term, or 'sft' for the NLL alone
    alpha: float  # weight of the NLL on the chosen side
    mask_from: str  # the loss tokens: data.mask_from
    meaning: str  # what it is, in the paper's words

    @property
    def terms(self) -> tuple[LossTerm, ...]:
        return compose_terms(self.objective, self.alpha)

    def __str__(self) -> str:
        return f"{terms_text(self.terms)} on {MASK_MEANING[self.mask_from]} ({self.meaning})"


PRESETS = {
    "ipo": LossPreset("dpo", 0.2, "cue", "IPO, the paper's method"),
    "dpo_after_cue": LossPreset("dpo", 0.0, "cue", "the paper's ablation: partial DPO without the NLL"),
    "dpo_full": LossPreset("dpo", 0.0, "reasoning", "baseline: DPO on full-trajectory pairs"),
    "sft": LossPreset("sft", 1.0, "reasoning", "baseline: SFT on the safe trajectories, no reference model"),
}


def presets_text() -> str:
    """Every preset with what it expands to (the --help line of loss.preset)."""
    named = "; ".join(f"{name} = {preset}" for name, preset in PRESETS.items())
    return f"{named}; {CUSTOM} = the terms of loss.objective and loss.alpha on data.mask_from's tokens"


def preset_problem(value) -> str | None:
    """None for a known preset, else what is accepted (with what each preset expands to)."""
    if isinstance(value, str) and (value in PRESETS or value == CUSTOM):
        return None
    return "one of " + presets_text()


def matching_preset(terms: tuple[LossTerm, ...], mask_from: str | None) -> str | None:
    """The preset that is exactly these terms on this mask, if one is."""
    return next((name for name, p in PRESETS.items() if p.terms == terms and p.mask_from == mask_from), None)
