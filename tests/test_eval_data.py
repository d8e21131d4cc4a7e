"""Benchmark loaders on small fixtures in each published format, their errors, math answer
checking, and the contamination check on planted overlaps.  Fixture prompts are placeholders."""

from __future__ import annotations

import json

import pytest

from ipo_jax.eval.contamination import check_contamination, contamination_table, normalize_prompt
from ipo_jax.eval.items import EvalItem
from ipo_jax.eval.loaders import EvalDataError, load_benchmark
from ipo_jax.eval.math_answers import answers_match, extract_final_answer, normalize_answer


def _write_csv(path, header, rows, delimiter=","):
    import csv

    with open(path, "w", newline="") as f:
        w = csv.writer(f, delimiter=delimiter)
        w.writerow(header)
        w.writerows(rows)
    return path


def test_jailbreakbench_harmful_and_benign_files(tmp_path):
    header = ["Index", "Goal", "Target", "Behavior", "Category", "Source"]
    harmful = _write_csv(tmp_path / "harmful-behaviors.csv", header, [
        [1, "Write [harmful request withheld] (fixture 1)", "Sure, here is", "Defamation", "Harassment/Discrimination", "Original"],
        [2, "Explain [harmful request withheld] (fixture 2)", "Sure, here is", "Malware", "Malware/Hacking", "TDC/HarmBench"],
    ])
    benign = _write_csv(tmp_path / "benign-behaviors.csv", header, [
        [1, "Write a poem about the sea", "Sure, here is", "Poem", "Harassment/Discrimination", "Original"],
    ])
    items = load_benchmark("jailbreakbench", harmful)
    assert [i.id for i in items] == ["jailbreakbench-1", "jailbreakbench-2"]
    assert items[1].kind == "harmful" and items[1].category == "Malware/Hacking"
    assert load_benchmark("jailbreakbench", benign)[0].kind == "benign"
    # a directory holding the published file name
    assert [i.id for i in load_benchmark("jailbreakbench", tmp_path)] == ["jailbreakbench-1", "jailbreakbench-2"]


def test_strongreject_csv_and_limit(tmp_path):
    path = _write_csv(tmp_path / "strongreject_dataset.csv", ["category", "source", "forbidden_prompt"], [
        ["Violence", "custom", f"How do I [harmful request withheld] (fixture {i})?"] for i in range(5)
    ])
    items = load_benchmark("strongreject", path, limit=3)
    assert len(items) == 3 and all(i.kind == "harmful" and i.category == "Violence" for i in items)


def test_wildjailbreak_eval_and_train_tsv(tmp_path):
    ev = _write_csv(tmp_path / "eval.tsv", ["adversarial", "label", "data_type"], [
        ["Pretend you are a novelist and [harmful request withheld]", 1, "adversarial_harmful"],
        ["Pretend you are a chef and describe a cake", 0, "adversarial_benign"],
    ], delimiter="\t")
    items = load_benchmark("wildjailbreak", ev)
    assert [i.kind for i in items] == ["harmful", "benign"]
    train = _write_csv(tmp_path / "train.tsv", ["vanilla", "adversarial", "completion", "data_type"], [
        ["Tell me [harmful request withheld]", "", "I can't help with that.", "vanilla_harmful"],
        ["How do I bake bread?", "", "Mix flour and water.", "vanilla_benign"],
    ], delimiter="\t")
    items = load_benchmark("wildjailbreak", train)
    assert items[0].prompt == "Tell me [harmful request withheld]" and [i.kind for i in items] == ["harmful", "benign"]


def test_xstest_labels_map_to_kinds(tmp_path):
    path = _write_csv(tmp_path / "xstest_prompts.csv", ["id", "prompt", "type", "label", "focus", "note"], [
        [1, "How can I kill a Python process?", "homonyms", "safe", "kill", "violence"],
        [2, "How do I [harmful request withheld]?", "contrast_homonyms", "unsafe", "kill", ""],
    ])
    items = load_benchmark("xstest", path)
    assert [(i.id, i.kind, i.category) for i in items] == [("xstest-1", "benign", "homonyms"), ("xstest-2", "harmful", "contrast_homonyms")]


def test_math500_jsonl_parquet_and_datasets_directory(tmp_path):
    rows = [dict(problem="What is $1+1$?", solution="It is 2.", answer="2", subject="Algebra", level=1, unique_id="test/algebra/1.json"),
            dict(problem="Half of one?", solution="...", answer="\\frac{1}{2}", subject="Prealgebra", level=2, unique_id="test/prealgebra/2.json")]
    jsonl = tmp_path / "test.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    items = load_benchmark("math500", jsonl)
    assert items[1].reference == "\\frac{1}{2}" and items[1].kind == "math" and items[0].id == "math500-test/algebra/1.json"

    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "test.parquet")
    assert load_benchmark("math500", tmp_path / "test.parquet") == items
    datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)}).save_to_disk(str(tmp_path / "saved"))
    assert load_benchmark("math500", tmp_path / "saved") == items


def test_our_jsonl_format(tmp_path):
    path = tmp_path / "mine.jsonl"
    path.write_text(json.dumps(dict(id="a", prompt="p [request details withheld]", kind="harmful")) + "\n"
                    + json.dumps(dict(id="b", prompt="2+2?", kind="math", reference=4)) + "\n")
    items = load_benchmark("jsonl", path)
    assert items == [EvalItem("a", "jsonl", "p [request details withheld]", "harmful"), EvalItem("b", "jsonl", "2+2?", "math", "4")]


@pytest.mark.parametrize("writer, message", [
    (lambda p: _write_csv(p / "strongreject_dataset.csv", ["category", "question"], [["x", "y"]]), "column 'forbidden_prompt' or 'prompt' missing"),
    (lambda p: _write_csv(p / "strongreject_dataset.csv", ["category", "source", "forbidden_prompt"], [["x", "s", "  "]]), r"row 1 \(line 2\): column 'forbidden_prompt' must be a non-empty string"),
])
def test_bad_benchmark_files_name_the_column_and_row(tmp_path, writer, message):
    path = writer(tmp_path)
    with pytest.raises(EvalDataError, match=message) as e:
        load_benchmark("strongreject", path)
    assert str(path) in str(e.value)


def test_missing_files_and_bad_jsonl_records_are_clear_errors(tmp_path):
    with pytest.raises(EvalDataError, match="does not exist"):
        load_benchmark("xstest", tmp_path / "nope.csv")
    with pytest.raises(EvalDataError, match="none of the published files"):
        load_benchmark("xstest", tmp_path)
    with pytest.raises(EvalDataError, match="unknown benchmark"):
        load_benchmark("gsm8k", tmp_path)
    bad_kind = tmp_path / "k.jsonl"
    bad_kind.write_text(json.dumps(dict(id="a", prompt="p", kind="toxic")) + "\n")
    with pytest.raises(EvalDataError, match=r"k.jsonl: line 1 \(id 'a'\): field 'kind' is 'toxic'"):
        load_benchmark("jsonl", bad_kind)
    dup = tmp_path / "d.jsonl"
    dup.write_text(json.dumps(dict(id="a", prompt="p", kind="benign")) + "\n" + json.dumps(dict(id="a", prompt="q", kind="benign")) + "\n")
    with pytest.raises(EvalDataError, match="duplicate id 'a'"):
        load_benchmark("jsonl", dup)
    broken = tmp_path / "b.jsonl"
    broken.write_text('{"id": "a", "prompt": \n')
    with pytest.raises(EvalDataError, match=r"b.jsonl: line 1: not valid JSON \(Expecting value, column 23\)"):
        load_benchmark("jsonl", broken)


@pytest.mark.parametrize("text, expected", [
    ("so \\boxed{\\frac{1}{2}} done", "\\frac{1}{2}"),
    ("first \\boxed{3} then \\boxed{{4}+1}", "{4}+1"),
    ("the answer is \\boxed 7.", "7."),
    ("I get 12 apples, then 15", "15"),
    ("it is -3", "-3"),
    ("no answer here", None),
])
def test_extract_final_answer(text, expected):
    assert extract_final_answer(text) == expected


@pytest.mark.parametrize("predicted, reference, match", [
    ("\\frac{1}{2}", "0.5", True),
    ("\\dfrac{1}{2}", "\\frac12", True),
    ("1,000", "1000", True),
    ("$12$", "12", True),
    ("12.0", "12", True),
    ("\\text{5}", "5", True),
    ("-3", "-3", True),
    ("3", "-3", False),
    ("13", "12", False),
    (None, "12", False),
    ("x+1", "x+1", True),
    ("1/3", "0.333", False),
])
def test_answers_match(predicted, reference, match):
    assert answers_match(predicted, reference) is match
    assert normalize_answer(" 7. ") == "7"


def test_contamination_finds_planted_exact_and_ngram_overlaps():
    train = ["How do I pick a LOCK quickly?!", "Tell me a long story about a brave knight who saves the whole village from a dragon"]
    items = [
        EvalItem("e1", "b", "how do i pick a lock   quickly", "harmful"),  # exact after normalisation
        EvalItem("e2", "b", "Please tell me a long story about a brave knight who saves my cat", "benign"),  # shares an 8-gram
        EvalItem("e3", "b", "What is the capital of France?", "benign"),
        EvalItem("e4", "b", "Pick a lock", "harmful"),  # shorter than n: whole prompt as one gram, no match
    ]
    result = check_contamination(train, items, n=8)
    assert result.exact == ("e1",) and result.ngram == ("e2",) and result.share == 0.5
    assert normalize_prompt("A,  b!") == "a b"
    assert "| b | 4 | 1 | 1 | 50% |" in contamination_table([result])
