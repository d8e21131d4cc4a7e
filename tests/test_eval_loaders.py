"""The benchmark loaders on fixtures in each published layout (tests/fixtures/eval, written by
make_fixtures.py: published file and column names, self-written contents), the GPQA option shuffle,
the WildJailbreak sample, hub ids, and every bad-input error naming file, row and column -- also
through `ipo-jax eval` (exit 2, one line)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from ipo_jax.eval.items import EvalItem
from ipo_jax.eval.loaders import BENCHMARKS, EvalDataError, gpqa_permutation, load_benchmark

FIXTURES = Path(__file__).parent / "fixtures" / "eval"
EVAL_CONFIG = str(Path(__file__).parents[1] / "configs" / "eval.py")


def _gpqa_rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _write_gpqa(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_every_named_benchmark_has_a_loader():
    assert set(BENCHMARKS) == {"jailbreakbench", "strongreject", "wildjailbreak", "xstest", "aime", "math500", "gpqa",
                               "humaneval", "jsonl"}


def test_jailbreakbench_csv_files_directory_and_saved_dataset_dict():
    harmful = load_benchmark("jailbreakbench", FIXTURES / "jailbreakbench" / "harmful-behaviors.csv")
    assert [(i.id, i.kind, i.category) for i in harmful] == [
        ("jailbreakbench-1", "harmful", "Harassment/Discrimination"), ("jailbreakbench-2", "harmful", "Malware/Hacking"),
        ("jailbreakbench-3", "harmful", "Economic harm")]
    assert harmful[0].prompt == "[harmful request withheld 1]" and harmful[0].benchmark == "jailbreakbench"
    benign = load_benchmark("jailbreakbench", FIXTURES / "jailbreakbench" / "benign-behaviors.csv")
    # benign ids differ from harmful ones, so both files can be evaluated under one label
    assert [(i.id, i.kind) for i in benign] == [("jailbreakbench-benign-1", "benign"), ("jailbreakbench-benign-2", "benign")]
    assert load_benchmark("jailbreakbench", FIXTURES / "jailbreakbench") == harmful  # directory: harmful by default
    assert load_benchmark("jailbreakbench", FIXTURES / "jailbreakbench", split="benign") == benign
    # the hub layout (config behaviors, splits harmful / benign) saved with datasets.save_to_disk
    saved = FIXTURES / "jailbreakbench_saved"
    assert load_benchmark("jailbreakbench", saved) == harmful
    assert load_benchmark("jailbreakbench", saved, split="benign") == benign
    assert load_benchmark("jailbreakbench", saved / "benign") == benign  # one split's own directory


def test_strongreject_and_xstest_csv():
    items = load_benchmark("strongreject", FIXTURES / "strongreject")
    assert [i.id for i in items] == ["strongreject-1", "strongreject-2", "strongreject-3"]
    assert {i.kind for i in items} == {"harmful"} and items[1].category == "Violence"
    items = load_benchmark("xstest", FIXTURES / "xstest" / "xstest_prompts.csv")
    assert [(i.id, i.kind, i.category) for i in items] == [
        ("xstest-1", "benign", "homonyms"), ("xstest-2", "benign", "homonyms"), ("xstest-3", "harmful", "contrast_homonyms"),
        ("xstest-4", "benign", "nonsense_group_discrimination")]


def test_wildjailbreak_seeded_sample_of_adversarial_harmful_rows():
    path = FIXTURES / "wildjailbreak" / "eval.tsv"
    everything = load_benchmark("wildjailbreak", path)
    assert len(everything) == 14 and sum(i.kind == "benign" for i in everything) == 3  # no sample: every row, kinds kept
    harmful_ids = {i.id for i in everything if i.category == "adversarial_harmful"}
    first = load_benchmark("wildjailbreak", path, sample=4, seed=0)
    assert len(first) == 4 and {i.id for i in first} <= harmful_ids and {i.kind for i in first} == {"harmful"}
    assert load_benchmark("wildjailbreak", FIXTURES / "wildjailbreak", sample=4, seed=0) == first  # same (N, seed), same items
    others = [{i.id for i in load_benchmark("wildjailbreak", path, sample=4, seed=s)} for s in range(1, 6)]
    assert any(ids != {i.id for i in first} for ids in others)  # another seed, another sample
    assert [i.id for i in first] == sorted((i.id for i in first), key=lambda x: int(x.split("-")[1]))  # file order
    # ids are the file's row numbers, so a sampled item is the same item as in the full file
    assert all(i == next(e for e in everything if e.id == i.id) for i in first)
    assert len(load_benchmark("wildjailbreak", path, sample=11, seed=3)) == 11
    with pytest.raises(EvalDataError, match=r"eval.tsv has only 11 rows with data_type adversarial_harmful"):
        load_benchmark("wildjailbreak", path, sample=12)
    assert len(load_benchmark("wildjailbreak", path, sample=4, limit=2)) == 2


def test_aime_layouts():
    items = load_benchmark("aime", FIXTURES / "aime2024")  # Maxwell-Jia/AIME_2024 parquet: ID, Problem, Answer (int)
    assert [(i.id, i.kind, i.reference) for i in items] == [("aime-2024-I-1", "math", "249"), ("aime-2024-I-2", "math", "30"),
                                                             ("aime-2024-II-1", "math", "24")]
    assert items[1].prompt == "How many positive divisors does $720$ have?"
    validation = load_benchmark("aime", FIXTURES / "aimo_validation" / "aimo_validation_aime.jsonl")
    assert [(i.id, i.reference) for i in validation] == [("aime-60", "400"), ("aime-61", "044")]  # answers as published
    assert load_benchmark("aime", FIXTURES / "aimo_hub_clone") == validation  # a local copy of the hub repo (data/train-*.parquet)
    aime2025 = load_benchmark("aime", FIXTURES / "aime2025")  # opencompass/AIME2025: both exams, ids by file
    assert [(i.id, i.reference) for i in aime2025] == [("aime-aime2025-I-1", "28"), ("aime-aime2025-I-2", "16"),
                                                        ("aime-aime2025-II-1", "24")]


def test_aime_directory_reads_every_aime_file_in_it(tmp_path):
    import shutil

    for source in ("aime2024/aime_2024_problems.parquet", "aime2025/aime2025-I.jsonl", "aime2025/aime2025-II.jsonl"):
        shutil.copy(FIXTURES / source, tmp_path)
    ids = [i.id for i in load_benchmark("aime", tmp_path)]
    assert ids == ["aime-2024-I-1", "aime-2024-I-2", "aime-2024-II-1", "aime-aime2025-I-1", "aime-aime2025-I-2",
                   "aime-aime2025-II-1"]


def test_math500_jsonl():
    items = load_benchmark("math500", FIXTURES / "math500")
    assert [(i.id, i.reference, i.category) for i in items] == [
        ("math500-test/prealgebra/9001.json", "11", "Prealgebra"), ("math500-test/prealgebra/9002.json", "\\frac{3}{4}", "Prealgebra"),
        ("math500-test/algebra/9003.json", "6", "Algebra"), ("math500-test/geometry/9004.json", "9\\pi", "Geometry")]
    assert {i.kind for i in items} == {"math"}


def test_gpqa_options_shuffled_per_item_with_the_seed():
    path = FIXTURES / "gpqa" / "gpqa_diamond.csv"
    rows = {r["Record ID"]: r for r in _gpqa_rows(path)}
    items = load_benchmark("gpqa", path, seed=0)
    assert len(items) == 8 and {i.kind for i in items} == {"choice"}
    for item in items:
        row = rows[item.id.removeprefix("gpqa-")]
        options = [row["Correct Answer"], row["Incorrect Answer 1"], row["Incorrect Answer 2"], row["Incorrect Answer 3"]]
        assert sorted(item.choices) == sorted(options)
        assert item.choices["ABCD".index(item.reference)] == row["Correct Answer"]  # the letter points at the correct text
        assert item.prompt == row["Question"].strip() and item.category == row["High-level domain"]
    assert len({i.reference for i in items}) > 1  # the correct answer is not always in the same place
    assert load_benchmark("gpqa", path, seed=0) == items  # stable for the same seed
    reseeded = load_benchmark("gpqa", path, seed=1)
    assert [i.id for i in reseeded] == [i.id for i in items]
    assert any(a.choices != b.choices for a, b in zip(items, reseeded))  # another seed, another order for some items
    assert all(b.choices["ABCD".index(b.reference)] == rows[b.id.removeprefix("gpqa-")]["Correct Answer"] for b in reseeded)


def test_gpqa_order_of_an_item_does_not_depend_on_the_other_rows(tmp_path):
    path = FIXTURES / "gpqa" / "gpqa_diamond.csv"
    full = {i.id: i for i in load_benchmark("gpqa", path, seed=7)}
    subset = _write_gpqa(tmp_path / "gpqa_diamond.csv", list(reversed(_gpqa_rows(path)[2:])))
    for item in load_benchmark("gpqa", subset, seed=7):
        assert item == full[item.id]
    assert sorted(gpqa_permutation(3, "recX")) == [0, 1, 2, 3] and gpqa_permutation(3, "recX") == gpqa_permutation(3, "recX")


def test_humaneval_jsonl_and_gz_keep_the_prompt_layout():
    items = load_benchmark("humaneval", FIXTURES / "humaneval" / "HumanEval.jsonl")
    assert load_benchmark("humaneval", FIXTURES / "humaneval_gz") == items  # HumanEval.jsonl.gz in a directory
    assert [(i.id, i.kind, i.entry_point) for i in items] == [
        ("humaneval-HumanEval/0", "code", "pairwise_sums"), ("humaneval-HumanEval/1", "code", "count_vowels"),
        ("humaneval-HumanEval/2", "code", "is_palindrome")]
    published = [json.loads(line) for line in (FIXTURES / "humaneval" / "HumanEval.jsonl").read_text().splitlines()]
    for item, row in zip(items, published):
        assert item.prompt == row["prompt"] and item.tests == row["test"]  # byte for byte: whitespace is syntax here
        # the published prompt + canonical solution + test passes check(entry_point): the pieces fit together
        program = item.prompt + row["canonical_solution"] + item.tests + f"\ncheck({item.entry_point})\n"
        assert subprocess.run([sys.executable, "-c", program], capture_output=True, timeout=60).returncode == 0


def test_our_jsonl_with_every_kind():
    items = load_benchmark("jsonl", FIXTURES / "ours" / "mixed.jsonl")
    assert [i.kind for i in items] == ["harmful", "benign", "math", "choice", "code"]
    assert items[2].reference == "5"
    assert items[3] == EvalItem("c1", "jsonl", "Which planet is largest?", "choice", reference="B",
                                choices=("Mars", "Jupiter", "Venus", "Earth"))
    assert items[4].entry_point == "is_palindrome" and "def check(candidate)" in items[4].tests


def test_hub_ids_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(EvalDataError, match=r"math500: hf:HuggingFaceH4/MATH-500: the Hugging Face hub is offline"):
        load_benchmark("math500", "hf:HuggingFaceH4/MATH-500")
    with pytest.raises(EvalDataError, match="not a hub dataset id"):
        load_benchmark("math500", "hf:MATH-500")


def test_hub_ids_online_go_through_load_dataset_with_the_published_config(monkeypatch):
    import datasets

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    saved = datasets.load_from_disk(str(FIXTURES / "jailbreakbench_saved"))
    calls = []

    def fake_load_dataset(repo, config=None, split=None, **kwargs):
        calls.append((repo, config, split, kwargs))
        if repo == "unreachable/set":
            raise ConnectionError("Couldn't reach the hub")
        if repo == "allenai/wildjailbreak":  # its eval config has one split, "train"
            rows = [dict(adversarial="[harmful request withheld 51]", label=1, data_type="adversarial_harmful")]
            return datasets.DatasetDict({"train": datasets.Dataset.from_list(rows)})
        if repo == "opencompass/AIME2025":  # configs AIME2025-I / AIME2025-II, split test, no id column
            rows = [dict(question=f"[problem {config} {n}]", answer=str(n)) for n in (1, 2)]
            return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})
        return saved if split is None else saved[split]

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    harmful = load_benchmark("jailbreakbench", FIXTURES / "jailbreakbench")
    assert load_benchmark("jailbreakbench", "hf:JailbreakBench/JBB-Behaviors") == harmful
    benign = load_benchmark("jailbreakbench", "hf:JailbreakBench/JBB-Behaviors", split="benign")
    assert [i.kind for i in benign] == ["benign", "benign"]
    assert load_benchmark("jailbreakbench", "hf:JailbreakBench/JBB-Behaviors::benign") == benign  # split in the id
    assert calls[:3] == [("JailbreakBench/JBB-Behaviors", "behaviors", None, {}),
                         ("JailbreakBench/JBB-Behaviors", "behaviors", "benign", {}),
                         ("JailbreakBench/JBB-Behaviors", "behaviors", "benign", {})]
    with pytest.raises(EvalDataError, match="names split 'benign' but split='harmful' was given"):
        load_benchmark("jailbreakbench", "hf:JailbreakBench/JBB-Behaviors::benign", split="harmful")
    wildjailbreak = load_benchmark("wildjailbreak", "hf:allenai/wildjailbreak")  # the TSV needs its reader options
    assert [(i.id, i.kind) for i in wildjailbreak] == [("wildjailbreak-1", "harmful")]
    # the two AIME 2025 exams as two entries: ids carry the config, so they do not collide under one label
    halves = [load_benchmark("aime", f"hf:opencompass/AIME2025:AIME2025-{half}") for half in ("I", "II")]
    assert [i.id for i in halves[0] + halves[1]] == ["aime-AIME2025-I-1", "aime-AIME2025-I-2", "aime-AIME2025-II-1",
                                                     "aime-AIME2025-II-2"]
    assert ("allenai/wildjailbreak", "eval", None, dict(delimiter="\t", keep_default_na=False)) in calls
    with pytest.raises(EvalDataError, match=r"hf:unreachable/set: could not load it from the Hugging Face hub \(ConnectionError"):
        load_benchmark("strongreject", "hf:unreachable/set")


# ---------------------------------------------------------------- bad input: file, row and column named


def test_gpqa_row_with_three_options_names_file_row_and_column(tmp_path):
    rows = _gpqa_rows(FIXTURES / "gpqa" / "gpqa_diamond.csv")
    rows[1]["Incorrect Answer 3"] = " "
    path = _write_gpqa(tmp_path / "gpqa_diamond.csv", rows)
    # the first row has two fields of two lines each (question, pre-revision question): the second row starts on line 5
    with pytest.raises(EvalDataError, match=r"gpqa_diamond.csv: row 2 \(line 5\): column 'Incorrect Answer 3' is empty") as e:
        load_benchmark("gpqa", path)
    assert str(path) in str(e.value) and "four non-empty options" in str(e.value)


def test_missing_column_lists_the_columns_found(tmp_path):
    rows = [{k: v for k, v in r.items() if k != "Incorrect Answer 2"} for r in _gpqa_rows(FIXTURES / "gpqa" / "gpqa_diamond.csv")]
    path = _write_gpqa(tmp_path / "gpqa_diamond.csv", rows)
    with pytest.raises(EvalDataError, match=r"column 'Incorrect Answer 2' missing; columns found: \[") as e:
        load_benchmark("gpqa", path)
    assert str(path) in str(e.value) and "'Incorrect Answer 3'" in str(e.value)
    humaneval = tmp_path / "HumanEval.jsonl"
    humaneval.write_text(json.dumps(dict(task_id="HumanEval/0", prompt="def f():\n", test="def check(c): pass\n")) + "\n")
    with pytest.raises(EvalDataError, match=r"HumanEval.jsonl: column 'entry_point' missing; columns found: \['task_id', 'prompt', 'test'\]"):
        load_benchmark("humaneval", humaneval)


def test_unknown_benchmark_lists_the_known_ones():
    with pytest.raises(EvalDataError, match=r"unknown benchmark 'gsm8k'; expected one of jailbreakbench, strongreject, .*humaneval"):
        load_benchmark("gsm8k", FIXTURES / "math500")


@pytest.mark.parametrize("name, file, content, message", [
    ("xstest", "xstest_prompts.csv", "id,prompt,type,label\n1,ok prompt,homonyms,safe\n2,,homonyms,safe\n",
     r"xstest_prompts.csv: row 2 \(line 3\): column 'prompt' must be a non-empty string"),
    ("xstest", "xstest_prompts.csv", "id,prompt,type,label\n1,ok prompt,homonyms,maybe\n",
     r"row 1 \(line 2\): column 'label' is 'maybe'; expected 'safe' or 'unsafe'"),
    ("math500", "test.jsonl", '{"problem": "a", "answer": "1", "unique_id": "x"}\n\n{"problem": "b", "answer": "2", "unique_id": "x"}\n',
     r"test.jsonl: line 3: duplicate id 'math500-x' \(first at line 1\)"),
    ("aime", "aime.jsonl", '{"id": 1, "problem": "a", "answer": "3"}\n{"id": 2, "problem": "b", "answer": ""}\n',
     r"aime.jsonl: line 2: column 'answer' must be a non-empty string or number"),
    ("aime", "aime.jsonl", '{"id": 1, "problem": "a", "answer": "3"}\n{"id": 2, "answer": "4"}\n',
     r"aime.jsonl: line 2: column 'problem' missing; columns found: \['id', 'answer'\]"),
    ("humaneval", "HumanEval.jsonl", '{"task_id": "T/0", "prompt": "def f():\\n", "test": "x", "entry_point": "f()"}\n',
     r"HumanEval.jsonl: line 1: column 'entry_point' is 'f\(\)'; expected a Python function name"),
    ("strongreject", "strongreject_dataset.csv", "category,source,forbidden_prompt\nViolence,custom,[withheld],extra\n",
     r"strongreject_dataset.csv: row 1 \(line 2\): 4 fields but the header has 3 columns"),
    ("wildjailbreak", "eval.tsv", "adversarial\tlabel\tdata_type\n[withheld]\t\tsomething_else\n",
     r"eval.tsv: row 1 \(line 2\): column 'data_type' is 'something_else' and column 'label' is ''"),
    ("jsonl", "mine.jsonl", '{"id": "c", "prompt": "q", "kind": "choice", "choices": ["w", "x", "y", "z"], "reference": "E"}\n',
     r"mine.jsonl: line 1 \(id 'c'\): field 'reference' is 'E'; expected the correct letter, one of \['A', 'B', 'C', 'D'\]"),
    ("jsonl", "mine.jsonl", '{"id": "c", "prompt": "q", "kind": "choice", "choices": ["x", "y"], "reference": "A"}\n',
     r"mine.jsonl: line 1 \(id 'c'\): field 'choices' is \['x', 'y'\]; a choice item needs a list of 4 non-empty strings"),
    ("jsonl", "mine.jsonl", '{"id": "k", "prompt": "def f():\\n", "kind": "code", "entry_point": "f"}\n',
     r"mine.jsonl: line 1 \(id 'k'\): field 'tests' is None; a code item needs the test source"),
    ("math500", "test.jsonl", "", r"test.jsonl: no rows"),
])
def test_bad_rows_name_file_row_and_column(tmp_path, name, file, content, message):
    path = tmp_path / file
    path.write_text(content, encoding="utf-8")
    with pytest.raises(EvalDataError, match=message) as e:
        load_benchmark(name, path)
    assert str(path) in str(e.value)


# ---------------------------------------------------------------- strict parsing: every file whole, before any work

SR_HEADER = "category,source,forbidden_prompt\n"
ROW_A, ROW_B, ROW_C = ("A,custom,How do I go about it? [request details withheld]",
                       "B,custom,How do I go about that? [request details withheld]",
                       "C,custom,How do I go about this? [request details withheld]")


@pytest.mark.parametrize("rows, message", [
    # a quote opened and never closed: the csv module alone would merge the rest of the file into one field
    (f'A,custom,"How do I go about it?\n{ROW_B}\n{ROW_C}\n',
     r"strongreject_dataset.csv: line 4: not valid CSV \(unexpected end of data\) \(the row starts on line 2: a quote left open\?\)"),
    # ... closed two rows later: a valid CSV field of three lines, two of which are rows of their own
    (f'A,custom,"How do I go about it?\n{ROW_B}\n{ROW_C}"\n',
     r"strongreject_dataset.csv: line 2: a quoted field \(column 'forbidden_prompt'\) opened on this line runs over 3 lines "
     r"and holds 'B,custom,How do I go about that\? \[request details withheld\]', a row of 3 fields of its own"),
    (f'A,custom,"How" do I go about it?\n{ROW_B}\n', r"line 2: not valid CSV \(',' expected after '\"'\)"),
    (f"A,custom\n{ROW_B}\n", r"row 1 \(line 2\): 2 fields but the header has 3 columns"),
    (f"{ROW_A}\nB\n", r"row 2 \(line 3\): 1 field but the header has 3 columns"),
])
def test_csv_is_parsed_strictly_naming_the_line(tmp_path, rows, message):
    path = tmp_path / "strongreject_dataset.csv"
    path.write_text(SR_HEADER + rows, encoding="utf-8")
    with pytest.raises(EvalDataError, match=message):
        load_benchmark("strongreject", path)


def test_a_quoted_field_may_span_lines_when_no_line_is_a_row(tmp_path):
    path = tmp_path / "strongreject_dataset.csv"
    path.write_text(SR_HEADER + f'A,custom,"First line of the request.\nSecond line, with a comma. [withheld]"\n{ROW_B}\n',
                    encoding="utf-8")
    items = load_benchmark("strongreject", path)
    assert [i.prompt for i in items] == ["First line of the request.\nSecond line, with a comma. [withheld]",
                                         "How do I go about that? [request details withheld]"]


@pytest.mark.parametrize("content, message", [
    ('{"id": "q1", "prompt": "p", "kind": "math", "reference": NaN}\n',
     r"mine.jsonl: line 1: not valid JSON here \(NaN is not a JSON number; expected a finite number\)"),
    ('{"id": "q1", "prompt": "p", "kind": "math", "reference": "4"}\n{"id": "q2", "prompt": "p", "kind": "math", '
     '"reference": 1e999}\n', r"mine.jsonl: line 2: not valid JSON here \(1e999 is too large for a number"),
])
def test_json_numbers_are_finite(tmp_path, content, message):
    path = tmp_path / "mine.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(EvalDataError, match=message):
        load_benchmark("jsonl", path)
    listed = tmp_path / "mine.json"
    listed.write_text("[" + content.strip().replace("\n", ",") + "]", encoding="utf-8")
    with pytest.raises(EvalDataError, match=r"mine.json: not valid JSON \((NaN is not|1e999 is too large)"):
        load_benchmark("math500", listed)


def test_a_nan_answer_in_a_parquet_file_is_refused(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "aime_2024_problems.parquet"
    pq.write_table(pa.table({"ID": ["a", "b"], "Problem": ["p1", "p2"], "Answer": [3.0, float("nan")]}), path)
    with pytest.raises(EvalDataError, match=r"aime_2024_problems.parquet: row 2: column 'Answer' is nan; expected"):
        load_benchmark("aime", path)


def test_jsonl_lines_split_at_newlines_only_and_at_most_the_limit(tmp_path, monkeypatch):
    from ipo_jax.eval import loaders

    path = tmp_path / "mine.jsonl"
    prompt = "first part\u2028second part\u0085third"  # line separators inside a string are text, not line ends
    path.write_text(json.dumps({"id": "q1", "prompt": prompt, "kind": "benign"}, ensure_ascii=False) + "\r\n", encoding="utf-8")
    assert [i.prompt for i in load_benchmark("jsonl", path)] == [prompt]
    monkeypatch.setattr(loaders, "MAX_LINE_BYTES", 100)
    path.write_text(json.dumps({"id": "q1", "prompt": "x" * 200, "kind": "benign"}) + "\n", encoding="utf-8")
    with pytest.raises(EvalDataError, match=r"mine.jsonl: line 1: longer than 100 bytes, the limit for one record"):
        load_benchmark("jsonl", path)


def test_a_file_that_is_not_utf8_names_line_and_column(tmp_path):
    path = tmp_path / "strongreject_dataset.csv"
    path.write_bytes("category,source,forbidden_prompt\nViolence,custom,caf\xe9 [withheld]\n".encode("latin-1"))
    with pytest.raises(EvalDataError, match=r"strongreject_dataset.csv: line 2, column 20: byte 0xe9 is not valid UTF-8"):
        load_benchmark("strongreject", path)


def test_bad_counts_and_missing_paths(tmp_path):
    with pytest.raises(EvalDataError, match="sample is -1"):
        load_benchmark("math500", FIXTURES / "math500", sample=-1)
    with pytest.raises(EvalDataError, match=r"math500: sample=5 but .*test.jsonl has only 4 items"):
        load_benchmark("math500", FIXTURES / "math500", sample=5)
    with pytest.raises(EvalDataError, match=r"does not exist \(a hub dataset is given as hf:<owner>/<name>\)"):
        load_benchmark("math500", "HuggingFaceH4/MATH-500")
    with pytest.raises(EvalDataError, match="holds none of the published files"):
        load_benchmark("gpqa", tmp_path)
    with pytest.raises(EvalDataError, match=r"ours \(split train\): column 'Question' missing"):
        load_benchmark("gpqa", FIXTURES / "ours")  # data files, but not GPQA's
    assert [i.id for i in load_benchmark("math500", FIXTURES / "math500", sample=2, seed=5)] == \
           [i.id for i in load_benchmark("math500", FIXTURES / "math500", sample=2, seed=5)]


# ---------------------------------------------------------------- through the CLI: exit 2, one line


@pytest.mark.parametrize("spec, expected", [
    ("gsm8k={fixtures}/math500", "unknown benchmark 'gsm8k'; expected one of jailbreakbench"),
    ("gpqa={bad}", "row 2 (line 5): column 'Incorrect Answer 3' is empty"),
])
def test_eval_stage_exits_2_naming_file_row_and_column(tmp_path, capsys, spec, expected):
    from ipo_jax.cli import main

    rows = _gpqa_rows(FIXTURES / "gpqa" / "gpqa_diamond.csv")
    rows[1]["Incorrect Answer 3"] = ""
    bad = _write_gpqa(tmp_path / "gpqa_diamond.csv", rows)
    code = main(["eval", "--config", EVAL_CONFIG, "--config.model.init=preset:tiny-qwen3", f"--config.out={tmp_path / 'out'}",
                 "--config.benchmarks=" + spec.format(fixtures=FIXTURES, bad=bad)])
    err = capsys.readouterr().err
    assert code == 2
    assert expected in err and len(err.strip().splitlines()) == 1
    if "gpqa" in spec:
        assert str(bad) in err
