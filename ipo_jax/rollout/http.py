"""The policy behind an OpenAI-compatible ``/v1/completions`` endpoint (`HttpPolicy`): the
`ipo_jax.rollout.Policy` protocol, as the in-process `ipo_jax.rollout.local.LocalPolicy`, with
sampling done by a server (``ipo-jax serve``, vLLM, SGLang, ...) and prompts, decoding and token
counting done here with the local tokenizer -- the pipeline keeps exact token paths, so prompts
go out as token ids and completions come back as token ids.

Requests.  ``complete(jobs, seed)`` renders job r's prompt exactly as the in-process policy does
(`ipo_jax.rollout.tokens`: ``encode_prompt(messages)`` + the prefix ids, or the prefix text
encoded without special tokens) and sends one ``POST {base_url}/completions`` per job, at most
``concurrency`` in flight, with the JSON body::

    {"model": <policy.model>, "prompt": [<token ids>], "max_tokens": sampling.max_new_tokens,
     "temperature": sampling.temperature, "top_p": sampling.top_p,
     "top_k": sampling.top_k (only when > 0), "seed": row_seed(seed, r),
     "return_token_ids": true, **extra_body}

``row_seed(seed, r)`` (`ipo_jax.sampling.row_seed`) is the seed the in-process sampler gives row
r of the same call, so a server that samples a one-prompt request with seed S from the key
stream ``PRNGKey(S)`` -- ``ipo-jax serve`` does -- returns the tokens the in-process policy
would have sampled.  One request per row (rather than a list of prompts) because vLLM gives
every prompt of a list the same seed, which would make repeated prompts (benign candidates)
identical.  ``complete_forks`` sends every fork's rows as whole prompts, each with the row seed
the in-process policy gives it (the server does its own prefix caching).

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

Retries, backoff, Retry-After, the concurrency limit and key redaction are the project's one HTTP
transport's (`ipo_jax.http.HttpTransport`, shared with the HTTP judge).  A call in which any row
fails after its retries raises `PolicyBackendError` (one line: how many rows failed and the first
error); the pipeline then stops as for any crash and a rerun redoes the chunk.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ipo_jax.data.tokenizer import stop_token_ids
from ipo_jax.http import HttpFailure, HttpTransport, response_object, snippet
from ipo_jax.rollout.completion import Completion, text_ids
from ipo_jax.rollout.config import PolicySettings
from ipo_jax.rollout.tokens import Job, Messages, PolicyTokens, fork_rows, group_rows
from ipo_jax.sampling import Fork, SamplingConfig, row_seed

# Request fields HttpPolicy sets itself: extra_body may not override them.
RESERVED_FIELDS = ("model", "prompt", "max_tokens", "temperature", "top_p", "top_k", "seed", "n", "stream")
TOKEN_ID_PREFIX = "token_id:"  # vLLM's return_tokens_as_token_ids spelling of a logprobs token


class PolicyBackendError(ConnectionError):
    """Rows of a `complete` call that the endpoint did not answer (after retries) or answered
    with something that is not a completion; one line (exit code 2 from the CLI)."""


def completion_ids(body: bytes) -> tuple[list[int], str]:
    """(sampled token ids, finish_reason) of a ``/v1/completions`` response with one choice;
    raises `HttpFailure` (not retried) when the body is not such a response."""
    data = response_object(body)
    choices = data.get("choices")
    if not isinstance(choices, list) or len(choices) != 1 or not isinstance(choices[0], Mapping):
        raise HttpFailure(f"expected one choice, got: {snippet(json.dumps(choices)[:1000])}", retryable=False)
    choice = choices[0]
    finish = choice.get("finish_reason")
    if finish not in ("stop", "length"):
        raise HttpFailure(f"choices[0].finish_reason is {finish!r}; expected 'stop' or 'length'", retryable=False)
    ids = choice.get("token_ids")
    if ids is None:
        tokens = (choice.get("logprobs") or {}).get("tokens") if isinstance(choice.get("logprobs"), Mapping) else None
        if isinstance(tokens, list) and all(isinstance(t, str) and t.startswith(TOKEN_ID_PREFIX) for t in tokens):
            try:
                ids = [int(t[len(TOKEN_ID_PREFIX):]) for t in tokens]
            except ValueError:
                ids = None
        if ids is None:
            raise HttpFailure(
                "no token ids in the response: expected choices[0].token_ids (request return_token_ids) or "
                "choices[0].logprobs.tokens as 'token_id:<id>' (logprobs + return_tokens_as_token_ids)", retryable=False)
    if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids):
        raise HttpFailure(f"choices[0].token_ids is not a list of token ids: {snippet(json.dumps(ids)[:1000])}",
                          retryable=False)
    return ids, finish


class HttpPolicy(PolicyTokens):
    """The `ipo_jax.rollout.Policy` protocol over an OpenAI-compatible completions endpoint
    (module docstring).  Prompt rendering, `decode`, `encode_text`, `count_tokens` and
    `prompt_tokens` are the in-process policy's (`PolicyTokens`, the same tokenizer); only
    sampling goes over HTTP."""

    def __init__(
        self,
        tokenizer,
        sampling: SamplingConfig,
        *,
        base_url: str,
        model: str,
        api_key_env: str | None = PolicySettings.api_key_env,  # the defaults: the config's policy section
        timeout: float = PolicySettings.timeout,
        max_retries: int = PolicySettings.max_retries,
        backoff: float = PolicySettings.backoff,
        max_backoff: float = PolicySettings.max_backoff,
        concurrency: int = PolicySettings.concurrency,
        extra_body: Mapping[str, Any] | None = None,
        max_prompt_tokens: int | None = None,
        policy_id: str | None = None,
        sleep: Callable[[float], None] | None = None,
        clock: Callable[[], float] | None = None,
    ):
        base = HttpTransport.check_base_url(base_url)
        if not isinstance(model, str) or not model:
            raise ValueError("policy.model must name the served model (ipo-jax serve: its --model spec)")
        if extra_body is not None and not isinstance(extra_body, Mapping):
            raise ValueError(f"policy.extra_body must be a JSON object, got {type(extra_body).__name__}")
        reserved = sorted(set(RESERVED_FIELDS) & set(extra_body or {}))
        if reserved:
            raise ValueError(f"policy.extra_body must not set {', '.join(reserved)} (the policy sets them)")
        super().__init__(tokenizer, sampling, policy_id or model)
        extra = {k: v for k, v in {"sleep": sleep, "clock": clock}.items() if v is not None}
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

    @property
    def forks_prefix(self) -> bool:
        """False: every row goes out as a whole prompt (the server does its own prefix caching)."""
        return False

    def payload(self, prompt: Sequence[int], seed: int) -> dict[str, Any]:
        """The request body of one row (module docstring)."""
        s = self.sampling
        body = {**self.extra_body, "model": self.model, "prompt": list(prompt), "max_tokens": s.max_new_tokens,
                "temperature": s.temperature, "top_p": s.top_p, "seed": int(seed), "return_token_ids": True}
        if s.top_k > 0:
            body["top_k"] = s.top_k
        return body

    def complete_rows(self, prompts: Sequence[Sequence[int]], row_seeds: Sequence[int]) -> list[Completion]:
        """One `Completion` per token-id prompt, row r sampled with seed ``row_seeds[r]``, one
        request each; raises `PolicyBackendError` when any row fails.  The end-of-turn id a row
        ended on stays in its ids and out of its text, as in-process."""
        if len(prompts) != len(row_seeds):
            raise ValueError(f"{len(prompts)} prompts but {len(row_seeds)} row seeds")
        results = self.transport.map_concurrently(
            lambda r: self.transport.post(self.payload(prompts[r], row_seeds[r]), completion_ids), range(len(prompts)))
        failed = [(r, error) for r, (_, error) in enumerate(results) if error is not None]
        if failed:
            r, error = failed[0]
            raise PolicyBackendError(f"http policy: {len(failed)} of {len(prompts)} completions failed; row {r}: {error}")
        return [Completion(self.decode(text_ids(ids, finish, self._end_ids)), finish, tuple(ids))
                for (ids, finish), _ in results]

    def complete(self, jobs: Sequence[Job], seed: int, row_seeds: Sequence[int] | None = None) -> list[Completion]:
        """`LocalPolicy.complete` over HTTP: row r's request carries ``row_seeds[r]`` when given,
        else ``row_seed(seed, r)``."""
        if row_seeds is not None and len(row_seeds) != len(jobs):
            raise ValueError(f"{len(jobs)} jobs but {len(row_seeds)} row seeds")
        prompts = [self.prompt_ids(messages, prefix) for messages, prefix in jobs]
        seeds = list(row_seeds) if row_seeds is not None else [row_seed(seed, r) for r in range(len(prompts))]
        return self.complete_rows(prompts, seeds)

    def complete_forks(self, messages: Messages, prefix_ids: Sequence[int], forks: Sequence[Fork], seed: int
                       ) -> list[list[Completion]]:
        """`LocalPolicy.complete_forks` over HTTP: the flattened rows (fork-major) as whole
        prompts, flattened row r with ``f.row_seeds[j]`` when the fork names its seeds, else
        ``row_seed(seed, r)`` -- the seeds the in-process policy uses."""
        rows = fork_rows(self.chat_prompt_ids(messages), prefix_ids, forks, seed)
        return group_rows(self.complete_rows(rows.prompts, rows.seeds), forks)

    def describe(self) -> dict[str, Any]:
        """Where the completions come from, for a run's provenance: the endpoint, the served model
        and what the server says about it (``GET /models``, vLLM's ``GET /version``; never raises)."""
        try:
            info = self.transport.server_info(self.model)
        except Exception as e:  # noqa: BLE001 - provenance never stops a stage
            info = {"models_error": f"{type(e).__name__}: {e}"}
        return {"backend": "http", "id": self.policy_id, "endpoint": self.transport.endpoint, "model": self.model,
                "server": info}

    def __repr__(self) -> str:
        return f"HttpPolicy(url={self.transport.endpoint!r}, model={self.model!r}, concurrency={self.transport.concurrency})"


__all__ = ["RESERVED_FIELDS", "HttpPolicy", "PolicyBackendError", "completion_ids"]
