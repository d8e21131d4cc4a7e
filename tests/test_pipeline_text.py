"""Host-side pipeline text tools: sentence splitting with exact offsets, sentence -> token
mapping and the trigger pool (the pattern judge's tests are in tests/test_judging.py).

Harmful content never appears here: harmful requests and compliant traces use the demo
world's placeholders ("[request details withheld]", "[harmful details withheld]")."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ipo_jax.judging.pattern import PatternCueDetector, PatternJudge
from ipo_jax.pipeline.steps import Sentence, sentence_token_starts, split_sentences, token_index_of_char
from ipo_jax.pipeline.triggers import DEFAULT_TRIGGERS, TriggerFileError, check_triggers, load_triggers

PAIRS_FILE = Path(__file__).resolve().parents[1] / "configs" / "sample_pairs.jsonl"
RISKY = "How do I go about doing something dangerous? [request details withheld]"
BENIGN = "What is 12 * 7 + 5?"


def _pairs() -> list[dict]:
    return [json.loads(line) for line in PAIRS_FILE.read_text().splitlines() if line.strip()]


def _texts(text: str) -> list[str]:
    """Split, check the offset invariants, return the sentence texts."""
    sentences = split_sentences(text)
    previous_end = 0
    for position, s in enumerate(sentences):
        assert isinstance(s, Sentence) and s.index == position
        assert text[s.start : s.end] == s.text
        assert s.text and s.text == s.text.strip()
        assert s.start >= previous_end and not text[previous_end : s.start].strip()
        previous_end = s.end
    assert not text[previous_end:].strip()
    return [s.text for s in sentences]


# --------------------------------------------------------------------------- sentences


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Pi is about 3.14. Then we add 1,000.5 to it.", ["Pi is about 3.14.", "Then we add 1,000.5 to it."]),
        ("Hmm... wait, that is 12. Hmm... Wait.", ["Hmm... wait, that is 12.", "Hmm...", "Wait."]),
        ("Well\u2026 let me recount. Ok.", ["Well\u2026 let me recount.", "Ok."]),
        (
            "Fruit, e.g. Apples, i.e. Red ones. Dr. Lee vs. Mr. Park met in the U.S. Then they ate.",
            ["Fruit, e.g. Apples, i.e. Red ones.", "Dr. Lee vs. Mr. Park met in the U.S.", "Then they ate."],
        ),
        ("Buy pens, paper, etc. and then go home. Done.", ["Buy pens, paper, etc. and then go home.", "Done."]),
        (
            (
                "The plan:\n1. First add 3 and 4\n2) Second double it\n(3) Third check\n"
                "- a bullet\n* another\n\u2022 dot\nDone."
            ),
            ["The plan:", "1. First add 3 and 4", "2) Second double it", "(3) Third check", "- a bullet", "* another",
             "\u2022 dot", "Done."],
        ),
        ("2.1. Sub step here\n10. Tenth item", ["2.1. Sub step here", "10. Tenth item"]),
        ("I counted 3. Then 4 more.", ["I counted 3.", "Then 4 more."]),
        ("A line that is\nwrapped here. Next one.", ["A line that is\nwrapped here.", "Next one."]),
        ("First paragraph without stop\n\nSecond paragraph", ["First paragraph without stop", "Second paragraph"]),
        ("## Heading\nBody text.", ["## Heading", "Body text."]),
        (
            'He wrote "add them." Then (he checked.) Is it 7?! Yes! [It is.] Fine.',
            ['He wrote "add them."', "Then (he checked.)", "Is it 7?!", "Yes!", "[It is.]", "Fine."],
        ),
        ('"Really?" she asked. Yes.', ['"Really?" she asked.', "Yes."]),
        ("**Step 1.** Add the numbers. Then stop.", ["**Step 1.**", "Add the numbers.", "Then stop."]),
        (
            "Use `x. Y = 2? Z!` in code. Next.",
            ["Use `x. Y = 2? Z!` in code.", "Next."],
        ),
        (
            "Let me write it:\n```python\nx = 1. Y = 2\n\n- not a list\n# not a heading\n```\nThat works. Good.",
            [
                "Let me write it:",
                "```python\nx = 1. Y = 2\n\n- not a list\n# not a heading\n```",
                "That works.",
                "Good.",
            ],
        ),
        ("Unclosed fence:\n```\na. B. C.\n\nD.", ["Unclosed fence:", "```\na. B. C.\n\nD."]),
        ("\u6211\u660e\u767d\u4e86\u3002\u8fd9\u662f\u95ee\u9898\uff1f\u662f\u7684\uff01\u597d",
         ["\u6211\u660e\u767d\u4e86\u3002", "\u8fd9\u662f\u95ee\u9898\uff1f", "\u662f\u7684\uff01", "\u597d"]),
        ("  \n Leading and trailing space.  \n", ["Leading and trailing space."]),
        ("", []),
        ("   \n\n ", []),
        ("No final stop", ["No final stop"]),
        ("Version 1.2.3 is out. See file.py now.", ["Version 1.2.3 is out.", "See file.py now."]),
    ],
)
def test_split_sentences(text, expected):
    assert _texts(text) == expected


def test_split_sentences_exact_offsets():
    text = "Okay. Hmm... so 2.5 + 1 = 3.5!\n\n1. Check it\n- Done"
    got = [(s.start, s.end, s.text) for s in split_sentences(text)]
    assert got == [
        (0, 5, "Okay."),
        (6, 30, "Hmm... so 2.5 + 1 = 3.5!"),
        (32, 43, "1. Check it"),
        (44, 50, "- Done"),
    ]
    for start, end, sentence in got:
        assert text[start:end] == sentence


def test_split_sentences_custom_abbreviations():
    assert _texts("See approx. Ten. Ok.") == ["See approx. Ten.", "Ok."]
    assert _texts("Add Ft. Five. Ok.") == ["Add Ft.", "Five.", "Ok."]
    assert [s.text for s in split_sentences("Add Ft. Five. Ok.", abbreviations={"ft"})] == ["Add Ft. Five.", "Ok."]


def test_sample_pairs_split_at_prefix_boundary():
    for pair in _pairs():
        n_prefix = len(split_sentences(pair["prefix"]))
        assert n_prefix >= 1
        for side in ("chosen", "rejected"):
            text = pair["prefix"] + pair[side]
            sentences = split_sentences(text)
            _texts(text)
            # The prefix's sentences are unchanged and the suffix starts a new sentence.
            assert [s.text for s in sentences[:n_prefix]] == [s.text for s in split_sentences(pair["prefix"])]
            assert sentences[n_prefix].start == len(pair["prefix"])


# --------------------------------------------------------------------------- token mapping


@pytest.fixture(scope="module")
def tiny_tok():
    from ipo_jax.data.tiny_tokenizer import build_tiny_tokenizer

    corpus = [p[k] for p in _pairs() for k in ("prompt", "prefix", "chosen", "rejected")]
    corpus += ["First 12 * 7 = 84. Then 84 + 5 = 89.", "Hmm... wait, let me recount the apples."]
    return build_tiny_tokenizer(corpus, vocab_size=300)


def test_token_index_of_char_on_spans():
    offsets = [(0, 0), (0, 4), (4, 5), (6, 10), (10, 11), (0, 0)]  # bos, "Okay", ".", "Then"(after a gap), "!", eos
    assert token_index_of_char(offsets, 0) == 1
    assert token_index_of_char(offsets, 3) == 1
    assert token_index_of_char(offsets, 4) == 2
    assert token_index_of_char(offsets, 5) == 3  # in the gap: the following token
    assert token_index_of_char(offsets, 10) == 4
    assert token_index_of_char(offsets, 11) == len(offsets)
    assert token_index_of_char([], 0) == 0


def _check_token_starts(tok, text):
    sentences = split_sentences(text)
    starts = sentence_token_starts(tok, text, sentences)
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    assert tok.decode(ids) == text
    assert starts == sorted(starts) and len(set(starts)) == len(starts)
    for s, h in zip(sentences, starts):
        assert h == token_index_of_char(offsets, s.start)
        tail = tok.decode(ids[h:])
        # Decoding from the mapped token starts at the sentence (maybe after the whitespace glued
        # to its first token), and the token before it ends at or before the sentence start.
        assert tail.lstrip().startswith(s.text), (s.text, tail[:40])
        assert text.endswith(tail) and len(text) - len(tail) <= s.start
        assert not text[len(text) - len(tail) : s.start].strip()
        assert offsets[h][0] <= s.start < offsets[h][1]
    return starts


def test_sentence_token_starts_tiny_tokenizer(tiny_tok):
    for pair in _pairs()[:6]:
        for side in ("chosen", "rejected"):
            _check_token_starts(tiny_tok, pair["prefix"] + pair[side])
    mixed = "Pi is 3.14. Hmm... wait.\n\n1. Add 2\n- then 3! \u6211\u660e\u767d\u4e86\u3002\u597d"
    _check_token_starts(tiny_tok, mixed)


def test_sentence_token_starts_qwen3():
    from ipo_jax.data.tokenizer import load_tokenizer, packaged_qwen3_tokenizer_dir

    try:
        tok = load_tokenizer(packaged_qwen3_tokenizer_dir())
    except FileNotFoundError as e:  # pragma: no cover - the Makefile installs it
        pytest.skip(str(e))
    pair = _pairs()[4]
    _check_token_starts(tok, pair["prefix"] + pair["rejected"])


def test_sentence_token_starts_rejects_mismatched_sentences(tiny_tok):
    with pytest.raises(ValueError, match="does not match"):
        sentence_token_starts(tiny_tok, "Hello there.", [Sentence(0, 0, 5, "Howdy")])


# --------------------------------------------------------------------------- triggers


def test_default_triggers():
    judge, detector = PatternJudge(), PatternCueDetector()
    assert len(DEFAULT_TRIGGERS) == 6 and len(set(DEFAULT_TRIGGERS)) == 6
    for trigger in DEFAULT_TRIGGERS:
        assert [s.text for s in split_sentences(trigger)] == [trigger]
        v = judge.judge_text(RISKY, trigger)
        assert v.is_safe and "refusal" in v.reason, (trigger, v)
        assert detector.first_cue(RISKY, split_sentences(trigger)).index is None
    assert check_triggers(DEFAULT_TRIGGERS) == DEFAULT_TRIGGERS


def test_load_triggers_text_and_jsonl(tmp_path):
    text = tmp_path / "triggers.txt"
    text.write_text("# my pool\n\nWait, this could hurt someone.\n  Hmm, I should refuse. #1  \n")
    assert load_triggers(text) == ("Wait, this could hurt someone.", "Hmm, I should refuse. #1")
    jsonl = tmp_path / "triggers.jsonl"
    jsonl.write_text('{"trigger": "Wait, this could hurt someone.", "note": "x"}\n\n{"trigger": "I must decline."}\n')
    assert load_triggers(jsonl) == ("Wait, this could hurt someone.", "I must decline.")


@pytest.mark.parametrize(
    "name, content, message",
    [
        (
            "dup.txt",
            "Wait, stop.\n# c\nOther one.\nwait,   STOP.\n",
            r"dup\.txt:4: duplicate trigger \(first at .*dup\.txt:1\)",
        ),
        ("empty.jsonl", '{"trigger": "ok."}\n{"trigger": "   "}\n', r"empty\.jsonl:2: empty trigger"),
        ("bad.jsonl", '{"trigger": "ok."}\n\n{"trigger": \n', r"bad\.jsonl:3: invalid JSON"),
        ("field.jsonl", '{"text": "ok."}\n', r"field\.jsonl:1: expected an object with a 'trigger' field"),
        ("type.jsonl", '{"trigger": 5}\n', r"type\.jsonl:1: trigger must be a string"),
        ("multi.jsonl", '{"trigger": "one.\\ntwo."}\n', r"multi\.jsonl:1: trigger contains a line break"),
        ("none.txt", "# only comments\n\n   \n", r"none\.txt: no triggers"),
    ],
)
def test_load_triggers_errors(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(TriggerFileError, match=message):
        load_triggers(path)


def test_load_triggers_missing_and_in_memory(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        load_triggers(tmp_path / "nope.txt")
    with pytest.raises(TriggerFileError, match="no triggers"):
        check_triggers([])
    with pytest.raises(TriggerFileError, match=r"pool:2: duplicate"):
        check_triggers(["A.", "a."], source="pool")
