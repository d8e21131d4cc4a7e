"""The training config: its sections as dataclasses whose fields carry default, help and range
check (ipo_jax/settings.py), the ConfigDict built from them (`base_config`), and the train and plan
stages' validation rules (registered with ipo_jax/validation.py). Config files under configs/ start
from `base_config()` and change what their setting needs; the CLI applies --config.* overrides.

The `loss` and `optim` sections are built from the dataclasses that the step consumes
(`LossConfig`, `OptimConfig`; their help is the comment on each field, their ranges LossConfig's
FIELD_CHECKS and OPTIM_CHECKS here), so each default is written once.
"""

from __future__ import annotations

import dataclasses

import ml_collections

from ipo_jax.data.pairs import LAYOUTS, MASK_FROM
from ipo_jax.loss import LossConfig
from ipo_jax.loss.preference import FIELD_CHECKS as LOSS_CHECKS
from ipo_jax.models.config import ATTENTION_KINDS, DTYPES, REMAT_POLICIES
from ipo_jax.settings import (
    add_fields, boolean, help_of, int_at_least, mesh_axis, non_empty_string, number_in, one_of, rules_of, section,
    setting, token_lengths, tokens,
)
from ipo_jax.train.step import MOMENT_DTYPES, OptimConfig
from ipo_jax.validation import (
    cache_dir, model_spec, output_dir, plan_model_spec, register_rules, tokenizer_source,
)


@dataclasses.dataclass(frozen=True)
class TrainModelSettings:
    init: str = setting("", "'preset:<name>' (random init), 'hf:<dir>' or 'orbax:<dir>'", model_spec)
    param_dtype: str = setting("float32", "master weights (checkpoints hold these); keep float32 to train",
                               one_of(*DTYPES))
    dtype: str = setting("float32", "compute dtype of activations and matmuls (bfloat16 on accelerators)",
                         one_of(*DTYPES))
    remat: str = setting("none", "none | full | dots_saveable", one_of(*REMAT_POLICIES))
    attention: str = setting("dense", "dense | blockwise (flash-style, nothing [T,S]-sized kept)",
                             one_of(*ATTENTION_KINDS))


@dataclasses.dataclass(frozen=True)
class TrainTopSettings:
    """The train stage's top-level fields."""

    tokenizer: str = setting("", "a tokenizer directory; '' = the HF init directory; 'tiny' = build from the pairs",
                             tokenizer_source)
    tiny_tokenizer_vocab: int = setting(512, "tokenizer 'tiny': its vocabulary size", int_at_least(1))


@dataclasses.dataclass(frozen=True)
class DataSettings:
    pairs: str = setting(
        "", "pair JSONL written by `ipo-jax build-pairs` (see ipo_jax/data/pairs.py), or several files with mixing "
        "weights: \"a.jsonl,b.jsonl:0.5\" (weight 1 by default; w puts round(w * n) of a file's n pairs in every "
        "epoch: w < 1 a subsample drawn once from data.seed, w > 1 repeats); ids must be unique across files",
        non_empty_string)  # the files themselves: read (and checked) before anything is written
    layout: str = setting("prefix_shared", "prefix_shared | duplicated (same numbers; shared saves the prefix "
                          "compute)", one_of(*LAYOUTS))
    mask_from: str = setting("cue", "cue: loss on the suffix only (IPO); reasoning: the whole completion. A named "
                             "loss.preset says which it needs", one_of(*MASK_FROM))
    max_length: int = setting(
        4096, "a pair (prompt + prefix + chosen + rejected tokens, whatever the layout) longer than this is dropped, "
        "never cut; dropped pairs are listed in train.out/skipped_pairs.jsonl (ipo_jax/data/pairs.py fit_to_length)",
        tokens(2))
    max_dropped_share: float = setting(0.05, "more than this share of the pairs dropped for length: train refuses "
                                       "(exit 2)", number_in(0, 1))
    buckets: tuple = setting((), "row lengths compiled; () = 64, 96, 128, 192, ... (2^k and 1.5 * 2^k) up to "
                             "max_length", token_lengths)
    pairs_per_micro: int = setting(8, "pairs per micro-batch (one row each in prefix_shared); with packing: rows",
                                   int_at_least(1))
    micro_batches: int = setting(1, "gradient accumulation: pairs per step = pairs_per_micro * micro_batches",
                                 int_at_least(1))
    packing: bool = setting(False, "packing (prefix_shared): several pairs per row of max_length tokens, each its own "
                            "segment (same log-probs); a micro-batch is pairs_per_micro such rows, so the number of "
                            "pairs per step varies", boolean)
    seed: int = setting(0, "the seed of the pair order (and of mixing subsamples)", int_at_least(0))
    shuffle: bool = setting(True, "shuffle the pairs each epoch", boolean)


@dataclasses.dataclass(frozen=True)
class ReferenceSettings:
    mode: str = setting("precomputed", "precomputed (cached beside the pairs) | on_the_fly",
                        one_of("precomputed", "on_the_fly"))
    init: str = setting("", "the frozen reference model; '' = model.init (stage 2: the base model or stage 1's "
                        "final/)")
    cache_dir: str = setting("", "'' = the pair file's directory", cache_dir)


@dataclasses.dataclass(frozen=True)
class TrainMeshSettings:
    """The device mesh (ipo_jax/sharding): training defaults to fully sharded weights."""

    data: int = setting(1, "data-parallel axis (-1: all remaining devices)", mesh_axis)
    fsdp: int = setting(-1, "fully sharded weights axis; -1: all remaining devices", mesh_axis)
    tensor: int = setting(1, "tensor-parallel axis", mesh_axis)


@dataclasses.dataclass(frozen=True)
class TrainSettings:
    out: str = setting("runs/train", "the run directory (checkpoints, metrics, final/)", output_dir)
    epochs: int = setting(2, "passes over the pairs", int_at_least(0))
    max_steps: int = setting(0, "> 0 overrides epochs", int_at_least(0, " (0 = train.epochs epochs)"))
    seed: int = setting(0, "random init of preset models", int_at_least(0))
    save_every: int = setting(50, "steps between checkpoints", int_at_least(1))
    keep_checkpoints: int = setting(3, "checkpoints kept (the oldest removed first)", int_at_least(1))
    logprob_chunk: int = setting(512, "sequence chunk of the vocabulary projection", tokens(1))
    max_consecutive_skips: int = setting(10, "stop after this many non-finite steps in a row", int_at_least(1))
    peak_flops_per_device: float = setting(0.0, "for MFU; 0 = look up the device kind (unknown on CPU)",
                                           number_in(0, note=" (0 = look it up)"))


# The optimizer's ranges (OptimConfig's fields; total_steps is derived, not a setting).
OPTIM_CHECKS = {
    "learning_rate": number_in(0, low_open=True),
    "warmup_steps": int_at_least(0),
    "end_lr_ratio": number_in(0, 1),
    "weight_decay": number_in(0),
    "b1": number_in(0, 1, high_open=True),
    "b2": number_in(0, 1, high_open=True),
    "eps": number_in(0, low_open=True),
    "clip_norm": number_in(0, low_open=True),
    "moment_dtype": one_of(*MOMENT_DTYPES),
}
# section name -> settings dataclass (loss and optim: the step's own dataclasses, checks beside them)
SECTIONS = {"model": TrainModelSettings, "data": DataSettings, "reference": ReferenceSettings,
            "mesh": TrainMeshSettings, "train": TrainSettings}


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    add_fields(c, TrainTopSettings)
    for name, settings_type in SECTIONS.items():
        setattr(c, name, section(settings_type))
    # the loss by name (loss.preset, default 'ipo'); the fields and their help: LossConfig (ipo_jax/loss/preference.py),
    # the presets and what each expands to: ipo_jax/loss/presets.py (and `ipo-jax train --help`)
    c.loss = section(LossConfig)
    # AdamW on the master weights; the fields and their help: OptimConfig (ipo_jax/train/step.py)
    c.optim = section(OptimConfig, exclude=("total_steps",))
    return c


RULES = {"train": {
    **rules_of(TrainTopSettings),
    **{k: v for name, t in SECTIONS.items() for k, v in rules_of(t, name).items()},
    **{f"loss.{name}": check for name, check in LOSS_CHECKS.items()},  # the loss's own ranges (LossConfig)
    **{f"optim.{name}": check for name, check in OPTIM_CHECKS.items()},
}}
# plan: the train rules less what only a run reads (the pair files, the tokenizer, the output
# directory); its model may be an hf: directory that is not on this machine (ipo_jax/train/plan.py)
_PLAN_SKIPS = ("tokenizer", "data.pairs", "reference.cache_dir", "train.out")
RULES["plan"] = {**{name: check for name, check in RULES["train"].items() if name not in _PLAN_SKIPS},
                 "model.init": plan_model_spec}
for _stage, _rules in RULES.items():
    register_rules(_stage, _rules)


def field_help() -> dict[str, str]:
    """{'data.max_length': help text, ...} for `ipo-jax train --help` (loss and optim: their
    dataclasses' field comments, read by the CLI)."""
    return {**help_of(TrainTopSettings), **{k: v for name, t in SECTIONS.items() for k, v in help_of(t, name).items()}}


def set_paper_model(c: ml_collections.ConfigDict, hf_name: str) -> None:
    """The paper models' settings in every stage (train, sft, grpo): the HF checkpoint under
    /models, float32 master weights and moments, bfloat16 compute, full remat, blockwise attention."""
    c.model.init = f"hf:/models/{hf_name}"
    c.model.param_dtype = "float32"
    c.model.dtype = "bfloat16"
    c.model.remat = "full"
    c.model.attention = "blockwise"


def paper_model_config(hf_name: str, run_name: str) -> ml_collections.ConfigDict:
    """IPO on one of the paper's models: one TPU v5p-8 host or one 8-GPU node.

    Mixed precision: float32 master weights and Adam moments (an update at lr 2e-6 is below
    bfloat16's resolution for most weights, so bf16 weights would barely move), bfloat16 compute.
    Paper settings: loss.preset 'ipo' (partial DPO from the compliance cue + 0.2 x NLL); beta, learning rate and
    epochs are not published (ours: beta 0.1, lr 2e-6, 2 epochs). `ipo-jax plan` checks the fit.
    """
    c = base_config()
    # remat full: on a v5p-8 host (4 chips) the 8 rows of a micro-batch are 2 per chip; at 16384
    # tokens full plans at 64-71 GiB of 95 on v5p-8 and 33-36 GiB of 80 on 8xh100 (ipo-jax plan).
    # dots_saveable (faster) fit the Llama-8B on 8 GPUs at 8192 tokens (69 GiB), not at 16384 (118 GiB).
    set_paper_model(c, hf_name)
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
