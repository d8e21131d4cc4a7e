"""Supervised fine-tuning on chat datasets (the `sft` stage): STAR-1 / RealSafe-R1 style safety
reasoning data, loss on the assistant tokens only, packing, on the training machinery of IPO.
config.py: settings; records.py: reading; tokens.py: assistant masks; batches.py: rows; run.py: the run."""

from ipo_jax.sft.config import base_config, field_help
from ipo_jax.sft.run import run_sft

__all__ = ["base_config", "field_help", "run_sft"]
