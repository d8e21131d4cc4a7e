"""Stage 2 of IPO on DeepSeek-R1-Distill-Llama-8B: stage 1's result trained further on its safety pairs mixed with the
over-refusal pairs (see paper_stage2_config). Run after configs/train_r1_distill_llama_8b.py.

ipo-jax train --config configs/train_r1_distill_llama_8b_stage2.py \
    --config.data.pairs=pairs/r1_distill_llama_8b/pairs.jsonl,pairs/r1_distill_llama_8b_overrefusal/pairs.jsonl:1.0
"""

from ipo_jax.train.config import paper_stage2_config


def get_config():
    return paper_stage2_config("DeepSeek-R1-Distill-Llama-8B", "r1_distill_llama_8b")
