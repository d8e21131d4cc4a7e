"""Prompt sets: JSONL, parquet, arrow, saved `datasets` directories and hub ids, with a field
mapping; the STAR-1 / STAR-benign-915 layouts (fixtures with placeholder text) load unmapped."""

import json
from pathlib import Path

import pytest

from ipo_jax.data.prompts import PromptFileError, load_prompt_records, parse_field_mapping

FIXTURES = Path(__file__).parent / "fixtures" / "prompt_sets"


def _public(records):
    return [{k: v for k, v in r.items() if not k.startswith("_")} for r in records]


def test_star1_layout_parquet_loads_without_a_mapping():
    records = load_prompt_records(FIXTURES / "star1_layout.parquet")
    assert [r["id"] for r in records] == ["101", "102", "103"]  # integer ids become strings
    assert records[0]["prompt"] == "[placeholder harmful request 1; details withheld]"
    assert {r["kind"] for r in records} == {"harmful"}
    assert set(records[0]) == {"id", "prompt", "kind"}  # the long `response` column is not carried


def test_star_benign_915_layout_saved_dataset_loads_as_benign():
    records = load_prompt_records(FIXTURES / "star_benign_915_layout", kind="benign")
    assert [(r["id"], r["kind"]) for r in records] == [("b-1", "benign"), ("b-2", "benign")]
    assert records[1]["prompt"].startswith("What is the best way to shoot")


def test_an_arrow_file_and_a_mapping(tmp_path):
    import datasets

    data = datasets.Dataset.from_dict({"key": ["a", "b"], "text": ["first question", "second question"],
                                       "label": ["benign", "harmful"], "sys": ["be brief", "be careful"]})
    data.save_to_disk(tmp_path / "saved")
    arrow = next((tmp_path / "saved").glob("*.arrow"))
    records = load_prompt_records(arrow, fields="prompt=text, id=key, kind=label, system=sys")
    assert _public(records) == [
        {"id": "a", "prompt": "first question", "kind": "benign", "system": "be brief"},
        {"id": "b", "prompt": "second question", "kind": "harmful", "system": "be careful"},
    ]


def test_a_dataset_without_ids_uses_row_numbers_and_chat_prompts_are_checked(tmp_path):
    import datasets

    messages = [[{"role": "system", "content": "s"}, {"role": "user", "content": "hello"}]]
    datasets.Dataset.from_dict({"messages": messages}).save_to_disk(tmp_path / "chat")
    records = load_prompt_records(tmp_path / "chat")
    assert records[0]["id"] == "0" and records[0]["prompt"][1] == {"role": "user", "content": "hello"}

    datasets.Dataset.from_dict({"messages": [[{"role": "system", "content": "only a system turn"}]]}).save_to_disk(tmp_path / "nouser")
    with pytest.raises(PromptFileError, match=r"nouser row 0 \(id '0'\): field 'prompt' has no user message"):
        load_prompt_records(tmp_path / "nouser")
    datasets.Dataset.from_dict({"messages": [[{"role": "robot", "content": "x"}]]}).save_to_disk(tmp_path / "role")
    with pytest.raises(PromptFileError, match=r"role row 0 .*message 0 has role 'robot'"):
        load_prompt_records(tmp_path / "role")


def test_a_mapping_naming_a_missing_column_names_it_and_the_columns():
    with pytest.raises(PromptFileError, match=r"column 'prompt_text' .*field 'prompt'.* not found; columns: id, question, response"):
        load_prompt_records(FIXTURES / "star1_layout.parquet", fields="prompt=prompt_text")


def test_a_mapping_naming_a_missing_column_in_jsonl_names_the_line(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"id": "a", "question": "q"}) + "\n" + json.dumps({"id": "b", "question": "q2", "text": "t"}) + "\n")
    assert load_prompt_records(path)[0]["prompt"] == "q"  # `question` is a default prompt column
    with pytest.raises(PromptFileError, match=r"p.jsonl:1: column 'text' .*is missing"):
        load_prompt_records(path, fields="prompt=text")


@pytest.mark.parametrize("record, message", [
    ({"id": "x", "prompt": [{"role": "assistant", "content": "hi"}]}, r"p.jsonl:1 \(id 'x'\): field 'prompt' has no user message"),
    ({"id": "x", "prompt": [{"role": "wizard", "content": "hi"}]}, r"p.jsonl:1 \(id 'x'\): field 'prompt' message 0 has role 'wizard'"),
    ({"id": "x", "prompt": "q", "kind": "other"}, r"p.jsonl:1 \(id 'x'\): field 'kind' is 'other'"),
])
def test_bad_jsonl_prompts_name_file_and_line(tmp_path, record, message):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps(record) + "\n")
    with pytest.raises(PromptFileError, match=message):
        load_prompt_records(path)


@pytest.mark.parametrize("line, message", [
    (b'{"id": "x", "prompt": "q", "score": NaN}', r"p.jsonl:2: not valid JSON here \(NaN is not a JSON number"),
    (b'{"id": "x", "prompt": "q", "score": 1e400}', r"p.jsonl:2: not valid JSON here \(1e400 is too large for a number"),
])
def test_non_finite_numbers_name_file_and_line(tmp_path, line, message):
    path = tmp_path / "p.jsonl"
    path.write_bytes(json.dumps({"id": "a", "prompt": "q"}).encode() + b"\n" + line + b"\n")
    with pytest.raises(PromptFileError, match=message):
        load_prompt_records(path)


def test_a_line_over_the_limit_is_an_error_and_the_sample_stage_exits_2_writing_nothing(tmp_path, monkeypatch, capsys):
    """A prompt file of one enormous line is refused at the line limit, not read whole (64 MiB by
    default; lowered here so the test writes kilobytes)."""
    from ipo_jax.cli import main
    from ipo_jax.data import records
    from ipo_jax.data.tokenizer import packaged_qwen3_tokenizer_dir

    monkeypatch.setattr(records, "MAX_LINE_BYTES", 4096)
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"id": "a", "prompt": "q"}) + "\n" + json.dumps({"id": "b", "prompt": "x" * 10_000}) + "\n")
    with pytest.raises(PromptFileError, match=r"p.jsonl:2: line longer than 4096 bytes, the limit for one record"):
        load_prompt_records(path)
    configs = Path(__file__).resolve().parents[1] / "configs"
    code = main(["sample", "--config", str(configs / "pipeline_tiny_cpu.py"), f"--config.prompts={path}",
                 "--config.model.init=preset:tiny-qwen3", f"--config.tokenizer={packaged_qwen3_tokenizer_dir()}",
                 f"--config.out={tmp_path / 'out'}"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "p.jsonl:2: line longer than 4096 bytes" in err
    assert not (tmp_path / "out").exists()


def test_jsonl_records_keep_their_fields(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"id": "a", "prompt": "q", "note": "kept"}) + "\n")
    assert _public(load_prompt_records(path)) == [{"id": "a", "prompt": "q", "note": "kept", "kind": "harmful"}]


def test_a_hub_id_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(PromptFileError, match=r"'UCSC-VLAA/STAR-1': not a local file or directory, and the Hugging Face hub is offline"):
        load_prompt_records("UCSC-VLAA/STAR-1")
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_prompt_records("missing/dir/prompts.parquet")


def test_field_mapping_errors():
    assert parse_field_mapping("prompt=question, id=id") == {"prompt": "question", "id": "id"}
    for spec, message in [("prompt", "should be <field>=<column>"), ("answer=x", "unknown field 'answer'"),
                          ("id=a,id=b", "mapped twice")]:
        with pytest.raises(PromptFileError, match=message):
            parse_field_mapping(spec)


def test_repeated_ids_are_refused(tmp_path):
    import datasets

    datasets.Dataset.from_dict({"id": [1, 1], "question": ["a", "b"]}).save_to_disk(tmp_path / "dup")
    with pytest.raises(PromptFileError, match=r"dup row 1: id '1' repeats row 0"):
        load_prompt_records(tmp_path / "dup")
