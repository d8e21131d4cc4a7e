"""SFT of one of the paper's models on STAR-1 (UCSC-VLAA/STAR-1: question / response, 1k safe reasoning trajectories);
float32 master weights, bfloat16 compute, one TPU v5p-8 host or one 8-GPU node (ipo_jax/sft/config.py paper_sft_config).
The model is chosen by the config string: r1_distill_qwen_7b (default), r1_distill_llama_8b or qwen3_8b.

ipo-jax sft --config configs/sft_paper_star1.py:r1_distill_llama_8b \
    --config.model.init=hf:/models/DeepSeek-R1-Distill-Llama-8B --config.data.dataset=data/STAR-1
(data/STAR-1: `datasets.load_dataset('UCSC-VLAA/STAR-1').save_to_disk('data/STAR-1')` where online; a hub id works online too)
"""

from ipo_jax.sft.config import paper_sft_config


def get_config(run: str = "r1_distill_qwen_7b"):
    return paper_sft_config(run or "r1_distill_qwen_7b", "star1")
