"""Rollouts: the policy (`policy.Policy`, `Completion`) and how a completion is read
(`completion`: the one reasoning splitter, the refusal check).  Used by the pipeline and eval;
imports nothing from either."""

from ipo_jax.rollout.completion import REFUSAL_PATTERNS, is_refusal, reasoning_span, split_completion, strip_thinking
from ipo_jax.rollout.policy import Completion, Policy, build_policy

__all__ = ["REFUSAL_PATTERNS", "Completion", "Policy", "build_policy", "is_refusal", "reasoning_span", "split_completion",
           "strip_thinking"]
