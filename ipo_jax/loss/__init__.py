"""Pure loss functions: chunked per-token log-probs, the named loss terms and presets (IPO, DPO, SFT)."""

from ipo_jax.loss.logprobs import gather_positions, token_logprobs
from ipo_jax.loss.preference import LossConfig, pair_logps, preference_loss
from ipo_jax.loss.presets import PRESETS, LossTerm

__all__ = ["PRESETS", "LossConfig", "LossTerm", "gather_positions", "pair_logps", "preference_loss", "token_logprobs"]
