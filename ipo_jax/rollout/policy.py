"""The policy as the pipeline and eval see it: chat messages (and a completion prefix) in,
`Completion` records out, through our in-process sampler.

`build_policy(config)` makes one from the config's model, tokenizer, mesh, sampler and sampling
sections.  `Policy.complete(jobs, seed)` takes a LIST of (messages, prefix) jobs and returns one
`Completion` per job, in order, from one batched ``sampler.generate`` call.

Token-exact use (the pair builder): a job's prefix may be token ids instead of text; they are
appended to the prompt ids as they are (never re-tokenised), and each `Completion` carries the
ids as sampled (`ids`: the end-of-turn id included when finish_reason is "stop" because the
model produced it). `decode` is the one ids -> text used for completions (special tokens such
as the end-of-turn id dropped, no clean-up of spaces), so text offsets and ids agree;
`encode_text` tokenises a piece of running text (a trigger) with no special tokens added.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence


@dataclasses.dataclass(frozen=True)
class Completion:
    text: str
    finish_reason: str  # stop | length (ipo_jax.sampling.FINISH_REASONS)
    ids: tuple[int, ...] = ()  # the sampled ids, end-of-turn id included when the model produced it


class Policy:
    """Text in, text out through the sampler: continue `prefix` after the chat prompt."""

    def __init__(self, sampler, tokenizer, sampling, policy_id: str):
        from ipo_jax.data.tokenizer import encode_prompt, encode_text

        self.sampler, self.tokenizer, self.sampling, self.policy_id = sampler, tokenizer, sampling, policy_id
        self._encode_prompt, self._encode_text = encode_prompt, encode_text

    def count_tokens(self, text: str) -> int:
        return len(self._encode_text(self.tokenizer, text)) if text else 0

    def prompt_tokens(self, messages: list[dict]) -> int:
        """Length of the rendered chat prompt (generation prompt included), in tokens."""
        return len(self._encode_prompt(self.tokenizer, messages))

    @property
    def max_prompt_tokens(self) -> int | None:
        """The longest prompt (chat prompt + completion prefix) the sampler accepts (its largest
        prompt bucket), or None when the sampler names no limit."""
        buckets = getattr(self.sampler, "buckets", None)
        return max(buckets) if buckets else None

    def encode_text(self, text: str) -> list[int]:
        return self._encode_text(self.tokenizer, text) if text else []

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def complete(self, jobs: Sequence[tuple[list[dict], str | Sequence[int]]], seed: int) -> list[Completion]:
        prompts = []
        for messages, prefix in jobs:
            ids = self._encode_prompt(self.tokenizer, messages)
            prompts.append(ids + (self.encode_text(prefix) if isinstance(prefix, str) else [int(i) for i in prefix]))
        generations = self.sampler.generate(prompts, dataclasses.replace(self.sampling, seed=seed))
        return [Completion(self.decode(g.tokens), g.finish_reason, tuple(g.completion_ids)) for g in generations]


def build_policy(config) -> Policy:
    """The config's model + tokenizer + sampler + sampling settings (the ``model``,
    ``tokenizer``, ``mesh``, ``sampler`` and ``sampling`` sections of the pipeline and eval
    configs) as a `Policy`."""
    from ipo_jax.checkpoint.init import load_model, tokenizer_dir_for
    from ipo_jax.data.tokenizer import load_tokenizer, stop_token_ids
    from ipo_jax.sampling import Sampler, SamplingConfig
    from ipo_jax.sharding import make_mesh

    tokenizer = load_tokenizer(tokenizer_dir_for(config.tokenizer, config.model.init))
    mesh = make_mesh(dict(config.mesh))
    model = load_model(config.model.init, mesh=mesh, param_dtype=config.model.param_dtype, dtype=config.model.dtype,
                       vocab_needed=len(tokenizer))
    sampler = Sampler(model, eos_ids=stop_token_ids(tokenizer), pad_id=tokenizer.pad_token_id or 0,
                      batch_size=config.sampler.batch_size, max_prompt_length=config.sampler.max_prompt_length,
                      chunk_tokens=config.sampler.chunk_tokens, mesh=mesh)
    sampling = SamplingConfig(temperature=config.sampling.temperature, top_p=config.sampling.top_p,
                              top_k=config.sampling.top_k, max_new_tokens=config.sampling.max_new_tokens)
    return Policy(sampler, tokenizer, sampling, policy_id=config.model.init)


__all__ = ["Completion", "Policy", "build_policy"]
