"""GRPO with the safety judge as reward (the paper's RL baseline) on DeepSeek-R1-Distill-Qwen-7B: one TPU v5p-8 host or one
8-GPU node (see ipo_jax.grpo.config.paper_model_config; ipo-jax plan checks the fit).

ipo-jax grpo --config configs/grpo_r1_distill_qwen_7b.py \
    --config.model.init=hf:/models/DeepSeek-R1-Distill-Qwen-7B --config.judge.base_url=http://<judge host>:8001/v1
"""

from ipo_jax.grpo.config import paper_model_config


def get_config():
    return paper_model_config("DeepSeek-R1-Distill-Qwen-7B", "r1_distill_qwen_7b")
