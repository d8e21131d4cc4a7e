"""The `grpo` stage's config: its sections as dataclasses whose fields carry default, help and range
check (ipo_jax/settings.py), the ConfigDict built from them (`base_config`), the help texts
(`field_help`) and the stage's validation rules (registered with ipo_jax/validation.py as "grpo",
and "plan" rules for `ipo-jax plan` on a GRPO config: `plan_rules`).

Sections, each written once and shared where it exists elsewhere:

  (top)      tokenizer, prompts, prompts_fields, prompts_split, prompts_kind (as the pipeline's)
  model      the policy: init, param_dtype, dtype, remat, attention (train's TrainModelSettings)
  policy     where rollouts are sampled: local (our sampler on the training state) or http (a server
             whose weights follow by checkpoint: policy.sync_every) -- rollout's PolicySettings
  sampling   the rollouts' decoding (TRL's defaults: temperature 1.0, top-p 1.0)
  sampler    the in-process sampler's batching
  judge      the safety judge (reward.kind 'judge'); judging's JudgeSettings
  reward     what a completion earns (RewardSettings, ipo_jax/grpo/rewards.py)
  grpo       G, prompts per step, micro-batches, mu, and GRPO's loss (GRPOLossConfig's fields)
  optim      AdamW (train's OptimConfig)
  reference  the frozen reference (beta > 0): '' = model.init
  mesh       the training mesh (train's: fully sharded weights)
  train      out, max_steps, seed, save_every, keep_checkpoints, max_consecutive_skips
"""

from __future__ import annotations

import dataclasses
import re

import ml_collections

from ipo_jax.data.prompts import PROMPT_KINDS
from ipo_jax.judging.config import JudgeSettings
from ipo_jax.loss.grpo import GRPO_FIELD_CHECKS, GRPOLossConfig
from ipo_jax.rollout.config import PolicySettings, SamplerBatchSettings, SamplingSettings
from ipo_jax.settings import (
    add_fields, any_string, boolean, help_of, int_at_least, non_empty_string, number_in, one_of, rules_of, section,
    setting, tokens,
)
from ipo_jax.train.config import OPTIM_CHECKS, TrainMeshSettings, TrainModelSettings, set_paper_model
from ipo_jax.train.step import OptimConfig
from ipo_jax.validation import model_spec, output_dir, plan_model_spec, register_rules, tokenizer_source

REWARD_KINDS = ("judge", "rule")


def _token_ids(v):
    ok = isinstance(v, (tuple, list)) and all(isinstance(x, int) and not isinstance(x, bool) and 0 <= x < 2**31
                                              for x in v)
    return None if ok else "a tuple of token ids (integers >= 0), or ()"


def _regex(v):
    if not isinstance(v, str):
        return "a regular expression (string) or ''"
    try:
        re.compile(v)
    except re.error as e:
        return f"a valid regular expression ({e})"
    return None


def _optional_model_spec(v):
    return None if v == "" else model_spec(v)


@dataclasses.dataclass(frozen=True)
class GRPOTopSettings:
    tokenizer: str = setting("", "a tokenizer directory; '' = the HF init directory; 'tiny' = build one from the "
                             "prompts (toy runs)", tokenizer_source)
    tiny_tokenizer_vocab: int = setting(512, "tokenizer 'tiny': its vocabulary size", int_at_least(263))
    prompts: str = setting("", "a JSONL file (id, prompt, kind: harmful | benign), a parquet / arrow file, a datasets "
                           "directory, or a hub id (online only): ipo_jax/data/prompts.py", non_empty_string)
    prompts_fields: str = setting("", "field mapping, e.g. 'prompt=question,id=id' ('' = the defaults)")
    prompts_split: str = setting("train", "the split of a datasets source")
    prompts_kind: str = setting("harmful", "the kind of records that carry none", one_of(*PROMPT_KINDS))


@dataclasses.dataclass(frozen=True)
class GRPOPolicySettings(PolicySettings):
    """The rollout policy; http adds how its weights follow training (by checkpoint)."""

    sync_every: int = setting(1, "http: export the policy to <train.out>/policy_sync/ every this many steps; the "
                              "server must reload it (ipo-jax serve / vLLM: restart on the new directory); the "
                              "local backend always samples with the current parameters", int_at_least(1))
    sync_wait: float = setting(0.0, "http: seconds to wait after an export before sampling again (a server that "
                               "reloads by itself); 0 = do not wait", number_in(0))


@dataclasses.dataclass(frozen=True)
class RewardSettings:
    """What a completion earns (ipo_jax/grpo/rewards.py). judge: on a harmful prompt
    reasoning_safe x [reasoning judged safe] + answer_safe x [answer judged safe]; on a benign one
    -benign_refusal x [answer is a refusal]. rule: rule_weight x [the rule matches]."""

    kind: str = setting("judge", "judge (the safety judge: judge.*) | rule (rule_pattern / rule_token_ids, no model)",
                        one_of(*REWARD_KINDS))
    reasoning_safe: float = setting(1.0, "judge: weight of a reasoning judged safe (harmful prompts)", number_in(0))
    answer_safe: float = setting(1.0, "judge: weight of an answer judged safe (harmful prompts)", number_in(0))
    benign_refusal: float = setting(1.0, "judge: penalty for refusing a benign prompt (subtracted)", number_in(0))
    rule_pattern: str = setting("", "rule: a regular expression searched in the completion's text", _regex)
    rule_token_ids: tuple = setting((), "rule: token ids; the rule matches when the completion holds any of them",
                                    _token_ids)
    rule_weight: float = setting(1.0, "rule: the reward of a completion the rule matches", number_in(0))


_LOSS = GRPOLossConfig()


@dataclasses.dataclass(frozen=True)
class GRPOSettings:
    """The GRPO update; the loss fields are GRPOLossConfig's (ipo_jax/loss/grpo.py, TRL 1.16's defaults)."""

    num_generations: int = setting(8, "G: completions per prompt (one group)", int_at_least(2))
    prompts_per_step: int = setting(8, "prompts per update (rows per update: prompts_per_step x G)", int_at_least(1))
    micro_batches: int = setting(1, "gradient accumulation: the rows of an update in this many micro-batches",
                                 int_at_least(1))
    num_iterations: int = setting(1, "mu: updates per rollout batch (>1: clipped against the old log-probs)",
                                  int_at_least(1))
    logprob_chunk: int = setting(512, "sequence chunk of the vocabulary projection", tokens(1))
    entropy: bool = setting(True, "log the policy's mean token entropy", boolean)
    loss_type: str = setting(_LOSS.loss_type, "grpo | bnpo | dr_grpo | dapo (ipo_jax/loss/grpo.py)",
                             GRPO_FIELD_CHECKS["loss_type"])
    beta: float = setting(_LOSS.beta, "weight of the k3 KL to the frozen reference (0: no reference forward)",
                          GRPO_FIELD_CHECKS["beta"])
    kl_bias_correction: bool = setting(_LOSS.kl_bias_correction, "KL x ratio (TRL's use_bias_correction_kl)",
                                       GRPO_FIELD_CHECKS["kl_bias_correction"])
    epsilon_low: float = setting(_LOSS.epsilon_low, "ratio clipped below at 1 - epsilon_low",
                                 GRPO_FIELD_CHECKS["epsilon_low"])
    epsilon_high: float = setting(_LOSS.epsilon_high, "ratio clipped above at 1 + epsilon_high (DAPO: 0.28)",
                                  GRPO_FIELD_CHECKS["epsilon_high"])
    scale_rewards: str = setting(_LOSS.scale_rewards, "group | batch | none (Dr. GRPO)",
                                 GRPO_FIELD_CHECKS["scale_rewards"])
    reward_std_ddof: int = setting(_LOSS.reward_std_ddof, "1: Bessel's correction (TRL); 0: population std",
                                   GRPO_FIELD_CHECKS["reward_std_ddof"])
    advantage_eps: float = setting(_LOSS.advantage_eps, "added to the std", GRPO_FIELD_CHECKS["advantage_eps"])



@dataclasses.dataclass(frozen=True)
class GRPOReferenceSettings:
    init: str = setting("", "the frozen reference (used when grpo.beta > 0); '' = model.init", _optional_model_spec)


@dataclasses.dataclass(frozen=True)
class GRPOTrainSettings:
    out: str = setting("runs/grpo", "the run directory (checkpoints, metrics, rollouts, final/)", output_dir)
    max_steps: int = setting(100, "GRPO updates (each on prompts_per_step x G fresh rollouts, x num_iterations)",
                             int_at_least(1))
    seed: int = setting(0, "random init of preset models, the prompt order and the rollouts' seeds", int_at_least(0))
    save_every: int = setting(10, "steps between checkpoints", int_at_least(1))
    keep_checkpoints: int = setting(3, "checkpoints kept (the oldest removed first)", int_at_least(1))
    max_consecutive_skips: int = setting(10, "stop after this many non-finite steps in a row", int_at_least(1))
    rollouts_file: bool = setting(True, "write every rollout (prompt id, completion, reward parts) to "
                                  "rollouts.jsonl", boolean)


# section name -> settings dataclass, in the order the config shows them
SECTIONS = {"model": TrainModelSettings, "policy": GRPOPolicySettings, "sampling": SamplingSettings,
            "sampler": SamplerBatchSettings, "judge": JudgeSettings, "reward": RewardSettings, "grpo": GRPOSettings,
            "reference": GRPOReferenceSettings, "mesh": TrainMeshSettings, "train": GRPOTrainSettings}
# TRL's GRPOConfig samples at temperature 1.0 without nucleus filtering; short completions by default
SAMPLING_DEFAULTS = {"temperature": 1.0, "top_p": 1.0, "max_new_tokens": 1024}


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    add_fields(c, GRPOTopSettings)
    for name, settings_type in SECTIONS.items():
        setattr(c, name, section(settings_type, **(SAMPLING_DEFAULTS if name == "sampling" else {})))
    c.optim = section(OptimConfig, exclude=("total_steps",))
    return c


def _rules() -> dict:
    rules = {**rules_of(GRPOTopSettings), **{k: v for n, t in SECTIONS.items() for k, v in rules_of(t, n).items()},
             **{f"optim.{name}": check for name, check in OPTIM_CHECKS.items()}}
    rules["policy.base_url"] = any_string("a URL string")
    return rules


RULES = _rules()
# plan reads no prompts, tokenizer or output directory; its model may be an hf: dir not on this machine
PLAN_RULES = {**{k: v for k, v in RULES.items() if k not in ("tokenizer", "prompts", "train.out", "reference.init")},
              "model.init": plan_model_spec}
register_rules("grpo", RULES)
register_rules("grpo-plan", PLAN_RULES)  # ipo-jax plan on a grpo config (ipo_jax/train/plan.py)


def field_help() -> dict[str, str]:
    """{'grpo.beta': help text, ...} for `ipo-jax grpo --help` (optim: OptimConfig's field comments)."""
    return {**help_of(GRPOTopSettings), **{k: v for n, t in SECTIONS.items() for k, v in help_of(t, n).items()}}


def paper_model_config(hf_name: str, run_name: str) -> ml_collections.ConfigDict:
    """GRPO with the safety judge as reward on one of the paper's models (the RL baseline), on one
    TPU v5p-8 host or one 8-GPU node; `ipo-jax plan` checks the update's fit (numbers: the
    configs/grpo_<model>.py docstrings). Mixed precision as the IPO configs: float32 master weights
    and moments, bfloat16 compute, full remat, blockwise attention."""
    c = base_config()
    set_paper_model(c, hf_name)
    c.prompts = "UCSC-VLAA/STAR-1"  # harmful prompts; add benign look-alikes (kind benign) for the refusal penalty
    c.judge.backend = "http"  # a served judge (e.g. vLLM on another node)
    c.judge.base_url = "http://localhost:8001/v1"
    c.judge.model = "judge"
    c.sampling.max_new_tokens = 5120  # the paper's generation budget (as configs/pipeline_<run>.py)
    c.sampler.max_prompt_length = 1024
    c.sampler.batch_size = 64
    c.grpo.num_generations = 8
    c.grpo.prompts_per_step = 8  # 64 rows per update
    c.grpo.micro_batches = 8  # 8 rows per micro-batch: one per device
    c.grpo.beta = 0.04  # DeepSeekMath's KL weight: the reference forward is in the step
    c.optim.learning_rate = 1e-6
    c.optim.warmup_steps = 5
    c.train.out = f"runs/{run_name}_grpo"
    c.train.max_steps = 200
    return c


__all__ = ["PLAN_RULES", "GRPOSettings", "RewardSettings", "SECTIONS", "base_config", "field_help",
           "paper_model_config"]
