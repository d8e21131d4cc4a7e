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
        # strict numbers: JSON has no NaN / Infinity, and a float that overflows is no number either
        (b'{"id": "b", "prompt": "hi", "w": NaN}', ":2: not valid JSON here (NaN is not a JSON number; expected a finite number)"),
        (b'{"id": "b", "prompt": "hi", "w": -Infinity}', ":2: not valid JSON here (-Infinity is not a JSON number"),
        (b'{"id": "b", "prompt": "hi", "w": 1e999}', ":2: not valid JSON here (1e999 is too large for a number"),
        (b'{"id": "b", "prompt": "hi", "w": ' + b"9" * 5000 + b"}", ":2: not valid JSON here (an integer of more than 4300 digits)"),
        (b'{"id": "b", "prompt": "hi", "w": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", ":2: not valid JSON here (nested too deeply)"),
    ],
)
def test_bad_record_lines_name_file_and_line(tmp_path, line, expected):
    path = _write(tmp_path / "prompts.jsonl", [{"id": "a", "prompt": "first"}, line])
    with pytest.raises(RecordFileError) as info:
        read_jsonl_records(path, {"id": str, "prompt": (str, list)}, kind="prompt")
    assert str(info.value).startswith(str(path))
    assert expected in str(info.value)


def test_a_line_over_the_limit_is_an_error_naming_it_and_the_limit(tmp_path, monkeypatch):
    from ipo_jax.data import records

    monkeypatch.setattr(records, "MAX_LINE_BYTES", 1000)
    at_limit = {"id": "a", "prompt": "x" * (1000 - 26)}  # 999 bytes + its newline: exactly the limit
    assert len(json.dumps(at_limit)) + 1 == 1000
    path = _write(tmp_path / "p.jsonl", [at_limit, {"id": "b", "prompt": "y" * 5000}])
    with pytest.raises(RecordFileError) as info:
        read_jsonl_records(path, {"id": str, "prompt": str})
    assert str(info.value) == f"{path}:2: line longer than 1000 bytes, the limit for one record; expected one JSON object per line"
    assert [r["id"] for r in read_jsonl_records(_write(tmp_path / "ok.jsonl", [at_limit]), {"id": str})] == ["a"]


@pytest.mark.parametrize("ids, vocab, expected", [
    ("5", None, "field 'ids' should be a list of token ids, got str"),
    ([1, True], None, "field 'ids' item 1 should be an integer token id, got True"),
    ([1, 2.0], None, "field 'ids' item 1 should be an integer token id, got 2.0"),
    ([-1], None, "field 'ids' item 0 is token id -1, outside 0..2147483647 (token ids are int32)"),
    ([10**30], None, "field 'ids' item 0 is token id 1000000000000000000000000000000, outside 0..2147483647 (token ids are int32)"),
    ([3, 100], 100, "field 'ids' item 1 is token id 100, outside the tokenizer's 100 ids (0..99)"),
    ([], None, "field 'ids' is empty"),
])
def test_token_ids_are_integers_in_the_vocabulary(ids, vocab, expected):
    from ipo_jax.data.records import check_token_ids

    with pytest.raises(RecordFileError) as info:
        check_token_ids(ids, "t.jsonl:3 (id 'x')", "ids", vocab_size=vocab, non_empty=True)
    assert str(info.value) == f"t.jsonl:3 (id 'x'): {expected}"
    assert check_token_ids([0, 2**31 - 1], "here", "ids") == [0, 2**31 - 1]
    assert check_token_ids([0, 99], "here", "ids", vocab_size=100) == [0, 99]


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


# ----------------------------------------------------------------------------- settings


def _config(stage):
    from ipo_jax.cli import _base_config

    return _base_config("train" if stage == "plan" else stage)  # plan reads a train config


# fields other helpers are adding at the same time; their rules wait for them
PENDING_FIELDS = {"loss.nll_norm", "optim.moment_dtype", "model.attention", "detector.backend"}


@pytest.mark.parametrize("stage", ["train", "plan", "sample", "build-pairs", "csr", "eval", "demo"])
def test_every_rule_names_a_field_of_the_stage(stage):
    """A typo in a rule's field name would silently check nothing."""
    from ipo_jax.validation import _MISSING, _get, stage_rules

    config = _config(stage)  # built by the stage's config module, which registers the stage's rules
    missing = {name for name in stage_rules(stage) if _get(config, name) is _MISSING}
    assert missing <= PENDING_FIELDS, missing


@pytest.mark.parametrize("override, value, expected", [
    ("train.max_steps", -5, "config.train.max_steps is -5; expected an integer >= 0"),
    ("train.save_every", 0, "config.train.save_every is 0; expected an integer >= 1"),
    ("data.pairs_per_micro", 0, "config.data.pairs_per_micro is 0; expected an integer >= 1"),
    ("loss.alpha", float("nan"), "config.loss.alpha is nan; expected a finite number"),
    ("loss.label_smoothing", 0.5, "config.loss.label_smoothing is 0.5; expected a finite number in [0, 0.5)"),
    ("optim.end_lr_ratio", 1.5, "config.optim.end_lr_ratio is 1.5; expected a finite number in [0, 1]"),
    ("data.layout", "sideways", "config.data.layout is 'sideways'; expected one of 'duplicated', 'prefix_shared'"),
    ("data.mask_from", "everything", "config.data.mask_from is 'everything'; expected one of 'cue', 'reasoning'"),
    ("model.remat", "some", "config.model.remat is 'some'; expected one of 'none', 'full', 'dots_saveable'"),
    ("data.buckets", (128, 0), "config.data.buckets is (128, 0); expected a tuple of integers from 2 to 1,048,576"),
    ("data.max_length", 10**9, "config.data.max_length is 1000000000; expected an integer from 2 to 1,048,576"),
    ("data.seed", 2**31, "config.data.seed is 2147483648; expected integers of at most 2**31 - 1 (2,147,483,647)"),
    ("data.buckets", (128, 10**30), "config.data.buckets is (128, 1000000000000000000000000000000); expected integers of at most"),
    ("mesh.tensor", -2, "config.mesh.tensor is -2; expected an integer >= 1, or -1"),
    ("train.peak_flops_per_device", float("inf"), "config.train.peak_flops_per_device is inf; expected a finite number"),
])
def test_train_settings_out_of_range_are_named(tmp_path, override, value, expected):
    from ipo_jax.validation import SettingsError, settings_problems, validate_settings

    config = _config("train")
    config.model.init, config.data.pairs, config.train.out = "preset:tiny-qwen3", "pairs.jsonl", str(tmp_path / "out")
    assert settings_problems("train", config) == []
    section, key = override.rsplit(".", 1)
    with config.unlocked():
        config[section][key] = value
    with pytest.raises(SettingsError) as info:
        validate_settings("train", config)
    assert str(info.value).startswith(expected) and "\n" not in str(info.value)
    assert not (tmp_path / "out").exists()


def test_a_non_finite_float_is_refused_in_any_field_and_several_problems_are_counted():
    from ipo_jax.validation import RULES, SettingsError, validate_settings

    config = _config("demo")
    assert "initializer_range" not in RULES["demo"]  # a field without a rule of its own
    config.initializer_range = float("nan")
    config.seed = -1
    with pytest.raises(SettingsError) as info:
        validate_settings("demo", config)
    assert str(info.value) == "config.initializer_range is nan; expected a finite number (and 1 more setting: config.seed)"


def test_plan_checks_the_train_settings_but_not_the_files_only_a_run_reads(tmp_path):
    from ipo_jax.validation import RULES, settings_problems

    config = _config("train")
    skipped = {"tokenizer", "data.pairs", "reference.cache_dir", "train.out"}
    assert set(RULES["plan"]) == set(RULES["train"]) - skipped
    config.model.init = "hf:/nonexistent/qwen3-8b"  # planned from the preset of that name
    config.data.pairs, config.tokenizer = str(tmp_path / "missing.jsonl"), str(tmp_path / "no-tokenizer")
    config.train.out = str(tmp_path / "plain.txt" / "run")
    (tmp_path / "plain.txt").write_text("a file")
    assert settings_problems("plan", config) == []
    assert {p.split(" ", 1)[0] for p in settings_problems("train", config)} == {
        "config.model.init", "config.tokenizer", "config.train.out"}
    config.optim.learning_rate, config.data.micro_batches = float("nan"), 0
    assert settings_problems("plan", config) == ["config.optim.learning_rate is nan; expected a finite number",
                                                 "config.data.micro_batches is 0; expected an integer >= 1"]
    config.model.init = "preset:nope"
    assert "config.model.init is 'preset:nope'; expected a known preset" in " ".join(settings_problems("plan", config))


@pytest.mark.parametrize("stage, field, value, expected", [
    ("sample", "sampling.max_new_tokens", 2**20 + 1, "config.sampling.max_new_tokens is 1048577; expected an integer from 1 to 1,048,576"),
    ("sample", "sampler.max_prompt_length", 10**12, "config.sampler.max_prompt_length is 1000000000000; expected integers of at most"),
    ("csr", "csr.window", 10**20, "config.csr.window is 100000000000000000000; expected integers of at most 2**31 - 1"),
    ("csr", "csr.kind", "weird", "config.csr.kind is 'weird'; expected one of '', 'harmful', 'benign'"),
    ("eval", "max_new_tokens_per_benchmark", "aime=2000000", "config.max_new_tokens_per_benchmark is 'aime=2000000'; "
                                                            "expected name=integer[,name=integer...] with integers from 1 to 1,048,576"),
])
def test_counts_have_upper_bounds(stage, field, value, expected):
    from ipo_jax.validation import settings_problems

    config = _config(stage)
    section, _, key = field.rpartition(".")
    node = config[section] if section else config
    with config.unlocked():
        node[key] = value
    assert any(p.startswith(expected) for p in settings_problems(stage, config)), settings_problems(stage, config)
    with config.unlocked():
        node[key] = _config(stage)[section][key] if section else _config(stage)[key]
    assert not [p for p in settings_problems(stage, config) if p.startswith(f"config.{field} ")]


def test_output_directories_must_be_creatable_and_writable(tmp_path):
    from ipo_jax.validation import output_dir

    (tmp_path / "file").write_text("x")
    assert output_dir(str(tmp_path / "new" / "run")) is None
    assert output_dir(str(tmp_path / "file")) == f"a directory ({tmp_path / 'file'} is a file)"
    assert output_dir(str(tmp_path / "file" / "run")) == f"a directory path ({tmp_path / 'file'} is a file, so {tmp_path / 'file' / 'run'} cannot be made)"
    assert output_dir("/proc/ipo-jax-test").startswith("a writable directory (cannot write in /proc")
    assert output_dir("") == "a non-empty directory path"
