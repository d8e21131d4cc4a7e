"""The evaluation item: one prompt of one benchmark, with its kind and what scoring needs for it
(the reference answer for math and multiple choice, the options, the unit tests for code)."""

from __future__ import annotations

import dataclasses

KINDS = ("harmful", "benign", "math", "choice", "code")


@dataclasses.dataclass(frozen=True)
class EvalItem:
    id: str  # unique within its benchmark, stable, e.g. "jailbreakbench-17"
    benchmark: str  # jailbreakbench|strongreject|wildjailbreak|xstest|aime|math500|gpqa|humaneval|jsonl
    prompt: str  # the question as published, NO instruction added (scoring.format_prompt adds it)
    kind: str  # one of KINDS
    reference: str | None = None  # math: the final answer; choice: the correct letter "A".."D"
    category: str | None = None  # JBB category, XSTest type, MATH subject, GPQA domain ...
    choices: tuple[str, ...] = ()  # choice: the options in displayed (shuffled) order, A first
    tests: str | None = None  # code: HumanEval `test` source (defines check(candidate))
    entry_point: str | None = None  # code: the function name given to check()
