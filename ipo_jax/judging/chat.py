"""The chat transport under the LLM judge and cue detector: conversations in, replies out,
always a LIST at a time, so batching (a local sampler) and concurrency (an HTTP endpoint) live
here and not in each caller.

* `Reply` -- one answer: ``text`` (None when the request failed), ``error`` (what failed,
  redacted), ``finish_reason`` and the separate ``reasoning`` a thinking model returned.
* `ChatBackend` -- the protocol: ``complete(list of message lists) -> list[Reply]``, in order,
  never raising for one bad request.
* `HttpChat` -- an OpenAI-compatible chat-completions client (a vLLM server, a hosted API).
* `HttpTransport` -- what `HttpChat` is built on, shared with the HTTP policy backend
  (`ipo_jax.rollout.http.HttpPolicy`): JSON POSTs with the retries, backoff, Retry-After,
  concurrency limit and key redaction described below.
* `LocalChat` -- our own JAX sampler on a local checkpoint, every conversation of a call in one
  batched ``sampler.generate`` (greedy).

HttpChat wire format.  ``POST {base_url}/chat/completions`` (``base_url`` e.g.
``http://localhost:8000/v1``; a ``base_url`` that already ends in ``/chat/completions`` is used
as is) with the JSON body ``{"model", "messages", "temperature": 0, "max_tokens"}`` plus the
``extra_body`` fields (e.g. ``{"chat_template_kwargs": {"enable_thinking": false}}`` for vLLM to
keep a Qwen3 judge from thinking).  ``max_tokens`` defaults to 1024: enough for a thinking
judge (R1, Qwen3) to reason and still answer; a judge told not to think stops after one word.
The API key is read from the environment variable named by ``api_key_env`` at each request and
sent as ``Authorization: Bearer <key>``; when the variable is unset or empty no Authorization
header is sent (credentials inside ``base_url`` are refused at construction).  The key is never
stored on the instance, and every reply text, error and log line passes through a redactor that
replaces the key with ``[redacted]`` -- a server that echoes the key cannot leak it into a
`Verdict`, a `CueResult` or a record.

Retries.  An attempt is retried when it fails with a timeout (connect or read), a connection
error (refused, reset, aborted, remote disconnected, incomplete read), HTTP 5xx or HTTP 429;
at most ``max_retries`` retries (``max_retries + 1`` attempts in all).  Before retry ``k``
(``k = 0, 1, ...``) the client sleeps ``min(max_backoff, backoff * 2**k)`` seconds, times
``1 + jitter * U[0, 1)`` when ``jitter > 0`` (off by default, so the schedule is
deterministic).  A 429 (or 503) response carrying ``Retry-After`` (seconds, or an HTTP date)
sleeps that long instead, capped at ``max_backoff``.  With ``total_timeout`` set, no retry is
started whose sleep would end past ``total_timeout`` seconds after the first attempt began
(measured with the injected ``clock``).  Other 4xx responses, other network errors (DNS
failure, TLS errors) and bad URLs are not retried.  A failed request's error names the failure
and the endpoint, e.g. ``"HTTP 500 Internal Server Error (http://host/v1/chat/completions)
after 5 attempts: '<body>'"``, ``"connection refused (...) after 5 attempts"``, ``"HTTP 401
Unauthorized (...), not retried: ..."``.  ``sleep`` and ``clock`` are constructor arguments so
tests need not wait.  The HTTP client is the standard library's `urllib.request`.

Concurrency.  ``complete`` runs its conversations on a thread pool of ``min(concurrency, n)``
threads; a semaphore per instance holds the number of requests in flight at ``concurrency``
even when several threads call the same instance.

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
import email.utils
import http.client
import json
import logging
import math
import os
import random
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC
from typing import Any, Protocol, runtime_checkable

from ipo_jax.data.tokenizer import THINK_CLOSE, THINK_OPEN

logger = logging.getLogger(__name__)

DEFAULT_MAX_TOKENS = 1024
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
    name: str

    def complete(self, conversations: Sequence[list[dict[str, str]]]) -> list[Reply]: ...


# --------------------------------------------------------------------------- HTTP

REDACTED = "[redacted]"
MAX_BODY_BYTES = 4 * 1024 * 1024  # a chat reply larger than this is an error, not read on
_SNIPPET = 200  # characters of an error body quoted in a reason


# --------------------------------------------------------------------------- helpers


class _Failure(Exception):
    """One failed attempt or an unusable response: `message` (what failed), `retryable`, the
    server's Retry-After delay (seconds) when it sent one, and `detail` (a quoted body)."""

    def __init__(self, message: str, *, retryable: bool, retry_after: float | None = None, detail: str = ""):
        super().__init__(message)
        self.message = message
        self.retryable = retryable
        self.retry_after = retry_after
        self.detail = detail


def _snippet(text: str, n: int = _SNIPPET) -> str:
    text = " ".join(text.split())
    return repr(text if len(text) <= n else text[:n] + "...")


def server_message(text: str) -> str:
    """The message of an OpenAI-style error body (``{"error": {"message": ...}}``, vLLM's
    ``{"message": ...}``, FastAPI's ``{"detail": ...}``), else the body as it is."""
    try:
        data = json.loads(text)
    except ValueError:
        return text
    if isinstance(data, Mapping):
        error = data.get("error")
        if isinstance(error, Mapping) and isinstance(error.get("message"), str):
            return error["message"]
        for key in ("message", "detail", "error"):
            if isinstance(data.get(key), str):
                return data[key]
    return text


def api_base(url: str) -> str:
    """``http://host/v1`` of a ``.../v1/chat/completions`` or ``.../v1/completions`` URL."""
    for suffix in ("/chat/completions", "/completions"):
        if url.endswith(suffix):
            return url[: -len(suffix)]
    return url


def _redact_url(url: str) -> str:
    """`url` without any ``user:password@`` part."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return url
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, f"{REDACTED}@{host}", parts.path, parts.query, parts.fragment))


def parse_retry_after(value: str | None, now: Callable[[], float] = time.time) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date), or None
    when absent or unusable."""
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = when.timestamp() - now()
        return max(0.0, seconds)
    if not math.isfinite(seconds) or seconds < 0:
        return None
    return seconds


def _is_timeout(exc: BaseException) -> bool:
    return isinstance(exc, (TimeoutError, socket.timeout))


def _error_body(e: urllib.error.HTTPError) -> str:
    """The start of an HTTP error's body (only for the reason shown), the response closed."""
    try:
        return e.read(4096).decode("utf-8", "replace")
    except Exception:  # noqa: BLE001 - the body is only for the reason
        return ""
    finally:
        e.close()


def _network_failure(exc: BaseException, timeout: float) -> _Failure:
    """Classify an exception raised while connecting / sending / reading."""
    reason = exc.reason if isinstance(exc, urllib.error.URLError) and not isinstance(exc, urllib.error.HTTPError) else exc
    if _is_timeout(reason) or (isinstance(reason, str) and "timed out" in reason):
        return _Failure(f"timed out after {timeout:g} s", retryable=True)
    if isinstance(reason, ConnectionRefusedError):
        return _Failure("connection refused", retryable=True)
    if isinstance(reason, http.client.RemoteDisconnected):
        return _Failure("server closed the connection without a response", retryable=True)
    if isinstance(reason, ConnectionResetError):
        return _Failure("connection reset", retryable=True)
    if isinstance(reason, ConnectionError):  # aborted, broken pipe
        return _Failure(f"connection error ({type(reason).__name__})", retryable=True)
    if isinstance(reason, http.client.IncompleteRead):
        return _Failure("incomplete response body", retryable=True)
    if isinstance(reason, http.client.HTTPException):
        return _Failure(f"bad HTTP response ({type(reason).__name__}: {reason})", retryable=True)
    if isinstance(reason, socket.gaierror):
        return _Failure(f"host name lookup failed ({reason})", retryable=False)
    return _Failure(f"request failed ({type(reason).__name__}: {reason})", retryable=False)


def response_object(body: bytes) -> dict:
    """An OpenAI-compatible response body as a JSON object; raises `_Failure` (not retried) for
    a body that is not JSON, not an object, or a server error without choices."""
    try:
        data = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):  # JSONDecodeError is a ValueError
        raise _Failure(f"response is not JSON: {_snippet(body.decode('utf-8', 'replace'))}", retryable=False) from None
    if not isinstance(data, dict):
        raise _Failure(f"response is JSON {type(data).__name__}, not an object", retryable=False)
    if "error" in data and not data.get("choices"):
        error = data["error"]
        message = error.get("message", error) if isinstance(error, Mapping) else error
        raise _Failure(f"server returned an error: {_snippet(str(message))}", retryable=False)
    return data


def reply_content(body: bytes) -> tuple[str, str | None, str | None]:
    """(``choices[0].message.content``, finish_reason, the separate reasoning text or None) of a
    chat-completions response body; raises `_Failure` (not retryable) when the body is not such
    a response.  A reasoning server (vLLM with a reasoning parser, DeepSeek's API) returns the
    thinking in ``message.reasoning_content`` (or ``reasoning``) and only the answer in
    ``content``; a ``content`` of null after reasoning alone is a judge cut off before it
    answered."""
    data = response_object(body)
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices:
        raise _Failure(f"response has no choices: {_snippet(json.dumps(data)[:1000])}", retryable=False)
    choice = choices[0]
    if not isinstance(choice, Mapping):
        raise _Failure(f"choices[0] is {type(choice).__name__}, not an object", retryable=False)
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
        raise _Failure(f"choices[0].message has no text content{thought}{cut}", retryable=False)
    if finish == "length" and not content.strip():
        raise _Failure("empty reply (cut at max_tokens)", retryable=False)
    return content, finish, reasoning


# --------------------------------------------------------------------------- transport


class HttpTransport:
    """JSON POSTs to one endpoint with the retries, backoff, Retry-After handling, concurrency
    limit and API-key redaction of the module docstring.  `post(payload, parse)` sends one
    request (retrying as described) and returns ``(parse(body), None)`` or ``(None, error)``;
    it never raises.  `HttpChat` (chat completions) and `ipo_jax.rollout.http.HttpPolicy`
    (text completions) are built on it."""

    def __init__(
        self,
        url: str,
        *,
        api_key_env: str | None = "OPENAI_API_KEY",
        timeout: float = 30.0,
        max_retries: int = 4,
        backoff: float = 1.0,
        max_backoff: float = 30.0,
        concurrency: int = 8,
        name: str = "http",
        jitter: float = 0.0,
        total_timeout: float | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ):
        if not timeout > 0:
            raise ValueError(f"timeout must be > 0, got {timeout!r}")
        if not isinstance(max_retries, int) or max_retries < 0:
            raise ValueError(f"max_retries must be an int >= 0, got {max_retries!r}")
        if backoff < 0 or max_backoff < 0:
            raise ValueError(f"backoff and max_backoff must be >= 0, got {backoff!r}, {max_backoff!r}")
        if not isinstance(concurrency, int) or concurrency < 1:
            raise ValueError(f"concurrency must be an int >= 1, got {concurrency!r}")
        if jitter < 0:
            raise ValueError(f"jitter must be >= 0, got {jitter!r}")
        if total_timeout is not None and not total_timeout > 0:
            raise ValueError(f"total_timeout must be > 0 or None, got {total_timeout!r}")
        self.url = url
        self.name = name
        self.api_key_env = api_key_env
        self.timeout = float(timeout)
        self.max_retries = max_retries
        self.backoff = float(backoff)
        self.max_backoff = float(max_backoff)
        self.concurrency = concurrency
        self.jitter = float(jitter)
        self.total_timeout = total_timeout
        self._sleep = sleep
        self._clock = clock
        self._slots = threading.BoundedSemaphore(concurrency)
        self._rng = random.Random()

    @staticmethod
    def check_base_url(base_url: str) -> str:
        """`base_url` stripped of spaces and a trailing slash; ValueError unless it is an http(s)
        URL without credentials."""
        if not isinstance(base_url, str) or not base_url.strip():
            raise ValueError("base_url must be a non-empty URL such as 'http://localhost:8000/v1'")
        base = base_url.strip().rstrip("/")
        parts = urllib.parse.urlsplit(base)
        if parts.scheme.lower() not in ("http", "https"):
            raise ValueError(f"base_url must start with http:// or https://, got {_redact_url(base)!r}")
        if parts.username is not None or parts.password is not None:
            raise ValueError(f"base_url must not contain credentials (got {_redact_url(base)!r}); put the API key "
                             "in the environment variable named by api_key_env")
        return base

    # -- secrets ---------------------------------------------------------------------------

    def _api_key(self) -> str | None:
        if not self.api_key_env:
            return None
        key = os.environ.get(self.api_key_env, "")
        return key or None

    def _headers(self) -> dict[str, str]:
        """Accept JSON, with the Bearer key when one is configured."""
        key = self._api_key()
        return {"Accept": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}

    def _redact(self, text: str) -> str:
        """`text` with the API key replaced by ``[redacted]``."""
        key = self._api_key()
        return text.replace(key, REDACTED) if key else text

    @property
    def endpoint(self) -> str:
        """The request URL with any credentials removed (safe to log)."""
        return _redact_url(self.url)

    # -- one request -----------------------------------------------------------------------

    def _attempt(self, data: bytes) -> bytes:
        """One POST; the response body (at most ``MAX_BODY_BYTES + 1`` bytes), or `_Failure`."""
        headers = {"Content-Type": "application/json", **self._headers()}
        request = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
        try:
            with self._slots, urllib.request.urlopen(request, timeout=self.timeout) as response:
                body = response.read(MAX_BODY_BYTES + 1)
        except urllib.error.HTTPError as e:
            status, text = e.code, _error_body(e)
            message = f"HTTP {status} {e.reason or ''}".rstrip()
            detail = _snippet(server_message(text)) if text.strip() else ""
            retry_after = parse_retry_after(e.headers.get("Retry-After")) if e.headers is not None else None
            if status == 429 or 500 <= status <= 599:
                honour = retry_after if status in (429, 503) else None
                raise _Failure(message, retryable=True, retry_after=honour, detail=detail) from None
            raise _Failure(message, retryable=False, detail=detail) from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
            raise _network_failure(e, self.timeout) from None
        except ValueError as e:  # e.g. an invalid URL / header
            raise _Failure(f"request could not be sent ({type(e).__name__}: {e})", retryable=False) from None
        return body

    def _delay(self, retry: int, failure: _Failure) -> float:
        if failure.retry_after is not None:
            return min(self.max_backoff, failure.retry_after)
        delay = self.backoff * (2.0**retry)
        if self.jitter:
            delay *= 1.0 + self.jitter * self._rng.random()
        return min(self.max_backoff, delay)

    def post(self, payload: Mapping[str, Any], parse: Callable[[bytes], Any]) -> tuple[Any, str | None]:
        """POST `payload` as JSON with retries; ``(parse(body), None)`` on success, else
        ``(None, error)``.  `parse` raises `_Failure` for an unusable body (not retried: the same
        request gets the same reply).  Never raises; errors are redacted, results are not (the
        caller redacts text it keeps)."""
        try:
            data = json.dumps(payload).encode("utf-8")
        except (TypeError, ValueError) as e:
            return None, self._redact(f"request could not be encoded ({type(e).__name__}: {e})")
        start = self._clock()
        attempts = 0
        while True:
            attempts += 1
            try:
                body = self._attempt(data)
            except _Failure as failure:
                last = failure
            except Exception as e:  # noqa: BLE001 - anything unexpected is this request's error
                last = _Failure(f"unexpected {type(e).__name__}: {e}", retryable=False)
            else:
                try:
                    if len(body) > MAX_BODY_BYTES:
                        raise _Failure(f"response larger than {MAX_BODY_BYTES} bytes", retryable=False)
                    return parse(body), None
                except _Failure as failure:
                    return None, self._redact(f"bad response from {self.endpoint}: {failure.message}")
                except Exception as e:  # noqa: BLE001 - a parser's slip is this request's error, never a crash
                    return None, self._redact(f"bad response from {self.endpoint}: unexpected {type(e).__name__}: {e}")
            head = f"{last.message} ({self.endpoint})"
            detail = f": {last.detail}" if last.detail else ""
            plural = "s" if attempts != 1 else ""
            if not last.retryable:
                return None, self._redact(f"{head}, not retried{detail}")
            if attempts > self.max_retries:
                return None, self._redact(f"{head} after {attempts} attempt{plural}{detail}")
            delay = self._delay(attempts - 1, last)
            if self.total_timeout is not None and self._clock() + delay - start > self.total_timeout:
                elapsed = self._clock() - start
                return None, self._redact(
                    f"{head} after {attempts} attempt{plural}, total_timeout {self.total_timeout:g} s reached "
                    f"({elapsed:.1f} s elapsed){detail}"
                )
            logger.warning("%s: %s; retry %d/%d in %.2f s", self.name, self._redact(head + detail), attempts,
                           self.max_retries, delay)
            if delay > 0:
                self._sleep(delay)

    def get_json(self, url: str) -> tuple[Any, str | None]:
        """One GET of `url` (no retries; the request timeout): ``(JSON body, None)`` or
        ``(None, error)``, never raising; the error is redacted and names the URL and status."""
        shown = _redact_url(url)
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=self._headers(), method="GET"),
                                        timeout=self.timeout) as response:
                body = response.read(MAX_BODY_BYTES + 1)
        except urllib.error.HTTPError as e:
            text = _error_body(e)
            detail = f": {_snippet(server_message(text))}" if text.strip() else ""
            return None, self._redact(f"HTTP {e.code} {e.reason or ''}".rstrip() + f" ({shown}){detail}")
        except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
            return None, self._redact(f"{_network_failure(e, self.timeout).message} ({shown})")
        except ValueError as e:
            return None, self._redact(f"request could not be sent ({type(e).__name__}: {e})")
        try:
            return json.loads(body.decode("utf-8")), None
        except (UnicodeDecodeError, ValueError):
            return None, self._redact(f"bad response from {shown}: not JSON")

    def server_info(self, model: str) -> dict[str, Any]:
        """What the server says about itself and `model`, from ``GET {base}/models`` (and vLLM's
        ``GET /version`` when the server has one): ``models`` (the served ids, None when the
        listing failed), ``served`` (whether `model` is among them), ``max_model_len``, ``root``
        and ``version`` (None when not given), and ``models_error``.  Never raises."""
        base = api_base(self.url)
        info: dict[str, Any] = dict(models=None, served=None, max_model_len=None, root=None, version=None,
                                    models_error=None)
        data, error = self.get_json(base + "/models")
        if error is not None:
            info["models_error"] = error
        else:
            entries = data.get("data") if isinstance(data, Mapping) else None
            if isinstance(entries, list):
                entries = [e for e in entries if isinstance(e, Mapping) and isinstance(e.get("id"), str)]
                info["models"] = [e["id"] for e in entries]
                mine = next((e for e in entries if e["id"] == model), None)
                info["served"] = mine is not None
                if mine is not None:
                    length = mine.get("max_model_len")
                    info["max_model_len"] = length if isinstance(length, int) and not isinstance(length, bool) else None
                    info["root"] = mine.get("root") if isinstance(mine.get("root"), str) else None
                    info["version"] = next((str(mine[k]) for k in ("version", "revision") if mine.get(k)), None)
            else:
                info["models_error"] = f"bad response from {_redact_url(base)}/models: no data list"
        if info["version"] is None and base.endswith("/v1"):
            data, error = self.get_json(base[: -len("/v1")] + "/version")  # vLLM: {"version": "0.8.5"}
            if error is None and isinstance(data, Mapping) and isinstance(data.get("version"), (str, int, float)):
                info["version"] = str(data["version"])
        return info

    def map_concurrently(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
        """``[fn(item) for item in items]``, in order, on a pool of ``min(concurrency, n)`` threads
        (the semaphore keeps the requests in flight at `concurrency` across callers too)."""
        items = list(items)
        if len(items) <= 1:
            return [fn(item) for item in items]
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(items)),
                                thread_name_prefix=type(self).__name__) as pool:
            return list(pool.map(fn, items))


# --------------------------------------------------------------------------- client


class HttpChat(HttpTransport):
    """A `ChatBackend` for an OpenAI-compatible chat-completions endpoint: retries with backoff,
    at most `concurrency` requests in flight per instance, API-key redaction (module docstring)."""

    default_max_tokens = DEFAULT_MAX_TOKENS

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key_env: str | None = "OPENAI_API_KEY",
        timeout: float = 30.0,
        max_retries: int = 4,
        backoff: float = 1.0,
        max_backoff: float = 30.0,
        concurrency: int = 8,
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
                raise _Failure(f"response has no choices: {_snippet(json.dumps(data)[:1000])}", retryable=False)
            fingerprint = data.get("system_fingerprint")
            return fingerprint if isinstance(fingerprint, str) and fingerprint else None

        result, error = self.post(payload, parse)
        return (error, None) if error is not None else (None, result)

    def settings(self) -> dict[str, Any]:
        """What the replies depend on (no key, no credentials): for a run's record."""
        return dict(backend="http", url=self.endpoint, model=self.model, max_tokens=self.max_tokens,
                    extra_body=self.extra_body)

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
        from ipo_jax.sampling.sampler import SamplingConfig

        if not isinstance(max_tokens, int) or max_tokens < 1:
            raise ValueError(f"max_tokens must be an int >= 1, got {max_tokens!r}")
        self.sampler, self.tokenizer, self.name = sampler, tokenizer, name
        self.template_kwargs = dict(template_kwargs or {})
        self.answer_directly = answer_directly
        self.sampling = SamplingConfig(temperature=0.0, top_p=1.0, top_k=0, max_new_tokens=max_tokens, seed=seed)

    def prompt_text(self, messages: list[dict[str, str]]) -> str:
        """The rendered prompt of one conversation, ready for the assistant's turn."""
        from ipo_jax.data.tokenizer import render_prompt

        kwargs = dict(self.template_kwargs)
        if self.answer_directly and "enable_thinking" not in kwargs and "enable_thinking" in str(
            getattr(self.tokenizer, "chat_template", "") or ""
        ):
            kwargs["enable_thinking"] = False  # Qwen3: the template writes an empty think block itself
        text = render_prompt(self.tokenizer, messages, **kwargs)
        if self.answer_directly and text.rfind(THINK_OPEN) > text.rfind(THINK_CLOSE):
            text += ANSWER_OPEN if text.endswith("\n") else "\n" + ANSWER_OPEN
        return text

    def _max_prompt_tokens(self) -> int | None:
        buckets = getattr(self.sampler, "buckets", None)
        try:
            return max(int(b) for b in buckets) if buckets else None
        except (TypeError, ValueError):
            return None

    def complete(self, conversations: Sequence[list[dict[str, str]]]) -> list[Reply]:
        from ipo_jax.data.tokenizer import encode_text

        limit = self._max_prompt_tokens()
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
            finish = getattr(generation, "finish_reason", None)
            if not text.strip() and len(generation.tokens):
                out[i] = Reply.failed(f"{len(generation.tokens)} tokens, none of them text")
            else:
                out[i] = Reply(THINK_OPEN + text if opened[i] else text, None, finish)
        return out

    def settings(self) -> dict[str, Any]:
        """What the replies depend on: for a run's record."""
        return dict(backend="llm", name=self.name, max_tokens=self.sampling.max_new_tokens,
                    answer_directly=self.answer_directly, template_kwargs=self.template_kwargs)

    def __repr__(self) -> str:
        return f"LocalChat(name={self.name!r}, max_tokens={self.sampling.max_new_tokens})"


__all__ = [
    "ANSWER_OPEN",
    "DEFAULT_MAX_TOKENS",
    "MAX_BODY_BYTES",
    "REDACTED",
    "ChatBackend",
    "HttpChat",
    "HttpTransport",
    "LocalChat",
    "Reply",
    "api_base",
    "parse_retry_after",
    "reply_content",
    "server_message",
]
