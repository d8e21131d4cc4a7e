"""IPO on a tiny random Qwen3-shaped model, CPU, from the shipped sample pairs (a smoke run).

ipo-jax train --config configs/train_tiny_cpu.py [--config.data.pairs=my_pairs.jsonl]
"""

from ipo_jax.train.config import base_config


def get_config():
    c = base_config()
    c.model.init = "preset:tiny-qwen3"
    c.tokenizer = "tiny"
    c.data.pairs = "configs/sample_pairs.jsonl"
    c.loss.preset = "ipo"  # as the paper: DPO on the tokens after the cue + 0.2 x NLL of the chosen suffix
    c.data.max_length = 256
    c.data.buckets = (128, 256)  # the sample pairs all fit 128: one compiled shape
    c.data.pairs_per_micro = 8  # 8 rows: splits evenly over 1, 2, 4 or 8 devices
    c.optim.learning_rate = 1e-3
    c.optim.warmup_steps = 2
    c.train.out = "runs/train_tiny"
    c.train.epochs = 0
    c.train.max_steps = 30
    c.train.save_every = 10
    c.train.logprob_chunk = 64
    return c
