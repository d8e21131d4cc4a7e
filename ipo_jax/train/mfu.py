"""FLOPs per token of the IPO step and model FLOPs utilisation (MFU).

Model FLOPs only (remat recomputation is not useful work): a forward pass costs
2 * (non-embedding params) per token for the matmuls, 2 * D * V for the vocabulary
projection and 4 * L * (N * H) * T_ctx for attention scores and values; a backward pass
costs twice the forward. The frozen reference adds one forward when computed on the fly.
"""

from __future__ import annotations

import jax

from ipo_jax.models.config import ModelConfig

# Dense bf16 peak FLOP/s per device, by substring of jax's device_kind (lower-cased).
PEAK_FLOPS = {
    "h200": 989e12,
    "h100": 989e12,
    "a100": 312e12,
    "v6 lite": 918e12,
    "v6e": 918e12,
    "v5p": 459e12,
    "v5 lite": 197e12,
    "v5e": 197e12,
    "v4": 275e12,
}


def forward_flops_per_token(cfg: ModelConfig, context: int) -> float:
    embed_params = cfg.vocab_size * cfg.hidden_size * (1 if cfg.tie_word_embeddings else 2)
    matmuls = 2 * (cfg.num_params() - embed_params)
    vocab = 2 * cfg.hidden_size * cfg.vocab_size
    attention = 4 * cfg.num_layers * cfg.num_heads * cfg.head_dim * context
    return matmuls + vocab + attention


def train_flops_per_token(cfg: ModelConfig, context: int, reference_on_the_fly: bool) -> float:
    forward = forward_flops_per_token(cfg, context)
    return 3 * forward + (forward if reference_on_the_fly else 0.0)


def peak_flops_per_device(override: float = 0.0) -> float | None:
    """Configured peak, or the table's entry for this device kind; None when unknown (CPU)."""
    if override > 0:
        return override
    kind = jax.devices()[0].device_kind.lower()
    for key, value in PEAK_FLOPS.items():
        if key in kind:
            return value
    return None
