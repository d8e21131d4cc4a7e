"""IPO on Qwen3-8B (float32 master weights, bfloat16 compute; one TPU v5p-8 host or one 8-GPU node; see paper_model_config).

ipo-jax train --config configs/train_qwen3_8b.py \
    --config.model.init=hf:/models/Qwen3-8B --config.data.pairs=pairs/qwen3_8b/pairs.jsonl
"""

from ipo_jax.train.config import paper_model_config


def get_config():
    return paper_model_config("Qwen3-8B", "qwen3_8b")
