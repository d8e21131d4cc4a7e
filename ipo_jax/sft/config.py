"""The `sft` stage's config: its sections as settings dataclasses (ipo_jax/settings.py), the
ConfigDict built from them (`base_config`), the field help, the validation rules (registered as
stage "sft" with ipo_jax/validation.py) and the paper models' configs (`paper_sft_config`).

The model, mesh, optimizer and train sections are the train stage's own (ipo_jax/train/config.py):
an SFT run is a training run on another kind of data, so it shares their defaults and checks.
Only `data` (chat datasets instead of pair files) and `loss` (the NLL alone) are its own.
"""

from __future__ import annotations

import dataclasses

import ml_collections

from ipo_jax.loss.preference import NLL_NORMS
from ipo_jax.settings import (
    add_fields, boolean, help_of, int_at_least, non_empty_string, number_in, one_of, rules_of, section, setting,
    token_lengths, tokens,
)
from ipo_jax.sft.records import FIELD_NAMES, RECORD_FORMATS, parse_fields
from ipo_jax.train.config import (
    OPTIM_CHECKS, TrainMeshSettings, TrainModelSettings, TrainSettings, TrainTopSettings, set_paper_model,
)
from ipo_jax.train.step import OptimConfig
from ipo_jax.validation import register_rules


def _field_mapping(v):
    if not isinstance(v, str):
        return "a field mapping like 'prompt=question,response=response' (or '')"
    try:
        parse_fields(v)
    except ValueError as e:
        return f"a field mapping <field>=<column>,... with fields {', '.join(FIELD_NAMES)} ({e})"
    return None


@dataclasses.dataclass(frozen=True)
class SftDataSettings:
    dataset: str = setting(
        "", "chat dataset(s), comma-separated: .jsonl, .parquet, .arrow, a `datasets` save_to_disk directory, or a "
        "hub id (owner/name, only when online); records hold `messages` or prompt + response fields (see "
        "ipo_jax/sft/records.py)", non_empty_string)  # the sources themselves: read and checked before anything is written
    split: str = setting("train", "the split of a dataset directory or hub dataset with several", non_empty_string)
    format: str = setting("auto", "auto (messages when the record has them, else prompt + response) | messages | "
                          "prompt_response", one_of(*RECORD_FORMATS))
    fields: str = setting("", "column names when they differ from the defaults, e.g. 'prompt=question,response="
                          "answer'; fields: " + ", ".join(FIELD_NAMES) + " (defaults in ipo_jax/sft/records.py)",
                          _field_mapping)
    max_length: int = setting(4096, "an example (all its turns, template included) longer than this is skipped, never "
                              "cut; skipped examples are listed in train.out/skipped_examples.jsonl", tokens(2))
    max_skipped_share: float = setting(0.05, "more than this share of the examples skipped for length: sft refuses "
                                       "(exit 2)", number_in(0, 1))
    buckets: tuple = setting((), "row lengths compiled; () = 64, 96, 128, 192, ... up to max_length", token_lengths)
    rows_per_micro: int = setting(8, "rows per micro-batch: one example each, or with packing several",
                                  int_at_least(1))
    micro_batches: int = setting(1, "gradient accumulation: micro-batches per step", int_at_least(1))
    packing: bool = setting(True, "several examples per row of max_length tokens, each its own segment (attention "
                            "never crosses examples; the same per-example loss as unpacked)", boolean)
    seed: int = setting(0, "the seed of the example order", int_at_least(0))
    shuffle: bool = setting(True, "shuffle each epoch", boolean)


@dataclasses.dataclass(frozen=True)
class SftLossSettings:
    nll_norm: str = setting("mean", "the NLL of an example's assistant tokens: mean (per token, then averaged over "
                            "the examples of a step) or sum", one_of(*NLL_NORMS))


SECTIONS = {"model": TrainModelSettings, "data": SftDataSettings, "loss": SftLossSettings, "mesh": TrainMeshSettings,
            "train": TrainSettings}
OUT_DEFAULT = "runs/sft"


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    add_fields(c, TrainTopSettings)
    for name, settings_type in SECTIONS.items():
        setattr(c, name, section(settings_type, **({"out": OUT_DEFAULT} if name == "train" else {})))
    # AdamW on the master weights, as training's; the fields and their help: OptimConfig (ipo_jax/train/step.py)
    c.optim = section(OptimConfig, exclude=("total_steps",))
    return c


RULES = {
    **rules_of(TrainTopSettings),
    **{k: v for name, t in SECTIONS.items() for k, v in rules_of(t, name).items()},
    **{f"optim.{name}": check for name, check in OPTIM_CHECKS.items()},
}
register_rules("sft", RULES)


def field_help() -> dict[str, str]:
    """{'data.max_length': help text, ...} for `ipo-jax sft --help` (optim: OptimConfig's field
    comments, read by the CLI)."""
    return {**help_of(TrainTopSettings), **{k: v for name, t in SECTIONS.items() for k, v in help_of(t, name).items()}}


# The paper's three models (configs/train_*.py) and where their dataset is expected.
PAPER_MODELS = {
    "r1_distill_qwen_7b": "DeepSeek-R1-Distill-Qwen-7B",
    "r1_distill_llama_8b": "DeepSeek-R1-Distill-Llama-8B",
    "qwen3_8b": "Qwen3-8B",
}
# dataset name -> (default path, field mapping): STAR-1 publishes question / response (1k rows);
# RealSafe-R1's trajectories are prompt / response records (15k), the loader's defaults.
PAPER_DATASETS = {
    "star1": ("data/STAR-1", "prompt=question,response=response"),
    "realsafe": ("data/RealSafe-R1/train.jsonl", ""),
}


def paper_sft_config(run: str, dataset: str) -> ml_collections.ConfigDict:
    """SFT of one of the paper's models (PAPER_MODELS) on a safety-reasoning dataset
    (PAPER_DATASETS), on one TPU v5p-8 host or one 8-GPU node, with the IPO configs' model
    settings (ipo_jax/train/config.py paper_model_config: float32 master weights, bfloat16 compute,
    full remat, blockwise attention). 5 epochs at 8192 tokens as the STAR-1 training recipe
    (about 128 examples per update there; here 32 packed rows of 8192 tokens, some 4-5 STAR-1
    examples each); the learning rate, 1e-5, is ours. RealSafe-R1 trained with LLaMA-Factory and
    publishes no more than its data and models, so it gets the same settings."""
    if run not in PAPER_MODELS or dataset not in PAPER_DATASETS:
        raise ValueError(f"paper_sft_config: run one of {sorted(PAPER_MODELS)}, dataset one of {sorted(PAPER_DATASETS)}; "
                         f"got {run!r}, {dataset!r}")
    c = base_config()
    set_paper_model(c, PAPER_MODELS[run])
    c.data.dataset, c.data.fields = PAPER_DATASETS[dataset]
    c.data.max_length = 8192
    c.data.packing = True
    c.data.rows_per_micro = 8  # 8 packed rows over 8 devices
    c.data.micro_batches = 4
    c.optim.learning_rate = 1e-5
    c.optim.warmup_steps = 5
    c.optim.weight_decay = 1e-4
    c.train.out = f"runs/sft_{run}_{dataset}"
    c.train.epochs = 5
    c.train.save_every = 25
    return c
