"""The tiny offline R1-Distill-style tokenizer: determinism, special tokens, round trips, the
chat template with the chat-encoding helpers of `ipo_jax.data.tokenizer`, save / reload."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap

import pytest

from ipo_jax.data.tiny_tokenizer import (
    ASSISTANT,
    BOS,
    EOS,
    MIN_VOCAB_SIZE,
    PAD,
    SPECIAL_TOKENS,
    THINK_CLOSE,
    THINK_OPEN,
    USER,
    build_tiny_tokenizer,
    save_tiny_tokenizer,
)
from ipo_jax.rollout import split_completion  # the project's one reasoning splitter
from ipo_jax.data.tokenizer import (
    chat_eos_text,
    encode_chat,
    encode_prompt,
    encode_text,
    load_tokenizer,
    render_prompt,
)

CORPUS = [
    "Tom has 12 apples. He buys 7 more. How many apples does he have now? 12 + 7 = 19.",
    "A train travels 60 miles per hour for 3 hours, so it covers 60 * 3 = 180 miles.",
    "Sara reads 15 pages a day. After 4 days she has read 15 * 4 = 60 pages.",
    "The bakery sold 48 muffins in the morning and 36 in the afternoon: 48 + 36 = 84.",
    "If a box holds 9 pencils, then 5 boxes hold 9 * 5 = 45 pencils.",
    "We went for a walk in the park and then had tea with lemon.",
    "The weather today is sunny with a light breeze; tomorrow it may rain.",
    "Please water the plants on Monday, Wednesday and Friday.",
    "First compute the product, then add the remainder.\nThe answer is 89.",
    "Let me think step by step.\nHalf of 40 is 20, and 20 - 8 = 12.",
    "Okay, so the question asks for the total cost of 3 books at $4 each: 3 * 4 = 12 dollars.",
    "The recipe needs 2 cups of flour, 1 cup of sugar and 3 eggs.",
]
VOCAB = 512

MESSAGES = [
    {"role": "system", "content": "You are a careful math tutor."},
    {"role": "user", "content": "What is 12 * 7 + 5?"},
]
# R1-Distill layout: the generation prompt already ends in "<think>\n", so the completion
# starts inside the reasoning: reasoning, "</think>", blank line, answer.
PREFIX = "First 12 * 7 = 84.\n"  # ends in a newline: a clean token boundary before SUFFIX
SUFFIX = "Then 84 + 5 = 89.\n</think>\n\nThe answer is 89."
COMPLETION = PREFIX + SUFFIX

TEXTS = [
    "12 * 7 + 5 = 89.",
    "Hello, world! (3/4) -> 0.75; a=b? #1 @home ~ok [x] {y} 100%",
    "line one\nline two\n\n  indented\ttab\r\nend",
    "naïve café déjà vu — 日本語 🍎",
    "  leading and trailing spaces  ",
    "<think>\nreasoning\n</think>\n\nanswer",
]


@pytest.fixture(scope="module")
def tok():
    return build_tiny_tokenizer(CORPUS, vocab_size=VOCAB)


def _saved_bytes(tokenizer, directory) -> dict[str, bytes]:
    save_tiny_tokenizer(tokenizer, directory)
    return {name: (directory / name).read_bytes() for name in sorted(os.listdir(directory))}


def _template_ids(tok, conversation, **kw) -> list[int]:
    out = tok.apply_chat_template(conversation, tokenize=True, **kw)
    return list(out if isinstance(out, list) else out["input_ids"])


def test_deterministic_in_process(tmp_path):
    a = _saved_bytes(build_tiny_tokenizer(CORPUS, vocab_size=VOCAB), tmp_path / "a")
    b = _saved_bytes(build_tiny_tokenizer(list(CORPUS), vocab_size=VOCAB), tmp_path / "b")
    assert "tokenizer.json" in a
    assert a == b  # every saved file byte-identical, tokenizer.json included
    # Not vacuous: a different corpus or size gives a different tokenizer.json.
    c = _saved_bytes(build_tiny_tokenizer(CORPUS[:6], vocab_size=VOCAB), tmp_path / "c")
    d = _saved_bytes(build_tiny_tokenizer(CORPUS, vocab_size=VOCAB - 100), tmp_path / "d")
    assert c["tokenizer.json"] != a["tokenizer.json"] != d["tokenizer.json"]


def test_deterministic_across_processes_threads_and_corpus_order(tmp_path):
    """A fresh process (new hash seeds), single-threaded, with the corpus reversed, builds a
    byte-identical tokenizer.json -- what every host of a multi-host run relies on."""
    here = _saved_bytes(build_tiny_tokenizer(CORPUS, vocab_size=VOCAB), tmp_path / "here")
    script = textwrap.dedent(
        f"""
        import hashlib, json, sys, tempfile, pathlib
        from ipo_jax.data.tiny_tokenizer import build_tiny_tokenizer, save_tiny_tokenizer
        corpus = json.loads(sys.stdin.read())[::-1]
        out = pathlib.Path(tempfile.mkdtemp())
        save_tiny_tokenizer(build_tiny_tokenizer(corpus, vocab_size={VOCAB}), out)
        print(hashlib.sha256((out / "tokenizer.json").read_bytes()).hexdigest())
        """
    )
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", RAYON_NUM_THREADS="1", PYTHONHASHSEED="123")
    proc = subprocess.run(
        [sys.executable, "-c", script], input=json.dumps(CORPUS), capture_output=True, text=True, env=env, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == hashlib.sha256(here["tokenizer.json"]).hexdigest()


def test_special_tokens_are_single_ids_in_fixed_order(tok):
    for i, token in enumerate(SPECIAL_TOKENS):
        assert encode_text(tok, token) == [i], token
    assert tok.convert_tokens_to_ids(list(SPECIAL_TOKENS)) == list(range(len(SPECIAL_TOKENS)))
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == (BOS, EOS, PAD)
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (0, 1, 2)
    assert "\u2581" in BOS and "\u2581" in EOS
    # Matched inside running text too, never split.
    ids = encode_text(tok, f"a{THINK_OPEN}b{THINK_CLOSE}c{USER}d{ASSISTANT}")
    for token in (THINK_OPEN, THINK_CLOSE, USER, ASSISTANT):
        assert tok.convert_tokens_to_ids(token) in ids
    # Nothing is added on a plain encode: the template writes bos itself.
    assert tok("12 + 7")["input_ids"] == encode_text(tok, "12 + 7")


def test_skip_special_tokens_drops_only_bos_eos_pad(tok):
    """bos/eos/pad are special; the role and think markers are regular added tokens (as in
    R1-Distill), so skip_special_tokens keeps them in decoded text."""
    assert set(tok.all_special_tokens) == {BOS, EOS, PAD}
    text = f"{BOS}{USER}2+2?{ASSISTANT}{THINK_OPEN}\n2+2=4\n{THINK_CLOSE}\n\n4{EOS}{PAD}"
    ids = encode_text(tok, text)
    assert tok.decode(ids) == text
    assert tok.decode(ids, skip_special_tokens=True) == f"{USER}2+2?{ASSISTANT}{THINK_OPEN}\n2+2=4\n{THINK_CLOSE}\n\n4"


@pytest.mark.parametrize("text", TEXTS)
def test_round_trip(tok, text):
    ids = encode_text(tok, text)
    assert tok.decode(ids) == text
    assert all(0 <= i < len(tok) for i in ids)


def test_unseen_characters_encode_without_unknowns(tok):
    text = "Ωμέγα ∑ 𝔸 ✓"  # none of these characters is in the corpus
    ids = encode_text(tok, text)
    assert tok.decode(ids) == text
    assert tok.unk_token is None


def test_vocab_size_bound():
    tok = build_tiny_tokenizer(CORPUS, vocab_size=VOCAB)
    assert len(tok) <= VOCAB
    assert max(tok.get_vocab().values()) == len(tok) - 1
    small = build_tiny_tokenizer(CORPUS, vocab_size=300)
    assert len(small) <= 300
    # A corpus that runs out of pairs gives fewer tokens than asked for (never more).
    tiny = build_tiny_tokenizer(["ab ab"], vocab_size=VOCAB)
    assert MIN_VOCAB_SIZE <= len(tiny) < VOCAB
    assert tiny.decode(encode_text(tiny, "anything at all: 42!")) == "anything at all: 42!"
    with pytest.raises(ValueError, match="too small"):
        build_tiny_tokenizer(CORPUS, vocab_size=MIN_VOCAB_SIZE - 1)
    with pytest.raises(TypeError):
        build_tiny_tokenizer("a single string", vocab_size=VOCAB)


def test_template_rendering(tok):
    prompt = render_prompt(tok, MESSAGES)
    assert prompt == f"{BOS}You are a careful math tutor.{USER}What is 12 * 7 + 5?{ASSISTANT}{THINK_OPEN}\n"
    # No system message; multi-turn with content written verbatim (whitespace included).
    turns = [
        {"role": "user", "content": " 2 + 2? "},
        {"role": "assistant", "content": "<think>\nadd\n</think>\n\n4\n"},
        {"role": "user", "content": "And 3 + 3?"},
    ]
    assert render_prompt(tok, turns) == (
        f"{BOS}{USER} 2 + 2? {ASSISTANT}<think>\nadd\n</think>\n\n4\n{EOS}{USER}And 3 + 3?{ASSISTANT}{THINK_OPEN}\n"
    )
    no_gen = tok.apply_chat_template(turns[:1], tokenize=False)
    assert no_gen == f"{BOS}{USER} 2 + 2? "


def test_encode_prompt_ends_with_generation_prompt(tok):
    ids = encode_prompt(tok, MESSAGES)
    newline = encode_text(tok, "\n")
    assert len(newline) == 1
    expected_tail = [tok.convert_tokens_to_ids(ASSISTANT), tok.convert_tokens_to_ids(THINK_OPEN), newline[0]]
    assert ids[-3:] == expected_tail
    assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1
    assert ids == _template_ids(tok, MESSAGES, add_generation_prompt=True)


def test_encode_chat_matches_full_conversation(tok):
    assert chat_eos_text(tok) == EOS
    prompt_ids, completion_ids = encode_chat(tok, MESSAGES, [PREFIX, SUFFIX])
    assert completion_ids[-1] == tok.eos_token_id
    assert completion_ids[: len(encode_text(tok, PREFIX))] == encode_text(tok, PREFIX)
    assert encode_chat(tok, MESSAGES, COMPLETION) == (prompt_ids, completion_ids)

    # The generation prompt holds "<think>\n", so the assistant turn of the full conversation
    # is "<think>\n" + completion: then the template's rendering is prompt + completion + eos.
    full = [*MESSAGES, {"role": "assistant", "content": THINK_OPEN + "\n" + COMPLETION}]
    rendered = tok.apply_chat_template(full, tokenize=False)
    assert rendered == render_prompt(tok, MESSAGES) + COMPLETION + EOS
    assert prompt_ids + completion_ids == encode_text(tok, rendered) == _template_ids(tok, full)
    # With the bare completion as content, "<think>\n" is missing and they differ.
    bare = tok.apply_chat_template([*MESSAGES, {"role": "assistant", "content": COMPLETION}], tokenize=False)
    assert bare != rendered


def test_split_reasoning_on_decoded_completion(tok):
    _, completion_ids = encode_chat(tok, MESSAGES, [PREFIX, SUFFIX])
    text = tok.decode(completion_ids, skip_special_tokens=True)
    assert text == COMPLETION  # eos dropped, </think> kept
    assert tok.decode(completion_ids) == COMPLETION + EOS
    assert split_completion(text) == ("First 12 * 7 = 84.\nThen 84 + 5 = 89.", "The answer is 89.", True)
    # A truncated completion (no eos, no </think>): everything is reasoning.
    _, cut = encode_chat(tok, MESSAGES, PREFIX, eos_text="")
    assert cut == encode_text(tok, PREFIX)
    assert split_completion(tok.decode(cut, skip_special_tokens=True)) == ("First 12 * 7 = 84.", "", False)


def test_save_and_load_round_trip(tok, tmp_path):
    out = save_tiny_tokenizer(tok, tmp_path / "tiny")
    assert (out / "tokenizer.json").is_file()
    loaded = load_tokenizer(out)
    assert len(loaded) == len(tok)
    assert loaded.get_vocab() == tok.get_vocab()
    assert loaded.chat_template == tok.chat_template
    assert (loaded.bos_token_id, loaded.eos_token_id, loaded.pad_token_id) == (0, 1, 2)
    assert set(loaded.all_special_tokens) == {BOS, EOS, PAD}
    for text in [*TEXTS, *CORPUS]:
        assert encode_text(loaded, text) == encode_text(tok, text)
    assert encode_prompt(loaded, MESSAGES) == encode_prompt(tok, MESSAGES)
    assert encode_chat(loaded, MESSAGES, [PREFIX, SUFFIX]) == encode_chat(tok, MESSAGES, [PREFIX, SUFFIX])
    ids = encode_text(loaded, f"{THINK_OPEN}x{THINK_CLOSE}{EOS}")
    assert loaded.decode(ids, skip_special_tokens=True) == f"{THINK_OPEN}x{THINK_CLOSE}"
    # Saving the reloaded tokenizer writes the same tokenizer.json.
    again = save_tiny_tokenizer(loaded, tmp_path / "again")
    assert (again / "tokenizer.json").read_bytes() == (out / "tokenizer.json").read_bytes()
