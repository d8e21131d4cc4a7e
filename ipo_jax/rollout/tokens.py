"""The token side both policies share (`ipo_jax.rollout.local.LocalPolicy` and
`ipo_jax.rollout.http.HttpPolicy`): chat messages and a completion prefix in, prompt ids out;
ids back to text; and the rows a set of prefix forks spells out.  Sampling is each policy's own.

Prompt ids.  A job's prompt is ``encode_prompt(tokenizer, messages)`` (the chat template with its
generation prompt) followed by the prefix: token ids as they are (never re-tokenised), or text
encoded without special tokens (`encode_text`).  `decode` is the one ids -> text of completions
(special tokens such as the end-of-turn id dropped, no clean-up of spaces), so text offsets and
ids agree.

Fork rows.  ``complete_forks(messages, prefix_ids, forks, seed)`` is, row for row, `complete` on
the flattened jobs ``[(messages, prefix_ids[:f.cut] + f.suffix)] * f.n`` (fork-major); flattened
row r samples from ``f.row_seeds[j]`` when the fork names its row seeds, else from
``row_seed(seed, r)`` -- `complete`'s own default.  `fork_rows` spells those rows and seeds out
and `group_rows` cuts the flat results back into one list per fork.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from ipo_jax.data.tokenizer import encode_prompt, encode_text
from ipo_jax.sampling import Fork, SamplingConfig, row_seed

Messages = list[dict[str, str]]
Job = tuple[Messages, "str | Sequence[int]"]  # (chat messages, completion prefix: text or token ids)


@dataclasses.dataclass(frozen=True)
class ForkRows:
    """The rows of `complete_forks` spelled out: the chat prompt's ids, the whole prompt of every
    flattened row (fork-major) and its row seed."""

    prompt: list[int]
    prompts: list[list[int]]
    seeds: list[int]


def check_forks(forks: Sequence[Fork], prefix_length: int) -> None:
    """ValueError for a fork cut outside the completion prefix or with row seeds that do not
    match its row count."""
    for k, f in enumerate(forks):
        if not 0 <= f.cut <= prefix_length:
            raise ValueError(f"fork {k}: cut {f.cut} is outside the completion prefix (0..{prefix_length} tokens)")
        if f.row_seeds is not None and len(f.row_seeds) != f.n:
            raise ValueError(f"fork {k}: {len(f.row_seeds)} row seeds for {f.n} rows")


def fork_rows(prompt: Sequence[int], prefix_ids: Sequence[int], forks: Sequence[Fork], seed: int) -> ForkRows:
    """Every fork's rows as whole prompts with their row seeds (module docstring)."""
    prefix = [int(i) for i in prefix_ids]
    check_forks(forks, len(prefix))
    prompts, seeds = [], []
    for f in forks:
        for j in range(f.n):
            prompts.append(list(prompt) + prefix[: f.cut] + [int(i) for i in f.suffix])
            seeds.append(int(f.row_seeds[j]) if f.row_seeds is not None else row_seed(seed, len(seeds)))
    return ForkRows(list(prompt), prompts, seeds)


def group_rows(flat: Sequence[Any], forks: Sequence[Fork]) -> list[list[Any]]:
    """The flat results of `fork_rows`' rows, one list of f.n per fork, in order."""
    groups, start = [], 0
    for f in forks:
        groups.append(list(flat[start : start + f.n]))
        start += f.n
    return groups


class PolicyTokens:
    """The tokenizer side of a policy, with its sampling settings and id (module docstring)."""

    def __init__(self, tokenizer, sampling: SamplingConfig, policy_id: str):
        self.tokenizer, self.sampling, self.policy_id = tokenizer, sampling, policy_id

    def encode_text(self, text: str) -> list[int]:
        """A piece of running text (a trigger) as ids, no special tokens added."""
        return encode_text(self.tokenizer, text) if text else []

    def count_tokens(self, text: str) -> int:
        return len(self.encode_text(text))

    def prompt_tokens(self, messages: Messages) -> int:
        """Length of the rendered chat prompt (generation prompt included), in tokens."""
        return len(encode_prompt(self.tokenizer, messages))

    def chat_prompt_ids(self, messages: Messages) -> list[int]:
        """The rendered chat prompt's ids (generation prompt included)."""
        return encode_prompt(self.tokenizer, messages)

    def prompt_ids(self, messages: Messages, prefix: str | Sequence[int]) -> list[int]:
        """The chat prompt's ids followed by the prefix: ids as they are, text encoded."""
        ids = self.chat_prompt_ids(messages)
        return ids + (self.encode_text(prefix) if isinstance(prefix, str) else [int(i) for i in prefix])

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def with_seed(self, seed: int) -> SamplingConfig:
        """The policy's sampling settings under `seed`."""
        return dataclasses.replace(self.sampling, seed=seed)


__all__ = ["ForkRows", "Job", "Messages", "PolicyTokens", "check_forks", "fork_rows", "group_rows"]
