"""The pipeline config (`ipo-jax sample` and `ipo-jax build-pairs`), every field with its default."""

from __future__ import annotations

import ml_collections


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.model = ml_collections.ConfigDict()
    c.model.init = ""  # the current policy: 'hf:<dir>', 'orbax:<dir>' (e.g. a run's final/) or 'preset:<name>'
    c.model.param_dtype = "float32"
    c.model.dtype = "float32"
    c.tokenizer = ""  # a tokenizer directory; '' = the HF init directory
    c.prompts = ""  # JSONL: id, prompt (string or chat messages), kind (harmful | benign)
    c.out = "runs/pairs"

    c.sampling = ml_collections.ConfigDict()
    c.sampling.temperature = 0.6
    c.sampling.top_p = 0.95
    c.sampling.top_k = 0
    c.sampling.max_new_tokens = 1024

    c.sampler = ml_collections.ConfigDict()
    c.sampler.batch_size = 8
    c.sampler.chunk_tokens = 32
    c.sampler.max_prompt_length = 4096

    c.judge = ml_collections.ConfigDict()
    # pattern: the offline lexicon judge and cue detector (ipo_jax/pipeline/judges.py)
    # llm: a local checkpoint through our sampler (llm_judge.py); http: an OpenAI-compatible endpoint
    c.judge.backend = "pattern"
    c.judge.patterns_file = ""  # pattern: JSON with pattern lists overriding the defaults
    c.judge.model = ""  # llm: 'hf:<dir>' / 'orbax:<dir>'; http: the served model's name
    c.judge.tokenizer = ""  # llm: tokenizer directory ('' = the HF model directory)
    c.judge.base_url = ""  # http: e.g. http://localhost:8000/v1 (a vLLM server)
    c.judge.api_key_env = "OPENAI_API_KEY"  # http: the variable holding the key (never logged)
    c.judge.timeout = 30.0
    c.judge.max_retries = 4
    c.judge.concurrency = 8

    c.triggers_file = ""  # one trigger per line (or JSONL {"trigger": ...}); '' = the six defaults

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
    c.csr.window = 15
    c.csr.kind = "harmful"  # analyse only trajectories of this kind ('' = all)

    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = -1
    c.mesh.fsdp = 1
    c.mesh.tensor = 1
    return c
