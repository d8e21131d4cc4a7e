"""The policy's settings, shared by the pipeline and eval configs: the ``policy``, ``model``,
``sampling``, ``sampler`` and ``mesh`` sections (`ipo_jax.rollout.build_policy` reads them).
Each section is a dataclass whose fields carry default, help and range check (ipo_jax/settings.py).

``policy.backend`` chooses where rollouts are sampled: ``local`` (our JAX sampler in this process,
on ``model.init``) or ``http`` (an OpenAI-compatible ``/v1/completions`` endpoint: ``ipo-jax
serve``, vLLM, SGLang; the request fields it relies on are in `ipo_jax.rollout.http`).  With
``http`` the ``sampling`` section still sets the decoding, the tokenizer (``tokenizer``, or an
``hf:`` ``model.init``'s own) still renders prompts into token ids, and ``sampler.max_prompt_length``
is the longest prompt the pipeline sends; ``model.init`` is not loaded."""

from __future__ import annotations

import dataclasses

import ml_collections

from ipo_jax.models.config import DTYPES
from ipo_jax.sampling.types import SamplerSettings, SamplingConfig
from ipo_jax.settings import (
    boolean,
    help_of,
    http_retry_settings,
    int_at_least,
    json_object_text,
    mesh_axis,
    number_in,
    one_of,
    rules_of,
    section,
    setting,
    tokens,
)
from ipo_jax.validation import model_spec

BACKENDS = ("local", "http")


@dataclasses.dataclass(frozen=True)
class PolicySettings:
    """Where rollouts are sampled; the http fields are HttpPolicy's (ipo_jax/rollout/http.py)."""

    backend: str = setting("local", "local: our sampler on model.init, in this process; http: an OpenAI-compatible "
                           "/v1/completions endpoint", one_of(*BACKENDS))
    base_url: str = setting("", "http: e.g. http://127.0.0.1:8000/v1 (ipo-jax serve, vLLM, SGLang)")
    model: str = setting("", "http: the served model's name (ipo-jax serve: its --model spec; also the pairs' policy id)")
    api_key_env: str = setting("OPENAI_API_KEY", "http: the variable holding the key (never logged; unset = no key)")
    timeout: float = setting(600.0, "http: seconds per attempt (one whole generation)", number_in(0, low_open=True))
    max_retries: int = http_retry_settings()["max_retries"]
    backoff: float = http_retry_settings()["backoff"]
    max_backoff: float = http_retry_settings()["max_backoff"]
    concurrency: int = setting(32, "http: requests in flight at once (one request per sampled row)", int_at_least(1))
    extra_body: str = setting("", "http: a JSON object merged into each request; a vLLM without return_token_ids: "
                              '\'{"logprobs": 0, "return_tokens_as_token_ids": true}\'', json_object_text)


@dataclasses.dataclass(frozen=True)
class PolicyModelSettings:
    init: str = setting("", "the policy: 'hf:<dir>', 'orbax:<dir>' (e.g. a run's final/) or 'preset:<name>'", model_spec)
    param_dtype: str = setting("float32", "the weights' dtype as loaded (bfloat16 halves their memory)", one_of(*DTYPES))
    dtype: str = setting("float32", "compute dtype of activations and matmuls (bfloat16 on accelerators)",
                         one_of(*DTYPES))


_SAMPLING = SamplingConfig  # the sampler's own defaults; the config's sampling section is built from them


@dataclasses.dataclass(frozen=True)
class SamplingSettings:
    """The decoding (`ipo_jax.sampling.SamplingConfig` less the seed, which each stage derives)."""

    temperature: float = setting(_SAMPLING.temperature, "the paper's decoding: temperature 0.6, top-p 0.95 "
                                 "(0 = greedy)", number_in(0))
    top_p: float = setting(_SAMPLING.top_p, "nucleus sampling (1.0 = off)", number_in(0, 1, low_open=True))
    top_k: int = setting(_SAMPLING.top_k, "top-k sampling (0 = off)", int_at_least(0, " (0 = no top-k)"))
    max_new_tokens: int = setting(_SAMPLING.max_new_tokens, "tokens generated at most per completion", tokens(1))


@dataclasses.dataclass(frozen=True)
class SamplerBatchSettings:
    """The in-process sampler's batching (`ipo_jax.sampling.SamplerSettings`, whose defaults these are)."""

    batch_size: int = setting(SamplerSettings.batch_size, "rows sampled at once", int_at_least(1))
    chunk_tokens: int = setting(SamplerSettings.chunk_tokens, "decode steps per compiled chunk (finished rows "
                                "are checked between chunks)", tokens(1))
    max_prompt_length: int = setting(SamplerSettings.max_prompt_length, "the longest prompt, in tokens (longer "
                                     "prompts are refused or, for interventions, dropped)", tokens(1))
    continuous_batching: bool = setting(
        SamplerSettings.continuous_batching, "a row that finishes takes the next prompt at the next chunk (instead "
        "of idling until its batch's longest row ends); the same tokens per prompt either way", boolean)


@dataclasses.dataclass(frozen=True)
class MeshSettings:
    """The device mesh the model is sharded on (ipo_jax/sharding): sampling defaults to data parallel."""

    data: int = setting(-1, "data-parallel axis (-1: all remaining devices)", mesh_axis)
    fsdp: int = setting(1, "fully sharded weights axis (-1: all remaining devices)", mesh_axis)
    tensor: int = setting(1, "tensor-parallel axis", mesh_axis)


# section name -> settings dataclass, in the order the config shows them
POLICY_SECTIONS = {"policy": PolicySettings, "model": PolicyModelSettings, "sampling": SamplingSettings,
                   "sampler": SamplerBatchSettings, "mesh": MeshSettings}


def add_policy_sections(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Add the ``policy``, ``model``, ``sampling``, ``sampler`` and ``mesh`` sections to `c`; returns `c`."""
    for name, settings_type in POLICY_SECTIONS.items():
        setattr(c, name, section(settings_type))
    return c


def policy_rules() -> dict:
    """{'sampling.top_p': check, ...}; policy.base_url / policy.model are checked with the backend
    (ipo_jax/validation.py)."""
    return {k: v for name, t in POLICY_SECTIONS.items() for k, v in rules_of(t, name).items()}


def policy_help() -> dict[str, str]:
    return {k: v for name, t in POLICY_SECTIONS.items() for k, v in help_of(t, name).items()}


__all__ = ["BACKENDS", "MeshSettings", "POLICY_SECTIONS", "PolicyModelSettings", "PolicySettings",
           "SamplerBatchSettings", "SamplingSettings", "add_policy_sections", "policy_help", "policy_rules"]
