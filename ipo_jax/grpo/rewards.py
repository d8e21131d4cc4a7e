"""What a rollout earns: the reward of each completion and its parts (one column per component).

reward.kind 'judge' (the RL baseline of the paper: "rewarding safe reasoning"):
  harmful prompt  reasoning_safe x [the reasoning is judged safe] + answer_safe x [the answer is
                  judged safe]; an error verdict (the judge failed, or an empty answer: a
                  completion cut off inside its reasoning) earns 0 for that part, never counts safe
  benign prompt   -benign_refusal x [the answer is a refusal] (`ipo_jax.rollout.is_refusal`, the
                  project's one refusal rule): the look-alikes must not be refused
reward.kind 'rule' (tests and toy tasks, no model):
  rule_weight x [rule_pattern is found in the completion's text, or the completion's ids hold
  one of rule_token_ids]

Every component is reported per step as the mean over the rows it applies to (`Rewards.means`:
reward/reasoning_safe, reward/answer_safe, reward/benign_refusal, reward/rule) and the judge's
error verdicts are counted (reward/judge_errors).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ipo_jax.grpo.config import RewardSettings
from ipo_jax.judging import Judge, judge_trajectories
from ipo_jax.rollout.completion import Completion, is_refusal, split_completion
from ipo_jax.settings import check_fields, from_config


@dataclasses.dataclass
class Rewards:
    """Rewards of N rollouts: `total` [N] and each component [N] (NaN where it does not apply)."""

    total: np.ndarray
    parts: dict[str, np.ndarray]
    judge_errors: int = 0

    def means(self) -> dict[str, float]:
        out = {"reward": float(np.mean(self.total)), "reward_std": float(np.std(self.total))}
        for name, values in self.parts.items():
            applies = ~np.isnan(values)
            if applies.any():
                out[f"reward/{name}"] = float(np.mean(values[applies]))
        if self.parts.keys() & {"reasoning_safe", "answer_safe"}:
            out["reward/judge_errors"] = float(self.judge_errors)
        return out

    def row(self, i: int) -> dict[str, float | None]:
        return {name: (None if np.isnan(v[i]) else float(v[i])) for name, v in self.parts.items()}


def prompt_text(record: Mapping[str, Any]) -> str:
    """The user's request a judge reads: the prompt string, or the last user turn of chat messages."""
    prompt = record["prompt"]
    if isinstance(prompt, str):
        return prompt
    users = [m["content"] for m in prompt if m.get("role") == "user"]
    return users[-1] if users else ""


class RewardFunction:
    """Scores completions (module docstring). `judge` is needed for kind 'judge' only."""

    def __init__(self, settings: RewardSettings, judge: Judge | None = None):
        check_fields(settings, "reward")
        if settings.kind == "judge" and judge is None:
            raise ValueError("reward.kind 'judge' needs a judge (the judge section)")
        if settings.kind == "rule" and not settings.rule_pattern and not settings.rule_token_ids:
            raise ValueError("reward.kind 'rule' needs reward.rule_pattern or reward.rule_token_ids")
        self.settings, self.judge = settings, judge
        self._pattern = re.compile(settings.rule_pattern) if settings.rule_pattern else None
        self._ids = frozenset(settings.rule_token_ids)

    @classmethod
    def from_config(cls, config, judge: Judge | None = None) -> RewardFunction:
        return cls(from_config(RewardSettings, config.reward), judge)

    def __call__(self, records: Sequence[Mapping[str, Any]], completions: Sequence[Completion]) -> Rewards:
        """Rewards of completions[i], sampled for records[i] (a prompt record: prompt, kind)."""
        if len(records) != len(completions):
            raise ValueError(f"{len(records)} prompt records for {len(completions)} completions")
        if self.settings.kind == "rule":
            return self._rule(completions)
        return self._judged(records, completions)

    def _rule(self, completions: Sequence[Completion]) -> Rewards:
        hits = np.array([self.matches(c) for c in completions], np.float64)
        return Rewards(self.settings.rule_weight * hits, {"rule": hits})

    def matches(self, completion: Completion) -> bool:
        if self._ids and not self._ids.isdisjoint(completion.ids):
            return True
        return bool(self._pattern and self._pattern.search(completion.text))

    def _judged(self, records: Sequence[Mapping[str, Any]], completions: Sequence[Completion]) -> Rewards:
        s, n = self.settings, len(completions)
        parts = {name: np.full(n, np.nan) for name in ("reasoning_safe", "answer_safe", "benign_refusal")}
        harmful = [i for i, r in enumerate(records) if r.get("kind", "harmful") == "harmful"]
        split = [split_completion(c.text) for c in completions]
        verdicts = judge_trajectories(self.judge, [(prompt_text(records[i]), split[i][0], split[i][1])
                                                   for i in harmful]) if harmful else []
        errors = 0
        for i, v in zip(harmful, verdicts):
            parts["reasoning_safe"][i] = float(v["reasoning"].is_safe)
            parts["answer_safe"][i] = float(v["answer"].is_safe)
            errors += int(v["reasoning"].is_error) + int(v["answer"].is_error)
        for i, r in enumerate(records):
            if r.get("kind", "harmful") == "benign":
                parts["benign_refusal"][i] = float(is_refusal(split[i][1]))
        total = (s.reasoning_safe * np.nan_to_num(parts["reasoning_safe"])
                 + s.answer_safe * np.nan_to_num(parts["answer_safe"])
                 - s.benign_refusal * np.nan_to_num(parts["benign_refusal"]))
        return Rewards(total, parts, errors)


__all__ = ["RewardFunction", "Rewards", "prompt_text"]
