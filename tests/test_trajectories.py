"""Trajectory files as csr reads them (ipo_jax/pipeline/trajectories.py): every record checked
before any work -- ids that are file names, kinds, token ids in the tokenizer's range that decode
to the record's reasoning -- and the csr stage leaves nothing behind when the LAST record is bad."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ipo_jax.data.tokenizer import encode_text, load_tokenizer, packaged_qwen3_tokenizer_dir
from ipo_jax.pipeline.trajectories import TrajectoryFileError, check_trajectory_tokens, read_trajectories

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
GOOD = {"id": "t1", "prompt": "How do I go about it? [request details withheld]",
        "reasoning": "I should think about this. It is not something to help with."}


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(packaged_qwen3_tokenizer_dir())


def _file(tmp_path: Path, *records) -> Path:
    path = tmp_path / "trajectories.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _ids(tokenizer, reasoning: str) -> list[int]:
    return encode_text(tokenizer, "<think>\n" + reasoning + "\n</think>\n\nNo.")


@pytest.mark.parametrize("bad, message", [
    ({"id": "../t2"}, r":2 \(id '../t2'\): field 'id' is not a safe file name"),
    ({"id": ".hidden"}, r":2 \(id '.hidden'\): field 'id' is not a safe file name"),
    ({"kind": "toxic"}, r":2 \(id 't2'\): field 'kind' is 'toxic'; expected one of harmful, benign"),
    ({"completion_ids": [1, -3]}, r":2 \(id 't2'\): field 'completion_ids' item 1 is token id -3, outside 0..2147483647"),
    ({"completion_ids": [10**30]}, r"field 'completion_ids' item 0 is token id 1000000000000000000000000000000"),
    ({"completion_ids": "1 2 3"}, r"field 'completion_ids' should be a list of token ids, got str"),
    ({"reasoning": 5}, r":2: field 'reasoning' should be str, got int"),
])
def test_fields_are_checked_for_every_record_of_the_file(tmp_path, bad, message):
    path = _file(tmp_path, GOOD, {**GOOD, "id": "t2", **bad})
    with pytest.raises(TrajectoryFileError, match=str(path) + message if message.startswith(":") else message):
        read_trajectories(path)


def test_a_kind_filter_that_leaves_nothing_is_an_error(tmp_path):
    path = _file(tmp_path, GOOD, {**GOOD, "id": "t2", "kind": "benign"})
    assert [r["id"] for r in read_trajectories(path, kind="benign")] == ["t2"]
    assert [r["id"] for r in read_trajectories(path, kind="")] == ["t1", "t2"]
    assert [r["id"] for r in read_trajectories(path, kind="harmful")] == ["t1"]  # no kind: harmful
    only_harmful = _file(tmp_path, GOOD)
    with pytest.raises(TrajectoryFileError, match=r"no trajectory of kind 'benign' \(config.csr.kind\) among its 1 records"):
        read_trajectories(only_harmful, kind="benign")
    with pytest.raises(TrajectoryFileError, match=r"config.csr.kind is 'toxic'"):
        read_trajectories(path, kind="toxic")


def test_token_ids_must_be_the_tokenizers_and_decode_to_the_reasoning(tmp_path, tokenizer):
    ids = _ids(tokenizer, GOOD["reasoning"])
    good = {**GOOD, "completion_ids": ids}
    records = read_trajectories(_file(tmp_path, GOOD, {**good, "id": "t2"}))
    check_trajectory_tokens(records, "trajectories.jsonl", tokenizer)  # both fine: text only, and ids
    size = len(tokenizer)
    for bad, message in [
        # an id past the vocabulary: decoding drops it silently, so the decode check alone would miss it
        (ids + [size], rf"item {len(ids)} is token id {size}, outside the tokenizer's {size} ids \(0..{size - 1}\)"),
        (_ids(tokenizer, "Something else entirely."), r"field 'completion_ids' does not decode to the record's reasoning"),
    ]:
        records = read_trajectories(_file(tmp_path, GOOD, {**good, "id": "t2", "completion_ids": bad}))
        with pytest.raises(TrajectoryFileError, match=r"trajectories.jsonl:2 \(id 't2'\): " + ".*" + message):
            check_trajectory_tokens(records, "trajectories.jsonl", tokenizer)


def test_csr_stops_before_writing_anything_when_the_last_trajectory_is_bad(tmp_path, capsys, monkeypatch):
    """Before: the first trajectory's CSV / PNG were written, then the second failed."""
    import ipo_jax.pipeline.run as stages
    from ipo_jax.cli import main

    monkeypatch.setattr(stages, "build_policy", lambda config: pytest.fail("the model was loaded"))
    path = _file(tmp_path, GOOD, {**GOOD, "id": "t2", "completion_ids": [10, 20, 10**9]})
    code = main(["csr", "--config", str(CONFIGS / "pipeline_tiny_cpu.py"), f"--config.csr.trajectories={path}",
                 "--config.model.init=preset:tiny-qwen3", f"--config.tokenizer={packaged_qwen3_tokenizer_dir()}",
                 f"--config.out={tmp_path / 'out'}"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "trajectories.jsonl:2 (id 't2'): field 'completion_ids' item 2 is token id 1000000000" in err
    assert not (tmp_path / "out").exists()
