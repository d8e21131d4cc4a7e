"""Evaluate a model: harmful share of reasoning and answer, refusal, over-refusal, math accuracy.
The paper's eight benchmarks with its settings: configs/eval_paper.py.

ipo-jax eval --config configs/eval.py --config.model.init=hf:/models/my-model \\
    --config.benchmarks=strongreject=data/strongreject_dataset.csv,xstest=data/xstest_prompts.csv,math500=data/MATH-500 \\
    --config.train_prompts=pairs/train.jsonl --config.judge.backend=http --config.judge.base_url=http://localhost:8000/v1 \\
    --config.judge.model=judge
"""

from ipo_jax.eval.config import base_config


def get_config():
    c = base_config()
    c.out = "runs/eval"
    return c
