"""The main job on the embedded default (`make demo`).

Until the full IPO demo world lands, the main job is the model round trip, for real, on
each family: random tiny decoder -> HF export -> transformers reload (logits and greedy
decoding compared) -> HF re-import (bitwise) -> orbax save/restore (exact); then a short
IPO run on the sample pairs, exported to HF and checked through transformers.
Override any field: ipo-jax demo --config configs/demo.py --config.seed=3
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.out = "runs/demo"  # the demo owns this directory and replaces its contents
    config.presets = ("tiny-llama", "tiny-qwen2", "tiny-qwen3")
    config.seed = 0
    # Random weights this wide give logits of order 1-5, so the comparisons are not between zeros.
    config.initializer_range = 0.2
    config.batch = 4
    config.length = 24
    config.new_tokens = 16
    config.logit_tolerance = 1e-4
    config.train_config = "configs/train_tiny_cpu.py"  # the short IPO run that follows the round trip
    return config
