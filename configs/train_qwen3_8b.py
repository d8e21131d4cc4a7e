"""IPO on Qwen3-8B: bf16, one TPU v5p-8 host or one 8-GPU node (fsdp over all devices).

Paper settings: partial DPO from the compliance cue, alpha 0.2; beta, learning rate and
epochs are not published (ours: beta 0.1, lr 2e-6, 2 epochs).
ipo-jax train --config configs/train_qwen3_8b.py \
    --config.model.init=hf:/models/Qwen3-8B --config.data.pairs=pairs/qwen3_8b.jsonl
"""

from ipo_jax.train.config import base_config


def get_config():
    c = base_config()
    c.model.init = "hf:/models/Qwen3-8B"
    c.model.param_dtype = "bfloat16"
    c.model.dtype = "bfloat16"
    c.model.remat = "dots_saveable"
    c.data.pairs = "pairs/qwen3_8b.jsonl"
    c.data.max_length = 8192
    c.data.pairs_per_micro = 8  # 8 rows over 8 devices (prefix-shared: one row per pair)
    c.data.micro_batches = 4  # 32 pairs per update
    c.optim.learning_rate = 2e-6
    c.train.out = "runs/qwen3_8b"
    c.train.epochs = 2
    c.train.save_every = 25
    return c
