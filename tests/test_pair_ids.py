"""Pair records that carry token ids (prefix_ids / chosen_ids / rejected_ids, finish_reasons) are
trained on exactly those ids, with the real Qwen3 tokenizer and the tiny one; bad ids and cut-off
sides are errors naming file, line, id and field (ipo_jax/data/pairs.py)."""

import dataclasses
import json

import ml_collections
import numpy as np
import pytest

from ipo_jax.data.pairs import PairFileError, prompt_messages, read_pair_records, tokenize_pair
from ipo_jax.data.tiny_tokenizer import build_tiny_tokenizer
from ipo_jax.data.tokenizer import chat_eos_text, encode_prompt, encode_text, load_tokenizer, packaged_qwen3_tokenizer_dir, stop_token_ids

PROMPT = "What is in household bleach?"
PREFIX = "Okay, this is about chemistry. "  # the prefix ends in a space: h is the cue's first non-space character
REJECTED = "Let me explain the mixture. [harmful details withheld]\n</think>\n\nHere it is."
CHOSEN = "Wait, I should not help with this.\n</think>\n\nI can't help with that."


@pytest.fixture(scope="module")
def qwen3():
    return load_tokenizer(packaged_qwen3_tokenizer_dir())


@pytest.fixture(scope="module")
def tiny():
    return build_tiny_tokenizer([PROMPT, PREFIX, REJECTED, CHOSEN] * 4, vocab_size=400)


def _sampled_record(tokenizer, *, end_chosen=True, end_rejected=True, reasons=("stop", "stop")):
    """A record as build-pairs writes it: the original trajectory tokenised whole (as sampled), split
    at the token holding the cue's first character (its leading space included)."""
    whole = encode_text(tokenizer, PREFIX + REJECTED)
    cut = next(k for k in range(len(whole)) if len(tokenizer.decode(whole[: k + 1])) > len(PREFIX.rstrip()))
    stop = stop_token_ids(tokenizer)[0]
    prefix_ids, rejected_ids = whole[:cut], whole[cut:] + ([stop] if end_rejected else [])
    chosen_ids = encode_text(tokenizer, " " + CHOSEN) + ([stop] if end_chosen else [])
    return {
        "id": "p0", "prompt": PROMPT, "prefix": PREFIX, "chosen": CHOSEN, "rejected": REJECTED,
        "prefix_ids": prefix_ids, "chosen_ids": chosen_ids, "rejected_ids": rejected_ids,
        "finish_reasons": {"chosen": reasons[0], "rejected": reasons[1]}, "_line": 1, "_file": "pairs.jsonl",
    }


@pytest.mark.parametrize("name", ["qwen3", "tiny"])
def test_a_record_with_ids_trains_on_exactly_those_ids(name, request):
    tokenizer = request.getfixturevalue(name)
    record = _sampled_record(tokenizer)
    pair = tokenize_pair(tokenizer, record)
    np.testing.assert_array_equal(pair.prefix, record["prefix_ids"])
    np.testing.assert_array_equal(pair.chosen, record["chosen_ids"])  # ends with the stop token: nothing appended
    np.testing.assert_array_equal(pair.rejected, record["rejected_ids"])
    # the completion as sampled: prefix + rejected is the whole trajectory's tokenisation (+ its stop token)
    np.testing.assert_array_equal(np.concatenate([pair.prefix, pair.rejected[:-1]]), encode_text(tokenizer, PREFIX + REJECTED))
    # the prompt is the chat template's, as the sampler (rollout.Policy) encodes prompt_messages(record)
    np.testing.assert_array_equal(pair.prompt, encode_prompt(tokenizer, prompt_messages(record)))
    text_pair = tokenize_pair(tokenizer, {k: v for k, v in record.items() if not k.endswith("_ids")})
    np.testing.assert_array_equal(text_pair.prompt, pair.prompt)


def test_qwen3_ids_differ_from_the_text_path_exactly_at_the_cue(qwen3):
    record = _sampled_record(qwen3)
    ids_pair = tokenize_pair(qwen3, record)
    text_pair = tokenize_pair(qwen3, {k: v for k, v in record.items() if not k.endswith("_ids")})
    decode = lambda ids: [qwen3.decode([i]) for i in ids]  # noqa: E731
    assert decode(text_pair.prefix)[-1] == " " and decode(text_pair.rejected)[0] == "Let"  # a lone space, then 'Let'
    assert decode(ids_pair.prefix)[-1] == "." and decode(ids_pair.rejected)[0] == " Let"  # as sampled
    assert not np.array_equal(np.concatenate([text_pair.prefix, text_pair.rejected]), np.concatenate([ids_pair.prefix, ids_pair.rejected]))


@pytest.mark.parametrize("name", ["qwen3", "tiny"])
def test_end_of_turn_is_appended_only_when_the_ids_lack_it(name, request):
    tokenizer = request.getfixturevalue(name)
    eos = encode_text(tokenizer, chat_eos_text(tokenizer))
    record = _sampled_record(tokenizer, end_chosen=False, end_rejected=True, reasons=("stop", "eos"))
    pair = tokenize_pair(tokenizer, record)
    np.testing.assert_array_equal(pair.chosen, record["chosen_ids"] + eos)  # as the text path ends a turn
    np.testing.assert_array_equal(pair.rejected, record["rejected_ids"])
    text_pair = tokenize_pair(tokenizer, {k: v for k, v in record.items() if not k.endswith("_ids")})
    np.testing.assert_array_equal(text_pair.chosen[-len(eos):], eos)


def _write(tmp_path, records):
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps({k: v for k, v in r.items() if not k.startswith("_")}) + "\n" for r in records))
    return path


def test_read_pair_records_keeps_valid_ids(tmp_path, tiny):
    record = _sampled_record(tiny)
    [read] = read_pair_records(_write(tmp_path, [record]))
    assert read["chosen_ids"] == record["chosen_ids"] and read["_file"].endswith("pairs.jsonl")
    np.testing.assert_array_equal(tokenize_pair(tiny, read).prefix, record["prefix_ids"])


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(rejected_ids=None), r"pairs.jsonl:1 \(id 'p0'\): has prefix_ids, chosen_ids but not rejected_ids"),
        (dict(chosen_ids="1 2 3"), r"pairs.jsonl:1 \(id 'p0'\): field 'chosen_ids' should be a list of token ids, got str"),
        (dict(prefix_ids=[1, -4]), r"field 'prefix_ids' item 1 is token id -4, outside 0\.\.2147483647 \(token ids are int32\)"),
        (dict(rejected_ids=[1, 2.5]), r"field 'rejected_ids' item 1 should be an integer token id, got 2.5"),
        (dict(chosen_ids=[True]), r"field 'chosen_ids' item 0 should be an integer token id, got True"),
        (dict(chosen_ids=[]), r"field 'chosen_ids' is empty"),
        (dict(finish_reasons={"chosen": "length", "rejected": "stop"}), r"pairs.jsonl:1 \(id 'p0'\): field 'finish_reasons.chosen' is 'length'"),
        (dict(finish_reasons={"chosen": "stop", "rejected": "length"}), r"field 'finish_reasons.rejected' is 'length': the rejected side was cut off"),
        (dict(finish_reasons={"chosen": "done", "rejected": "stop"}), r"field 'finish_reasons.chosen' is 'done'; expected one of eos, stop, length"),
        (dict(finish_reasons="stop"), r"field 'finish_reasons' should be an object"),
    ],
)
def test_bad_ids_and_cut_off_sides_are_errors_naming_file_line_id_and_field(tmp_path, tiny, change, message):
    record = {**_sampled_record(tiny), **change}
    record = {k: v for k, v in record.items() if v is not None}
    with pytest.raises(PairFileError, match=message):
        read_pair_records(_write(tmp_path, [record]))


def test_a_text_only_record_cut_off_at_the_token_limit_is_refused_too(tmp_path):
    record = {"id": "t", "prompt": PROMPT, "prefix": PREFIX, "chosen": CHOSEN, "rejected": REJECTED,
              "finish_reasons": {"chosen": "stop", "rejected": "length"}}
    with pytest.raises(PairFileError, match=r"pairs.jsonl:1 \(id 't'\): field 'finish_reasons.rejected' is 'length'"):
        read_pair_records(_write(tmp_path, [record]))


def test_an_id_outside_the_tokenizer_names_file_line_id_and_field(tiny):
    record = _sampled_record(tiny)
    record["rejected_ids"] = record["rejected_ids"][:-1] + [len(tiny)]
    with pytest.raises(PairFileError, match=rf"pairs.jsonl:1 \(id 'p0'\): field 'rejected_ids' holds token id {len(tiny)}, outside the tokenizer's {len(tiny)} ids"):
        tokenize_pair(tiny, record)


def test_the_loop_tokenises_mixed_files_keeping_ids_and_refuses_a_tiny_tokenizer_for_ids(tmp_path, qwen3):
    from ipo_jax.train.data import build_tokenizer, tokenize_records
    from ipo_jax.train.errors import TrainingError

    with_ids = _sampled_record(qwen3)
    text_only = {**{k: v for k, v in with_ids.items() if not k.endswith("_ids") and k != "finish_reasons"}, "id": "p1", "_line": 2}
    pairs = tokenize_records([with_ids, text_only], qwen3)  # as training does
    for pair, record in zip(pairs, [with_ids, text_only]):
        expected = tokenize_pair(qwen3, record)
        for field in ("prompt", "prefix", "chosen", "rejected"):
            np.testing.assert_array_equal(getattr(pair, field), getattr(expected, field))
    np.testing.assert_array_equal(pairs[0].prefix, with_ids["prefix_ids"])
    config = ml_collections.ConfigDict({"tokenizer": "tiny", "tiny_tokenizer_vocab": 300, "model": {"init": ""}})
    with pytest.raises(TrainingError, match=r"pairs.jsonl:1 \(id 'p0'\) carries token ids .* tokenizer='tiny'"):
        build_tokenizer(config, [text_only, with_ids])


def test_the_sampler_is_prompted_with_the_ids_training_uses(qwen3):
    """rollout.Policy (what build-pairs samples with) encodes a prompt record's messages exactly as
    training encodes the pair record built from it (prompt and system copied)."""
    from ipo_jax.rollout import LocalPolicy

    seen = []

    class Sampler:
        def generate(self, prompts, sampling):
            seen.extend(prompts)
            return [type("G", (), {"tokens": [1], "completion_ids": [1], "finish_reason": "stop"})() for _ in prompts]

    @dataclasses.dataclass(frozen=True)
    class Sampling:
        seed: int = 0

    prompt_record = {"id": "q", "prompt": PROMPT, "system": "You are careful."}
    LocalPolicy(Sampler(), qwen3, Sampling(), "policy").complete([(prompt_messages(prompt_record), "")], seed=1)
    pair_record = {**_sampled_record(qwen3), "system": prompt_record["system"]}
    np.testing.assert_array_equal(tokenize_pair(qwen3, pair_record).prompt, seen[0])
