"""The policy behind an OpenAI-compatible ``/v1/completions`` endpoint (`HttpPolicy`): the same
interface as the in-process `ipo_jax.rollout.policy.Policy`, with sampling done by a server
(``ipo-jax serve``, vLLM, SGLang, ...) and prompts, decoding and token counting done here with
the local tokenizer -- the pipeline keeps exact token paths, so prompts go out as token ids and
completions come back as token ids.

Requests.  ``complete(jobs, seed)`` renders job r's prompt exactly as the in-process policy does
(``encode_prompt(messages)`` + the prefix ids, or the prefix text encoded without special
tokens) and sends one ``POST {base_url}/completions`` per job, at most ``concurrency`` in
flight, with the JSON body::

    {"model": <policy.model>, "prompt": [<token ids>], "max_tokens": sampling.max_new_tokens,
     "temperature": sampling.temperature, "top_p": sampling.top_p,
     "top_k": sampling.top_k (only when > 0), "seed": row_seed(seed, r),
     "return_token_ids": true, **extra_body}

``row_seed(seed, r)`` (`ipo_jax.sampling.row_seed`) is the seed the in-process sampler gives row
r of the same call, so a server that samples a one-prompt request with seed S from the key
stream ``PRNGKey(S)`` -- ``ipo-jax serve`` does -- returns the tokens the in-process policy
would have sampled.  One request per row (rather than a list of prompts) because vLLM gives
every prompt of a list the same seed, which would make repeated prompts (benign candidates)
identical.

Responses.  The pipeline reads only ``choices[0].finish_reason`` (``"stop"``: an end-of-turn id
or a stop string; ``"length"``: ``max_tokens`` reached; anything else is an error) and the
sampled token ids, from ``choices[0].token_ids`` or, failing that, from
``choices[0].logprobs.tokens`` written as ``"token_id:<id>"`` strings.  The ids must include the
end-of-turn id when the row ended on one (vLLM and ``ipo-jax serve`` do); the completion's text
is decoded here from the ids (``choices[].text`` is ignored), so text offsets and ids agree
exactly as with the in-process policy.

Servers.
  * ``ipo-jax serve`` (`ipo_jax.serve`): all of the above; the same tokens as in-process at the
    same seeds (tested).
  * vLLM: token-id ``prompt`` lists, ``seed``, ``top_k`` and, in recent versions,
    ``return_token_ids`` -> ``choices[].token_ids``.  Older vLLM (no ``return_token_ids``;
    vLLM ignores request fields it does not know, with a warning): put ``{"logprobs": 0,
    "return_tokens_as_token_ids": true}`` in ``policy.extra_body`` and the ids are read from
    ``logprobs.tokens``.  vLLM's sampler is not ours, so the same seed gives other tokens than
    in-process (each run is still reproducible on one vLLM setup only as far as vLLM's seeding is).
  * SGLang: its OpenAI ``/v1/completions`` accepts token-id prompts and ``seed``; whether its
    response carries the completion ids depends on the version (not verified here).  Its native
    ``/generate`` (``input_ids`` in, ``meta_info.output_ids`` out) is not this protocol.
  * JetStream: named in issue #16 as serving this protocol; not verified here.  A server that
    returns no token ids in either place fails with an error naming both fields.

Code that samples token-id prompts directly (the csr stage calls ``policy.sampler.generate``)
gets `HttpSampler`: the same `Generation` records, one request per row with its row seed, the
call's sampling settings and its stop strings (``stop``).

Retries, backoff, Retry-After, the concurrency limit and key redaction are the judge's
(`ipo_jax.judging.chat.HttpTransport`).  A call in which any row fails after its retries raises
`PolicyBackendError` (one line: how many rows failed and the first error); the pipeline then
stops as for any crash and a rerun redoes the chunk.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ipo_jax.judging.chat import HttpTransport, _Failure, _snippet, response_object
from ipo_jax.rollout.policy import Completion, Policy

# Request fields HttpPolicy sets itself: extra_body may not override them.
RESERVED_FIELDS = ("model", "prompt", "max_tokens", "temperature", "top_p", "top_k", "seed", "n", "stream")
TOKEN_ID_PREFIX = "token_id:"  # vLLM's return_tokens_as_token_ids spelling of a logprobs token


class PolicyBackendError(ConnectionError):
    """Rows of a `complete` call that the endpoint did not answer (after retries) or answered
    with something that is not a completion; one line (exit code 2 from the CLI)."""


def completion_ids(body: bytes) -> tuple[list[int], str]:
    """(sampled token ids, finish_reason) of a ``/v1/completions`` response with one choice;
    raises `_Failure` (not retried) when the body is not such a response."""
    data = response_object(body)
    choices = data.get("choices")
    if not isinstance(choices, list) or len(choices) != 1 or not isinstance(choices[0], Mapping):
        raise _Failure(f"expected one choice, got: {_snippet(json.dumps(choices)[:1000])}", retryable=False)
    choice = choices[0]
    finish = choice.get("finish_reason")
    if finish not in ("stop", "length"):
        raise _Failure(f"choices[0].finish_reason is {finish!r}; expected 'stop' or 'length'", retryable=False)
    ids = choice.get("token_ids")
    if ids is None:
        tokens = (choice.get("logprobs") or {}).get("tokens") if isinstance(choice.get("logprobs"), Mapping) else None
        if isinstance(tokens, list) and all(isinstance(t, str) and t.startswith(TOKEN_ID_PREFIX) for t in tokens):
            try:
                ids = [int(t[len(TOKEN_ID_PREFIX):]) for t in tokens]
            except ValueError:
                ids = None
        if ids is None:
            raise _Failure("no token ids in the response: expected choices[0].token_ids (request return_token_ids) "
                           "or choices[0].logprobs.tokens as 'token_id:<id>' (logprobs + return_tokens_as_token_ids)",
                           retryable=False)
    if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids):
        raise _Failure(f"choices[0].token_ids is not a list of token ids: {_snippet(json.dumps(ids)[:1000])}",
                       retryable=False)
    return ids, finish


class HttpSampler:
    """`HttpPolicy`'s stand-in for `ipo_jax.sampling.Sampler.generate`, for code that samples
    token-id prompts directly (the csr stage): the same `Generation` records, each row one
    request with its row seed (``row_seeds[r]``, default ``row_seed(config.seed, r)`` as the
    in-process sampler), the config's settings and the stop strings."""

    def __init__(self, policy: HttpPolicy):
        self.policy = policy

    def generate(self, prompts: Sequence[Sequence[int]], config, stop_strings: Sequence[str] = (),
                 row_seeds: Sequence[int] | None = None) -> list:
        from ipo_jax.sampling import Generation, row_seed

        if any(len(p) == 0 for p in prompts):
            raise ValueError("empty prompt: every prompt needs at least one token")
        seeds = list(row_seeds) if row_seeds is not None else [row_seed(config.seed, r) for r in range(len(prompts))]
        out = []
        for ids, finish in self.policy.sample_rows(prompts, seeds, config, stop_strings):
            ended = finish == "stop" and ids and ids[-1] in self.policy._end_ids
            out.append(Generation(ids[:-1] if ended else ids, finish, None, ids[-1] if ended else None))
        return out


class HttpPolicy(Policy):
    """`Policy`'s interface over an OpenAI-compatible completions endpoint (module docstring).
    Prompt rendering, `decode`, `encode_text`, `count_tokens` and `prompt_tokens` are the
    in-process policy's (the same tokenizer); only sampling goes over HTTP."""

    def __init__(
        self,
        tokenizer,
        sampling,
        *,
        base_url: str,
        model: str,
        api_key_env: str | None = "OPENAI_API_KEY",
        timeout: float = 600.0,
        max_retries: int = 4,
        backoff: float = 1.0,
        max_backoff: float = 30.0,
        concurrency: int = 32,
        extra_body: Mapping[str, Any] | None = None,
        max_prompt_tokens: int | None = None,
        policy_id: str | None = None,
        sleep: Callable[[float], None] | None = None,
        clock: Callable[[], float] | None = None,
    ):
        from ipo_jax.data.tokenizer import stop_token_ids

        base = HttpTransport.check_base_url(base_url)
        if not isinstance(model, str) or not model:
            raise ValueError("policy.model must name the served model (ipo-jax serve: its --model spec)")
        if extra_body is not None and not isinstance(extra_body, Mapping):
            raise ValueError(f"policy.extra_body must be a JSON object, got {type(extra_body).__name__}")
        reserved = sorted(set(RESERVED_FIELDS) & set(extra_body or {}))
        if reserved:
            raise ValueError(f"policy.extra_body must not set {', '.join(reserved)} (the policy sets them)")
        super().__init__(None, tokenizer, sampling, policy_id=policy_id or model)
        self.sampler = HttpSampler(self)  # for callers that sample token ids directly (the csr stage)
        extra = {k: v for k, v in dict(sleep=sleep, clock=clock).items() if v is not None}
        self.transport = HttpTransport(
            base if base.endswith("/completions") else base + "/completions", api_key_env=api_key_env,
            timeout=timeout, max_retries=max_retries, backoff=backoff, max_backoff=max_backoff,
            concurrency=concurrency, name=f"policy http:{model}", **extra)
        self.model = model
        self.extra_body = dict(extra_body or {})
        self._max_prompt_tokens = max_prompt_tokens
        self._end_ids = set(stop_token_ids(tokenizer))

    @property
    def max_prompt_tokens(self) -> int | None:
        """The longest prompt the pipeline sends (``sampler.max_prompt_length`` of the config);
        the server may refuse shorter ones (its own context) with an HTTP 400."""
        return self._max_prompt_tokens

    def prompt_ids(self, messages: list[dict], prefix: str | Sequence[int]) -> list[int]:
        """The chat prompt's ids followed by the prefix: ids as they are, text encoded."""
        ids = self._encode_prompt(self.tokenizer, messages)
        return ids + (self.encode_text(prefix) if isinstance(prefix, str) else [int(i) for i in prefix])

    def payload(self, prompt: Sequence[int], seed: int, sampling=None, stop: Sequence[str] = ()) -> dict[str, Any]:
        """The request body of one row (module docstring); `sampling` defaults to the policy's."""
        s = sampling or self.sampling
        body = {**self.extra_body, "model": self.model, "prompt": list(prompt), "max_tokens": s.max_new_tokens,
                "temperature": s.temperature, "top_p": s.top_p, "seed": int(seed), "return_token_ids": True}
        if s.top_k > 0:
            body["top_k"] = s.top_k
        if stop:
            body["stop"] = list(stop)
        return body

    def _completion(self, ids: list[int], finish: str) -> Completion:
        # the end-of-turn id the row ended on is kept in ids and left out of the text, as in-process
        text_ids = ids[:-1] if finish == "stop" and ids and ids[-1] in self._end_ids else ids
        return Completion(self.decode(text_ids), finish, tuple(ids))

    def sample_rows(self, prompts: Sequence[Sequence[int]], row_seeds: Sequence[int], sampling=None,
                    stop: Sequence[str] = ()) -> list[tuple[list[int], str]]:
        """(sampled ids, finish_reason) per token-id prompt, row r sampled with seed
        ``row_seeds[r]``, one request each; raises `PolicyBackendError` when any row fails."""
        if len(prompts) != len(row_seeds):
            raise ValueError(f"{len(prompts)} prompts but {len(row_seeds)} row seeds")
        results = self.transport.map_concurrently(
            lambda r: self.transport.post(self.payload(prompts[r], row_seeds[r], sampling, stop), completion_ids),
            range(len(prompts)))
        failed = [(r, error) for r, (_, error) in enumerate(results) if error is not None]
        if failed:
            r, error = failed[0]
            raise PolicyBackendError(f"http policy: {len(failed)} of {len(prompts)} completions failed; row {r}: {error}")
        return [result for result, _ in results]

    def complete_rows(self, prompts: Sequence[Sequence[int]], row_seeds: Sequence[int]) -> list[Completion]:
        """One `Completion` per token-id prompt (`sample_rows` with the policy's sampling)."""
        return [self._completion(ids, finish) for ids, finish in self.sample_rows(prompts, row_seeds)]

    def complete(self, jobs: Sequence[tuple[list[dict], str | Sequence[int]]], seed: int,
                 row_seeds: Sequence[int] | None = None) -> list[Completion]:
        """`Policy.complete` over HTTP: row r's request carries ``row_seeds[r]`` when given,
        else ``row_seed(seed, r)``."""
        from ipo_jax.sampling import row_seed

        prompts = [self.prompt_ids(messages, prefix) for messages, prefix in jobs]
        if row_seeds is not None and len(row_seeds) != len(prompts):
            raise ValueError(f"{len(prompts)} jobs but {len(row_seeds)} row seeds")
        seeds = list(row_seeds) if row_seeds is not None else [row_seed(seed, r) for r in range(len(prompts))]
        return self.complete_rows(prompts, seeds)

    @property
    def forks_prefix(self) -> bool:
        """False: every row goes out as a whole prompt (the server does its own prefix caching)."""
        return False

    def complete_forks(self, messages: list[dict], prefix_ids: Sequence[int], forks: Sequence, seed: int
                       ) -> list[list[Completion]]:
        """`Policy.complete_forks` over HTTP: the flattened rows (fork-major) as whole prompts,
        flattened row r with ``f.row_seeds[j]`` when the fork names its seeds, else
        ``row_seed(seed, r)`` -- the seeds the in-process policy uses."""
        from ipo_jax.sampling import row_seed

        prompt = self._encode_prompt(self.tokenizer, messages)
        prefix = [int(i) for i in prefix_ids]
        prompts, seeds = [], []
        for k, f in enumerate(forks):
            if not 0 <= f.cut <= len(prefix):
                raise ValueError(f"fork {k}: cut {f.cut} is outside the completion prefix (0..{len(prefix)} tokens)")
            if f.row_seeds is not None and len(f.row_seeds) != f.n:
                raise ValueError(f"fork {k}: {len(f.row_seeds)} row seeds for {f.n} rows")
            for j in range(f.n):
                prompts.append(prompt + prefix[: f.cut] + [int(i) for i in f.suffix])
                seeds.append(f.row_seeds[j] if f.row_seeds is not None else row_seed(seed, len(seeds)))
        flat = self.complete_rows(prompts, seeds)
        groups, start = [], 0
        for f in forks:
            groups.append(flat[start : start + f.n])
            start += f.n
        return groups

    def settings(self) -> dict[str, Any]:
        """What the completions depend on (no key): for a run's record."""
        return dict(backend="http", url=self.transport.endpoint, model=self.model, extra_body=self.extra_body)

    def __repr__(self) -> str:
        return f"HttpPolicy(url={self.transport.endpoint!r}, model={self.model!r}, concurrency={self.transport.concurrency})"


__all__ = ["RESERVED_FIELDS", "HttpPolicy", "PolicyBackendError", "completion_ids"]
