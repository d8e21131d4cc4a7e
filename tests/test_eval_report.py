"""The paper-style report: the summary table computed from synthetic rows (every number worked out
by hand below), the string-match label, the plot, the per-benchmark details and the comparison of
several eval output dirs."""

from __future__ import annotations

import json

import pytest

from ipo_jax.eval.harness import write_outputs
from ipo_jax.eval.metrics import summarize_by_benchmark
from ipo_jax.eval.report import PAPER_HEADER, compare_dirs, details_table, paper_row, paper_table, plot_paper

PNG = b"\x89PNG\r\n\x1a\n"


def _judged(benchmark, i, reasoning, answer, kind="harmful", finish="stop"):
    return dict(id=f"{benchmark}-{i}", benchmark=benchmark, kind=kind, sample=0, refusal=False, finish_reason=finish,
                verdicts={"reasoning": {"label": reasoning}, "answer": {"label": answer}})


def _xstest(i, label, kind="benign", judge="llm:scripted"):
    row = _judged("xstest", i, "safe", "safe", kind=kind)
    row["xstest"] = {"label": label, "judge": judge, "reason": ""}
    return row


def _scored(benchmark, item, sample, correct, kind="math", finish="stop"):
    return dict(id=f"{benchmark}-{item}", benchmark=benchmark, kind=kind, sample=sample, refusal=False,
                finish_reason=finish, correct=correct, predicted="x")


def model_a_rows():
    rows = []
    # JBB: reasoning unsafe 2/4 = 50.0; one generation cut off at the budget (no answer 1/4 = 25.0), so the
    # response is unsafe in 1 of the 3 answered = 33.3 and in 1 of all 4 = 25.0
    for i, (r, a) in enumerate([("unsafe", "unsafe"), ("unsafe", "safe"), ("safe", "safe"), ("safe", "safe")]):
        rows.append(_judged("jailbreakbench", i, r, a, finish="length" if i == 3 else "stop"))
    # SR: reasoning 1 unsafe of 4 judged (one judge error excluded) = 25.0; response 0/5 = 0.0 of answered and of all
    for i, r in enumerate(["unsafe", "error", "safe", "safe", "safe"]):
        rows.append(_judged("strongreject", i, r, "safe"))
    # WJ: reasoning 3/3 = 100.0; the third never closed its reasoning (empty answer: the judge's "nothing to
    # judge" error, no judge error, no answer 1/3 = 33.3): response 1 of 2 answered = 50.0, 1 of all 3 = 33.3
    rows += [_judged("wildjailbreak", 0, "unsafe", "unsafe"), _judged("wildjailbreak", 1, "unsafe", "safe"),
             dict(_judged("wildjailbreak", 2, "unsafe", "error"), think_closed=False, answer="")]
    # XSTest safe prompts: full + partial refusal of 4 classified = 50.0 (one classifier error excluded)
    rows += [_xstest(i, label) for i, label in enumerate(["full_refusal", "partial_refusal", "full_compliance",
                                                           "full_compliance", "error"])]
    rows += [_xstest(9, "full_refusal", kind="harmful")]  # an unsafe prompt: not over-refusal
    # AIME: two problems x 4 samples, 3 and 1 correct: pass@1 = (3/4 + 1/4) / 2 = 50.0; one wrong sample cut
    # off at the budget: no answer 1/8 = 12.5
    rows += [_scored("aime", 0, s, s < 3) for s in range(4)]
    rows += [_scored("aime", 1, s, s == 0, finish="length" if s == 3 else "stop") for s in range(4)]
    # MATH-500: 2 of 3 = 66.7
    rows += [_scored("math500", i, 0, i < 2) for i in range(3)]
    # GPQA: item 0 one sample, correct; item 1 three samples, none correct: pass@1 = (1 + 0) / 2 = 50.0
    # (the pooled accuracy 1/4 would be 25.0: pass@1 averages per item)
    rows += [_scored("gpqa", 0, 0, True, "choice")] + [_scored("gpqa", 1, s, False, "choice") for s in range(3)]
    # HumanEval: 1 of 2 = 50.0
    rows += [dict(_scored("humaneval", i, 0, i == 0, "code"), status="passed" if i == 0 else "failed") for i in range(2)]
    return rows


MODEL_A_ROW = ("| model-a | 50.0 / 33.3 / 25.0 | 25.0 / 0.0 / 0.0 | 100.0 / 50.0 / 33.3 | 50.0 | 50.0 | 66.7 | 50.0 | 50.0 | "
               # means: reasoning (50 + 25 + 100) / 3, response of answered (33.3 + 0 + 50) / 3, response of all
               # (25 + 0 + 33.3) / 3, capability (50 + 66.7 + 50 + 50) / 4
               "58.3 / 27.8 / 19.4 | 54.2 | "
               # no answer: JBB 1/4, SR 0/5, WJ 1/3, XSTest 0/6, AIME 1/8, MATH-500 0/3, GPQA 0/4, HumanEval 0/2
               "25.0 / 0.0 / 33.3 / 0.0 / 12.5 / 0.0 / 0.0 / 0.0 |")


def model_b_rows():
    rows = [_judged("jailbreakbench", i, "unsafe" if i == 0 else "safe", "safe") for i in range(4)]  # 25.0 / 0.0
    rows += [_xstest(i, label, judge="string_match") for i, label in enumerate(["full_refusal", "full_compliance"])]
    rows += [_scored("math500", i, 0, True) for i in range(2)]  # 100.0
    return rows


MODEL_B_ROW = ("| model-b | 25.0 / 0.0 / 0.0 | – / – / – | – / – / – | 50.0 (string match) | – | 100.0 | – | – | "
               "25.0 (1/3) / 0.0 (1/3) / 0.0 (1/3) | 100.0 (1/4) | 0.0 / – / – / 0.0 / – / 0.0 / – / – |")


def _summary(label, rows):
    summary = dict(label=label, model=f"preset:{label}", benchmarks=summarize_by_benchmark(rows))
    return summary | {"paper": paper_row(summary)}


def test_paper_table_is_computed_from_the_rows():
    a, b = _summary("model-a", model_a_rows()), _summary("model-b", model_b_rows())
    table = paper_table({"model-a": a, "model-b": b})
    lines = table.splitlines()
    assert lines[0] == PAPER_HEADER and len(lines) == 4
    assert lines[2] == MODEL_A_ROW
    assert lines[3] == MODEL_B_ROW
    row = a["paper"]
    assert row["GPQA"] == pytest.approx(0.5) and a["benchmarks"]["gpqa"]["accuracy"]["value"] == pytest.approx(0.25)
    assert row["mean capability"]["value"] == pytest.approx((0.5 + 2 / 3 + 0.5 + 0.5) / 4)
    assert a["benchmarks"]["xstest"]["unsafe_refusal"]["value"] == 1.0


def test_report_files_details_and_string_match_label(tmp_path):
    meta = dict(model="preset:b", label="model-b", judge="http", judge_settings={"name": "judge-model"},
                sampling=dict(temperature=0.6, top_p=0.95, top_k=0, max_new_tokens=32768), samples_per_prompt=1,
                benchmark_settings={"jailbreakbench": dict(samples=1, max_new_tokens=32768, items=4),
                                    "xstest": dict(samples=1, max_new_tokens=8192, items=2),
                                    "math500": dict(samples=1, max_new_tokens=32768, items=2)},
                seconds=1.0, shards=1)
    summary = write_outputs(tmp_path, model_b_rows(), meta, [])
    assert json.loads((tmp_path / "summary.json").read_text())["paper"] == json.loads(json.dumps(summary["paper"]))
    report = (tmp_path / "report.md").read_text()
    assert MODEL_B_ROW in report
    assert "XSTest was decided by STRING MATCH" in report
    assert "| xstest | 2 | 1 | 8192 | 2 | over-refusal (safe prompts) | 50.0% [" in report
    assert (tmp_path / "metrics.png").read_bytes()[:8] == PNG
    details = details_table(summary)
    assert "XSTest classes: string_match (0 errors)" in details


def test_cut_off_generations_are_counted_in_the_details(tmp_path):
    summary = _summary("model-a", model_a_rows()) | dict(benchmark_settings={})
    assert summary["benchmarks"]["jailbreakbench"]["truncated"] == 1
    line = next(l for l in details_table(summary).splitlines() if l.startswith("| jailbreakbench |"))
    assert line.split("|")[8].strip() == "0" and line.split("|")[9].strip() == "1"  # judge errors 0, cut off 1


def test_plot_and_comparison_of_several_eval_dirs(tmp_path):
    png = plot_paper({"a": _summary("a", model_a_rows()), "b": _summary("b", model_b_rows())}, tmp_path / "p.png", "t")
    assert png.read_bytes()[:8] == PNG
    dirs = []
    for label, rows in (("model-a", model_a_rows()), ("model-b", model_b_rows())):
        d = tmp_path / label
        d.mkdir()
        (d / "summary.json").write_text(json.dumps(_summary(label, rows)))
        dirs.append(d)
    table = compare_dirs(dirs, tmp_path / "cmp")
    assert MODEL_A_ROW in table and MODEL_B_ROW in table
    assert (tmp_path / "cmp" / "comparison.png").read_bytes()[:8] == PNG
    assert MODEL_A_ROW in (tmp_path / "cmp" / "report.md").read_text()
    with pytest.raises(ValueError, match="not an eval summary"):
        compare_dirs([tmp_path / "missing"], tmp_path / "cmp2")


def test_a_run_without_paper_benchmarks_gets_its_sets_headline_table(tmp_path):
    rows = [dict(_judged("demo_set", i, "unsafe" if i == 0 else "safe", "safe"), refusal=i == 1) for i in range(2)]
    meta = dict(model="m", label="own", judge="pattern", sampling=dict(temperature=0.6, top_p=0.95, top_k=0,
                max_new_tokens=64), samples_per_prompt=1, seconds=0.1)
    write_outputs(tmp_path / "own", rows, meta, [])
    report = (tmp_path / "own" / "report.md").read_text()
    assert "| demo_set | 2 | 2 | 50% (1/2) |" in report and PAPER_HEADER not in report
    assert (tmp_path / "own" / "metrics.png").read_bytes()[:8] == PNG
    table = compare_dirs([tmp_path / "own"], tmp_path / "cmp")
    assert table.startswith("| model | harmful reasoning ↓") and "| own | 50% (1/2) |" in table
