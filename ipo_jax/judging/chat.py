"""The chat transport under the LLM judge and cue detector: conversations in, replies out,
always a LIST at a time, so batching (a local sampler) and concurrency (an HTTP endpoint) live
here and not in each caller.

* `Reply` -- one answer: ``text`` (None when the request failed), ``error`` (what failed,
  redacted), ``finish_reason`` and the separate ``reasoning`` a thinking model returned.
* `ChatBackend` -- the protocol: ``complete(list of message lists) -> list[Reply]``, in order,
  never raising for one bad request, and ``settings()`` for a run's record.
* `HttpChat` -- an OpenAI-compatible chat-completions client (a vLLM server, a hosted API), on
  the project's one HTTP transport (`ipo_jax.http.HttpTransport`: retries, backoff,
  Retry-After, the concurrency limit and key redaction are described there).
* `LocalChat` -- our own JAX sampler on a local checkpoint, every conversation of a call in one
  batched ``sampler.generate`` (greedy).

HttpChat wire format.  ``POST {base_url}/chat/completions`` (``base_url`` e.g.
``http://localhost:8000/v1``; a ``base_url`` that already ends in ``/chat/completions`` is used
as is) with the JSON body ``{"model", "messages", "temperature": 0, "max_tokens"}`` plus the
``extra_body`` fields (e.g. ``{"chat_template_kwargs": {"enable_thinking": false}}`` for vLLM to
keep a Qwen3 judge from thinking).  ``max_tokens`` defaults to 1024: enough for a thinking
judge (R1, Qwen3) to reason and still answer; a judge told not to think stops after one word.
Every reply text passes through the transport's key redactor too, so a server that echoes the
key cannot leak it into a `Verdict`, a `CueResult` or a record.

Response reading.  The reply is ``choices[0].message.content``; a thinking model's separate
``reasoning_content`` (or ``reasoning``) field is kept apart in `Reply.reasoning` and never
parsed.  A body that is not JSON, JSON without a non-empty ``choices`` list, a choice without a
string ``content`` (e.g. a reasoning model cut off at ``max_tokens`` before answering), or an
``{"error": ...}`` body is an error, not retried (generation is greedy: the same request gets
the same reply); its text starts ``"bad response from <url>: "``.

LocalChat.  Each conversation is rendered by the tokenizer's chat template with its generation
prompt (`render_prompt`, then `encode_text`), generated greedily for at most ``max_tokens``
tokens and decoded.  Reasoning models: when the rendered generation prompt ends inside an open
``<think>`` block (DeepSeek-R1-Distill's template ends with ``<think>\\n``) and
``answer_directly`` is True (the default), ``</think>\\n\\n`` is appended so that the model
answers at once; for a template with an ``enable_thinking`` switch (Qwen3) ``answer_directly``
passes ``enable_thinking=False`` (unless `template_kwargs` sets it).  Pass
``answer_directly=False`` to let the model reason first (its reasoning is stripped before
parsing).  A prompt longer than the sampler's largest prompt bucket, a template failure or a
failed generation is an error `Reply` for the conversations concerned.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from ipo_jax.data.tokenizer import THINK_CLOSE, THINK_OPEN, encode_text, render_prompt
from ipo_jax.http import HttpFailure, HttpTransport, response_object, snippet
from ipo_jax.judging.config import JudgeSettings
from ipo_jax.rollout.local import prompt_limit
from ipo_jax.sampling import SamplingConfig

DEFAULT_MAX_TOKENS = JudgeSettings.max_tokens
ANSWER_OPEN = "</think>\n\n"  # appended to a generation prompt that ends inside <think>


@dataclasses.dataclass(frozen=True)
class Reply:
    """One chat answer: ``text`` (None when the request failed, with ``error`` saying why)."""

    text: str | None
    error: str | None = None
    finish_reason: str | None = None
    reasoning: str | None = None  # a thinking model's separate reasoning, never parsed

    @classmethod
    def failed(cls, error: str) -> Reply:
        return cls(None, error or "no reply")


@runtime_checkable
class ChatBackend(Protocol):
    """What the LLM judge and cue detector need of a chat model."""

    name: str
    tokenizer: Any  # the model's own tokenizer where this process has it (a local model), else None

    def complete(self, conversations: Sequence[list[dict[str, str]]]) -> list[Reply]:
        """One `Reply` per conversation, in order; never raises for one bad request."""
        ...

    def settings(self) -> dict[str, Any]:
        """What the replies depend on (no key): for a run's record."""
        ...

    def describe(self) -> dict[str, Any]:
        """Where replies come from: backend ('http' | 'llm'), endpoint (None for a local model), model."""
        ...

    def max_prompt_tokens(self) -> int | None:
        """The longest prompt this backend takes, where it knows it here (a local sampler's buckets);
        None when only the server knows (HTTP: its max_model_len, from GET /models)."""
        ...


def reply_content(body: bytes) -> tuple[str, str | None, str | None]:
    """(``choices[0].message.content``, finish_reason, the separate reasoning text or None) of a
    chat-completions response body; raises `HttpFailure` (not retryable) when the body is not such
    a response.  A reasoning server (vLLM with a reasoning parser, DeepSeek's API) returns the
    thinking in ``message.reasoning_content`` (or ``reasoning``) and only the answer in
    ``content``; a ``content`` of null after reasoning alone is a judge cut off before it
    answered."""
    data = response_object(body)
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices:
        raise HttpFailure(f"response has no choices: {snippet(json.dumps(data)[:1000])}", retryable=False)
    choice = choices[0]
    if not isinstance(choice, Mapping):
        raise HttpFailure(f"choices[0] is {type(choice).__name__}, not an object", retryable=False)
    message = choice.get("message")
    message = message if isinstance(message, Mapping) else {}
    content = message.get("content")
    if content is None and isinstance(choice.get("text"), str):  # a completions-style choice
        content = choice["text"]
    reasoning = next((message[k] for k in ("reasoning_content", "reasoning") if isinstance(message.get(k), str)), None)
    finish = choice.get("finish_reason") if isinstance(choice.get("finish_reason"), str) else None
    if not isinstance(content, str):
        cut = " (cut at max_tokens)" if finish == "length" else ""
        thought = " after reasoning only" if reasoning else ""
        raise HttpFailure(f"choices[0].message has no text content{thought}{cut}", retryable=False)
    if finish == "length" and not content.strip():
        raise HttpFailure("empty reply (cut at max_tokens)", retryable=False)
    return content, finish, reasoning


# --------------------------------------------------------------------------- client


class HttpChat(HttpTransport):
    """A `ChatBackend` for an OpenAI-compatible chat-completions endpoint: retries with backoff,
    at most `concurrency` requests in flight per instance, API-key redaction (module docstring)."""

    default_max_tokens = DEFAULT_MAX_TOKENS
    tokenizer = None  # the served model's tokenizer is the server's

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key_env: str | None = JudgeSettings.api_key_env,  # the defaults: the config's judge section
        timeout: float = JudgeSettings.timeout,
        max_retries: int = JudgeSettings.max_retries,
        backoff: float = JudgeSettings.backoff,
        max_backoff: float = JudgeSettings.max_backoff,
        concurrency: int = JudgeSettings.concurrency,
        name: str | None = None,
        max_tokens: int | None = None,
        jitter: float = 0.0,
        total_timeout: float | None = None,
        extra_body: Mapping[str, Any] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ):
        base = self.check_base_url(base_url)
        if not isinstance(model, str) or not model:
            raise ValueError("model must be a non-empty string")
        super().__init__(base if base.endswith("/chat/completions") else base + "/chat/completions",
                         api_key_env=api_key_env, timeout=timeout, max_retries=max_retries, backoff=backoff,
                         max_backoff=max_backoff, concurrency=concurrency, name=name or f"http:{model}",
                         jitter=jitter, total_timeout=total_timeout, sleep=sleep, clock=clock)
        max_tokens = self.default_max_tokens if max_tokens is None else max_tokens
        if not isinstance(max_tokens, int) or max_tokens < 1:
            raise ValueError(f"max_tokens must be an int >= 1, got {max_tokens!r}")
        self.model = model
        self.max_tokens = max_tokens
        if extra_body is not None and not isinstance(extra_body, Mapping):
            raise ValueError(f"extra_body must be a mapping (a JSON object), got {type(extra_body).__name__}")
        reserved = sorted({"model", "messages"} & set(extra_body or {}))
        if reserved:
            raise ValueError(f"extra_body must not set {', '.join(reserved)} (they are the request itself)")
        self.extra_body = dict(extra_body or {})

    def payload(self, messages: list[dict[str, str]]) -> dict[str, Any]:
        return {**self.extra_body, "model": self.model, "messages": messages, "temperature": 0,
                "max_tokens": self.max_tokens}

    def complete_one(self, messages: list[dict[str, str]]) -> Reply:
        """One chat completion with retries.  Never raises; text and error are redacted."""
        result, error = self.post(self.payload(messages), reply_content)
        if error is not None:
            return Reply.failed(error)
        content, finish, reasoning = result
        return Reply(self._redact(content), None, finish, None if reasoning is None else self._redact(reasoning))

    def complete(self, conversations: Sequence[list[dict[str, str]]]) -> list[Reply]:
        """One `Reply` per conversation, in order; the requests run on a thread pool with at most
        `concurrency` in flight (the semaphore keeps that limit across callers' threads too)."""
        return self.map_concurrently(self.complete_one, conversations)

    def probe(self) -> tuple[str | None, str | None]:
        """One short request (one user word, ``max_tokens`` 1) with the usual retries: ``(None,
        system_fingerprint or None)`` when the endpoint answers with a chat completion, whatever
        its text, else ``(error, None)``."""
        payload = {**self.extra_body, "model": self.model, "messages": [{"role": "user", "content": "ping"}],
                   "temperature": 0, "max_tokens": 1}

        def parse(body: bytes):
            data = response_object(body)
            if not isinstance(data.get("choices"), list) or not data["choices"]:
                raise HttpFailure(f"response has no choices: {snippet(json.dumps(data)[:1000])}", retryable=False)
            fingerprint = data.get("system_fingerprint")
            return fingerprint if isinstance(fingerprint, str) and fingerprint else None

        result, error = self.post(payload, parse)
        return (error, None) if error is not None else (None, result)

    def settings(self) -> dict[str, Any]:
        """What the replies depend on (no key, no credentials): for a run's record."""
        return dict(backend="http", url=self.endpoint, model=self.model, max_tokens=self.max_tokens,
                    extra_body=self.extra_body)

    def describe(self) -> dict[str, Any]:
        return dict(backend="http", endpoint=self.endpoint, model=self.model)

    def max_prompt_tokens(self) -> int | None:
        return None  # the server's max_model_len (GET /models) bounds prompt + reply

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(name={self.name!r}, url={self.endpoint!r}, model={self.model!r}, "
                f"concurrency={self.concurrency})")


# --------------------------------------------------------------------------- local sampler


class LocalChat:
    """A `ChatBackend` on our own sampler: every conversation of a ``complete`` call in one
    greedy ``sampler.generate`` (module docstring)."""

    def __init__(
        self,
        sampler,
        tokenizer,
        *,
        name: str = "local",
        max_tokens: int = DEFAULT_MAX_TOKENS,
        template_kwargs: Mapping[str, Any] | None = None,
        answer_directly: bool = True,
        seed: int = 0,
    ):
        if not isinstance(max_tokens, int) or max_tokens < 1:
            raise ValueError(f"max_tokens must be an int >= 1, got {max_tokens!r}")
        self.sampler, self.tokenizer, self.name = sampler, tokenizer, name
        self.template_kwargs = dict(template_kwargs or {})
        self.answer_directly = answer_directly
        self.sampling = SamplingConfig(temperature=0.0, top_p=1.0, top_k=0, max_new_tokens=max_tokens, seed=seed)

    def prompt_text(self, messages: list[dict[str, str]]) -> str:
        """The rendered prompt of one conversation, ready for the assistant's turn."""
        kwargs = dict(self.template_kwargs)
        template = str(self.tokenizer.chat_template or "")
        if self.answer_directly and "enable_thinking" not in kwargs and "enable_thinking" in template:
            kwargs["enable_thinking"] = False  # Qwen3: the template writes an empty think block itself
        text = render_prompt(self.tokenizer, messages, **kwargs)
        if self.answer_directly and text.rfind(THINK_OPEN) > text.rfind(THINK_CLOSE):
            text += ANSWER_OPEN if text.endswith("\n") else "\n" + ANSWER_OPEN
        return text

    def max_prompt_tokens(self) -> int | None:
        """The longest judge prompt the sampler takes with room for the reply (`prompt_limit`;
        None when it names no buckets)."""
        return prompt_limit(self.sampler, self.sampling.max_new_tokens)

    def complete(self, conversations: Sequence[list[dict[str, str]]]) -> list[Reply]:
        limit = self.max_prompt_tokens()
        out: list[Reply] = [Reply.failed("no reply")] * len(conversations)
        ids, where, opened = [], [], {}
        for i, messages in enumerate(conversations):
            try:
                text = self.prompt_text(messages)
                prompt = encode_text(self.tokenizer, text)
            except Exception as e:  # noqa: BLE001 - a template failure is this request's error
                out[i] = Reply.failed(f"prompt could not be built ({type(e).__name__}: {e})")
                continue
            if limit is not None and len(prompt) > limit:
                out[i] = Reply.failed(f"prompt of {len(prompt)} tokens is longer than the sampler's limit {limit}")
                continue
            ids.append(prompt)
            where.append(i)
            # the prompt left a <think> block open: the reply starts inside it (see `strip_thinking`)
            opened[i] = text.rfind(THINK_OPEN) > text.rfind(THINK_CLOSE)
        if not ids:
            return out
        try:
            generations = self.sampler.generate(ids, self.sampling)
            if len(generations) != len(ids):
                raise RuntimeError(f"sampler returned {len(generations)} generations for {len(ids)} prompts")
        except Exception as e:  # noqa: BLE001 - a failed backend gives error replies, never a crash
            for i in where:
                out[i] = Reply.failed(f"generation failed ({type(e).__name__}: {e})")
            return out
        for i, generation in zip(where, generations):
            try:
                text = self.tokenizer.decode(list(generation.tokens), skip_special_tokens=True)
            except Exception as e:  # noqa: BLE001
                out[i] = Reply.failed(f"reply could not be decoded ({type(e).__name__}: {e})")
                continue
            finish = generation.finish_reason
            if not text.strip() and len(generation.tokens):
                out[i] = Reply.failed(f"{len(generation.tokens)} tokens, none of them text")
            else:
                out[i] = Reply(THINK_OPEN + text if opened[i] else text, None, finish)
        return out

    def describe(self) -> dict[str, Any]:
        return dict(backend="llm", endpoint=None, model=self.name)

    def settings(self) -> dict[str, Any]:
        """What the replies depend on: for a run's record."""
        return dict(backend="llm", name=self.name, max_tokens=self.sampling.max_new_tokens,
                    answer_directly=self.answer_directly, template_kwargs=self.template_kwargs)

    def __repr__(self) -> str:
        return f"LocalChat(name={self.name!r}, max_tokens={self.sampling.max_new_tokens})"


__all__ = ["ANSWER_OPEN", "DEFAULT_MAX_TOKENS", "ChatBackend", "HttpChat", "LocalChat", "Reply", "reply_content"]
