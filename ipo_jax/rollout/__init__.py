"""Rollouts: the policy (`policy.Policy`, `Completion`) and how a completion is read
(`completion`: the one reasoning splitter, the one refusal rule `is_refusal`).  Used by the pipeline and eval;
imports nothing from either."""

from ipo_jax.rollout.completion import REFUSAL_PREFIXES, is_refusal, reasoning_span, split_completion, strip_thinking
from ipo_jax.rollout.policy import Completion, Policy, build_policy

__all__ = ["REFUSAL_PREFIXES", "Completion", "Policy", "build_policy", "is_refusal", "reasoning_span", "split_completion",
           "strip_thinking"]
