"""Final answers of math generations: extraction, and equivalence with a reference (math-verify).

`extract_boxed` takes the last ``\\boxed{...}`` or ``\\fbox{...}`` (braces balanced, so
``\\boxed{\\frac{1}{2}}`` is whole; also ``\\boxed 5``), None when there is none -- what the
paper benchmarks (MATH-500, AIME) score.  `extract_final_answer` adds a fallback to the last
number in the text, for our own math files whose prompts ask for no ``\\boxed{}``.  Our
extractor, not math-verify's, picks the answer: it takes the *last* box with nested braces,
where the library's extraction may match an earlier expression in free text.

`answers_match` decides equivalence: equal after `normalize_answer` (strips ``$``, spaces,
``\\left``/``\\right``, ``\\!``/``\\,``, ``\\text{...}`` wrappers, thousands commas,
``\\dfrac``/``\\tfrac`` -> ``\\frac``, a trailing period and ``.0``) -- a shortcut for answers
the library cannot parse, e.g. words -- else `math_verify.verify(parse(gold), parse(pred))`, each
side given to the library as ``\\boxed{answer}``: numbers, fractions vs decimals (rounded to 6
places), ``033`` vs ``33``, sets, intervals, expressions up to sympy simplification, units and
text around the value.

Timeouts: math-verify bounds parse and verify with ``signal.alarm``, which works only in the main
thread.  There we use it (``timeout_seconds``, whole seconds).  In any other thread the
comparisons run in a child interpreter (the same library, in its main thread, with the same
alarm) that is killed if it exceeds its budget -- a pathological expression never hangs the
caller; a comparison that times out is "not equivalent".
"""

from __future__ import annotations

import inspect
import json
import re
import subprocess
import sys
import threading
from collections.abc import Sequence

_BOX = re.compile(r"\\(?:boxed|fbox)\s*")
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")


def _boxed_contents(text: str) -> list[str]:
    out = []
    for match in _BOX.finditer(text):
        i = match.end()
        if i < len(text) and text[i] == "{":
            depth, j = 0, i
            while j < len(text):
                if text[j] == "{":
                    depth += 1
                elif text[j] == "}":
                    depth -= 1
                    if depth == 0:
                        out.append(text[i + 1 : j])
                        break
                j += 1
        else:  # "\boxed 5"
            token = re.match(r"[^\s$]+", text[i:])
            if token:
                out.append(token.group(0))
    return out


def extract_boxed(text: str) -> str | None:
    """The contents of the last ``\\boxed{}``/``\\fbox{}`` (nested braces kept); None without one."""
    boxed = _boxed_contents(text)
    return boxed[-1].strip() if boxed else None


def extract_final_answer(text: str) -> str | None:
    """The last boxed answer, else the last number; None when the text has neither."""
    boxed = extract_boxed(text)
    if boxed is not None:
        return boxed
    numbers = _NUMBER.findall(text)
    return numbers[-1].rstrip(",") if numbers else None


def normalize_answer(answer: str) -> str:
    s = answer.strip()
    s = re.sub(r"\\text\{([^{}]*)\}", r"\1", s)
    s = re.sub(r"\\(?:left|right)", "", s)
    s = re.sub(r"\\[!,;: ]", "", s)
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = s.replace("$", "").replace(" ", "")
    s = re.sub(r"(?<=\d),(?=\d{3}(?!\d))", "", s)  # thousands separators
    s = s.rstrip(".")
    s = re.sub(r"^(-?\d+)\.0+$", r"\1", s)
    return s


DEFAULT_TIMEOUT_SECONDS = 5


def _library_equivalent(predicted: str, reference: str, timeout_seconds: int | None) -> bool:
    """math-verify on both answers (each wrapped in ``\\boxed{}``); False when either side does not parse."""
    from math_verify import parse, verify  # sympy import: only when math is scored

    gold = parse("\\boxed{" + reference + "}", parsing_timeout=timeout_seconds)
    pred = parse("\\boxed{" + predicted + "}", parsing_timeout=timeout_seconds)
    if not gold or not pred:
        return False
    return bool(verify(gold, pred, timeout_seconds=timeout_seconds))


# The child of `_equivalent_in_child`: a list of [predicted, reference] on stdin, a list of bools out.
# It carries `_library_equivalent`'s own source, so it does not need this package to be importable.
_CHILD = "from __future__ import annotations\n" + inspect.getsource(_library_equivalent) + """
import json, sys
pairs, timeout_seconds = json.load(sys.stdin)
out = []
for predicted, reference in pairs:
    try:
        out.append(_library_equivalent(predicted, reference, timeout_seconds))
    except Exception:
        out.append(False)
print(json.dumps(out))
"""


def _equivalent_in_child(pairs: Sequence[tuple[str, str]], timeout_seconds: int) -> list[bool]:
    """math-verify with its alarm-based timeouts, in a child interpreter's main thread."""
    budget = 30 + 2 * timeout_seconds * len(pairs)  # import + two bounded steps per pair
    try:
        request = json.dumps([list(map(list, pairs)), timeout_seconds])
        done = subprocess.run([sys.executable, "-c", _CHILD], input=request,
                              capture_output=True, text=True, timeout=budget, check=True)
        result = json.loads(done.stdout.strip().splitlines()[-1])
    except (subprocess.SubprocessError, ValueError, IndexError):
        return [False] * len(pairs)
    return [bool(x) for x in result] if len(result) == len(pairs) else [False] * len(pairs)


def answers_match_many(pairs: Sequence[tuple[str | None, str]], *,
                       timeout_seconds: int = DEFAULT_TIMEOUT_SECONDS) -> list[bool]:
    """`answers_match` on each (predicted, reference); from a non-main thread, one child for all."""
    out: list[bool | None] = []
    pending: list[int] = []
    for predicted, reference in pairs:
        if predicted is None:
            out.append(False)
        elif normalize_answer(predicted) == normalize_answer(reference):
            out.append(True)
        else:
            out.append(None)
            pending.append(len(out) - 1)
    if pending:
        todo = [(pairs[i][0], pairs[i][1]) for i in pending]
        if threading.current_thread() is threading.main_thread():
            results = []
            for predicted, reference in todo:
                try:
                    results.append(_library_equivalent(predicted, reference, timeout_seconds))
                except Exception:  # the library's own errors, a timeout included: not equivalent
                    results.append(False)
        else:
            results = _equivalent_in_child(todo, timeout_seconds)
        for i, ok in zip(pending, results):
            out[i] = ok
    return [bool(x) for x in out]


def answers_match(predicted: str | None, reference: str, *, timeout_seconds: int = DEFAULT_TIMEOUT_SECONDS) -> bool:
    """Is `predicted` the same answer as `reference`?  None (no answer) never is.  See the module docstring."""
    return answers_match_many([(predicted, reference)], timeout_seconds=timeout_seconds)[0]

