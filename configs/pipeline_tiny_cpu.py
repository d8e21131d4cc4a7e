"""Build pairs with the tiny CPU policy of `configs/train_tiny_cpu.py` (run that first).

ipo-jax build-pairs --config configs/pipeline_tiny_cpu.py --config.prompts=prompts.jsonl
"""

from ipo_jax.pipeline.config import base_config


def get_config():
    c = base_config()
    c.model.init = "orbax:runs/train_tiny/final"
    c.tokenizer = "runs/train_tiny/tokenizer"
    c.prompts = "configs/sample_prompts.jsonl"
    c.out = "runs/pairs_tiny"
    c.sampling.max_new_tokens = 64
    c.sampler.max_prompt_length = 512
    c.intervention.chunk_prompts = 4
    return c
