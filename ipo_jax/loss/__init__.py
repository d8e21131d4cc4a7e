"""Pure loss functions: chunked per-token log-probs and the IPO / DPO / SFT preference losses."""

from ipo_jax.loss.logprobs import gather_positions, token_logprobs
from ipo_jax.loss.preference import LossConfig, pair_logps, preference_loss

__all__ = ["LossConfig", "gather_positions", "pair_logps", "preference_loss", "token_logprobs"]
