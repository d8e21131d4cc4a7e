"""The pipeline config (`ipo-jax sample`, `ipo-jax build-pairs` and `ipo-jax csr`): its sections
as dataclasses whose fields carry default, help and range check (ipo_jax/settings.py), the
ConfigDict built from them (`base_config`), and each stage's validation rules (registered with
ipo_jax/validation.py). The policy's sections come from ipo_jax/rollout/config.py, the judge's from
ipo_jax/judging/config.py; `InterventionConfig` is what the intervention loop takes."""

from __future__ import annotations

import dataclasses

import ml_collections

from ipo_jax.data.prompts import PROMPT_KINDS
from ipo_jax.judging.config import add_judge_sections, judge_help, judge_rules
from ipo_jax.rollout.config import add_policy_sections, policy_help, policy_rules
from ipo_jax.settings import (
    add_fields, help_of, int_at_least, non_empty_string, number_in, one_of, rules_of, section, setting, tokens,
)
from ipo_jax.validation import optional_dir, optional_file, output_dir, register_rules

PAIR_KINDS = ("ipo", "full_trajectory")


@dataclasses.dataclass(frozen=True)
class PipelineSettings:
    """The pipeline's top-level fields."""

    tokenizer: str = setting("", "a tokenizer directory; '' = the HF init directory", optional_dir)
    prompts: str = setting("", "a JSONL file (id, prompt: string or chat messages, kind: harmful | benign), a "
                           "parquet / arrow file, a datasets directory, or a hub id (e.g. UCSC-VLAA/STAR-1; online "
                           "only): ipo_jax/data/prompts.py", non_empty_string)
    prompts_fields: str = setting("", "field mapping, e.g. 'prompt=question,id=id' ('' = the defaults: STAR-1 "
                                  "layouts load as they are)")
    prompts_split: str = setting("train", "the split of a datasets source")
    prompts_kind: str = setting("harmful", "the kind of records that carry none (STAR-benign-915: benign)")
    out: str = setting("runs/pairs", "the output directory", output_dir)
    triggers_file: str = setting("", "one trigger per line (or JSONL {\"trigger\": ...}); '' = the six defaults",
                                 optional_file)


@dataclasses.dataclass(frozen=True)
class BuildPairsSettings:
    kind: str = setting("ipo", "ipo: IPO's intervened pairs (and over-refusal pairs for benign prompts); "
                        "full_trajectory: the paper's DPO baseline, an independent safe and unsafe trajectory of each "
                        "prompt (also the SFT-on-safe-trajectories data: train it with loss.preset=sft; "
                        "ipo_jax/pipeline/baselines.py)", one_of(*PAIR_KINDS))
    samples: int = setting(8, "full_trajectory: trajectories sampled per harmful prompt", int_at_least(1))


@dataclasses.dataclass(frozen=True)
class InterventionConfig:
    """The intervention loop's settings (`process_chunk`, `build_pairs`)."""

    rounds: int = setting(3, "intervention rounds: each continues from the first compliance cue of the last",
                          int_at_least(1))
    max_generations_per_prompt: int = setting(14, "generations per prompt at most, the original sample included "
                                              "(paper: 14)", int_at_least(1))
    chunk_prompts: int = setting(8, "prompts per resumable unit of work (chunk)", int_at_least(1))
    benign_candidates: int = setting(4, "benign prompts: samples searched for a refusal (over-refusal pairs)",
                                     int_at_least(0))
    seed: int = setting(0, "the base seed; each chunk samples under a seed derived from it", int_at_least(0))


@dataclasses.dataclass(frozen=True)
class CsrSettings:
    """Continuation safety ratio analysis (ipo_jax/pipeline/csr.py)."""

    trajectories: str = setting("", "JSONL with id, prompt, reasoning (e.g. `ipo-jax sample`'s trajectories.jsonl)",
                                non_empty_string)
    num_samples: int = setting(32, "continuations per sentence (paper: 32)", int_at_least(1))
    mu: float = setting(0.9, "safety trigger: CSR rises above mu and stays there for `window`", number_in(0, 1))
    eta: float = setting(0.1, "compliance cue: CSR falls below eta and stays there", number_in(0, 1))
    window: int = setting(15, "in tokens with granularity 'token' (the paper's K), in sentences with 'sentence'",
                          tokens(1))
    granularity: str = setting("token", "token: CSR after every token of the reasoning (the paper; transitions "
                               "mapped back to sentences); sentence: only at sentence ends, the window in sentences "
                               "(coarser, not the paper's)", one_of("token", "sentence"))
    token_stride: int = setting(1, "token granularity: measure every n-th token (plus every sentence end); 1 = every "
                                "token", int_at_least(1))
    seed: int = setting(0, "the base seed: each trace samples under a seed hashed from it and the trace's id",
                        int_at_least(0))
    kind: str = setting("harmful", "analyse only trajectories of this kind ('' = all)", one_of("", *PROMPT_KINDS))


SECTIONS = {"build_pairs": BuildPairsSettings, "intervention": InterventionConfig, "csr": CsrSettings}


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    add_policy_sections(c)  # model (the current policy), sampling, sampler, mesh: ipo_jax/rollout/config.py
    add_fields(c, PipelineSettings)
    # judge / detector: pattern (the demo world's offline judge), llm (a local checkpoint) or http
    # (an OpenAI-compatible endpoint); every field in ipo_jax/judging/config.py
    add_judge_sections(c)
    for name, settings_type in SECTIONS.items():
        setattr(c, name, section(settings_type))
    return c


def _pick(rules: dict, *names: str) -> dict:
    return {name: rules[name] for name in names}


_TOP = rules_of(PipelineSettings)
_COMMON = {**policy_rules(), **judge_rules()}
RULES = {
    "sample": {**_COMMON, **_pick(_TOP, "tokenizer", "prompts", "out"),
               **_pick(rules_of(InterventionConfig, "intervention"), "intervention.seed")},
    "build-pairs": {**_COMMON, **_pick(_TOP, "tokenizer", "prompts", "out", "triggers_file"),
                    **rules_of(BuildPairsSettings, "build_pairs"), **rules_of(InterventionConfig, "intervention")},
    "csr": {**_COMMON, **_pick(_TOP, "tokenizer", "out"), **rules_of(CsrSettings, "csr")},
}
for _stage, _rules in RULES.items():
    register_rules(_stage, _rules)


def field_help() -> dict[str, str]:
    """{'csr.mu': help text, ...} for `ipo-jax sample / build-pairs / csr --help`."""
    return {**policy_help(), **judge_help(), **help_of(PipelineSettings),
            **{k: v for name, t in SECTIONS.items() for k, v in help_of(t, name).items()}}


def paper_pipeline_config(hf_name: str, run_name: str) -> ml_collections.ConfigDict:
    """Pair building as in the paper for one of its models (method.md, "Building the training pairs").

    Paper: 1,000 harmful prompts from STAR-1, the 6-trigger pool, at most 14 generations per
    prompt, CSR with N = 32 continuations, decoding at temperature 0.6 / top-p 0.95. Ours: up to
    3 intervention rounds; 5,120 new tokens per generation and prompts up to 6,144 tokens, so that
    every pair fits the training configs' data.max_length of 16,384 (`longest_pair_tokens`: 6,144 +
    2 x 5,120; training drops a longer pair, never cuts it). R1-style traces run to thousands of
    tokens; a cut-off generation never becomes a pair side (counted as cut_off_*), and an
    intervention prompt (the prompt, a prefix of up to one generation, the trigger) over 6,144 tokens
    is dropped and counted as prompt_too_long. To keep longer traces raise both sides together, e.g.
    8,192 new tokens, prompts up to 16,384 and the train config's data.max_length 32,768 (ipo-jax
    plan: fits 8xh100 with 8 rows per micro-batch; v5p-8 needs data.pairs_per_micro=4,
    data.micro_batches=8). bfloat16 weights (sampling only). The judge
    and cue detector: an OpenAI-compatible endpoint (e.g. a vLLM server), set judge.base_url and
    judge.model.
    """
    c = base_config()
    c.model.init = f"hf:/models/{hf_name}"
    c.model.param_dtype = "bfloat16"
    c.model.dtype = "bfloat16"
    c.prompts = "UCSC-VLAA/STAR-1"  # or a local copy: a parquet file or a save_to_disk directory
    c.out = f"pairs/{run_name}"
    c.sampling.temperature = 0.6
    c.sampling.top_p = 0.95
    c.sampling.max_new_tokens = 5120
    c.sampler.batch_size = 32
    c.sampler.chunk_tokens = 64
    c.sampler.max_prompt_length = 6144  # + 2 x max_new_tokens = 16384, the train configs' max_length
    c.judge.backend = "http"
    c.judge.base_url = "http://localhost:8000/v1"
    c.judge.model = "judge"
    c.judge.timeout = 300.0  # a thinking judge writes its reasoning before the label
    c.judge.max_tokens = 4096  # room for that reasoning (its reasoning is stripped before the label is read)
    c.judge.concurrency = 32  # requests in flight: a chunk's trajectories are judged in one batch
    # the cue detector: detector.backend '' = the judge's endpoint and model
    c.intervention.rounds = 3
    c.intervention.max_generations_per_prompt = 14
    c.intervention.chunk_prompts = 32
    c.csr.num_samples = 32
    return c


def longest_pair_tokens(config: ml_collections.ConfigDict) -> int:
    """The most tokens (prompt + prefix + chosen + rejected, the training length rule's count) a pair
    built with `config` can have. An IPO pair's prompt + prefix + chosen-so-far is one intervention
    prompt (at most sampler.max_prompt_length, or it is dropped as prompt_too_long), the last
    continuation adds at most sampling.max_new_tokens, and prefix + rejected is the original
    generation (at most sampling.max_new_tokens); an over-refusal or full-trajectory pair is a prompt
    and two generations (the in-process sampler refuses a prompt over sampler.max_prompt_length; an
    HTTP policy does not check it, and training drops such a pair). A train config whose data.max_length is at least this never drops a pair
    for length."""
    return config.sampler.max_prompt_length + 2 * config.sampling.max_new_tokens
