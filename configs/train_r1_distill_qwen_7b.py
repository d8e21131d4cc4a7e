"""IPO on DeepSeek-R1-Distill-Qwen-7B (float32 master weights, bfloat16 compute; one TPU v5p-8 host or one 8-GPU node; see paper_model_config).

ipo-jax train --config configs/train_r1_distill_qwen_7b.py \
    --config.model.init=hf:/models/DeepSeek-R1-Distill-Qwen-7B --config.data.pairs=pairs/r1_distill_qwen_7b/pairs.jsonl
"""

from ipo_jax.train.config import paper_model_config


def get_config():
    return paper_model_config("DeepSeek-R1-Distill-Qwen-7B", "r1_distill_qwen_7b")
