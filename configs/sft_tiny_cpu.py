"""SFT on a tiny random Qwen3-shaped model, CPU, from the shipped STAR-1-format placeholder data (a smoke run).

ipo-jax sft --config configs/sft_tiny_cpu.py [--config.data.dataset=my_data.jsonl]
"""

from ipo_jax.sft.config import base_config


def get_config():
    c = base_config()
    c.model.init = "preset:tiny-qwen3"
    c.tokenizer = "tiny"
    c.data.dataset = "configs/sft_sample_star1.jsonl"  # STAR-1's layout: id, question, response, category, source, score
    c.data.max_length = 256
    c.data.buckets = (128, 256)
    c.data.rows_per_micro = 8  # 8 rows: splits evenly over 1, 2, 4 or 8 devices
    c.optim.learning_rate = 1e-3
    c.optim.warmup_steps = 2
    c.train.out = "runs/sft_tiny"
    c.train.epochs = 0
    c.train.max_steps = 20
    c.train.save_every = 10
    c.train.logprob_chunk = 64
    return c
