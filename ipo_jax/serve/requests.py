"""The request bodies `ipo-jax serve` takes, checked field by field into a `GenerationRequest`
(`parse_completion_request` for ``/v1/completions``, `parse_chat_request` for
``/v1/chat/completions``); a bad field is a `RequestError` (an HTTP 400 naming it). The fields
are listed in the package docstring (`ipo_jax.serve`).

Parsing tokenises (and renders the chat template): the app runs it on a worker thread, after
checking each text's length in characters against `ServedModel.max_prompt_chars`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import secrets
from typing import Any

from ipo_jax.sampling import SamplingConfig, row_seed
from ipo_jax.serve.model import ServedModel
from ipo_jax.serve.reasoning import prompt_opens_thinking

SEED_LIMIT = 1 << 31  # the sampler's row seeds are 31-bit (ipo_jax.sampling.row_seed)
MAX_CHOICES = 128
MAX_ROWS = 4096  # prompts x n in one request
MAX_STOP_STRINGS = 8
MAX_LOGPROBS = 20  # top log-probabilities per token (vLLM's default max_logprobs)
DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions
DEFAULT_CHAT_MAX_TOKENS = 2048  # chat: the rest of the context, at most this (the cache is dense, not paged)
SAMPLING_FIELDS = ("model", "max_tokens", "temperature", "top_p", "top_k", "n", "stop", "seed", "stream",
                   "stream_options", "presence_penalty", "frequency_penalty", "user", "return_token_ids")
COMPLETION_FIELDS = ("prompt", *SAMPLING_FIELDS, "echo", "logprobs", "best_of")
CHAT_FIELDS = ("messages", *SAMPLING_FIELDS, "max_completion_tokens", "logprobs", "top_logprobs",
               "chat_template_kwargs")
ROLES = ("system", "user", "assistant", "developer", "tool")


class RequestError(ValueError):
    """A request the server refuses: HTTP `status` with an OpenAI-style error body."""

    def __init__(self, message: str, param: str | None = None, *, status: int = 400, code: str | None = None):
        super().__init__(message)
        self.message, self.param, self.status, self.code = message, param, status, code


def error_body(message: str, param: str | None = None, *, kind: str = "invalid_request_error",
               code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


@dataclasses.dataclass(frozen=True)
class GenerationRequest:
    """A checked request: its prompts (token ids), choices per prompt, settings and seed.

    logprobs: None, or the number of top log-probabilities per token (0: the sampled token's
    only); chat: a chat request (the prompt opened ``<think>`` when `opened`)."""

    prompts: list[list[int]]
    n: int
    settings: SamplingConfig  # its seed unused: rows carry their own
    stop: tuple[str, ...]
    seed: int
    return_token_ids: bool
    stream: bool = False
    include_usage: bool = False
    logprobs: int | None = None
    chat: bool = False
    opened: bool = False

    def row_seeds(self) -> list[int]:
        """Prompt-major: choice j of every prompt samples from `seed` (j = 0) or row_seed(seed, j)."""
        per_choice = [self.seed] + [row_seed(self.seed, j) for j in range(1, self.n)]
        return per_choice * len(self.prompts)

    @property
    def rows(self) -> int:
        return len(self.prompts) * self.n


def shown(value: Any, limit: int = 80) -> str:
    """A request value for an error message: JSON, cut to `limit` characters."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError, RecursionError):
        text = type(value).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _number(body: dict, field: str, default: float, ok, expected: str) -> float:
    value = body.get(field)
    if value is None:
        return default
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or not ok(value):
        raise RequestError(f"{field} must be {expected}, got {shown(value)}", field)
    return float(value)


def _integer(body: dict, field: str, default, ok, expected: str):
    value = body.get(field)
    if value is None:
        return default
    if not _is_int(value) or not ok(value):
        raise RequestError(f"{field} must be {expected}, got {shown(value)}", field)
    return value


def _boolean(body: dict, field: str) -> bool:
    value = body.get(field)
    if value is not None and not isinstance(value, bool):
        raise RequestError(f"{field} must be true or false, got {shown(value)}", field)
    return bool(value)


def _text_ids(text: str, where: str, served: ServedModel) -> list[int]:
    if len(text) > served.max_prompt_chars:
        raise RequestError(f"{where} has {len(text)} characters; no prompt over {served.max_prompt_chars} fits the "
                           f"server's {served.max_prompt_tokens} tokens", "prompt")
    return served.encode(text)


def _prompts(value, served: ServedModel) -> list[list[int]]:
    """The prompt field as token-id lists."""
    expected = "a string, a list of strings, a list of token ids or a list of token-id lists"
    if isinstance(value, str):
        items = [value]
    elif isinstance(value, list) and value and all(_is_int(v) for v in value):
        items = [value]
    elif isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        items = value
    elif isinstance(value, list) and value and all(isinstance(v, list) and all(_is_int(t) for t in v) for v in value):
        items = value
    elif isinstance(value, list) and not value:
        raise RequestError("prompt is an empty list; expected at least one prompt", "prompt")
    else:
        raise RequestError(f"prompt must be {expected}", "prompt")
    if len(items) > MAX_ROWS:
        raise RequestError(f"prompt has {len(items)} prompts; at most {MAX_ROWS} per request", "prompt")
    prompts = []
    for i, item in enumerate(items):
        where = "prompt" if len(items) == 1 else f"prompt[{i}]"
        ids = _text_ids(item, where, served) if isinstance(item, str) else list(item)
        prompts.append(_checked_ids(ids, where, served))
    return prompts


def _checked_ids(ids: list[int], where: str, served: ServedModel) -> list[int]:
    if not ids:
        raise RequestError(f"{where} is empty; every prompt needs at least one token", "prompt")
    bad = next((t for t in ids if not 0 <= t < served.vocab_size), None)
    if bad is not None:
        raise RequestError(f"{where} has token id {bad}, outside the model's vocabulary [0, {served.vocab_size})",
                           "prompt")
    if len(ids) > served.max_prompt_tokens:
        raise RequestError(f"{where} has {len(ids)} tokens; this server takes at most {served.max_prompt_tokens} "
                           f"(--max-prompt-length, and below --max-model-len {served.context})", "prompt")
    return ids


def _check_fields(body: Any, accepted: tuple[str, ...], served: ServedModel) -> None:
    if not isinstance(body, dict):
        raise RequestError(f"the request body must be a JSON object, got {type(body).__name__}")
    unknown = sorted(set(body) - set(accepted))
    if unknown:
        raise RequestError(f"unknown field{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
                           f"this route accepts {', '.join(accepted)}", unknown[0])
    model = body.get("model")
    if model is not None and model not in served.names:
        if not isinstance(model, str):
            raise RequestError(f"model must be a string, got {shown(model)}", "model")
        raise RequestError(f"the model {shown(model)} does not exist; this server serves "
                           f"{', '.join(map(repr, served.names))}", "model", status=404, code="model_not_found")


def _stop(body: dict) -> tuple[str, ...]:
    stop = body.get("stop")
    if stop is None:
        return ()
    if isinstance(stop, str) and stop:
        return (stop,)
    if isinstance(stop, list) and len(stop) <= MAX_STOP_STRINGS and all(isinstance(s, str) and s for s in stop):
        return tuple(stop)
    raise RequestError(f"stop must be a non-empty string or a list of at most {MAX_STOP_STRINGS} non-empty strings",
                       "stop")


def _at_default(body: dict, field: str, is_default, shown_default: str) -> None:
    if field in body and not is_default(body[field]):
        raise RequestError(f"{field} {shown(body[field])} is not supported by this server (only {shown_default})", field)


def _zero(v) -> bool:
    return v is None or (isinstance(v, (int, float)) and not isinstance(v, bool) and v == 0)


def _sampling(body: dict, prompts: list[list[int]], served: ServedModel, default_max_tokens: int | None,
              max_tokens_field: str = "max_tokens") -> dict[str, Any]:
    """The fields both routes share, checked; the keyword arguments of a `GenerationRequest`."""
    longest = max(len(p) for p in prompts)
    if default_max_tokens is None:  # chat: the rest of the context, at most DEFAULT_CHAT_MAX_TOKENS
        default_max_tokens = max(min(served.context - longest, DEFAULT_CHAT_MAX_TOKENS), 1)
    max_tokens = _integer(body, max_tokens_field, default_max_tokens, lambda v: v >= 1, "an integer >= 1")
    temperature = _number(body, "temperature", 1.0, lambda v: v >= 0, "a number >= 0")
    top_p = _number(body, "top_p", 1.0, lambda v: 0 < v <= 1, "a number in (0, 1]")
    top_k = _integer(body, "top_k", 0, lambda v: v >= -1, "an integer >= 1, or 0 / -1 for no top-k")
    n = _integer(body, "n", 1, lambda v: 1 <= v <= MAX_CHOICES, f"an integer in [1, {MAX_CHOICES}]")
    seed = _integer(body, "seed", -1, lambda v: 0 <= v < SEED_LIMIT, f"an integer in [0, {SEED_LIMIT})")
    stream = _boolean(body, "stream")
    options = body.get("stream_options")
    if options is not None:
        if not stream:
            raise RequestError("stream_options is only allowed with stream true", "stream_options")
        if not isinstance(options, dict) or set(options) - {"include_usage", "continuous_usage_stats"}:
            raise RequestError(f"stream_options must be an object with include_usage, got {shown(options)}",
                               "stream_options")
        _boolean(options, "include_usage")
    for field in ("presence_penalty", "frequency_penalty"):
        _at_default(body, field, _zero, "0")
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise RequestError(f"user must be a string, got {shown(user)}", "user")
    if len(prompts) * n > MAX_ROWS:
        raise RequestError(f"{len(prompts)} prompts x n={n} is {len(prompts) * n} rows; at most {MAX_ROWS} per request",
                           "n" if n > 1 else "prompt")
    if longest + max_tokens > served.context:
        raise RequestError(f"prompt ({longest} tokens) + {max_tokens_field} ({max_tokens}) is more than the model's "
                           f"context of {served.context} tokens (max_model_len)", max_tokens_field)
    settings = SamplingConfig(temperature=temperature, top_p=top_p, top_k=max(top_k, 0), max_new_tokens=max_tokens)
    return dict(prompts=prompts, n=n, settings=settings, stop=_stop(body),
                seed=secrets.randbelow(SEED_LIMIT) if seed < 0 else seed,
                return_token_ids=_boolean(body, "return_token_ids"), stream=stream,
                include_usage=bool((options or {}).get("include_usage")))


def _check_logprobs_supported(served: ServedModel, field: str) -> None:
    if not served.scores:
        raise RequestError(f"{field} is not supported with this sampler (no model to score with)", field)


def parse_completion_request(body: Any, served: ServedModel) -> GenerationRequest:
    """Check a ``/v1/completions`` body (package docstring); RequestError names the first problem."""
    _check_fields(body, COMPLETION_FIELDS, served)
    if "prompt" not in body:
        raise RequestError("prompt is required", "prompt")
    prompts = _prompts(body["prompt"], served)
    fields = _sampling(body, prompts, served, DEFAULT_MAX_TOKENS)
    logprobs = _integer(body, "logprobs", None, lambda v: 0 <= v <= MAX_LOGPROBS, f"an integer in [0, {MAX_LOGPROBS}]")
    if logprobs is not None:
        _check_logprobs_supported(served, "logprobs")
    _at_default(body, "echo", lambda v: v is None or v is False, "false")
    _at_default(body, "best_of", lambda v: v is None or (_is_int(v) and v == fields["n"]), "null or n")
    return GenerationRequest(**fields, logprobs=logprobs)


def _messages(value, served: ServedModel) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise RequestError("messages must be a non-empty list of {role, content} objects", "messages")
    messages, chars = [], 0
    for i, message in enumerate(value):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise RequestError(f"messages[{i}] must be an object with a role in {', '.join(ROLES)}", "messages")
        content = message.get("content")
        if isinstance(content, list):  # content parts: text only
            if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                       for p in content):
                raise RequestError(f"messages[{i}].content parts must be {{type: 'text', text}} objects (text only)",
                                   "messages")
            content = "".join(p["text"] for p in content)
        if not isinstance(content, str):
            raise RequestError(f"messages[{i}].content must be a string or a list of text parts, got "
                               f"{shown(content)}", "messages")
        chars += len(content)
        messages.append({"role": message["role"], "content": content})
    if chars > served.max_prompt_chars:
        raise RequestError(f"messages have {chars} characters; no prompt over {served.max_prompt_chars} fits the "
                           f"server's {served.max_prompt_tokens} tokens", "messages")
    return messages


def parse_chat_request(body: Any, served: ServedModel) -> GenerationRequest:
    """Check a ``/v1/chat/completions`` body and render its messages with the chat template."""
    _check_fields(body, CHAT_FIELDS, served)
    if "messages" not in body:
        raise RequestError("messages is required", "messages")
    messages = _messages(body["messages"], served)
    kwargs = body.get("chat_template_kwargs") or {}
    if not isinstance(kwargs, dict):
        raise RequestError(f"chat_template_kwargs must be an object, got {shown(kwargs)}", "chat_template_kwargs")
    try:
        text = served.render_chat(messages, kwargs)
    except Exception as e:  # noqa: BLE001 - a template error (a bad role order, a missing template) is the request's
        raise RequestError(f"the chat template cannot render these messages ({type(e).__name__}: {e})",
                           "messages") from None
    prompt = _checked_ids(served.encode(text), "the rendered prompt", served)
    if "max_tokens" in body and "max_completion_tokens" in body:
        raise RequestError("give max_tokens or max_completion_tokens, not both", "max_completion_tokens")
    field = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
    fields = _sampling(body, [prompt], served, None, field)
    logprobs = _boolean(body, "logprobs")
    top = _integer(body, "top_logprobs", None, lambda v: 0 <= v <= MAX_LOGPROBS, f"an integer in [0, {MAX_LOGPROBS}]")
    if top is not None and not logprobs:
        raise RequestError("top_logprobs needs logprobs true", "top_logprobs")
    if logprobs:
        _check_logprobs_supported(served, "logprobs")
    return GenerationRequest(**fields, logprobs=(top or 0) if logprobs else None, chat=True,
                             opened=prompt_opens_thinking(text))
