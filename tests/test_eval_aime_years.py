"""AIME years (#22 point 7): the paper eval config names its AIME year(s) (`aime.years`), a directory
contributes only the files of those years, and the summary / report list every file each benchmark
read with its item counts."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import ml_collections
import pytest

from ipo_jax.eval.harness import load_items, write_outputs
from ipo_jax.eval.loaders import EvalDataError, aime_year, load_benchmark, load_benchmark_files
from ipo_jax.eval.report import files_table

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "eval"
CONFIGS = Path(__file__).resolve().parents[1] / "configs"
IDS_2024 = ["aime-2024-I-1", "aime-2024-I-2", "aime-2024-II-1"]
IDS_2025 = ["aime-aime2025-I-1", "aime-aime2025-I-2", "aime-aime2025-II-1"]


@pytest.fixture
def pooled(tmp_path):
    """One directory holding AIME 2024 and both 2025 halves, as a download of all three would."""
    for source in ("aime2024/aime_2024_problems.parquet", "aime2025/aime2025-I.jsonl", "aime2025/aime2025-II.jsonl"):
        shutil.copy(FIXTURES / source, tmp_path)
    return tmp_path


def test_year_of_a_file_name():
    assert [aime_year(n) for n in ("aime_2024_problems.parquet", "aime2025-II.jsonl", "hf:opencompass/AIME2025:AIME2025-I",
                                   "test.jsonl")] == [2024, 2025, 2025, None]


def test_years_select_the_files_of_a_directory(pooled):
    assert [i.id for i in load_benchmark("aime", pooled, years="2024")] == IDS_2024
    assert [i.id for i in load_benchmark("aime", pooled, years="2025")] == IDS_2025  # both halves
    assert [i.id for i in load_benchmark("aime", pooled, years="2024,2025")] == IDS_2024 + IDS_2025
    assert [i.id for i in load_benchmark("aime", pooled, years="")] == IDS_2024 + IDS_2025  # '': every aime* file
    with pytest.raises(EvalDataError, match=r"no AIME file of year\(s\) 2023 \(config.aime.years\); found "
                                            r"aime_2024_problems.parquet \(2024\)"):
        load_benchmark("aime", pooled, years="2023")
    with pytest.raises(EvalDataError, match="is AIME 2025, not one of the year"):
        load_benchmark("aime", FIXTURES / "aime2025" / "aime2025-I.jsonl", years="2024")
    with pytest.raises(EvalDataError, match="four-digit year"):
        load_benchmark("aime", pooled, years="24")


def test_the_files_read_and_their_item_counts(pooled):
    items, files = load_benchmark_files("aime", pooled, years="2025")
    assert [(Path(f["file"]).name, f["rows"], f["items"]) for f in files] == [("aime2025-I.jsonl", 2, 2),
                                                                             ("aime2025-II.jsonl", 1, 1)]
    _, limited = load_benchmark_files("aime", pooled, limit=4)  # items used after the limit
    assert [(Path(f["file"]).name, f["items"]) for f in limited] == [("aime_2024_problems.parquet", 3),
                                                                     ("aime2025-I.jsonl", 1), ("aime2025-II.jsonl", 0)]


def test_the_paper_config_names_its_aime_year():
    from ipo_jax.cli import parse_config
    from ipo_jax.validation import settings_problems

    config = parse_config(["--config", str(CONFIGS / "eval_paper.py")], "eval")
    assert config.aime.years == "2024"
    assert parse_config(["--config", str(CONFIGS / "eval.py")], "eval").aime.years == ""  # documented default: all
    config.aime.years = "2024,25"
    assert any(p.startswith("config.aime.years is '2024,25'") for p in settings_problems("eval", config))


def test_summary_and_report_list_the_files_each_benchmark_read(pooled, tmp_path):
    config = ml_collections.ConfigDict(dict(benchmarks=f"aime={pooled},math500={FIXTURES / 'math500'}", limit=0,
                                            aime=dict(years="2024")))
    files: dict = {}
    groups = load_items(config, files)
    assert [i.id for i in groups["aime"]] == IDS_2024
    assert {k: [(Path(f["file"]).name, f["items"]) for f in v] for k, v in files.items()} == {
        "aime": [("aime_2024_problems.parquet", 3)], "math500": [("test.jsonl", len(groups["math500"]))]}
    rows = [dict(id=i.id, benchmark="aime", kind="math", sample=0, refusal=False, finish_reason="stop", correct=True,
                 predicted="1") for i in groups["aime"]]
    meta = dict(model="m", label="model", judge="pattern", sampling=dict(temperature=0.6, top_p=0.95, top_k=0,
                max_new_tokens=64), samples_per_prompt=1, seconds=0.1, benchmark_files=files, aime_years="2024")
    write_outputs(tmp_path / "out", rows, meta, [])
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["benchmark_files"]["aime"][0]["items"] == 3 and summary["aime_years"] == "2024"
    report = (tmp_path / "out" / "report.md").read_text()
    assert "AIME covers aime_2024_problems.parquet (3 items) (config.aime.years '2024')." in report
    assert "## Benchmark files" in report and f"| aime | `{pooled / 'aime_2024_problems.parquet'}` | 3 | 3 |" in report
    assert files_table({"benchmarks": {}}) is None  # an older summary without the record
