"""The training config: every field with its default. Config files under configs/ start from
`base_config()` and change what their setting needs; the CLI applies --config.* overrides.

The `loss` and `optim` sections are built from the dataclasses that the step consumes
(`LossConfig`, `OptimConfig`), so each default is written once; ml_collections is the override
layer on top.
"""

from __future__ import annotations

import dataclasses
import typing

import ml_collections
from ml_collections import config_dict

from ipo_jax.loss import LossConfig
from ipo_jax.train.step import OptimConfig


def _section(dataclass_type, exclude=()) -> ml_collections.ConfigDict:
    """The dataclass's fields and defaults; a None default (`alpha: float | None = None`) becomes a
    typed placeholder, so `--config.loss.alpha=0.5` still parses as a float."""
    hints = typing.get_type_hints(dataclass_type)

    def default(field):
        if field.default is not None:
            return field.default
        kinds = [t for t in typing.get_args(hints[field.name]) if t is not type(None)]
        return config_dict.placeholder(kinds[0])

    return ml_collections.ConfigDict(
        {f.name: default(f) for f in dataclasses.fields(dataclass_type) if f.name not in exclude}
    )


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()

    c.model = ml_collections.ConfigDict()
    c.model.init = ""  # 'preset:<name>' (random init), 'hf:<dir>' or 'orbax:<dir>'
    c.model.param_dtype = "float32"  # master weights (checkpoints hold these); keep float32 to train
    c.model.dtype = "float32"  # compute dtype of activations and matmuls (bfloat16 on accelerators)
    c.model.remat = "none"  # none | full | dots_saveable
    c.model.attention = "dense"  # dense | blockwise (flash-style, nothing [T,S]-sized kept) | cudnn

    c.tokenizer = ""  # a tokenizer directory; '' = the HF init directory; 'tiny' = build from the pairs
    c.tiny_tokenizer_vocab = 512

    c.data = ml_collections.ConfigDict()
    # pair JSONL written by `ipo-jax build-pairs` (see ipo_jax/data/pairs.py), or several files with mixing
    # weights: "a.jsonl,b.jsonl:0.5" (weight 1 by default; w puts round(w * n) of a file's n pairs in every
    # epoch: w < 1 a subsample drawn once from data.seed, w > 1 repeats); ids must be unique across files
    c.data.pairs = ""
    c.data.layout = "prefix_shared"  # prefix_shared | duplicated (same numbers; shared saves the prefix compute)
    # cue: loss on the suffix only (IPO); reasoning: the whole completion. A named loss.preset says which it needs
    c.data.mask_from = "cue"
    # a pair (prompt + prefix + chosen + rejected tokens, whatever the layout) longer than this is dropped,
    # never cut; dropped pairs are listed in train.out/skipped_pairs.jsonl (ipo_jax/data/pairs.py fit_to_length)
    c.data.max_length = 4096
    c.data.max_dropped_share = 0.05  # more than this share of the pairs dropped for length: train refuses (exit 2)
    c.data.buckets = ()  # row lengths compiled; () = 64, 96, 128, 192, ... (2^k and 1.5 * 2^k) up to max_length
    c.data.pairs_per_micro = 8  # pairs per micro-batch (one row each in prefix_shared); with packing: rows
    c.data.micro_batches = 1  # gradient accumulation: pairs per step = pairs_per_micro * micro_batches
    # packing (prefix_shared): several pairs per row of max_length tokens, each its own segment (same
    # log-probs); a micro-batch is pairs_per_micro such rows, so the number of pairs per step varies
    c.data.packing = False
    c.data.seed = 0
    c.data.shuffle = True

    # the loss by name (loss.preset, default 'ipo'); the fields and their help: LossConfig (ipo_jax/loss/preference.py),
    # the presets and what each expands to: ipo_jax/loss/presets.py (and `ipo-jax train --help`)
    c.loss = _section(LossConfig)

    c.reference = ml_collections.ConfigDict()
    c.reference.mode = "precomputed"  # precomputed (cached beside the pairs) | on_the_fly
    c.reference.init = ""  # the frozen reference model; '' = model.init (stage 2: the base model or stage 1's final/)
    c.reference.cache_dir = ""  # '' = the pair file's directory

    # AdamW on the master weights; the fields and their help: OptimConfig (ipo_jax/train/step.py)
    c.optim = _section(OptimConfig, exclude=("total_steps",))

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
    """IPO on one of the paper's models: one TPU v5p-8 host or one 8-GPU node.

    Mixed precision: float32 master weights and Adam moments (an update at lr 2e-6 is below
    bfloat16's resolution for most weights, so bf16 weights would barely move), bfloat16 compute.
    Paper settings: loss.preset 'ipo' (partial DPO from the compliance cue + 0.2 x NLL); beta, learning rate and
    epochs are not published (ours: beta 0.1, lr 2e-6, 2 epochs). `ipo-jax plan` checks the fit.
    """
    c = base_config()
    c.model.init = f"hf:/models/{hf_name}"
    c.model.param_dtype = "float32"
    c.model.dtype = "bfloat16"
    # remat full: on a v5p-8 host (4 chips) the 8 rows of a micro-batch are 2 per chip; at 16384
    # tokens full plans at 64-71 GiB of 95 on v5p-8 and 33-36 GiB of 80 on 8xh100 (ipo-jax plan).
    # dots_saveable (faster) fit the Llama-8B on 8 GPUs at 8192 tokens (69 GiB), not at 16384 (118 GiB).
    c.model.remat = "full"
    c.model.attention = "blockwise"
    c.loss.preset = "ipo"  # the paper: DPO on the tokens after the cue + 0.2 x NLL of the chosen suffix
    c.data.mask_from = "cue"  # the preset's loss tokens: the suffix after the compliance cue
    c.data.pairs = f"pairs/{run_name}/pairs.jsonl"  # where configs/pipeline_<run>.py writes them
    # 16384: the longest pair configs/pipeline_<run>.py can produce (ipo_jax/pipeline/config.py,
    # longest_pair_tokens: sampler.max_prompt_length + 2 x sampling.max_new_tokens); longer pairs
    # would be dropped, never cut. ipo-jax plan: fits v5p-8 and 8xh100 with 8 rows per micro-batch
    c.data.max_length = 16384
    c.data.pairs_per_micro = 8  # 8 rows over 8 devices (prefix-shared: one row per pair)
    c.data.micro_batches = 4  # 32 pairs per update
    c.train.out = f"runs/{run_name}"
    c.train.epochs = 2
    c.train.save_every = 25
    return c


def paper_stage2_config(hf_name: str, run_name: str) -> ml_collections.ConfigDict:
    """The paper's second stage: continue from stage 1's result on the safety pairs mixed with the
    over-refusal pairs (benign prompts that look risky: a helpful answer preferred over a refusal).

    The policy starts from stage 1's `final/`; the reference stays the base model (the paper's
    frozen initial policy; set reference.init=orbax:runs/<run>/final to anchor on stage 1 instead).
    """
    c = paper_model_config(hf_name, run_name)
    c.model.init = f"orbax:runs/{run_name}/final"
    c.tokenizer = f"runs/{run_name}/tokenizer"  # stage 1 saved the tokenizer it trained with
    c.reference.init = f"hf:/models/{hf_name}"
    # the safety pairs and the over-refusal pairs (build-pairs on STAR-benign-915, prompts_kind=benign)
    c.data.pairs = f"pairs/{run_name}/pairs.jsonl,pairs/{run_name}_overrefusal/pairs.jsonl:1.0"
    c.train.out = f"runs/{run_name}_stage2"
    c.train.epochs = 1
    return c
