"""Build IPO's training pairs for DeepSeek-R1-Distill-Llama-8B with the paper's settings (ipo_jax/pipeline/config.py,
paper_pipeline_config): STAR-1's harmful prompts, 6 triggers, 3 rounds, at most 14 generations per
prompt, temperature 0.6 / top-p 0.95, an OpenAI-compatible judge.

ipo-jax build-pairs --config configs/pipeline_r1_distill_llama_8b.py \
    --config.model.init=hf:/models/DeepSeek-R1-Distill-Llama-8B --config.prompts=data/STAR-1/train.parquet \
    --config.judge.base_url=http://localhost:8000/v1 --config.judge.model=<served judge>

Over-refusal pairs (the second stage): the same command with
    --config.prompts=data/STAR-benign-915 --config.prompts_kind=benign --config.out=pairs/r1_distill_llama_8b_overrefusal
The pairs land in <out>/pairs.jsonl (train: --config.data.pairs=pairs/r1_distill_llama_8b/pairs.jsonl).
"""

from ipo_jax.pipeline.config import paper_pipeline_config


def get_config():
    return paper_pipeline_config("DeepSeek-R1-Distill-Llama-8B", "r1_distill_llama_8b")
