"""The GRPO toy task (tests/test_grpo_stage.py): a tiny random model rewarded 1 when its 8-token
completion holds one of 4 token ids (a rule, no judge model). From ~0.1 at random the mean reward
rises past 0.5 within 30 steps on CPU.

ipo-jax grpo --config configs/grpo_toy_rule.py
"""

from ipo_jax.grpo.config import base_config

TOY_PROMPTS = "configs/sample_prompts.jsonl"


def get_config():
    c = base_config()
    c.model.init = "preset:tiny-qwen3"
    c.tokenizer = "tiny"
    c.prompts = TOY_PROMPTS
    c.reward.kind = "rule"
    c.reward.rule_token_ids = (100, 101, 102, 103)
    c.sampling.max_new_tokens = 8
    c.sampler.max_prompt_length = 64
    c.sampler.batch_size = 32
    c.grpo.num_generations = 8
    c.grpo.prompts_per_step = 4
    c.grpo.micro_batches = 2
    c.grpo.logprob_chunk = 64
    c.grpo.entropy = True
    c.optim.learning_rate = 3e-3
    c.optim.warmup_steps = 0
    c.train.out = "runs/grpo_toy"
    c.train.max_steps = 30
    c.train.save_every = 10
    return c
