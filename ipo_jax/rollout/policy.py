"""The policy as the pipeline and eval see it: chat messages (and a completion prefix) in,
`Completion` records out, through our in-process sampler.

`Policy.complete(jobs, seed)` takes a LIST of (messages, prefix) jobs and returns one
`Completion` per job, in order, from one batched ``sampler.generate`` call.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence


@dataclasses.dataclass(frozen=True)
class Completion:
    text: str
    finish_reason: str  # eos | stop | length


class Policy:
    """Text in, text out through the sampler: continue `prefix` after the chat prompt."""

    def __init__(self, sampler, tokenizer, sampling, policy_id: str):
        from ipo_jax.data.tokenizer import encode_prompt, encode_text

        self.sampler, self.tokenizer, self.sampling, self.policy_id = sampler, tokenizer, sampling, policy_id
        self._encode_prompt, self._encode_text = encode_prompt, encode_text

    def count_tokens(self, text: str) -> int:
        return len(self._encode_text(self.tokenizer, text)) if text else 0

    def complete(self, jobs: Sequence[tuple[list[dict], str]], seed: int) -> list[Completion]:
        prompts = []
        for messages, prefix in jobs:
            ids = self._encode_prompt(self.tokenizer, messages)
            prompts.append(ids + (self._encode_text(self.tokenizer, prefix) if prefix else []))
        generations = self.sampler.generate(prompts, dataclasses.replace(self.sampling, seed=seed))
        return [Completion(self.tokenizer.decode(g.tokens, skip_special_tokens=True), g.finish_reason) for g in generations]


__all__ = ["Completion", "Policy"]
