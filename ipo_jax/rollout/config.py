"""The policy's settings, shared by the pipeline and eval configs: the ``policy``, ``model``,
``sampling``, ``sampler`` and ``mesh`` sections (`ipo_jax.rollout.build_policy` reads them).

``policy.backend`` chooses where rollouts are sampled: ``local`` (our JAX sampler in this process,
on ``model.init``) or ``http`` (an OpenAI-compatible ``/v1/completions`` endpoint: ``ipo-jax
serve``, vLLM, SGLang; the request fields it relies on are in `ipo_jax.rollout.http`).  With
``http`` the ``sampling`` section still sets the decoding, the tokenizer (``tokenizer``, or an
``hf:`` ``model.init``'s own) still renders prompts into token ids, and ``sampler.max_prompt_length``
is the longest prompt the pipeline sends; ``model.init`` is not loaded."""

from __future__ import annotations

import ml_collections


def add_policy_sections(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Add the ``policy``, ``model``, ``sampling``, ``sampler`` and ``mesh`` sections to `c`; returns `c`."""
    c.policy = ml_collections.ConfigDict()
    c.policy.backend = "local"  # local: our sampler on model.init, in this process; http: an OpenAI-compatible /v1/completions endpoint
    c.policy.base_url = ""  # http: e.g. http://127.0.0.1:8000/v1 (ipo-jax serve, vLLM, SGLang)
    c.policy.model = ""  # http: the served model's name (ipo-jax serve: its --model spec; also the pairs' policy id)
    c.policy.api_key_env = "OPENAI_API_KEY"  # http: the variable holding the key (never logged; unset = no key)
    c.policy.timeout = 600.0  # http: seconds per attempt (one whole generation)
    c.policy.max_retries = 4  # http: retries after the first attempt (timeouts, connection errors, 5xx, 429)
    c.policy.backoff = 1.0  # http: seconds before the first retry, doubled each time
    c.policy.max_backoff = 30.0  # http: cap on one wait (also on a server's Retry-After)
    c.policy.concurrency = 32  # http: requests in flight at once (one request per sampled row)
    # http: a JSON object merged into each request; a vLLM without return_token_ids: '{"logprobs": 0, "return_tokens_as_token_ids": true}'
    c.policy.extra_body = ""

    c.model = ml_collections.ConfigDict()
    c.model.init = ""  # the policy: 'hf:<dir>', 'orbax:<dir>' (e.g. a run's final/) or 'preset:<name>'
    c.model.param_dtype = "float32"
    c.model.dtype = "float32"

    c.sampling = ml_collections.ConfigDict()
    c.sampling.temperature = 0.6  # the paper's decoding: temperature 0.6, top-p 0.95
    c.sampling.top_p = 0.95
    c.sampling.top_k = 0
    c.sampling.max_new_tokens = 1024

    c.sampler = ml_collections.ConfigDict()
    c.sampler.batch_size = 8
    c.sampler.chunk_tokens = 32
    c.sampler.max_prompt_length = 4096
    # a row that finishes takes the next prompt at the next chunk (instead of idling until its
    # batch's longest row ends); the same tokens per prompt either way
    c.sampler.continuous_batching = True

    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = -1
    c.mesh.fsdp = 1
    c.mesh.tensor = 1
    return c


__all__ = ["add_policy_sections"]
