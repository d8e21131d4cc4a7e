"""The LLM judge and the LLM compliance-cue detector, on top of any `ChatBackend` (our local
sampler or an OpenAI-compatible endpoint, `ipo_jax.judging.chat`).

* `LLMJudge(chat).judge(requests)` -- one `Verdict` per `JudgeRequest`: the reasoning and the
  answer are asked with their own system prompt and few-shot examples (`JudgePrompts`), every
  request of the list in ONE ``chat.complete`` call.
* `LLMCueDetector(chat).detect(requests)` -- one `CueResult` per `CueRequest`: the reasoning as
  numbered sentences, the reply the number of the first compliance cue or ``none``.

Replies are parsed by `ipo_jax.judging.prompts.parse_label` / `parse_cue_index` (a thinking
judge's reasoning is stripped first).  Nothing raises out of ``judge`` / ``detect``: a failed
request or an unparseable reply becomes an error record (never safe) whose reason says what
happened, with `(cut at max_tokens)` added when the reply was cut.  Short cuts that ask nothing:
an empty text (`empty_text_verdict`: an empty answer is an error, an empty reasoning safe) and
an empty sentence list (no cue).  Scores are hard: 1.0 unsafe, 0.0 safe.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence
from typing import Any

from ipo_jax.judging.chat import ChatBackend, Reply
from ipo_jax.judging.prompts import DEFAULT_PROMPTS, JudgePrompts, cue_messages, judge_messages, parse_cue_index, parse_label
from ipo_jax.judging.records import CueRequest, CueResult, JudgeRequest, Verdict, empty_text_verdict


def _note(reply: Reply) -> str:
    return " (cut at max_tokens)" if reply.finish_reason == "length" else ""


def _settings(name: str, chat: ChatBackend, prompts: JudgePrompts, kinds: Sequence[str]) -> dict[str, Any]:
    """Name, the chat backend's settings and a sha256 of the prompts and examples of `kinds`."""
    used = {k: v for k, v in dataclasses.asdict(prompts).items() if k.split("_")[0] in kinds}
    digest = hashlib.sha256(json.dumps(used, sort_keys=True).encode("utf-8")).hexdigest()
    return dict(name=name, chat=chat.settings(), prompts_sha256=digest)


def _replies(chat: ChatBackend, conversations: list[list[dict[str, str]]]) -> list[Reply]:
    """``chat.complete`` with a crash or a wrong number of replies turned into failed replies."""
    if not conversations:
        return []
    try:
        replies = list(chat.complete(conversations))
    except Exception as e:  # noqa: BLE001 - a failed backend gives error records, never a crash
        return [Reply.failed(f"chat backend raised {type(e).__name__}: {e}")] * len(conversations)
    if len(replies) != len(conversations):
        return [Reply.failed(f"chat backend returned {len(replies)} replies for {len(conversations)} requests")] * len(
            conversations
        )
    return [r if isinstance(r, Reply) else Reply.failed(f"chat backend returned {type(r).__name__}") for r in replies]


class LLMJudge:
    """A `Judge` asking a chat model ``safe`` or ``unsafe`` (module docstring)."""

    def __init__(self, chat: ChatBackend, *, prompts: JudgePrompts = DEFAULT_PROMPTS, name: str | None = None):
        self.chat, self.prompts = chat, prompts
        self.name = name or chat.name or "llm-judge"

    def messages(self, request: JudgeRequest) -> list[dict[str, str]]:
        return judge_messages(self.prompts, request)

    def _verdict(self, reply: Reply) -> Verdict:
        if reply.text is None:
            return Verdict.error(self.name, reply.error or "no reply")
        label, why = parse_label(reply.text)
        if label is None:
            return Verdict.error(self.name, why + _note(reply))
        return Verdict.of(label, self.name, why + _note(reply))

    def judge(self, requests: Sequence[JudgeRequest]) -> list[Verdict]:
        out: list[Verdict | None] = [None] * len(requests)
        conversations, where = [], []
        for i, request in enumerate(requests):
            if not isinstance(request, JudgeRequest):
                out[i] = Verdict.error(self.name, f"bad request: expected a JudgeRequest, got {type(request).__name__}")
            elif not request.text.strip():
                out[i] = empty_text_verdict(self.name, request.part)
            else:
                conversations.append(self.messages(request))
                where.append(i)
        for i, reply in zip(where, _replies(self.chat, conversations)):
            out[i] = self._verdict(reply)
        return out  # type: ignore[return-value]

    def settings(self) -> dict[str, Any]:
        """What the verdicts depend on (for a run's record): name, chat settings, prompts hash."""
        return _settings(self.name, self.chat, self.prompts, ("reasoning", "answer"))

    def __repr__(self) -> str:
        return f"LLMJudge(name={self.name!r}, chat={self.chat!r})"


class LLMCueDetector:
    """A `CueDetector` asking a chat model for the first compliance-cue sentence (module
    docstring).  The returned index is 0-based."""

    def __init__(self, chat: ChatBackend, *, prompts: JudgePrompts = DEFAULT_PROMPTS, name: str | None = None):
        self.chat, self.prompts = chat, prompts
        self.name = name or chat.name or "llm-cue"

    def messages(self, request: CueRequest) -> list[dict[str, str]]:
        return cue_messages(self.prompts, request)

    def _result(self, reply: Reply, n: int) -> CueResult:
        if reply.text is None:
            return CueResult(None, self.name, "", reply.error or "no reply")
        index, error, why = parse_cue_index(reply.text, n)
        if error is not None:
            return CueResult(None, self.name, "", error + _note(reply))
        return CueResult(index, self.name, why + _note(reply))

    def detect(self, requests: Sequence[CueRequest]) -> list[CueResult]:
        out: list[CueResult | None] = [None] * len(requests)
        conversations, where = [], []
        for i, request in enumerate(requests):
            if not isinstance(request, CueRequest):
                out[i] = CueResult(None, self.name, "", f"bad request: expected a CueRequest, got {type(request).__name__}")
            elif not request.sentences:
                out[i] = CueResult(None, self.name, "no sentences: no compliance cue")
            else:
                conversations.append(self.messages(request))
                where.append(i)
        for i, reply in zip(where, _replies(self.chat, conversations)):
            out[i] = self._result(reply, len(requests[i].sentences))
        return out  # type: ignore[return-value]

    def first_cue(self, prompt: str, sentences: Sequence[Any]) -> CueResult:
        """One request (convenience)."""
        return self.detect([CueRequest(prompt, tuple(sentences))])[0]

    def settings(self) -> dict[str, Any]:
        """What the results depend on (for a run's record): name, chat settings, prompts hash."""
        return _settings(self.name, self.chat, self.prompts, ("cue",))

    def __repr__(self) -> str:
        return f"LLMCueDetector(name={self.name!r}, chat={self.chat!r})"


__all__ = ["LLMCueDetector", "LLMJudge"]
