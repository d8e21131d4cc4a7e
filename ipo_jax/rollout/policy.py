"""The policy as the pipeline and eval see it: chat messages (and a completion prefix) in,
`Completion` records out, through our in-process sampler.

`build_policy(config)` makes one from the config's model, tokenizer, mesh, sampler and sampling
sections.  `Policy.complete(jobs, seed)` takes a LIST of (messages, prefix) jobs and returns one
`Completion` per job, in order, from one batched ``sampler.generate`` call.
`Policy.complete_forks(messages, prefix_ids, forks, seed)` continues ONE shared prefix several
ways (`ipo_jax.sampling.Fork`: cut, suffix, n, row seeds), prefilled once when the sampler forks
its KV cache (``sampler.generate_forks``), with the same completions as `complete`.

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

    def complete(self, jobs: Sequence[tuple[list[dict], str | Sequence[int]]], seed: int,
                 row_seeds: Sequence[int] | None = None) -> list[Completion]:
        """One `Completion` per job.  Row r samples from ``row_seeds[r]`` when given (a caller
        that wants a job's sample independent of which jobs share the call, e.g. eval keyed by
        item id), else from ``row_seed(seed, r)``."""
        if row_seeds is not None and len(row_seeds) != len(jobs):
            raise ValueError(f"{len(jobs)} jobs but {len(row_seeds)} row seeds")
        prompts = []
        for messages, prefix in jobs:
            ids = self._encode_prompt(self.tokenizer, messages)
            prompts.append(ids + (self.encode_text(prefix) if isinstance(prefix, str) else [int(i) for i in prefix]))
        # row r samples from row_seed(seed, r) (the sampler's default), the seed the HTTP policy
        # (ipo_jax/rollout/http.py) sends for row r: the two backends sample the same rows alike
        kwargs = {} if row_seeds is None else {"row_seeds": [int(x) for x in row_seeds]}
        generations = self.sampler.generate(prompts, dataclasses.replace(self.sampling, seed=seed), **kwargs)
        return [Completion(self.decode(g.tokens), g.finish_reason, tuple(g.completion_ids)) for g in generations]

    @property
    def forks_prefix(self) -> bool:
        """Whether `complete_forks` prefills the shared prefix once (the sampler forks its KV
        cache); False when it sends one whole prompt per row (then callers gain nothing over
        `complete`, which can batch rows of different prefixes together)."""
        return callable(getattr(self.sampler, "generate_forks", None))

    def complete_forks(self, messages: list[dict], prefix_ids: Sequence[int], forks: Sequence, seed: int
                       ) -> list[list[Completion]]:
        """Continue one shared completion prefix several ways: for each `ipo_jax.sampling.Fork`
        f, f.n completions of prompt ids + ``prefix_ids[:f.cut]`` + f.suffix, where the prompt
        ids are the chat prompt of `messages`.  `cut` counts tokens of `prefix_ids` (the
        completion prefix, never the chat prompt: 0 continues right after the generation
        prompt).  Returns one list of f.n `Completion`s per fork, in order.

        Same completions as `complete` on the flattened jobs ``[(messages, prefix_ids[:f.cut] +
        f.suffix)] * f.n`` (fork-major) under `seed`, where the flattened row r samples from
        ``f.row_seeds[j]`` when the fork names its row seeds and from
        ``ipo_jax.sampling.row_seed(seed, r)`` (`complete`'s own default) otherwise.  With a
        sampler that forks (`forks_prefix`) the prompt + prefix is prefilled once; otherwise
        each row is sent whole.
        """
        prompt = self._encode_prompt(self.tokenizer, messages)
        prefix = [int(i) for i in prefix_ids]
        for k, f in enumerate(forks):
            if not 0 <= f.cut <= len(prefix):
                raise ValueError(f"fork {k}: cut {f.cut} is outside the completion prefix (0..{len(prefix)} tokens)")
        config = dataclasses.replace(self.sampling, seed=seed)
        if self.forks_prefix:
            whole = [dataclasses.replace(f, cut=len(prompt) + f.cut, suffix=tuple(int(i) for i in f.suffix)) for f in forks]
            shared = prompt + prefix[: max((f.cut for f in forks), default=0)]
            groups = self.sampler.generate_forks(shared, whole, config)
        else:
            from ipo_jax.sampling import row_seed

            prompts = [prompt + prefix[: f.cut] + [int(i) for i in f.suffix] for f in forks for _ in range(f.n)]
            kwargs = {}
            if any(f.row_seeds is not None for f in forks):  # else the sampler's default is the same
                seeds, r = [], 0
                for f in forks:
                    seeds += [f.row_seeds[j] if f.row_seeds is not None else row_seed(seed, r + j) for j in range(f.n)]
                    r += f.n
                kwargs["row_seeds"] = seeds
            flat = self.sampler.generate(prompts, config, **kwargs) if prompts else []
            groups, start = [], 0
            for f in forks:
                groups.append(flat[start : start + f.n])
                start += f.n
        return [[Completion(self.decode(g.tokens), g.finish_reason, tuple(g.completion_ids)) for g in group]
                for group in groups]


def build_policy(config) -> Policy:
    """The config's policy as a `Policy`: with ``policy.backend`` ``local`` (the default, and
    for configs without a ``policy`` section) the ``model``, ``tokenizer``, ``mesh``,
    ``sampler`` and ``sampling`` sections make an in-process sampler; with ``http`` an
    `ipo_jax.rollout.http.HttpPolicy` on ``policy.base_url`` with the same tokenizer and
    ``sampling`` settings (nothing is loaded on a device).  Fields: ipo_jax/rollout/config.py."""
    import json

    from ipo_jax.checkpoint.init import load_model, tokenizer_dir_for
    from ipo_jax.data.tokenizer import load_tokenizer, stop_token_ids
    from ipo_jax.sampling import Sampler, SamplingConfig
    from ipo_jax.sharding import make_mesh

    section = config.get("policy")
    backend = section.backend if section is not None else "local"
    if backend not in ("local", "http"):
        raise ValueError(f"config.policy.backend is {backend!r}; expected 'local' or 'http'")
    tokenizer = load_tokenizer(tokenizer_dir_for(config.tokenizer, config.model.init))
    sampling = SamplingConfig(temperature=config.sampling.temperature, top_p=config.sampling.top_p,
                              top_k=config.sampling.top_k, max_new_tokens=config.sampling.max_new_tokens)
    if backend == "http":
        from ipo_jax.rollout.http import HttpPolicy

        if not section.base_url or not section.model:
            raise ValueError("config.policy.backend 'http' needs config.policy.base_url (e.g. http://127.0.0.1:8000/v1) "
                             "and config.policy.model (the served model's name)")
        extra_body = {}
        if section.extra_body.strip():
            try:
                extra_body = json.loads(section.extra_body)
            except json.JSONDecodeError as e:
                raise ValueError(f"config.policy.extra_body is not valid JSON ({e}): {section.extra_body!r}") from None
            if not isinstance(extra_body, dict):
                raise ValueError(f"config.policy.extra_body must be a JSON object: {section.extra_body!r}")
        return HttpPolicy(tokenizer, sampling, base_url=section.base_url, model=section.model,
                          api_key_env=section.api_key_env or None, timeout=section.timeout,
                          max_retries=section.max_retries, backoff=section.backoff, max_backoff=section.max_backoff,
                          concurrency=section.concurrency, extra_body=extra_body,
                          max_prompt_tokens=config.sampler.max_prompt_length)
    from ipo_jax.distributed import share_devices

    # this process's devices: with several processes each samples its own share of the prompts
    mesh = make_mesh(dict(config.mesh), devices=share_devices())
    model = load_model(config.model.init, mesh=mesh, param_dtype=config.model.param_dtype, dtype=config.model.dtype,
                       vocab_needed=len(tokenizer))
    sampler = Sampler(model, eos_ids=stop_token_ids(tokenizer), pad_id=tokenizer.pad_token_id or 0,
                      batch_size=config.sampler.batch_size, max_prompt_length=config.sampler.max_prompt_length,
                      chunk_tokens=config.sampler.chunk_tokens, mesh=mesh,
                      continuous_batching=config.sampler.get("continuous_batching", True))
    return Policy(sampler, tokenizer, sampling, policy_id=config.model.init)


__all__ = ["Completion", "Policy", "build_policy"]
