"""Dataset SFT (ipo_jax/sft/): reading the published layouts from JSONL, parquet and save_to_disk,
bad records named by place and field, the assistant-only mask (real Qwen3 tokenizer and the tiny
R1-style one), packing giving each example the log-probs of its own row, and a tiny run whose loss
falls and which resumes from a checkpoint with the same losses."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

from ipo_jax.cli import parse_config
from ipo_jax.data.tiny_tokenizer import EOS, THINK_OPEN, build_tiny_tokenizer
from ipo_jax.data.tokenizer import chat_eos_text, encode_prompt, encode_text, load_tokenizer, packaged_qwen3_tokenizer_dir
from ipo_jax.loss import LossConfig, preference_loss
from ipo_jax.models.decoder import init_decoder
from ipo_jax.models.presets import preset_config
from ipo_jax.sft import run_sft
from ipo_jax.sft.batches import SftBatches
from ipo_jax.sft.records import SftRecord, SftRecordError, read_sft_records
from ipo_jax.sft.run import fit_examples
from ipo_jax.sft.tokens import tokenize_example, tokenize_records
from ipo_jax.train.errors import TrainingError
from ipo_jax.train.step import policy_pair_logps
from ipo_jax.validation import SettingsError, validate_settings

ROOT = Path(__file__).resolve().parents[1]
STAR1 = ROOT / "configs" / "sft_sample_star1.jsonl"
FIXTURES = ROOT / "tests" / "fixtures" / "sft"
TINY_CONFIG = str(ROOT / "configs" / "sft_tiny_cpu.py")
# Canonical Qwen3 form: "<think>\n" + reasoning + "\n</think>\n\n" + answer.
REPLY = "<think>\nThe request asks for [harmful details withheld]; that would hurt someone.\n</think>\n\nI can't help with that."


@pytest.fixture(scope="module")
def qwen3():
    try:
        return load_tokenizer(packaged_qwen3_tokenizer_dir())
    except FileNotFoundError as e:  # pragma: no cover - the Makefile installs it
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def star1_records():
    return read_sft_records(str(STAR1))


@pytest.fixture(scope="module")
def tiny(star1_records):
    return build_tiny_tokenizer([m["content"] for r in star1_records for m in r.messages], vocab_size=400)


def _template_ids(tok, conversation) -> list[int]:
    out = tok.apply_chat_template(conversation, tokenize=True)
    return list(out["input_ids"] if not isinstance(out, list) else out)


# ----------------------------------------------------------------------------- the assistant mask


def test_qwen3_single_turn_is_the_templates_tokens_and_the_mask_is_the_reply_exactly(qwen3):
    messages = [{"role": "system", "content": "Be careful."}, {"role": "user", "content": "How do I do [request details withheld]?"},
                {"role": "assistant", "content": REPLY}]
    example = tokenize_example(qwen3, SftRecord("a", messages, "x:1"))
    assert list(example.tokens) == _template_ids(qwen3, messages)  # the whole conversation, as the template writes it
    prompt = encode_prompt(qwen3, messages[:-1])
    assert list(example.loss) == [False] * len(prompt) + [True] * (len(example) - len(prompt))
    assert qwen3.decode(example.tokens[example.loss]) == REPLY + chat_eos_text(qwen3)  # "<|im_end|>\n"
    assert not example.history_rewritten


def test_qwen3_multi_turn_whose_history_the_template_rewrites_trains_the_last_turn(qwen3):
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "<think>\nGreeting.\n</think>\n\nHello!"},
                {"role": "user", "content": "How do I do [request details withheld]?"}, {"role": "assistant", "content": REPLY}]
    example = tokenize_example(qwen3, SftRecord("b", messages, "x:2"))
    assert example.history_rewritten  # Qwen3 drops the first turn's reasoning from the history
    assert list(example.tokens) == encode_prompt(qwen3, messages[:-1]) + list(example.tokens[example.loss])
    assert qwen3.decode(example.tokens[example.loss]) == REPLY + chat_eos_text(qwen3)


def test_tiny_multi_turn_masks_every_assistant_turn_and_writes_think_once(tiny):
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "<think>\nGreeting.\n</think>\n\nHello!"},
                {"role": "user", "content": "Help with [request details withheld]"}, {"role": "assistant", "content": REPLY}]
    example = tokenize_example(tiny, SftRecord("c", messages, "x:3"))
    assert not example.history_rewritten
    # the R1-style generation prompt ends in "<think>\n": each reply continues inside the reasoning
    assert list(example.tokens) == _template_ids(tiny, [m if m["role"] == "user" else
                                                        {**m, "content": "<think>\n" + m["content"].removeprefix("<think>\n")}
                                                        for m in messages])
    think = encode_text(tiny, THINK_OPEN)[0]
    assert int((example.tokens == think).sum()) == 2 and not example.loss[example.tokens == think].any()
    runs = np.flatnonzero(np.diff(np.r_[0, example.loss.astype(int), 0]))  # starts and ends of the masked runs
    replies = [tiny.decode(example.tokens[a:b]) for a, b in zip(runs[::2], runs[1::2])]
    assert replies == ["Greeting.\n</think>\n\nHello!" + EOS, REPLY.removeprefix("<think>\n") + EOS]


# ----------------------------------------------------------------------------- reading


def test_the_three_loaders_read_the_same_records(tmp_path, star1_records):
    import datasets

    rows = [json.loads(line) for line in STAR1.read_text().splitlines()]
    table = datasets.Dataset.from_list(rows)
    table.to_parquet(str(tmp_path / "star1.parquet"))
    table.save_to_disk(str(tmp_path / "star1_dir"))
    DatasetDict = datasets.DatasetDict
    DatasetDict({"train": table}).save_to_disk(str(tmp_path / "star1_splits"))
    key = [(r.id, r.messages) for r in star1_records]
    assert len(key) == 24 and key[0][1][-1]["content"].startswith("<think>\n")
    assert key[0][1][0] == {"role": "user", "content": rows[0]["question"]}  # STAR-1's question / response, no mapping
    for source in ("star1.parquet", "star1_dir", "star1_splits"):
        got = read_sft_records(str(tmp_path / source))
        assert [(r.id, r.messages) for r in got] == key, source
    assert got[3].where == f"{tmp_path / 'star1_splits'} row 3"
    with pytest.raises(SftRecordError, match="no split 'test'; it has train"):
        read_sft_records(str(tmp_path / "star1_splits"), split="test")


def test_realsafe_and_messages_layouts_and_several_sources():
    records = read_sft_records(f"{FIXTURES / 'realsafe.jsonl'},{FIXTURES / 'messages.jsonl'}")
    assert len(records) == 10
    assert records[0].id == "realsafe.jsonl:0" and [m["role"] for m in records[0].messages] == ["user", "assistant"]
    assert [m["role"] for m in records[-1].messages] == ["user", "assistant", "user", "assistant"]
    assert records[-2].messages[0] == {"role": "system", "content": "You are a careful assistant."}


BAD = [
    ({"question": "q"}, "prompt_response", "", r":1 \(id 'f.jsonl:0'\): field 'response' is missing"),
    ({"prompt": "q", "response": 3}, "auto", "", r":1 .*field 'response' should be a string, got int"),
    ({"prompt": "  ", "response": "r"}, "auto", "", r":1 .*field 'prompt' is empty"),
    ({"messages": [{"role": "user", "content": "q"}]}, "auto", "", r"field 'messages' ends with a user message"),
    ({"messages": [{"role": "bot", "content": "q"}]}, "auto", "", r"field 'messages' message 0 has role 'bot'"),
    ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": " "}]}, "auto", "",
     r"field 'messages' message 1 \(assistant\) is empty"),
    ({"prompt": "q", "response": "r"}, "messages", "", r"field 'messages' is missing \(data.format messages\)"),
    ({"prompt": "q", "response": "r"}, "auto", "response=answer", r"field 'response' is missing \(looked for answer"),
    ({"id": True, "prompt": "q", "response": "r"}, "auto", "", r"field 'id' should be a non-empty string"),
]


@pytest.mark.parametrize("row, fmt, fields, message", BAD)
def test_a_bad_record_names_file_line_and_field(tmp_path, row, fmt, fields, message):
    path = tmp_path / "f.jsonl"
    path.write_text(json.dumps(row) + "\n")
    with pytest.raises(SftRecordError, match=message) as info:
        read_sft_records(str(path), fmt=fmt, fields=fields)
    assert str(info.value).startswith(f"{path}:1") and "\n" not in str(info.value)


def test_repeated_ids_offline_hub_ids_and_bad_settings(tmp_path, monkeypatch):
    path = tmp_path / "d.jsonl"
    path.write_text('{"id": 1, "prompt": "q", "response": "r"}\n{"id": "1", "prompt": "q", "response": "r"}\n')
    with pytest.raises(SftRecordError, match=rf"{path}:2: id '1' repeats {path}:1"):
        read_sft_records(str(path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SftRecordError, match="hub is offline"):
        read_sft_records("UCSC-VLAA/STAR-1")
    with pytest.raises(FileNotFoundError, match="data.dataset 'data/none.parquet': no such file or directory"):
        read_sft_records("data/none.parquet")
    with pytest.raises(SftRecordError, match="unknown field 'answer'"):
        read_sft_records(str(path), fields="answer=x")
    config = parse_config(["--config", TINY_CONFIG, "--config.data.format=chat"], "train")
    with pytest.raises(SettingsError, match="config.data.format is 'chat'; expected one of 'auto', 'messages', 'prompt_response'"):
        validate_settings("sft", config)


def test_too_long_examples_are_skipped_never_cut_and_too_many_refused(tiny, star1_records):
    examples = tokenize_records(star1_records, tiny)
    lengths = sorted(len(e) for e in examples)
    limit = lengths[-2]  # the longest example (and its equals) go
    kept, skipped = fit_examples(examples, limit, 0.1)
    assert all(len(e) <= limit for e in kept) and len(kept) + len(skipped) == 24 and skipped
    assert skipped[0]["at"].startswith(f"{STAR1}:") and skipped[0]["tokens"] > limit
    with pytest.raises(TrainingError, match=r"longer than data.max_length .* raise data.max_length to at least"):
        fit_examples(examples, lengths[0] - 1, 0.5)


# ----------------------------------------------------------------------------- packing


def test_packing_gives_each_example_the_log_probs_of_its_own_row(tiny, star1_records):
    examples = tokenize_records(star1_records[:6], tiny)
    model = init_decoder(preset_config("tiny-qwen3", vocab_size=len(tiny)), seed=0)
    graphdef, params = nnx.split(model, nnx.Param)
    logps = jax.jit(lambda p, mb: policy_pair_logps(p, graphdef, mb, 64))  # one shape below: compiled once
    per_example, losses = {}, {}
    for packing in (False, True):
        batches = SftBatches(examples, 6, 1, [384], seed=3, packing=packing)
        batch, idx = batches.batch(0, 0)
        assert sorted(idx[idx >= 0]) == list(range(6))  # one batch holds every example
        mb = {k: v[0] for k, v in batch.items()}
        assert (mb["segment_ids"].max() > 1) == packing  # packed: several examples share a row
        logp_c, logp_r, n_c, n_r = logps(params, mb)
        assert float(np.abs(logp_r).max()) == 0.0 and float(n_r.max()) == 0.0
        per_example[packing] = {int(i): (float(a), float(n)) for i, a, n in zip(idx, logp_c, n_c) if i >= 0}
        zero = np.zeros_like(logp_c)
        losses[packing] = float(preference_loss(logp_c, logp_r, zero, zero, n_c, n_r, mb["pair_valid"],
                                                LossConfig(preset="sft"))[0])
    assert all(per_example[True][i][1] == per_example[False][i][1] == examples[i].loss[1:].sum() for i in range(6))
    np.testing.assert_allclose([per_example[True][i][0] for i in range(6)], [per_example[False][i][0] for i in range(6)],
                               rtol=1e-5)
    np.testing.assert_allclose(losses[True], losses[False], rtol=1e-5)


# ----------------------------------------------------------------------------- a run


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("sft") / "run"
    config = parse_config(["--config", TINY_CONFIG, f"--config.train.out={out}", "--config.train.max_steps=8",
                           "--config.train.save_every=4", "--config.data.buckets=(256,)", "--config.optim.learning_rate=3e-3",
                           "--config.data.max_length=150"],  # the longest of the 24 examples has 151 tokens
                          "train")
    assert run_sft(config) == 0
    return config, out, [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_the_loss_falls_and_the_run_writes_a_final_model(tiny_run):
    config, out, rows = tiny_run
    assert [r["step"] for r in rows] == list(range(1, 9))
    assert np.mean([r["loss"] for r in rows[-2:]]) < np.mean([r["loss"] for r in rows[:2]]) - 0.3
    assert all(r["update_applied"] == 1 and r["examples"] > 0 for r in rows)
    assert (out / "final").is_dir() and (out / "tokenizer" / "tokenizer.json").is_file()
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["4", "8"]
    (skipped,) = [json.loads(line) for line in (out / "skipped_examples.jsonl").read_text().splitlines()]
    assert skipped["tokens"] == 151 and skipped["at"].startswith(f"{config.data.dataset}:") and skipped["reason"] == "too_long"


def test_a_resumed_run_repeats_the_same_losses(tiny_run):
    config, out, rows = tiny_run
    shutil.rmtree(out / "checkpoints" / "8")
    shutil.rmtree(out / "final")
    assert run_sft(config) == 0  # resumes from step 4
    again = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][len(rows):]
    assert [r["step"] for r in again] == [5, 6, 7, 8]
    assert [r["loss"] for r in again] == [r["loss"] for r in rows[4:]]  # bitwise: same batches, same state
    with config.unlocked():
        config.data.seed = 1
    with pytest.raises(TrainingError, match="data.seed: was 0, now 1"):
        run_sft(config)


# ----------------------------------------------------------------------------- configs


def test_every_field_has_help_and_the_paper_configs_name_model_and_dataset():
    from ipo_jax.sft.config import base_config, field_help

    helped = set(field_help())
    flat = [f"{k}.{f}" if hasattr(v, "items") else k for k, v in base_config().items()
            for f in (v if hasattr(v, "items") else [None])]
    assert "data.dataset" in flat and not {n for n in flat if n not in helped and not n.startswith("optim.")}
    for dataset, column in (("star1", "prompt=question,response=response"), ("realsafe", "")):
        for run, model in (("", "DeepSeek-R1-Distill-Qwen-7B"), (":r1_distill_llama_8b", "DeepSeek-R1-Distill-Llama-8B"),
                           (":qwen3_8b", "Qwen3-8B")):
            config = parse_config(["--config", str(ROOT / "configs" / f"sft_paper_{dataset}.py{run}")], "train")
            assert config.model.init == f"hf:/models/{model}" and config.data.fields == column
            assert (config.model.param_dtype, config.model.dtype, config.data.packing) == ("float32", "bfloat16", True)
