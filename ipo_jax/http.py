"""The one OpenAI-compatible HTTP transport, below both the judges (`ipo_jax.judging.chat.HttpChat`:
chat completions) and the HTTP policy (`ipo_jax.rollout.http.HttpPolicy`: text completions):
JSON POSTs to one endpoint with retries, backoff, Retry-After, a concurrency limit and API-key
redaction, plus the helpers both clients read responses with.

* `HttpTransport` -- ``post(payload, parse)`` (one request, retried as below; never raises),
  ``map_concurrently`` (a thread pool held at ``concurrency`` requests in flight), ``get_json`` /
  ``server_info`` (``GET /models``, vLLM's ``GET /version``) and ``check_base_url``.
* `HttpFailure` -- what a failed attempt or an unusable body raises inside ``post``; a client's
  ``parse`` raises it (``retryable=False``) for a body that is not the response it expects.
* `response_object`, `server_message`, `snippet`, `api_base`, `redact_url`, `parse_retry_after`,
  `json_object_setting` -- small readers shared by both clients.

Keys.  The API key is read from the environment variable named by ``api_key_env`` at each
request and sent as ``Authorization: Bearer <key>``; when the variable is unset or empty no
Authorization header is sent (credentials inside ``base_url`` are refused by
``check_base_url``).  The key is never stored on the instance, and every error and log line
passes through a redactor that replaces the key with ``[redacted]``.

Retries.  An attempt is retried when it fails with a timeout (connect or read), a connection
error (refused, reset, aborted, remote disconnected, incomplete read), HTTP 5xx or HTTP 429;
at most ``max_retries`` retries (``max_retries + 1`` attempts in all).  Before retry ``k``
(``k = 0, 1, ...``) the client sleeps ``min(max_backoff, backoff * 2**k)`` seconds, times
``1 + jitter * U[0, 1)`` when ``jitter > 0`` (off by default, so the schedule is
deterministic).  A 429 (or 503) response carrying ``Retry-After`` (seconds, or an HTTP date)
sleeps that long instead, capped at ``max_backoff``.  With ``total_timeout`` set, no retry is
started whose sleep would end past ``total_timeout`` seconds after the first attempt began
(measured with the injected ``clock``).  Other 4xx responses, other network errors (DNS
failure, TLS errors) and bad URLs are not retried; neither is a body the client's ``parse``
refuses (the same request gets the same reply).  A failed request's error names the failure
and the endpoint, e.g. ``"HTTP 500 Internal Server Error (http://host/v1/chat/completions)
after 5 attempts: '<body>'"``, ``"connection refused (...) after 5 attempts"``, ``"HTTP 401
Unauthorized (...), not retried: ..."``; an unusable body's starts ``"bad response from <url>:
"``.  ``sleep`` and ``clock`` are constructor arguments so tests need not wait.  The HTTP
client is the standard library's `urllib.request`.

Concurrency.  ``map_concurrently`` runs its items on a thread pool of ``min(concurrency, n)``
threads; a semaphore per instance holds the number of requests in flight at ``concurrency``
even when several threads call the same instance.
"""

from __future__ import annotations

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
from typing import Any

logger = logging.getLogger(__name__)

REDACTED = "[redacted]"
MAX_BODY_BYTES = 4 * 1024 * 1024  # a response larger than this is an error, not read on
SNIPPET_CHARS = 200  # characters of an error body quoted in a reason


# --------------------------------------------------------------------------- helpers


class HttpFailure(Exception):
    """One failed attempt or an unusable response: `message` (what failed), `retryable`, the
    server's Retry-After delay (seconds) when it sent one, and `detail` (a quoted body)."""

    def __init__(self, message: str, *, retryable: bool, retry_after: float | None = None, detail: str = ""):
        super().__init__(message)
        self.message = message
        self.retryable = retryable
        self.retry_after = retry_after
        self.detail = detail


def snippet(text: str, n: int = SNIPPET_CHARS) -> str:
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


def redact_url(url: str) -> str:
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


def network_failure(exc: BaseException, timeout: float) -> HttpFailure:
    """Classify an exception raised while connecting / sending / reading."""
    reason = exc.reason if isinstance(exc, urllib.error.URLError) and not isinstance(exc, urllib.error.HTTPError) else exc
    if _is_timeout(reason) or (isinstance(reason, str) and "timed out" in reason):
        return HttpFailure(f"timed out after {timeout:g} s", retryable=True)
    if isinstance(reason, ConnectionRefusedError):
        return HttpFailure("connection refused", retryable=True)
    if isinstance(reason, http.client.RemoteDisconnected):
        return HttpFailure("server closed the connection without a response", retryable=True)
    if isinstance(reason, ConnectionResetError):
        return HttpFailure("connection reset", retryable=True)
    if isinstance(reason, ConnectionError):  # aborted, broken pipe
        return HttpFailure(f"connection error ({type(reason).__name__})", retryable=True)
    if isinstance(reason, http.client.IncompleteRead):
        return HttpFailure("incomplete response body", retryable=True)
    if isinstance(reason, http.client.HTTPException):
        return HttpFailure(f"bad HTTP response ({type(reason).__name__}: {reason})", retryable=True)
    if isinstance(reason, socket.gaierror):
        return HttpFailure(f"host name lookup failed ({reason})", retryable=False)
    return HttpFailure(f"request failed ({type(reason).__name__}: {reason})", retryable=False)


def response_object(body: bytes) -> dict:
    """An OpenAI-compatible response body as a JSON object; raises `HttpFailure` (not retried) for
    a body that is not JSON, not an object, or a server error without choices."""
    try:
        data = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):  # JSONDecodeError is a ValueError
        text = body.decode("utf-8", "replace")
        raise HttpFailure(f"response is not JSON: {snippet(text)}", retryable=False) from None
    if not isinstance(data, dict):
        raise HttpFailure(f"response is JSON {type(data).__name__}, not an object", retryable=False)
    if "error" in data and not data.get("choices"):
        error = data["error"]
        message = error.get("message", error) if isinstance(error, Mapping) else error
        raise HttpFailure(f"server returned an error: {snippet(str(message))}", retryable=False)
    return data



def json_object_setting(text: str, setting: str) -> dict[str, Any]:
    """A setting written as JSON object text (``extra_body``): {} for blank text, else the object;
    ValueError naming `setting` when the text is not JSON or not an object."""
    if not text.strip():
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{setting} is not valid JSON ({e}): {text!r}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{setting} must be a JSON object, got {type(value).__name__}: {text!r}")
    return value


# --------------------------------------------------------------------------- transport


class HttpTransport:
    """JSON POSTs to one endpoint with the retries, backoff, Retry-After handling, concurrency
    limit and API-key redaction of the module docstring.  `post(payload, parse)` sends one
    request (retrying as described) and returns ``(parse(body), None)`` or ``(None, error)``;
    it never raises.  `ipo_jax.judging.chat.HttpChat` (chat completions) and `ipo_jax.rollout.http.HttpPolicy`
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
            raise ValueError(f"base_url must start with http:// or https://, got {redact_url(base)!r}")
        if parts.username is not None or parts.password is not None:
            raise ValueError(f"base_url must not contain credentials (got {redact_url(base)!r}); put the API key "
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
        return redact_url(self.url)

    # -- one request -----------------------------------------------------------------------

    def _attempt(self, data: bytes) -> bytes:
        """One POST; the response body (at most ``MAX_BODY_BYTES + 1`` bytes), or `HttpFailure`."""
        headers = {"Content-Type": "application/json", **self._headers()}
        request = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
        try:
            with self._slots, urllib.request.urlopen(request, timeout=self.timeout) as response:
                body = response.read(MAX_BODY_BYTES + 1)
        except urllib.error.HTTPError as e:
            status, text = e.code, _error_body(e)
            message = f"HTTP {status} {e.reason or ''}".rstrip()
            detail = snippet(server_message(text)) if text.strip() else ""
            retry_after = parse_retry_after(e.headers.get("Retry-After")) if e.headers is not None else None
            if status == 429 or 500 <= status <= 599:
                honour = retry_after if status in (429, 503) else None
                raise HttpFailure(message, retryable=True, retry_after=honour, detail=detail) from None
            raise HttpFailure(message, retryable=False, detail=detail) from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
            raise network_failure(e, self.timeout) from None
        except ValueError as e:  # e.g. an invalid URL / header
            raise HttpFailure(f"request could not be sent ({type(e).__name__}: {e})", retryable=False) from None
        return body

    def _delay(self, retry: int, failure: HttpFailure) -> float:
        if failure.retry_after is not None:
            return min(self.max_backoff, failure.retry_after)
        delay = self.backoff * (2.0**retry)
        if self.jitter:
            delay *= 1.0 + self.jitter * self._rng.random()
        return min(self.max_backoff, delay)

    def post(self, payload: Mapping[str, Any], parse: Callable[[bytes], Any]) -> tuple[Any, str | None]:
        """POST `payload` as JSON with retries; ``(parse(body), None)`` on success, else
        ``(None, error)``.  `parse` raises `HttpFailure` for an unusable body (not retried: the same
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
            except HttpFailure as failure:
                last = failure
            except Exception as e:  # noqa: BLE001 - anything unexpected is this request's error
                last = HttpFailure(f"unexpected {type(e).__name__}: {e}", retryable=False)
            else:
                try:
                    if len(body) > MAX_BODY_BYTES:
                        raise HttpFailure(f"response larger than {MAX_BODY_BYTES} bytes", retryable=False)
                    return parse(body), None
                except HttpFailure as failure:
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
        shown = redact_url(url)
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=self._headers(), method="GET"),
                                        timeout=self.timeout) as response:
                body = response.read(MAX_BODY_BYTES + 1)
        except urllib.error.HTTPError as e:
            text = _error_body(e)
            detail = f": {snippet(server_message(text))}" if text.strip() else ""
            return None, self._redact(f"HTTP {e.code} {e.reason or ''}".rstrip() + f" ({shown}){detail}")
        except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
            return None, self._redact(f"{network_failure(e, self.timeout).message} ({shown})")
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
                info["models_error"] = f"bad response from {redact_url(base)}/models: no data list"
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


__all__ = [
    "MAX_BODY_BYTES",
    "REDACTED",
    "HttpFailure",
    "HttpTransport",
    "api_base",
    "json_object_setting",
    "network_failure",
    "parse_retry_after",
    "redact_url",
    "response_object",
    "server_message",
    "snippet",
]
