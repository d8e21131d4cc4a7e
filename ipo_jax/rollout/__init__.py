"""Rollouts: the policy and how a completion is read.

    policy.py      the `Policy` protocol (complete, complete_forks, ...) and `build_policy(config)`
    local.py       `LocalPolicy`: our JAX sampler in this process; `load_sampler`, the one way a
                   model spec becomes a sampler (the policy, the local LLM judge and serve use it)
    http.py        `HttpPolicy`: an OpenAI-compatible /v1/completions endpoint, one request per row
    tokens.py      what both share: prompt ids, decode, the rows of prefix forks
    completion.py  `Completion`, the one reasoning splitter, the one refusal rule `is_refusal`
    config.py      the policy's config sections

Used by the pipeline and eval; imports nothing from either, nor from judging (HTTP goes through
`ipo_jax.http`)."""

from ipo_jax.rollout.completion import (
    REFUSAL_PREFIXES,
    Completion,
    is_refusal,
    reasoning_span,
    split_completion,
    strip_thinking,
)
from ipo_jax.rollout.http import HttpPolicy
from ipo_jax.rollout.local import LocalPolicy, load_sampler
from ipo_jax.rollout.policy import Policy, build_policy, load_policy_tokenizer

__all__ = ["REFUSAL_PREFIXES", "Completion", "HttpPolicy", "LocalPolicy", "Policy", "build_policy", "is_refusal",
           "load_policy_tokenizer", "load_sampler", "reasoning_span", "split_completion", "strip_thinking"]
