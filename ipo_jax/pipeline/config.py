"""The pipeline config (`ipo-jax sample` and `ipo-jax build-pairs`), every field with its default."""

from __future__ import annotations

import ml_collections

from ipo_jax.judging.config import add_judge_sections
from ipo_jax.rollout.config import add_policy_sections


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    add_policy_sections(c)  # model (the current policy), sampling, sampler, mesh: ipo_jax/rollout/config.py
    c.tokenizer = ""  # a tokenizer directory; '' = the HF init directory
    # prompts: a JSONL file (id, prompt: string or chat messages, kind: harmful | benign), a parquet /
    # arrow file, a datasets directory, or a hub id (e.g. UCSC-VLAA/STAR-1; online only): ipo_jax/data/prompts.py
    c.prompts = ""
    c.prompts_fields = ""  # field mapping, e.g. 'prompt=question,id=id' ('' = the defaults: STAR-1 layouts load as they are)
    c.prompts_split = "train"  # the split of a datasets source
    c.prompts_kind = "harmful"  # the kind of records that carry none (STAR-benign-915: benign)
    c.out = "runs/pairs"

    # judge / detector: pattern (the demo world's offline judge), llm (a local checkpoint) or http
    # (an OpenAI-compatible endpoint); every field in ipo_jax/judging/config.py
    add_judge_sections(c)

    c.triggers_file = ""  # one trigger per line (or JSONL {"trigger": ...}); '' = the six defaults

    c.build_pairs = ml_collections.ConfigDict()
    # ipo: IPO's intervened pairs (and over-refusal pairs for benign prompts);
    # full_trajectory: the paper's DPO baseline, an independent safe and unsafe trajectory of each prompt
    # (also the SFT-on-safe-trajectories data: train it with loss.objective=sft; ipo_jax/pipeline/baselines.py)
    c.build_pairs.kind = "ipo"
    c.build_pairs.samples = 8  # full_trajectory: trajectories sampled per harmful prompt

    c.intervention = ml_collections.ConfigDict()
    c.intervention.rounds = 3
    c.intervention.max_generations_per_prompt = 14
    c.intervention.chunk_prompts = 8
    c.intervention.benign_candidates = 4
    c.intervention.seed = 0

    c.csr = ml_collections.ConfigDict()
    c.csr.trajectories = ""  # JSONL with id, prompt, reasoning (e.g. `ipo-jax sample`'s trajectories.jsonl)
    c.csr.num_samples = 32  # continuations per sentence (paper: 32)
    c.csr.mu = 0.9  # safety trigger: CSR rises above mu and stays there for `window` sentences
    c.csr.eta = 0.1  # compliance cue: CSR falls below eta and stays there
    c.csr.window = 15  # in tokens with granularity 'token' (the paper's K), in sentences with 'sentence'
    # token: CSR after every token of the reasoning (the paper; transitions mapped back to sentences);
    # sentence: only at sentence ends, the window in sentences (coarser, not the paper's)
    c.csr.granularity = "token"
    c.csr.token_stride = 1  # token granularity: measure every n-th token (plus every sentence end); 1 = every token
    c.csr.seed = 0  # the base seed: each trace samples under a seed hashed from it and the trace's id
    c.csr.kind = "harmful"  # analyse only trajectories of this kind ('' = all)

    return c


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
