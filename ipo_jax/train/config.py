"""The training config: every field with its default. Config files under configs/ start from
`base_config()` and change what their setting needs; the CLI applies --config.* overrides."""

from __future__ import annotations

import ml_collections


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()

    c.model = ml_collections.ConfigDict()
    c.model.init = ""  # 'preset:<name>' (random init), 'hf:<dir>' or 'orbax:<dir>'
    c.model.param_dtype = "float32"
    c.model.dtype = "float32"  # compute dtype of activations
    c.model.remat = "none"  # none | full | dots_saveable

    c.tokenizer = ""  # a tokenizer directory; '' = the HF init directory; 'tiny' = build from the pairs
    c.tiny_tokenizer_vocab = 512

    c.data = ml_collections.ConfigDict()
    c.data.pairs = ""  # pair JSONL written by `ipo-jax build-pairs` (see ipo_jax/data/pairs.py)
    c.data.layout = "prefix_shared"  # prefix_shared | duplicated (same numbers; shared saves the prefix compute)
    c.data.mask_from = "cue"  # cue: loss on the suffix only (IPO); reasoning: the whole completion
    c.data.max_length = 4096  # longer pairs lose suffix tail tokens (counted); see fit_to_length
    c.data.buckets = ()  # row lengths compiled; () = 64, 96, 128, 192, ... (2^k and 1.5 * 2^k) up to max_length
    c.data.pairs_per_micro = 8
    c.data.micro_batches = 1  # gradient accumulation: pairs per step = pairs_per_micro * micro_batches
    c.data.seed = 0
    c.data.shuffle = True

    c.loss = ml_collections.ConfigDict()
    c.loss.objective = "dpo"  # dpo | ipo_azar | sft
    c.loss.beta = 0.1
    c.loss.alpha = 0.2  # NLL weight on the chosen suffix (IPO: 0.2; plain DPO: 0)
    c.loss.label_smoothing = 0.0  # > 0: conservative DPO

    c.reference = ml_collections.ConfigDict()
    c.reference.mode = "precomputed"  # precomputed (cached beside the pairs) | on_the_fly
    c.reference.cache_dir = ""  # '' = the pair file's directory

    c.optim = ml_collections.ConfigDict()
    c.optim.learning_rate = 2e-6
    c.optim.warmup_steps = 10
    c.optim.end_lr_ratio = 0.1
    c.optim.weight_decay = 0.0
    c.optim.b1 = 0.9
    c.optim.b2 = 0.95
    c.optim.eps = 1e-8
    c.optim.clip_norm = 1.0

    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = 1
    c.mesh.fsdp = -1  # -1: all remaining devices
    c.mesh.tensor = 1

    c.train = ml_collections.ConfigDict()
    c.train.out = "runs/train"
    c.train.epochs = 2
    c.train.max_steps = 0  # > 0 overrides epochs
    c.train.seed = 0  # random init of preset models
    c.train.save_every = 50
    c.train.keep_checkpoints = 3
    c.train.logprob_chunk = 512  # sequence chunk of the vocabulary projection
    c.train.max_consecutive_skips = 10  # stop after this many non-finite steps in a row
    c.train.peak_flops_per_device = 0.0  # for MFU; 0 = look up the device kind (unknown on CPU)
    return c


def paper_model_config(hf_name: str, run_name: str) -> ml_collections.ConfigDict:
    """IPO on one of the paper's models: bf16, one TPU v5p-8 host or one 8-GPU node.

    Paper settings: partial DPO from the compliance cue, alpha 0.2; beta, learning rate and
    epochs are not published (ours: beta 0.1, lr 2e-6, 2 epochs).
    """
    c = base_config()
    c.model.init = f"hf:/models/{hf_name}"
    c.model.param_dtype = "bfloat16"
    c.model.dtype = "bfloat16"
    c.model.remat = "dots_saveable"
    c.data.pairs = f"pairs/{run_name}.jsonl"
    c.data.max_length = 8192
    c.data.pairs_per_micro = 8  # 8 rows over 8 devices (prefix-shared: one row per pair)
    c.data.micro_batches = 4  # 32 pairs per update
    c.train.out = f"runs/{run_name}"
    c.train.epochs = 2
    c.train.save_every = 25
    return c
