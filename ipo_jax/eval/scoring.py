"""Capability scoring: the prompt each benchmark is asked with, and the score of each answer.

`format_prompt(item)` is the user message:

* ``aime``, ``math500`` -- the problem + ``MATH_INSTRUCTION`` (DeepSeek-R1's / Qwen's recommended
  "Please reason step by step, and put your final answer within \\boxed{}.").
* ``gpqa`` -- the question, the options lettered ``A)``..``D)`` in ``item.choices`` order (the
  loader's seeded shuffle), then ``CHOICE_INSTRUCTION`` (the letter in ``\\boxed{}``).  simple-evals,
  which DeepSeek-R1's GPQA numbers used, asks for a last line ``Answer: $LETTER`` instead; our
  extractor accepts that form too.
* ``humaneval`` -- ``CODE_INTRO``, the function prompt in a ```python block, ``CODE_INSTRUCTION``
  (the whole function in a ```python block).
* anything else -- harmful/benign items, and our own ``jsonl`` files of any kind (the demo
  world) -- unchanged.

`score_answer(item, answer)` scores by ``item.kind``:

* math -- the last ``\\boxed{}``/``\\fbox{}`` (`math_answers.extract_boxed`; no box -> predicted
  None, wrong), equivalence by math-verify (`math_answers.answers_match`).  Math items of our own
  files (benchmark ``jsonl``), whose prompts ask for no box, fall back to the last number.
* choice -- the letter (`extract_choice`: a boxed letter, "Answer: C", a box holding one option's
  text ...), right iff it equals ``item.reference``.
* code -- the program (`build_program`) run in the sandbox (`ipo_jax.eval.sandbox`); right iff it
  passed (``status``: passed | failed | timeout | memory | error | no_code).

`score_answers` is the batch form: code samples run in parallel subprocesses.  `pass_at_k` is
the unbiased estimator of Chen et al. (2021).
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Sequence
from typing import Any

from ipo_jax.eval import sandbox
from ipo_jax.eval.items import EvalItem
from ipo_jax.eval.math_answers import (
    DEFAULT_TIMEOUT_SECONDS, answers_match_many, extract_boxed, extract_final_answer, normalize_answer,
)

MATH_BENCHMARKS = ("aime", "math500")
MATH_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
CHOICE_INSTRUCTION = ("Please reason step by step, and put the letter of your final answer "
                      "(A, B, C or D) within \\boxed{}.")
CODE_INTRO = "Complete the following Python function."
CODE_INSTRUCTION = ("Write the complete function -- its signature, its body and any imports it needs -- "
                    "in a single ```python code block.")
LETTERS = "ABCD"
DEFAULT_CODE_TIMEOUT = 10.0


class ScoringError(ValueError):
    """An item that cannot be scored (a harmful/benign item, or one missing what its kind needs)."""


# --- prompts -------------------------------------------------------------------------------------

def format_prompt(item: EvalItem) -> str:
    """The user message for `item` (module docstring)."""
    if item.benchmark in MATH_BENCHMARKS:
        return f"{item.prompt}\n\n{MATH_INSTRUCTION}"
    if item.benchmark == "gpqa":
        if len(item.choices) != len(LETTERS):
            raise ScoringError(f"item {item.id!r} (gpqa): expected {len(LETTERS)} choices, got {len(item.choices)}")
        options = "\n".join(f"{letter}) {choice}" for letter, choice in zip(LETTERS, item.choices))
        return f"{item.prompt}\n\n{options}\n\n{CHOICE_INSTRUCTION}"
    if item.benchmark == "humaneval":
        return f"{CODE_INTRO}\n\n```python\n{item.prompt.rstrip()}\n```\n\n{CODE_INSTRUCTION}"
    return item.prompt


# --- multiple choice -----------------------------------------------------------------------------

_BOXED_LETTER = re.compile(r"^\(?([A-D])\)?\.?$")  # "C", "(C)", "C."
_BOXED_LETTER_WITH_OPTION = re.compile(r"^\(?([A-D])[.:)]\s+(.*)$", re.S)  # "C) 42", "(C) 42", "C. 42"
_ANSWER_PHRASE = re.compile(
    r"(?i:answer|option|choice)(?:\s+(?i:is|would\s+be|should\s+be))?\s*(?:[:=]|(?i:is))?\s*"
    r"(?:\*\*|\$)?\s*\(?([A-D])\)?(?![A-Za-z0-9])")
_PARENTHESISED = re.compile(r"\(([A-D])\)")
_BARE = re.compile(r"^\s*(?:\*\*|\$)?\(?([A-D])\)?(?:\*\*|\$)?[.\s]*$")


def _letter_in_box(content: str) -> str | None:
    text = re.sub(r"\\(?:text|textbf|mathrm|mathbf)\s*\{([^{}]*)\}", r"\1", content).replace("$", "").strip()
    text = re.sub(r"^(?i:answer)\s*[:=]?\s*", "", text)
    match = _BOXED_LETTER.match(text)
    if match:
        return match.group(1)
    match = _BOXED_LETTER_WITH_OPTION.match(text)
    if match and not re.search(r"(?<![A-Za-z])[A-D](?![A-Za-z])", match.group(2)):  # "A) or C)": ambiguous
        return match.group(1)
    return None


def _has_letter(boxed: str | None) -> bool:
    return boxed is not None and re.search(r"(?<![A-Za-z\\])[A-D](?![A-Za-z])", boxed) is not None


def extract_choice(answer: str, choices: Sequence[str] = ()) -> str | None:
    """The chosen letter A-D; None when absent or ambiguous.

    In order of trust: the last ``\\boxed{}`` (``\\boxed{C}``, ``\\boxed{(C)}``, ``\\boxed{\\text{C}}``,
    ``\\boxed{C) 42}``; a box holding letters in any other form, e.g. ``A or C``, is ambiguous -> None;
    a box with no letter is passed over); else the last "answer is C" / "Answer: (C)" / "option C";
    else, given the `choices`, a box holding exactly one option's text (``\\boxed{9.9 m/s}``, equal
    after `normalize_answer`); else an answer that is only the letter; else a parenthesised ``(C)``
    when it is the only letter so written (a restated option list -> None).
    """
    boxed = extract_boxed(answer)
    if boxed is not None:
        letter = _letter_in_box(boxed)
        if letter is not None or _has_letter(boxed):
            return letter  # a letter, or letters in a form we cannot read as one choice: ambiguous
    phrases = _ANSWER_PHRASE.findall(answer)
    if phrases:
        return phrases[-1]
    if boxed is not None and choices:
        value = normalize_answer(boxed)
        matches = [letter for letter, choice in zip(LETTERS, choices) if normalize_answer(choice) == value]
        if len(matches) == 1:
            return matches[0]
    bare = _BARE.match(answer)
    if bare:
        return bare.group(1)
    parenthesised = set(_PARENTHESISED.findall(answer))
    return parenthesised.pop() if len(parenthesised) == 1 else None


# --- code ----------------------------------------------------------------------------------------

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.S)


def extract_code(answer: str) -> str | None:
    """The last ```python (or ```py) block, else the last ``` block of any language; an unclosed last
    fence (a generation cut off) runs to the end.  None when the answer has no fenced block."""
    blocks = [(lang.lower(), body) for lang, body in _FENCE.findall(answer)]
    python = [body for lang, body in blocks if lang in ("python", "py", "python3")]
    chosen = python[-1] if python else (blocks[-1][1] if blocks else None)
    if chosen is None or not chosen.strip():
        return None
    return chosen


def build_program(item: EvalItem, code: str) -> str:
    """The program the HumanEval harness runs: the function, then the tests, then ``check(entry_point)``.

    When `code` defines the entry point it follows the prompt (so the prompt's imports and helper
    functions stay defined; the prompt's docstring-only stub is valid Python and is replaced);
    otherwise `code` is the body, appended to the prompt as HumanEval's completions are (indented
    by four spaces when the model wrote it flush left).
    """
    if not item.entry_point or item.tests is None:
        raise ScoringError(f"item {item.id!r}: a code item needs `tests` and `entry_point`")
    defines = re.search(rf"^\s*(?:async\s+)?def\s+{re.escape(item.entry_point)}\s*\(", code, re.M)
    if defines:
        solution = f"{item.prompt}\n\n{code}"
    else:
        body = code if re.match(r"\s", next((ln for ln in code.splitlines() if ln.strip()), " ")) \
            else textwrap.indent(code, "    ")
        solution = item.prompt + body
    return f"{solution}\n\n{item.tests}\n\ncheck({item.entry_point})\n"


# --- pass@k --------------------------------------------------------------------------------------

def pass_at_k(n: int, c: int, k: int) -> float:
    """P(at least one of k samples drawn without replacement from n, c of them correct, is correct)
    = 1 - C(n-c, k) / C(n, k), as the product 1 - prod_{i=n-c+1}^{n} (1 - k/i) (no huge binomials)."""
    if not 0 <= c <= n or k < 1 or k > n:
        raise ScoringError(f"pass@k needs 0 <= c <= n and 1 <= k <= n; got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    product = 1.0
    for i in range(n - c + 1, n + 1):
        product *= 1.0 - k / i
    return 1.0 - product


# --- scoring -------------------------------------------------------------------------------------

def _math_prediction(item: EvalItem, answer: str) -> str | None:
    return extract_boxed(answer) if item.benchmark in MATH_BENCHMARKS else extract_final_answer(answer)


def _check_scorable(item: EvalItem) -> None:
    if item.kind not in ("math", "choice", "code"):
        raise ScoringError(f"item {item.id!r} ({item.benchmark}) is of kind {item.kind!r}: only math, choice and "
                           "code items are scored for correctness (harmful/benign ones are judged)")


def _code_row(item: EvalItem, code: str | None, result: sandbox.SandboxResult | None) -> dict[str, Any]:
    if result is None:
        return dict(predicted=None, correct=False, status="no_code")
    return dict(predicted=code, correct=result.passed, status=result.status, seconds=round(result.seconds, 3),
                stderr_tail=result.stderr_tail, isolation=list(result.isolation))


def score_answer(item: EvalItem, answer: str, *, timeout: float = DEFAULT_CODE_TIMEOUT,
                 math_timeout_seconds: int = DEFAULT_TIMEOUT_SECONDS, **sandbox_limits) -> dict[str, Any]:
    """{"predicted", "correct"} (+ "status", "seconds", "stderr_tail", "isolation" for code)."""
    return score_answers([(item, answer)], workers=1, timeout=timeout,
                         math_timeout_seconds=math_timeout_seconds, **sandbox_limits)[0]


def score_answers(pairs: Sequence[tuple[EvalItem, str]], *, workers: int = 4, timeout: float = DEFAULT_CODE_TIMEOUT,
                  math_timeout_seconds: int = DEFAULT_TIMEOUT_SECONDS, **sandbox_limits) -> list[dict[str, Any]]:
    """`score_answer` on each (item, answer), in order; code runs `workers` sandboxes at a time with
    a `timeout` (seconds, wall clock) each; `sandbox_limits` go to `sandbox.run_code` (memory_mb ...)."""
    for item, _ in pairs:
        _check_scorable(item)
    rows: list[dict[str, Any] | None] = [None] * len(pairs)

    math_at = [i for i, (item, _) in enumerate(pairs) if item.kind == "math"]
    predictions = [_math_prediction(pairs[i][0], pairs[i][1]) for i in math_at]
    # an item without a reference cannot be right: its prediction is passed as None
    verdicts = answers_match_many([(p if pairs[i][0].reference is not None else None, pairs[i][0].reference or "")
                                   for p, i in zip(predictions, math_at)], timeout_seconds=math_timeout_seconds)
    for i, predicted, correct in zip(math_at, predictions, verdicts):
        rows[i] = dict(predicted=predicted, correct=correct)

    for i, (item, answer) in enumerate(pairs):
        if item.kind == "choice":
            predicted = extract_choice(answer, item.choices)
            reference = (item.reference or "").strip()
            rows[i] = dict(predicted=predicted, correct=predicted is not None and predicted == reference)

    code_at, programs, codes = [], [], {}
    for i, (item, answer) in enumerate(pairs):
        if item.kind == "code":
            code = extract_code(answer)
            codes[i] = code
            if code is None:
                rows[i] = _code_row(item, None, None)
            else:
                code_at.append(i)
                programs.append(build_program(item, code))
    for i, result in zip(code_at, sandbox.run_many(programs, workers=workers, timeout=timeout, **sandbox_limits)):
        rows[i] = _code_row(pairs[i][0], codes[i], result)
    return rows  # type: ignore[return-value]
