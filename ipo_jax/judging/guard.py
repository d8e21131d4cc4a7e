"""Judge failures stop the stage: a probe and a context check before any sampling, and an error
budget while the stage runs.  Used by `build-pairs`, `sample`, `csr` and `eval`; the LLM cue
detector counts as a judge here.

* `check_judges(...)` -- before any sampling, for every LLM judge / detector backend (a judge
  and a detector sharing one backend are checked once):
    - HTTP: ``GET {base_url}/models`` (what the server serves, ``max_model_len``, a version when
      it gives one; a server without the route is fine), then ONE probe chat request (a one-word
      user turn, ``max_tokens`` 1, the usual retries).  A probe that fails (a 404 for a mistyped
      model name, 401, a refused connection after the retries) stops the stage.
    - the context: when the server names ``max_model_len`` (an HTTP judge) or the sampler names
      its longest prompt (a local ``llm`` judge), the longest judge request the stage can send
      must fit: ``template + trajectory + reply``, where *template* is the system prompt, the
      few-shot examples and the longest user prompt of the stage (each message counted with the
      judge's tokenizer when ``judge.tokenizer`` names one -- a local judge always has one --
      else estimated at ``CHARS_PER_TOKEN`` = 3 characters per token, an over-count for English
      BPE text, which averages about 4, plus ``MESSAGE_OVERHEAD`` = 8 tokens per message for
      the chat template), *trajectory* the stage's token budget for the judged text (one
      generation, ``sampling.max_new_tokens``, counted as that many judge tokens -- exact only
      when judge and policy share a tokenizer), and *reply* ``judge.max_tokens`` (an HTTP
      server refuses prompt + max_tokens over its context; a local judge's reply budget is not
      part of its prompt limit).  It is an estimate of the worst case; longer texts the stage
      builds later (an intervened trajectory is prefix + continuation) fail at run time and
      count against the error budget.
* `ErrorBudget` with `guard(judge, budget)` / `guard(detector, budget)` -- while the stage
  runs, every judge / detector request that was sent to the backend (an empty text decided
  without asking is not one) and came back as an error (HTTP error, timeout, unreadable or
  unparseable reply) is counted.  The stage stops when the FIRST batch of the stage is all
  errors, or when more than ``judge.max_error_share`` (default 0.05) of one chunk's requests
  failed (`ErrorBudget.end_chunk`; a chunk: build-pairs' ``intervention.chunk_prompts``
  prompts, one eval batch, one CSR trajectory); the chunk is then not written as done, so a
  rerun with a working judge redoes it.

Stopping is `JudgeFailedError` (``ipo_jax.judging.records``): one line naming the role, the
backend, the endpoint, the model, the HTTP status and the server's message; the CLI prints it and
exits with code 5 (``EXIT_JUDGE_FAILED``).  Pattern judges (the demo world's, offline) are not
guarded: they never fail on a text they read.
"""

from __future__ import annotations

import logging
import math
import re
import threading
from collections.abc import Sequence
from typing import Any

from ipo_jax.data.tokenizer import encode_text, load_tokenizer
from ipo_jax.judging.records import (
    CueRequest,
    JudgeFailedError,
    JudgeRequest,
    detect_all,
    judge_all,
    name_of,
)

logger = logging.getLogger(__name__)

CHARS_PER_TOKEN = 3  # conservative estimate of judge tokens per character without the judge's tokenizer
MESSAGE_OVERHEAD = 8  # tokens the chat template adds per message (role markers), estimated
DEFAULT_MAX_ERROR_SHARE = 0.05
_STATUS = re.compile(r"\bHTTP (\d{3})\b")


def backend_of(judge_or_detector) -> dict[str, Any]:
    """{role-independent description}: backend (http / llm / pattern), endpoint, model, name."""
    judge_or_detector = unguarded(judge_or_detector)
    chat = judge_or_detector.chat
    where = dict(backend="pattern", endpoint=None, model=None) if chat is None else chat.describe()
    return {**where, "name": name_of(judge_or_detector)}


def unguarded(judge_or_detector):
    """The judge or detector itself, without the `GuardedJudge` that reports its failures."""
    return judge_or_detector.inner if isinstance(judge_or_detector, GuardedJudge) else judge_or_detector


def _status(error: str) -> str:
    found = _STATUS.search(error or "")
    return f"HTTP {found.group(1)}" if found else "no HTTP status"


def failure_line(role: str, backend: dict[str, Any], what: str, error: str) -> str:
    """The one line of a `JudgeFailedError`: role, backend, model, endpoint, HTTP status, what
    failed and the first error (which quotes the server's message)."""
    where = f"{backend['backend']} {role} model {backend.get('model')!r}"
    if backend.get("endpoint"):
        where += f" at {backend['endpoint']}"
    return (f"{role} failed ({where}; {_status(error)}): {what}; first error: {error} "
            f"-- check {role}.base_url, {role}.model and the server (exit code 5)")


# --------------------------------------------------------------------------- the error budget


class ErrorBudget:
    """Counts the requests sent to the judge / detector backends and those that failed, per chunk
    and in all (module docstring).  Thread-safe."""

    def __init__(self, max_error_share: float = DEFAULT_MAX_ERROR_SHARE):
        if not (isinstance(max_error_share, (int, float)) and 0.0 <= max_error_share <= 1.0):
            raise ValueError(f"judge.max_error_share is {max_error_share!r}; expected a number in [0, 1]")
        self.max_error_share = float(max_error_share)
        self._lock = threading.Lock()
        self.batches = 0
        self.requests = self.failed = 0  # in all
        self.chunk_requests = self.chunk_failed = 0
        self._first: tuple[str, dict, str] | None = None  # this chunk's first failure: role, backend, error
        self.chunk = "the run"

    def start_chunk(self, where: str) -> None:
        with self._lock:
            self.chunk, self.chunk_requests, self.chunk_failed, self._first = where, 0, 0, None

    def record(self, role: str, backend: dict[str, Any], asked: int, errors: Sequence[str]) -> None:
        """One batch: `asked` requests sent, `errors` the failed ones' reasons.  Raises
        `JudgeFailedError` when it is the stage's first batch and every request failed."""
        if asked <= 0:
            return
        with self._lock:
            first_batch = self.batches == 0
            self.batches += 1
            self.requests += asked
            self.failed += len(errors)
            self.chunk_requests += asked
            self.chunk_failed += len(errors)
            if errors and self._first is None:
                self._first = (role, backend, errors[0])
        if first_batch and len(errors) == asked:
            raise JudgeFailedError(failure_line(role, backend, f"all {asked} requests of the first batch failed", errors[0]))

    def chunk_counts(self) -> dict[str, int]:
        return dict(judge_requests=self.chunk_requests, judge_failed_requests=self.chunk_failed)

    def end_chunk(self) -> dict[str, int]:
        """This chunk's counts; raises `JudgeFailedError` when its failed share is over the limit."""
        with self._lock:
            asked, failed, first = self.chunk_requests, self.chunk_failed, self._first
        if asked and failed / asked > self.max_error_share and first is not None:
            role, backend, error = first
            raise JudgeFailedError(failure_line(
                role, backend, f"{failed} of {asked} requests in {self.chunk} failed ({failed / asked:.1%}, over "
                f"judge.max_error_share {self.max_error_share:g}; it is not kept, a rerun redoes it)", error))
        return dict(judge_requests=asked, judge_failed_requests=failed)

    def totals(self) -> dict[str, Any]:
        with self._lock:
            return dict(judge_requests=self.requests, judge_failed_requests=self.failed,
                        max_error_share=self.max_error_share)

    def line(self) -> str:
        """One line for stdout: how many judge / detector requests failed."""
        t = self.totals()
        share = f"{t['judge_failed_requests'] / t['judge_requests']:.1%}" if t["judge_requests"] else "-"
        return (f"judge: {t['judge_failed_requests']} of {t['judge_requests']} judge / cue-detector requests failed "
                f"({share}; each chunk may fail up to judge.max_error_share {self.max_error_share:g})")


class GuardedJudge:
    """A `Judge` that reports each batch to an `ErrorBudget` (the rest is the wrapped judge's)."""

    role = "judge"

    def __init__(self, inner, budget: ErrorBudget):
        self.inner, self.budget = inner, budget
        self.name = name_of(inner)
        self.backend = backend_of(inner)

    def judge(self, requests):
        requests = list(requests)
        verdicts = judge_all(self.inner, requests)
        asked = [i for i, r in enumerate(requests) if isinstance(r, JudgeRequest) and r.text.strip()]
        self.budget.record(self.role, self.backend, len(asked),
                           [verdicts[i].reason for i in asked if verdicts[i].is_error])
        return verdicts

    @property
    def chat(self):
        return self.inner.chat

    @property
    def prompts(self):
        return self.inner.prompts

    def settings(self) -> dict[str, Any]:
        return self.inner.settings()

    def messages(self, request):
        return self.inner.messages(request)


class GuardedDetector(GuardedJudge):
    role = "detector"

    def judge(self, requests):  # pragma: no cover - a detector is not asked to judge
        raise AttributeError("a cue detector has no judge()")

    def detect(self, requests):
        requests = list(requests)
        results = detect_all(self.inner, requests)
        asked = [i for i, r in enumerate(requests) if isinstance(r, CueRequest) and r.sentences]
        self.budget.record(self.role, self.backend, len(asked),
                           [results[i].error or "" for i in asked if results[i].is_error])
        return results


def guard(judge, detector, budget: ErrorBudget):
    """(judge, detector), each LLM one wrapped to report to `budget`; pattern ones as they are."""
    g_judge = GuardedJudge(judge, budget) if judge.chat is not None else judge
    g_detector = detector
    if detector is not None and detector.chat is not None:
        g_detector = GuardedDetector(detector, budget)
    return g_judge, g_detector


# --------------------------------------------------------------------------- before any sampling


def _count_tokens(messages: list[dict[str, str]], tokenizer) -> tuple[int, str]:
    if tokenizer is not None:

        n = sum(len(encode_text(tokenizer, m["content"])) for m in messages)
        return n + MESSAGE_OVERHEAD * len(messages), "counted with the judge's tokenizer"
    chars = sum(len(m["content"]) for m in messages)
    return (math.ceil(chars / CHARS_PER_TOKEN) + MESSAGE_OVERHEAD * len(messages),
            f"estimated at {CHARS_PER_TOKEN} characters per token")


def _template_messages(role: str, obj, prompt: str) -> list[list[dict[str, str]]]:
    """The stage's request templates of one role around an empty text (the longest prompt)."""
    if role == "judge":
        return [obj.messages(JudgeRequest(prompt, "", part)) for part in ("reasoning", "answer")]
    return [obj.messages(CueRequest(prompt, ("",)))]


def _judge_tokenizer(tokenizer_dir: str):
    """The HTTP judge's tokenizer, where the run names its directory (`judge.tokenizer`)."""
    return load_tokenizer(tokenizer_dir) if tokenizer_dir else None


def check_judges(judge, detector, *, prompts: Sequence[str], trajectory_tokens: int, trajectory_setting: str,
                 tokenizers: dict[str, str] | None = None, probe: bool = True) -> dict[str, Any]:
    """The probe and the context check of the module docstring, for the LLM judge and detector
    (`detector` may be None).  `prompts`: the user prompts the stage will judge; `trajectory_tokens`:
    the longest judged text it can produce, named by `trajectory_setting` in messages;
    `tokenizers`: {role: judge tokenizer directory or ''}.  Returns {role: what the server said}
    (for the run's provenance); raises `JudgeFailedError`."""
    longest = max(prompts, key=len) if prompts else ""
    seen: dict[int, dict[str, Any]] = {}
    out: dict[str, Any] = {}
    for role, obj in (("judge", judge), ("detector", detector)):
        if obj is None or obj.chat is None:
            continue
        inner, chat = unguarded(obj), obj.chat
        backend = backend_of(inner)
        info = seen.get(id(chat))
        if info is None:
            info = dict(backend)
            if backend["backend"] == "http":
                info.update(chat.server_info(chat.model))
                if probe:
                    error, fingerprint = chat.probe()
                    if error is not None:
                        listed = ""
                        if info.get("served") is False:
                            listed = f" (the server lists {', '.join(map(repr, info['models'][:10]))}, not {chat.model!r})"
                        raise JudgeFailedError(failure_line(role, backend, f"the probe request before any sampling "
                                                            f"failed{listed}", error))
                    info["system_fingerprint"] = fingerprint
            seen[id(chat)] = info
        out[role] = info
        # the context check, per role (judge and detector prompts differ)
        if backend["backend"] == "http":
            limit, limit_from = info.get("max_model_len"), f"max_model_len {info.get('max_model_len')} (GET /models)"
            reply = int(chat.max_tokens)
            tokenizer = _judge_tokenizer((tokenizers or {}).get(role, ""))
        else:  # a local model: its sampler's prompt limit; the reply has its own budget there
            limit = chat.max_prompt_tokens()
            limit_from = f"its sampler's longest prompt {limit} ({role}.max_prompt_length)"
            reply = 0
            tokenizer = chat.tokenizer
        if not limit:
            continue
        template, how = max((_count_tokens(m, tokenizer) for m in _template_messages(role, inner, longest)),
                            key=lambda t: t[0])
        need = template + int(trajectory_tokens) + reply
        if need > limit:
            parts = f"{template:,} template tokens (system prompt, examples and the longest prompt; {how}) + " \
                    f"{int(trajectory_tokens):,} trajectory tokens ({trajectory_setting})"
            if reply:
                parts += f" + {reply:,} reply tokens ({role}.max_tokens)"
            raise JudgeFailedError(
                f"{role} context too short ({backend['backend']} {role} model {backend.get('model')!r}"
                f"{' at ' + backend['endpoint'] if backend.get('endpoint') else ''}; no HTTP status, checked before any "
                f"sampling): its {limit_from} is below the longest request this stage can send, about {parts} = "
                f"{need:,} tokens; give a judge with a longer context, or lower {trajectory_setting}"
                f"{f' or {role}.max_tokens' if reply else ''} (exit code 5)")
        info.setdefault("context_check", {})[role] = dict(limit=limit, need=need, template_tokens=template,
                                                          trajectory_tokens=int(trajectory_tokens), reply_tokens=reply)
    return out


def prepare_judges(config, judge, detector, *, prompts: Sequence[str], trajectory_tokens: int,
                   trajectory_setting: str):
    """A stage's judges, checked and guarded: `check_judges` with the config's tokenizers, then
    `guard` with an `ErrorBudget` of ``judge.max_error_share``.  Returns (judge, detector,
    budget, what the judge servers said)."""
    j = config.judge
    d = config.get("detector")
    detector_section = j if d is None or not d.backend else d
    tokenizers = {"judge": j.get("tokenizer", "") if j.backend == "http" else "",
                  "detector": detector_section.get("tokenizer", "") if detector_section.backend == "http" else ""}
    budget = ErrorBudget(j.get("max_error_share", DEFAULT_MAX_ERROR_SHARE))
    servers = check_judges(judge, detector, prompts=prompts, trajectory_tokens=trajectory_tokens,
                           trajectory_setting=trajectory_setting, tokenizers=tokenizers)
    judge, detector = guard(judge, detector, budget)
    return judge, detector, budget, servers


__all__ = ["CHARS_PER_TOKEN", "DEFAULT_MAX_ERROR_SHARE", "MESSAGE_OVERHEAD", "ErrorBudget", "GuardedDetector",
           "GuardedJudge", "JudgeFailedError", "backend_of", "check_judges", "failure_line", "guard", "prepare_judges"]
