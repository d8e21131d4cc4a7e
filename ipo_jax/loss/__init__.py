"""Pure loss functions: chunked per-token log-probs, the named loss terms and presets (IPO, DPO, SFT), and GRPO's loss."""

from ipo_jax.loss.grpo import GRPOLossConfig, average_grpo_metrics, group_advantages, grpo_loss
from ipo_jax.loss.logprobs import gather_positions, token_logprobs
from ipo_jax.loss.preference import LossConfig, pair_logps, preference_loss
from ipo_jax.loss.presets import PRESETS, LossTerm

__all__ = [
    "PRESETS", "GRPOLossConfig", "LossConfig", "LossTerm", "average_grpo_metrics", "gather_positions",
    "group_advantages", "grpo_loss", "pair_logps", "preference_loss", "token_logprobs",
]
