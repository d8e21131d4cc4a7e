"""GRPO with the safety judge as reward (the paper's RL baseline) on Qwen3-8B: one TPU v5p-8 host or one
8-GPU node (see ipo_jax.grpo.config.paper_model_config; ipo-jax plan checks the fit).

ipo-jax grpo --config configs/grpo_qwen3_8b.py \
    --config.model.init=hf:/models/Qwen3-8B --config.judge.base_url=http://<judge host>:8001/v1
"""

from ipo_jax.grpo.config import paper_model_config


def get_config():
    return paper_model_config("Qwen3-8B", "qwen3_8b")
