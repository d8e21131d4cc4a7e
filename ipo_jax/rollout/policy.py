"""The policy as the pipeline, csr and eval see it: the `Policy` protocol, and `build_policy`,
which makes one from a config.

Two implementations:

* `ipo_jax.rollout.local.LocalPolicy` -- our JAX sampler in this process (``policy.backend``
  ``local``, the default);
* `ipo_jax.rollout.http.HttpPolicy` -- an OpenAI-compatible ``/v1/completions`` endpoint
  (``policy.backend`` ``http``: ``ipo-jax serve``, vLLM, SGLang), one request per row.

Both render prompts with the same tokenizer (`ipo_jax.rollout.tokens`) and give row r the same
seed, so at the same seeds ``ipo-jax serve`` returns the tokens the in-process policy samples.
Callers (intervention, baselines, csr, eval) use only the protocol: ``complete`` for a LIST of
(messages, prefix) jobs, ``complete_forks`` to continue one shared prefix several ways, and the
small read-only facts below.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import jax

from ipo_jax.checkpoint.init import model_config, tokenizer_dir_for
from ipo_jax.data.tokenizer import load_tokenizer
from ipo_jax.distributed import share_devices
from ipo_jax.http import json_object_setting
from ipo_jax.memory import format_bytes, host_memory_bytes
from ipo_jax.models.decoder import KVCache
from ipo_jax.rollout.completion import Completion
from ipo_jax.rollout.http import HttpPolicy
from ipo_jax.rollout.local import LocalPolicy, load_sampler
from ipo_jax.rollout.tokens import Job, Messages
from ipo_jax.sampling import Fork, SamplingConfig
from ipo_jax.sharding import make_mesh

BACKENDS = ("local", "http")


class Policy(Protocol):
    """What the pipeline, csr and eval ask of a policy (module docstring)."""

    policy_id: str  # what records name the policy by
    sampling: SamplingConfig  # the decoding settings (each call's seed is its own)

    @property
    def max_prompt_tokens(self) -> int | None:
        """The longest prompt (chat prompt + completion prefix) it takes, None for no limit."""
        ...

    @property
    def forks_prefix(self) -> bool:
        """Whether `complete_forks` prefills a shared prefix once (else it gains nothing over
        `complete`, which can batch rows of different prefixes together)."""
        ...

    def complete(self, jobs: Sequence[Job], seed: int, row_seeds: Sequence[int] | None = None) -> list[Completion]:
        """One `Completion` per (messages, prefix) job, in order; the prefix is text or token ids
        (used as they are).  Row r samples from ``row_seeds[r]`` when given, else from
        ``ipo_jax.sampling.row_seed(seed, r)``."""
        ...

    def complete_forks(self, messages: Messages, prefix_ids: Sequence[int], forks: Sequence[Fork], seed: int
                       ) -> list[list[Completion]]:
        """For each `ipo_jax.sampling.Fork` f, f.n completions of the chat prompt +
        ``prefix_ids[:f.cut]`` + f.suffix: the completions of `complete` on those rows
        (fork-major) under `seed`, a fork's own ``row_seeds`` taking the place of the defaults."""
        ...

    def encode_text(self, text: str) -> list[int]:
        """A piece of running text (a trigger) as ids, no special tokens added."""
        ...

    def decode(self, ids: Sequence[int]) -> str:
        """The one ids -> text of completions (special tokens dropped, no clean-up of spaces)."""
        ...

    def count_tokens(self, text: str) -> int: ...

    def prompt_tokens(self, messages: Messages) -> int:
        """Length of the rendered chat prompt (generation prompt included), in tokens."""
        ...

    def describe(self) -> dict[str, Any]:
        """For a run's provenance: ``backend`` (local | http), ``id``, ``endpoint`` (http),
        ``model`` and ``server`` (what an HTTP server says about itself; None in-process)."""
        ...


def load_policy_tokenizer(config):
    """The policy's tokenizer: ``config.tokenizer``, or an ``hf:`` ``model.init``'s own."""
    return load_tokenizer(tokenizer_dir_for(config.tokenizer, config.model.init))


def build_policy(config) -> Policy:
    """The config's policy: with ``policy.backend`` ``local`` (the default, and for configs
    without a ``policy`` section) the ``model``, ``tokenizer``, ``mesh``, ``sampler`` and
    ``sampling`` sections make a `LocalPolicy`; with ``http`` an `HttpPolicy` on
    ``policy.base_url`` with the same tokenizer and ``sampling`` settings (nothing is loaded on a
    device).  Fields: ipo_jax/rollout/config.py."""
    section = config.get("policy")
    backend = section.backend if section is not None else "local"
    if backend not in BACKENDS:
        raise ValueError(f"config.policy.backend is {backend!r}; expected 'local' or 'http'")
    tokenizer = load_policy_tokenizer(config)
    sampling = SamplingConfig(temperature=config.sampling.temperature, top_p=config.sampling.top_p,
                              top_k=config.sampling.top_k, max_new_tokens=config.sampling.max_new_tokens)
    if backend == "http":
        if not section.base_url or not section.model:
            raise ValueError("config.policy.backend 'http' needs config.policy.base_url (e.g. http://127.0.0.1:8000/v1) "
                             "and config.policy.model (the served model's name)")
        return HttpPolicy(tokenizer, sampling, base_url=section.base_url, model=section.model,
                          api_key_env=section.api_key_env or None, timeout=section.timeout,
                          max_retries=section.max_retries, backoff=section.backoff, max_backoff=section.max_backoff,
                          concurrency=section.concurrency,
                          extra_body=json_object_setting(section.extra_body, "config.policy.extra_body"),
                          max_prompt_tokens=config.sampler.max_prompt_length)
    model_cfg = model_config(config.model.init, param_dtype=config.model.param_dtype, dtype=config.model.dtype,
                             vocab_needed=len(tokenizer))
    context = model_cfg.max_position_embeddings
    if sampling.max_new_tokens >= context:  # no prompt could be continued that far: say so before the model loads
        raise ValueError(f"config.sampling.max_new_tokens is {sampling.max_new_tokens:,}, but the context of "
                         f"{config.model.init} is {context:,} positions (max_position_embeddings) and a row holds the "
                         f"prompt too; expected at most {context - 1:,}, less the longest prompt")
    check_cache_fits_host(model_cfg, config.sampler.batch_size, config.sampler.max_prompt_length + sampling.max_new_tokens)
    # this process's devices: with several processes each samples its own share of the prompts
    mesh = make_mesh(dict(config.mesh), devices=share_devices())
    sampler = load_sampler(config.model.init, tokenizer, mesh=mesh, param_dtype=config.model.param_dtype,
                           dtype=config.model.dtype, batch_size=config.sampler.batch_size,
                           max_prompt_length=config.sampler.max_prompt_length,
                           chunk_tokens=config.sampler.chunk_tokens,
                           continuous_batching=config.sampler.get("continuous_batching", True))
    return LocalPolicy(sampler, tokenizer, sampling, policy_id=config.model.init)


def check_cache_fits_host(model_cfg, batch_size: int, row_length: int) -> None:
    """On CPU devices (which share the host's memory) the sampler's KV cache -- `batch_size` rows
    of `row_length` positions -- must fit the host, checked before the model loads; an
    accelerator's memory is `ipo-jax plan`'s to check."""
    if any(d.platform != "cpu" for d in jax.local_devices()):
        return
    needed, memory = KVCache.nbytes(model_cfg, batch_size, row_length), host_memory_bytes()
    if needed > memory:
        raise ValueError(f"the sampler's KV cache needs {format_bytes(needed)} (sampler.batch_size {batch_size:,} rows x "
                         f"{row_length:,} positions: sampler.max_prompt_length + sampling.max_new_tokens) but this host "
                         f"has {format_bytes(memory)}; lower sampler.batch_size")


__all__ = ["BACKENDS", "Policy", "build_policy", "check_cache_fits_host", "load_policy_tokenizer"]
