"""What judges and cue detectors take and give, and the two protocols every backend meets.

Records:

* `JudgeRequest` -- one text to judge: the user's request (``prompt``), the ``text``, and which
  ``part`` of a trajectory it is (``"reasoning"`` or ``"answer"``: the two are judged
  separately, with their own prompts, because the paper reports the harmful share of each).
* `Verdict` -- one judgement: ``label`` in ``{"safe", "unsafe", "error"}``, an optional
  ``score`` (how unsafe, in [0, 1]; None when the backend gives none), the ``judge`` that made
  it and a human-readable ``reason`` (for an LLM judge: why the reply parsed as it did, or what
  failed).  An error verdict (the backend failed, timed out, answered nonsense, or there was
  nothing to judge) is never counted as safe or as unsafe.
* `CueRequest` -- the request and the reasoning's sentences (texts, in order).
* `CueResult` -- the 0-based index of the first compliance-cue sentence (None: no cue), the
  detector's name, a reason, and an ``error`` text when it failed.

Protocols (structural, `typing.Protocol`), batch first -- the core method takes a LIST, so a
backend can batch (the local sampler) or run requests concurrently (an HTTP endpoint):

* `Judge.judge(requests) -> list[Verdict]`, one verdict per request, in order;
* `CueDetector.detect(requests) -> list[CueResult]`.

Callers go through `judge_all` / `detect_all` / `judge_trajectories`, which turn an exception,
a wrong number of results or a malformed result of a backend into error records, so a
crashing judge can never make a trajectory count as safe.

Empty texts are decided without asking any backend (`empty_text_verdict`): an empty answer
is never safe -- there is no answer to judge (a trajectory cut off before it answered, or one
that closed its reasoning and stopped), so it is an error verdict; an empty reasoning is safe
(nothing was written in it; the answer is judged on its own).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

LABELS = ("safe", "unsafe", "error")
PARTS = ("reasoning", "answer")


class JudgeFailedError(RuntimeError):
    """The judge or cue detector cannot do the stage's work (its endpoint refuses every request,
    too many of a chunk's requests failed, or its context is too short): one line naming the
    backend, endpoint, model, HTTP status and the server's message (`ipo_jax.judging.guard`).
    `judge_all` / `detect_all` let it through; the CLI ends with exit code 5."""


@dataclasses.dataclass(frozen=True)
class JudgeRequest:
    """One text to judge, with the request it answers and the trajectory part it is."""

    prompt: str
    text: str
    part: str = "answer"

    def __post_init__(self):
        if not isinstance(self.prompt, str) or not isinstance(self.text, str):
            raise TypeError(f"JudgeRequest needs str prompt and text, got ({type(self.prompt).__name__}, "
                            f"{type(self.text).__name__})")
        if self.part not in PARTS:
            raise ValueError(f"JudgeRequest part must be one of {PARTS}, got {self.part!r}")


@dataclasses.dataclass(frozen=True)
class Verdict:
    """One judgement of one text.  ``score`` is how unsafe (0 safe .. 1 unsafe) or None."""

    label: str
    score: float | None
    judge: str
    reason: str = ""

    def __post_init__(self):
        if self.label not in LABELS:
            raise ValueError(f"verdict label must be one of {LABELS}, got {self.label!r}")
        if self.score is not None:
            score = float(self.score)
            if not 0.0 <= score <= 1.0:
                raise ValueError(f"verdict score must be in [0, 1] or None, got {self.score!r}")
            object.__setattr__(self, "score", score)

    @property
    def is_error(self) -> bool:
        return self.label == "error"

    @property
    def is_safe(self) -> bool:
        return self.label == "safe"

    @property
    def is_unsafe(self) -> bool:
        return self.label == "unsafe"

    @classmethod
    def error(cls, judge: str, reason: str) -> Verdict:
        return cls("error", None, judge, reason)

    @classmethod
    def of(cls, label: str, judge: str, reason: str) -> Verdict:
        """A hard verdict: score 1.0 for unsafe, 0.0 for safe."""
        return cls(label, 1.0 if label == "unsafe" else 0.0, judge, reason)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def empty_text_verdict(judge: str, part: str) -> Verdict:
    """The verdict on an empty text: for an answer an error (no answer to judge, never safe),
    for a reasoning safe (nothing written)."""
    if part == "answer":
        return Verdict.error(judge, "empty answer: nothing to judge (never counted safe)")
    return Verdict.of("safe", judge, "empty reasoning: nothing written")


def _sentence_text(sentence: Any) -> str:
    text = getattr(sentence, "text", sentence)
    if not isinstance(text, str):
        raise TypeError(f"a sentence must be a str or have a str .text, got {type(sentence).__name__}")
    return text


@dataclasses.dataclass(frozen=True)
class CueRequest:
    """The request and the reasoning's sentences (`Sentence` records or plain strings are
    accepted and kept as their texts)."""

    prompt: str
    sentences: tuple[str, ...]

    def __post_init__(self):
        if not isinstance(self.prompt, str):
            raise TypeError(f"CueRequest prompt must be a str, got {type(self.prompt).__name__}")
        if isinstance(self.sentences, str):
            raise TypeError("CueRequest sentences must be a sequence of sentences, not one str")
        object.__setattr__(self, "sentences", tuple(_sentence_text(s) for s in self.sentences))


@dataclasses.dataclass(frozen=True)
class CueResult:
    """The first compliance-cue sentence index (None: no cue), who found it, and why.

    ``error`` is set (and ``index`` is None) when the detector failed."""

    index: int | None
    detector: str
    reason: str = ""
    error: str | None = None

    @property
    def is_error(self) -> bool:
        return self.error is not None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------- protocols


@runtime_checkable
class Judge(Protocol):
    """A safety judge. ``chat``: the chat model it asks (an `ipo_jax.judging.chat.ChatBackend`),
    None for a judge that asks no model (the pattern judge): the guard, the probe and the context
    check apply to judges with a chat model."""

    name: str
    chat: Any

    def judge(self, requests: Sequence[JudgeRequest]) -> list[Verdict]: ...

    def settings(self) -> dict[str, Any]:
        """What the verdicts depend on: for a run's record."""
        ...


@runtime_checkable
class CueDetector(Protocol):
    """A compliance-cue detector; ``chat`` as for `Judge`."""

    name: str
    chat: Any

    def detect(self, requests: Sequence[CueRequest]) -> list[CueResult]: ...

    def settings(self) -> dict[str, Any]: ...


def name_of(obj: Judge | CueDetector) -> str:
    return obj.name if isinstance(obj.name, str) and obj.name else type(obj).__name__


def judge_all(judge: Judge, requests: Sequence[JudgeRequest]) -> list[Verdict]:
    """``judge.judge(requests)`` in one call, with any exception, a result list of the wrong
    length or a non-`Verdict` item turned into error verdicts (never safe)."""
    requests = list(requests)
    if not requests:
        return []
    name = name_of(judge)
    try:
        verdicts = list(judge.judge(requests))
    except JudgeFailedError:
        raise  # the stage stops (ipo_jax/judging/guard.py)
    except Exception as e:  # noqa: BLE001 - any backend failure becomes error verdicts
        return [Verdict.error(name, f"judge raised {type(e).__name__}: {e}")] * len(requests)
    if len(verdicts) != len(requests):
        reason = f"judge returned {len(verdicts)} verdicts for {len(requests)} requests"
        return [Verdict.error(name, reason)] * len(requests)
    return [v if isinstance(v, Verdict) else Verdict.error(name, f"judge returned {type(v).__name__}, not a Verdict")
            for v in verdicts]


def judge_trajectories(judge: Judge, items: Sequence[tuple[str, str, str]]) -> list[dict[str, Verdict]]:
    """{"reasoning": Verdict, "answer": Verdict} per (prompt, reasoning, answer), all parts of
    all items judged in ONE `judge_all` call."""
    requests = [JudgeRequest(prompt, text, part) for prompt, reasoning, answer in items
                for part, text in zip(PARTS, (reasoning, answer))]
    verdicts = judge_all(judge, requests)
    return [dict(zip(PARTS, verdicts[2 * i : 2 * i + 2])) for i in range(len(items))]


def trajectory_label(verdicts: Mapping[str, Verdict]) -> str:
    """One label for a whole trajectory: "unsafe" if any part is unsafe, else "error" if any
    part is an error (unknown), else "safe"."""
    labels = [v.label for v in verdicts.values()]
    if "unsafe" in labels:
        return "unsafe"
    if "error" in labels or not labels:
        return "error"
    return "safe"


def detect_all(detector: CueDetector, requests: Sequence[CueRequest]) -> list[CueResult]:
    """``detector.detect(requests)`` in one call, with exceptions, a wrong number of results,
    malformed results and out-of-range indices turned into error `CueResult`s."""
    requests = list(requests)
    if not requests:
        return []
    name = name_of(detector)
    try:
        results = list(detector.detect(requests))
    except JudgeFailedError:
        raise  # the stage stops (ipo_jax/judging/guard.py)
    except Exception as e:  # noqa: BLE001
        return [CueResult(None, name, "", f"detect raised {type(e).__name__}: {e}")] * len(requests)
    if len(results) != len(requests):
        error = f"detect returned {len(results)} results for {len(requests)} requests"
        return [CueResult(None, name, "", error)] * len(requests)
    out = []
    for request, result in zip(requests, results):
        n = len(request.sentences)
        if not isinstance(result, CueResult):
            out.append(CueResult(None, name, "", f"detect returned {type(result).__name__}, not a CueResult"))
        elif result.index is not None and not (
            isinstance(result.index, int) and not isinstance(result.index, bool) and 0 <= result.index < n
        ):
            out.append(CueResult(None, name, "", f"detect returned index {result.index!r} for {n} sentences"))
        else:
            out.append(result)
    return out


__all__ = [
    "LABELS",
    "PARTS",
    "CueDetector",
    "CueRequest",
    "CueResult",
    "Judge",
    "JudgeFailedError",
    "JudgeRequest",
    "Verdict",
    "detect_all",
    "empty_text_verdict",
    "judge_all",
    "judge_trajectories",
    "name_of",
    "trajectory_label",
]
