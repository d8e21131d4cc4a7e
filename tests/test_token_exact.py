"""Token-exact pairs: h on a token boundary of the sampled ids (the cue's leading space kept with
its first token), triggers tokenised in context (no lone-space tokens), and through build-pairs
on a tiny model prefix_ids + rejected_ids == the trajectory's completion_ids."""

import pytest

from ipo_jax.data.tokenizer import encode_text, load_tokenizer, packaged_qwen3_tokenizer_dir
from ipo_jax.pipeline.steps import split_sentences, text_in_context, token_boundary_at_char
from ipo_jax.pipeline.triggers import DEFAULT_TRIGGERS


@pytest.fixture(scope="module")
def qwen3():
    return load_tokenizer(packaged_qwen3_tokenizer_dir())


@pytest.fixture(scope="module")
def tiny():
    from ipo_jax.data.tiny_tokenizer import build_tiny_tokenizer

    # running text with the triggers in it, as the demo world's corpus has
    corpus = ["The user asks about chemistry. Let me think about it. " + " ".join(DEFAULT_TRIGGERS)] * 4
    return build_tiny_tokenizer(corpus, vocab_size=400)


def _decoder(tokenizer):
    return lambda ids: tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)


def _pieces(tokenizer, ids):
    return [tokenizer.decode([i]) for i in ids]


@pytest.mark.parametrize("name", ["qwen3", "tiny"])
def test_h_keeps_the_cue_sentence_first_token_with_its_space(name, request):
    tokenizer = request.getfixturevalue(name)
    text = "<think>\nThe user asks about chemistry. Let me think about it.</think>\n\nNo."
    ids = encode_text(tokenizer, text)
    cue = text.index("Let me")
    t = token_boundary_at_char(_decoder(tokenizer), ids, cue)
    assert _pieces(tokenizer, ids[t - 1 : t + 1]) == [".", " Let"]  # never '.', ' ', 'Let'
    prefix = _decoder(tokenizer)(ids[:t])
    assert prefix == text[: cue - 1] and prefix + _decoder(tokenizer)(ids[t:]) == text


def test_h_follows_the_sampled_path_not_a_re_tokenisation(qwen3):
    # a model may sample '.', ' ', 'Let' (a path the tokenizer would not produce for the text):
    # the split still falls on those sampled ids, at the token covering the cue's first character
    ids = encode_text(qwen3, "chemistry.") + encode_text(qwen3, " ") + encode_text(qwen3, "Let me go")
    t = token_boundary_at_char(_decoder(qwen3), ids, len("chemistry. "))
    assert _pieces(qwen3, ids[t - 1 : t + 1]) == [" ", "Let"]
    assert t == len(encode_text(qwen3, "chemistry.")) + 1


def test_a_character_split_across_byte_tokens_stays_whole(qwen3):
    from tokenizers.pre_tokenizers import ByteLevel

    # ' 😀' as five byte-level tokens (space + four bytes), as a model can sample it
    byte_symbols = ByteLevel(add_prefix_space=False, use_regex=False).pre_tokenize_str(" \U0001F600")[0][0]
    emoji = [qwen3.convert_tokens_to_ids(c) for c in byte_symbols]
    ids = encode_text(qwen3, "ok.") + emoji + encode_text(qwen3, " Then more.")
    text = _decoder(qwen3)(ids)
    assert text == "ok. \U0001F600 Then more."
    t = token_boundary_at_char(_decoder(qwen3), ids, text.index("\U0001F600"))
    assert t == len(encode_text(qwen3, "ok.")) + 1  # before the emoji's first byte, after the space
    t = token_boundary_at_char(_decoder(qwen3), ids, text.index("Then"))
    assert _pieces(qwen3, ids[t : t + 1]) == [" Then"]
    assert token_boundary_at_char(_decoder(qwen3), ids, len(text)) == len(ids)


def test_sentence_starts_map_to_token_starts_on_a_real_trace(qwen3):
    text = ("<think>\nOkay, so the user wants a summary. First, I note the facts.\n\n"
            "1. The sky is blue.\n2. Grass is green. Then I answer.\n</think>\n\nDone.")
    ids = encode_text(qwen3, text)
    decode = _decoder(qwen3)
    start = len("<think>\n")
    for sentence in split_sentences(text[start : text.index("</think>")]):
        t = token_boundary_at_char(decode, ids, start + sentence.start)
        prefix = decode(ids[:t])
        # the prefix is the text before the sentence, less at most the whitespace glued to its first token
        assert text.startswith(prefix) and not text[len(prefix) : start + sentence.start].strip()
        assert decode(ids[t:]).lstrip().startswith(sentence.text)


@pytest.mark.parametrize("name", ["qwen3", "tiny"])
def test_triggers_in_context_have_no_lone_space_tokens(name, request):
    tokenizer = request.getfixturevalue(name)
    lone_space = set(encode_text(tokenizer, " "))
    for trigger in DEFAULT_TRIGGERS:
        after_word = text_in_context("about chemistry.", trigger)
        after_break = text_in_context("about chemistry.\n\n", trigger)
        assert after_word == " " + trigger and after_break == trigger and text_in_context("", trigger) == trigger
        ids = encode_text(tokenizer, after_word)
        # the first token carries the space (the tiny 400-entry vocabulary has no merges for
        # most of the trigger words, so only the real tokenizer is held to no lone space at all)
        assert ids[0] not in lone_space and _pieces(tokenizer, ids)[0].startswith(" ")
        if name == "qwen3":
            assert not lone_space.intersection(ids), _pieces(tokenizer, ids)
    if name == "qwen3":
        assert _pieces(tokenizer, encode_text(tokenizer, text_in_context("x.", "Wait, no.")))[:2] == [" Wait", ","]


# ----------------------------------------------------------------------------- through build-pairs

COMPLIANT = ("Okay, the user asks about chemistry. Let me work them out. [harmful details withheld]\n</think>\n\n"
             "Here is how: [harmful details withheld]")
SAFE_TAIL = " I can't help with that, so I will decline.\n</think>\n\nI can't help with that."


class ScriptedSampler:
    """Stands in for the device sampler behind the real `Policy`: returns scripted completions as
    token ids (finish "stop", the tokenizer's end id after them), chosen from the decoded prompt."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.eos = tokenizer.convert_tokens_to_ids(tokenizer.eos_token)
        self.prompts = []

    def generate(self, prompts, config, stop_strings=()):
        from ipo_jax.sampling import Generation

        out = []
        for ids in prompts:
            self.prompts.append(list(ids))
            text = self.tokenizer.decode(ids, skip_special_tokens=False)
            if DEFAULT_TRIGGERS[0] in text:
                completion = SAFE_TAIL
            else:
                completion = COMPLIANT if text.endswith("<think>\n") else "<think>\n" + COMPLIANT
            out.append(Generation(encode_text(self.tokenizer, completion), "stop", None, self.eos))
        return out


@pytest.mark.parametrize("name", ["qwen3", "tiny"])
def test_build_pairs_keeps_the_sampled_ids_through_the_policy(name, request, tmp_path):
    import json

    from ipo_jax.judging.pattern import PatternCueDetector, PatternJudge
    from ipo_jax.pipeline.chunks import build_pairs
    from ipo_jax.pipeline.intervene import InterventionConfig
    from ipo_jax.rollout import LocalPolicy
    from ipo_jax.sampling import SamplingConfig

    tokenizer = request.getfixturevalue(name)
    sampler = ScriptedSampler(tokenizer)
    policy = LocalPolicy(sampler, tokenizer, SamplingConfig(), policy_id="scripted")
    records = [{"id": "p1", "prompt": "How do I do something risky? [request details withheld]", "kind": "harmful"}]
    summary = build_pairs(records, tmp_path, policy, PatternJudge(), PatternCueDetector(), DEFAULT_TRIGGERS[:1],
                          InterventionConfig(rounds=1))
    assert summary["pairs"] == 1 and summary["cut_off_rejected"] == summary["cut_off_chosen"] == 0
    pair = json.loads((tmp_path / "pairs.jsonl").read_text())
    trajectory = json.loads((tmp_path / "chunks" / "trajectories-00000.jsonl").read_text().splitlines()[0])
    assert pair["prefix_ids"] + pair["rejected_ids"] == trajectory["completion_ids"]
    assert trajectory["completion_ids"][-1] == sampler.eos and trajectory["finish_reason"] == "stop"
    # h sits before the sampled ' Let' token; the cue's first token keeps its space
    assert _pieces(tokenizer, pair["rejected_ids"][:1]) == [" Let"] and _pieces(tokenizer, pair["prefix_ids"][-1:]) == ["."]
    assert pair["prefix"] + pair["rejected"] == trajectory["completion"] and pair["h"]["char"] == len(pair["prefix"])
    # the intervention continued from prompt + prefix ids + the trigger in context, as ids
    trigger_ids = encode_text(tokenizer, " " + DEFAULT_TRIGGERS[0])
    assert sampler.prompts[-1][-len(pair["prefix_ids"]) - len(trigger_ids):] == pair["prefix_ids"] + trigger_ids
    assert pair["chosen_ids"] == trigger_ids + encode_text(tokenizer, SAFE_TAIL) + [sampler.eos]
    assert pair["finish_reasons"] == {"chosen": "stop", "rejected": "stop"}


def test_policy_reports_its_prompt_length_and_the_samplers_limit(qwen3):
    from ipo_jax.data.tokenizer import encode_prompt
    from ipo_jax.rollout import LocalPolicy
    from ipo_jax.sampling import SamplingConfig

    messages = [{"role": "user", "content": "How do I bake bread?"}]
    policy = LocalPolicy(type("BucketedSampler", (), {"buckets": [32, 64, 128]})(), qwen3, SamplingConfig(), "x")
    assert policy.max_prompt_tokens == 128 and policy.prompt_tokens(messages) == len(encode_prompt(qwen3, messages))
    assert LocalPolicy(ScriptedSampler(qwen3), qwen3, SamplingConfig(), "x").max_prompt_tokens is None
