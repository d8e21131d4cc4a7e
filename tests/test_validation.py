"""The shared input checks: chat messages and record files (ipo_jax/data/records.py) and the
per-stage settings checks (ipo_jax/validation.py)."""

from __future__ import annotations

import json

import pytest

from ipo_jax.data.records import RecordFileError, check_chat_messages, read_jsonl_records


@pytest.mark.parametrize(
    "messages, expected",
    [
        ("hello", "should be a list of chat messages, got str"),
        ([], "empty list of chat messages"),
        (["hello"], "message 0 should be an object"),
        ([{"content": "hi"}], "message 0 has no 'role'"),
        ([{"role": "robot", "content": "hi"}], "message 0 has role 'robot'; expected one of system, user, assistant"),
        ([{"role": "user"}], "message 0 has no 'content'"),
        ([{"role": "user", "content": 5}], "message 0 has content of type int; expected a string"),
        ([{"role": "user", "content": "a"}, {"role": "assistant", "content": None}], "message 1 has content of type NoneType"),
        ([{"role": "system", "content": "s"}, {"role": "assistant", "content": "a"}], "has no user message (roles: system, assistant)"),
    ],
)
def test_bad_chat_messages_are_one_line_errors_naming_the_place(messages, expected):
    with pytest.raises(RecordFileError) as info:
        check_chat_messages(messages, "prompts.jsonl:3 (id 'p')")
    text = str(info.value)
    assert text.startswith("prompts.jsonl:3 (id 'p'): field 'prompt'")
    assert expected in text
    assert "\n" not in text


def test_good_chat_messages_come_back_as_plain_dicts():
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi", "name": "x"}]
    assert check_chat_messages(messages, "here") == messages
    with pytest.raises(KeyError):  # the caller's error type is used
        check_chat_messages([{"role": "robot", "content": "x"}], "here", error=KeyError)


def _write(path, lines):
    path.write_bytes(b"".join((line if isinstance(line, bytes) else json.dumps(line).encode()) + b"\n" for line in lines))
    return path


@pytest.mark.parametrize(
    "line, expected",
    [
        ({"id": "", "prompt": "hi"}, ":2: field 'id' should be a non-empty string, got ''"),
        ({"id": "  ", "prompt": "hi"}, ":2: field 'id' should be a non-empty string"),
        ({"id": "b", "prompt": ["hello"]}, ":2 (id 'b'): field 'prompt' message 0 should be an object"),
        ({"id": "b", "prompt": [{"role": "robot", "content": "x"}]}, ":2 (id 'b'): field 'prompt' message 0 has role 'robot'"),
        ({"id": "b", "prompt": [{"content": "x"}]}, ":2 (id 'b'): field 'prompt' message 0 has no 'role'"),
        ({"id": "b", "prompt": [{"role": "user", "content": 5}]}, "content of type int"),
        ({"id": "b", "prompt": "   "}, ":2 (id 'b'): field 'prompt' is empty"),
        ({"id": "b", "prompt": "hi", "system": 3}, ":2 (id 'b'): field 'system' should be a string"),
        ({"id": "a", "prompt": "hi"}, ":2: id 'a' repeats line 1"),
        (b'{"id": "b", "prompt": "caf\xe9"}', ":2: not valid UTF-8 (byte 0xe9"),
        (b"[1, 2]", ":2: expected a JSON object, got list"),
        (b'{"id": "b", "prompt": ', ":2: not valid JSON"),
    ],
)
def test_bad_record_lines_name_file_and_line(tmp_path, line, expected):
    path = _write(tmp_path / "prompts.jsonl", [{"id": "a", "prompt": "first"}, line])
    with pytest.raises(RecordFileError) as info:
        read_jsonl_records(path, {"id": str, "prompt": (str, list)}, kind="prompt")
    assert str(info.value).startswith(str(path))
    assert expected in str(info.value)


def test_record_file_paths_of_the_wrong_kind(tmp_path):
    with pytest.raises(IsADirectoryError, match="prompt file .* is a directory; expected a file"):
        read_jsonl_records(tmp_path, {"prompt": str}, kind="prompt")
    with pytest.raises(FileNotFoundError, match="prompt file .*missing.jsonl not found"):
        read_jsonl_records(tmp_path / "missing.jsonl", {"prompt": str}, kind="prompt")
    with pytest.raises(RecordFileError, match="no prompt records"):
        read_jsonl_records(_write(tmp_path / "empty.jsonl", [b""]), {"prompt": str}, kind="prompt")


def test_good_records_keep_their_line_numbers(tmp_path):
    path = _write(tmp_path / "p.jsonl", [{"id": "a", "prompt": "hi"}, b"", {"id": "b", "prompt": [{"role": "user", "content": "yo"}]}])
    records = read_jsonl_records(path, {"id": str, "prompt": (str, list)})
    assert [(r["id"], r["_line"]) for r in records] == [("a", 1), ("b", 3)]
