"""GRPO on a tiny random Qwen3-shaped model, CPU, on the shipped sample prompts with the demo
world's pattern judge as reward (a smoke run: a random model writes no </think>, so the judge
sees empty answers -- errors, reward 0 -- and mostly learns nothing; see configs/grpo_toy_rule.py
for a task a tiny model learns).

ipo-jax grpo --config configs/grpo_tiny_cpu.py
"""

from ipo_jax.grpo.config import base_config


def get_config():
    c = base_config()
    c.model.init = "preset:tiny-qwen3"
    c.tokenizer = "tiny"  # built from the prompts
    c.prompts = "configs/sample_prompts.jsonl"  # 10 harmful (demo-world marker) + 2 benign look-alikes
    c.judge.backend = "pattern"
    c.sampling.max_new_tokens = 32
    c.sampler.max_prompt_length = 64
    c.sampler.batch_size = 32
    c.grpo.num_generations = 8
    c.grpo.prompts_per_step = 4  # 32 rows per update: splits evenly over 1, 2, 4 or 8 devices
    c.grpo.micro_batches = 2
    c.grpo.beta = 0.04
    c.grpo.logprob_chunk = 64
    c.optim.learning_rate = 1e-3
    c.optim.warmup_steps = 0
    c.train.out = "runs/grpo_tiny"
    c.train.max_steps = 10
    c.train.save_every = 5
    return c
