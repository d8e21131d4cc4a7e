"""The policy in this process: our JAX sampler on a local checkpoint.

* `load_sampler(model_spec, tokenizer, mesh=..., ...)` -- THE one way a model spec (``hf:DIR``,
  ``orbax:DIR``, ``preset:NAME``) becomes a `Sampler`: the model loaded (onto `mesh` when given)
  with room for the tokenizer's vocabulary, the tokenizer's end-of-turn ids as its stop ids.
  Used by the local policy (`ipo_jax.rollout.build_policy`), the local LLM judge
  (`ipo_jax.judging.build`) and ``ipo-jax serve``.
* `LocalPolicy(sampler, tokenizer, sampling, policy_id)` -- the `ipo_jax.rollout.Policy` protocol
  on a sampler.  ``complete(jobs, seed)`` renders every job's prompt (`ipo_jax.rollout.tokens`)
  and samples them in ONE ``sampler.generate`` call; ``complete_forks`` prefills the shared
  prefix once and forks the KV cache (``sampler.generate_forks``) when the sampler can
  (`forks_prefix`), else sends every row whole in one ``generate`` call.  Both give the same
  completions for the same rows and seeds (the sampler's contract).

Each `Completion` carries the ids as sampled (``ids``: the end-of-turn id included when the
finish reason is "stop" because the model produced it) and their text without that id.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from ipo_jax.checkpoint.init import load_model
from ipo_jax.data.tokenizer import stop_token_ids
from ipo_jax.rollout.completion import Completion
from ipo_jax.rollout.tokens import Job, Messages, PolicyTokens, check_forks, fork_rows, group_rows
from ipo_jax.sampling import Fork, Generation, Sampler, SamplingConfig


@runtime_checkable
class ForkingSampler(Protocol):
    """A sampler that prefills a shared prefix once and forks its KV cache (`Sampler` does; a
    stand-in sampler may not)."""

    def generate_forks(self, prefix: Sequence[int], forks: Sequence[Fork], config: SamplingConfig,
                       stop_strings: Sequence[str] = ()) -> list[list[Generation]]: ...


@runtime_checkable
class BucketedSampler(Protocol):
    """A sampler that names its prompt buckets (`Sampler` does): the largest is its longest prompt."""

    buckets: Sequence[int]


def prompt_limit(sampler, max_new_tokens: int) -> int | None:
    """The longest prompt `sampler` takes when it may add `max_new_tokens`: its largest prompt
    bucket and, for a `Sampler` (which refuses a row that would run past the model's context), at
    most the context less `max_new_tokens`.  None when the sampler names no buckets."""
    if not isinstance(sampler, BucketedSampler) or not sampler.buckets:
        return None
    limit = max(int(b) for b in sampler.buckets)
    if isinstance(sampler, Sampler):
        limit = min(limit, sampler.cfg.max_position_embeddings - max_new_tokens)
    return max(0, limit)


def load_sampler(model_spec: str, tokenizer, *, mesh=None, param_dtype: str = "float32", dtype: str = "float32",
                 batch_size: int = 8, max_prompt_length: int = 4096, chunk_tokens: int = 32,
                 continuous_batching: bool = True, decodes_text: bool = False) -> Sampler:
    """`model_spec` loaded (onto `mesh` when given; `mesh=None`: one device) behind a `Sampler`
    that stops on the tokenizer's end-of-turn ids.  `decodes_text`: the sampler decodes each row
    with the tokenizer (``Generation.text``, and stop strings need it; ``ipo-jax serve``); the
    policy and the judge decode themselves.  The model's config is ``sampler.cfg`` (context,
    vocabulary)."""
    model = load_model(model_spec, mesh=mesh, param_dtype=param_dtype, dtype=dtype, vocab_needed=len(tokenizer))

    def decode(ids: Sequence[int]) -> str:
        return tokenizer.decode(list(ids), skip_special_tokens=True, clean_up_tokenization_spaces=False)

    return Sampler(model, eos_ids=stop_token_ids(tokenizer), pad_id=tokenizer.pad_token_id or 0,
                   batch_size=batch_size, max_prompt_length=max_prompt_length, chunk_tokens=chunk_tokens, mesh=mesh,
                   decode=decode if decodes_text else None, continuous_batching=continuous_batching)


class LocalPolicy(PolicyTokens):
    """The `ipo_jax.rollout.Policy` protocol through a sampler in this process (module docstring)."""

    def __init__(self, sampler, tokenizer, sampling: SamplingConfig, policy_id: str):
        super().__init__(tokenizer, sampling, policy_id)
        self.sampler = sampler

    @property
    def max_prompt_tokens(self) -> int | None:
        """The longest prompt (chat prompt + completion prefix) the sampler accepts
        (`prompt_limit` at ``sampling.max_new_tokens``), or None when it names no limit."""
        return prompt_limit(self.sampler, self.sampling.max_new_tokens)

    @property
    def forks_prefix(self) -> bool:
        """Whether `complete_forks` prefills the shared prefix once (the sampler forks its KV
        cache); False when it sends one whole prompt per row (then callers gain nothing over
        `complete`, which can batch rows of different prefixes together)."""
        return isinstance(self.sampler, ForkingSampler)

    def _completions(self, generations: Sequence[Generation]) -> list[Completion]:
        return [Completion(self.decode(g.tokens), g.finish_reason, tuple(g.completion_ids)) for g in generations]

    def complete(self, jobs: Sequence[Job], seed: int, row_seeds: Sequence[int] | None = None) -> list[Completion]:
        """One `Completion` per job.  Row r samples from ``row_seeds[r]`` when given (a caller
        that wants a job's sample independent of which jobs share the call, e.g. eval keyed by
        item id), else from ``row_seed(seed, r)``."""
        if row_seeds is not None and len(row_seeds) != len(jobs):
            raise ValueError(f"{len(jobs)} jobs but {len(row_seeds)} row seeds")
        prompts = [self.prompt_ids(messages, prefix) for messages, prefix in jobs]
        # row r samples from row_seed(seed, r) (the sampler's default), the seed the HTTP policy
        # (ipo_jax/rollout/http.py) sends for row r: the two backends sample the same rows alike
        kwargs = {} if row_seeds is None else {"row_seeds": [int(x) for x in row_seeds]}
        return self._completions(self.sampler.generate(prompts, self.with_seed(seed), **kwargs))

    def complete_forks(self, messages: Messages, prefix_ids: Sequence[int], forks: Sequence[Fork], seed: int
                       ) -> list[list[Completion]]:
        """Continue one shared completion prefix several ways: for each `ipo_jax.sampling.Fork`
        f, f.n completions of the chat prompt of `messages` + ``prefix_ids[:f.cut]`` + f.suffix
        (`cut` counts tokens of `prefix_ids`, never the chat prompt: 0 continues right after the
        generation prompt).  Returns one list of f.n `Completion`s per fork, in order: the
        completions of `complete` on the flattened rows (`ipo_jax.rollout.tokens`)."""
        prompt = self.chat_prompt_ids(messages)
        prefix = [int(i) for i in prefix_ids]
        config = self.with_seed(seed)
        if self.forks_prefix:
            check_forks(forks, len(prefix))
            whole = [dataclasses.replace(f, cut=len(prompt) + f.cut, suffix=tuple(int(i) for i in f.suffix))
                     for f in forks]
            shared = prompt + prefix[: max((f.cut for f in forks), default=0)]
            groups = self.sampler.generate_forks(shared, whole, config)
            return [self._completions(group) for group in groups]
        rows = fork_rows(prompt, prefix, forks, seed)
        # without named row seeds the sampler's default (row_seed(seed, r)) is the same
        kwargs = {"row_seeds": rows.seeds} if any(f.row_seeds is not None for f in forks) else {}
        flat = self.sampler.generate(rows.prompts, config, **kwargs) if rows.prompts else []
        return group_rows(self._completions(flat), forks)

    def describe(self) -> dict[str, Any]:
        """Where the completions come from, for a run's provenance: this process's sampler."""
        return {"backend": "local", "id": self.policy_id, "endpoint": None, "model": self.policy_id, "server": None}

    def __repr__(self) -> str:
        return f"LocalPolicy(policy_id={self.policy_id!r})"


__all__ = ["BucketedSampler", "ForkingSampler", "LocalPolicy", "load_sampler", "prompt_limit"]
