"""SFT of one of the paper's models on RealSafe-R1-format data (prompt / response records, 15k safety-aware R1 trajectories);
float32 master weights, bfloat16 compute, one TPU v5p-8 host or one 8-GPU node (ipo_jax/sft/config.py paper_sft_config).
The model is chosen by the config string: r1_distill_qwen_7b (default), r1_distill_llama_8b or qwen3_8b.

ipo-jax sft --config configs/sft_paper_realsafe.py:r1_distill_llama_8b \
    --config.model.init=hf:/models/DeepSeek-R1-Distill-Llama-8B --config.data.dataset=data/RealSafe-R1/train.jsonl
(any .jsonl / .parquet / save_to_disk directory with prompt and response columns; data.fields maps other names)
"""

from ipo_jax.sft.config import paper_sft_config


def get_config(run: str = "r1_distill_qwen_7b"):
    return paper_sft_config(run or "r1_distill_qwen_7b", "realsafe")
