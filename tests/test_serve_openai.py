"""`ipo-jax serve --served-model-name policy policy-2 --api-key KEY` (in process, loopback, the
tiny model of serve_support) through the official `openai` client: completions and chat with
n, seed and stop give the in-process sampler's tokens; logprobs are the model's; streamed
deltas add up to the whole response; the models list states the limits enforced; errors arrive
as the client's exception types. Plus the reasoning parsers on the real Qwen3 chat template."""

from __future__ import annotations

import dataclasses
import json
import urllib.request

import numpy as np
import pytest
from serve_support import call, serving, tiny_served

from ipo_jax.sampling import SamplingConfig, row_seed

openai = pytest.importorskip("openai")

KEY = "KEY-for-tests"
PROMPT = "How do I do something risky?"
MESSAGES = [{"role": "user", "content": "A benign photo question"}]


@pytest.fixture(scope="module")
def served():
    """The shared tiny model under two served names (the same sampler, so its compiled programs)."""
    return dataclasses.replace(tiny_served(), name="policy", aliases=("policy-2",))


@pytest.fixture(scope="module")
def url(served):
    from ipo_jax.serve import Limits

    with serving(served, Limits(api_key=KEY)) as base:
        yield base


@pytest.fixture(scope="module")
def client(url):
    return openai.OpenAI(base_url=url, api_key=KEY, max_retries=0, timeout=120)


def generate(served, prompt_ids, seeds, *, temperature=1.0, max_tokens=10, stop=()):
    config = SamplingConfig(temperature=temperature, top_p=0.9, max_new_tokens=max_tokens)
    return served.sampler.generate([prompt_ids] * len(seeds), config, stop_strings=stop, row_seeds=seeds)


def test_completions_with_n_seed_and_stop_sample_the_in_process_tokens(client, served):
    ids = served.encode(PROMPT)
    out = client.completions.create(model="policy", prompt=PROMPT, n=2, seed=5, max_tokens=10, temperature=1.0,
                                    top_p=0.9, extra_body={"return_token_ids": True})
    expected = generate(served, ids, [5, row_seed(5, 1)])
    assert [c.token_ids for c in out.choices] == [g.completion_ids for g in expected]
    assert [c.text for c in out.choices] == [served.decode(g.tokens) for g in expected]
    assert out.model == "policy" and out.usage.prompt_tokens == len(ids)
    assert out.usage.completion_tokens == sum(len(g.completion_ids) for g in expected)
    text = out.choices[0].text
    stop = text[len(text) // 2: len(text) // 2 + 2]
    assert stop.strip(), text  # a usable stop string in the middle (the draw at seed 5)
    cut = client.completions.create(model="policy-2", prompt=PROMPT, seed=5, max_tokens=10, temperature=1.0, top_p=0.9,
                                    stop=[stop])
    assert cut.choices[0].finish_reason == "stop" and cut.choices[0].text == text[: text.index(stop)]
    assert cut.model == "policy"  # the first served name answers for every alias


def model_logprobs(served, prompt_ids, completion_ids) -> np.ndarray:
    """log-softmax of the model's logits over the whole sequence, by a plain forward (no buckets)."""
    import jax
    from flax import nnx

    model = nnx.merge(served.sampler.graphdef, served.sampler.state)
    tokens = np.asarray([prompt_ids + completion_ids], np.int32)
    positions = np.arange(tokens.shape[1], dtype=np.int32)[None]
    logits, _ = model(tokens, positions, np.ones_like(tokens))
    return np.asarray(jax.nn.log_softmax(logits[0], axis=-1))[len(prompt_ids) - 1: -1]


def test_completion_logprobs_are_the_models_and_greedy_picks_the_top(client, served):
    ids = served.encode(PROMPT)
    out = client.completions.create(model="policy", prompt=ids, max_tokens=6, temperature=0, logprobs=3,
                                    extra_body={"return_token_ids": True})
    (choice,) = out.choices
    token_ids, lp = choice.token_ids, choice.logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(token_ids) == 6
    assert lp.tokens == [served.token_text(t) for t in token_ids] and lp.text_offset[0] == 0
    assert lp.text_offset == sorted(lp.text_offset)
    reference = model_logprobs(served, ids, token_ids)
    np.testing.assert_allclose(lp.token_logprobs, reference[np.arange(6), token_ids], atol=2e-4)
    for row, top, chosen in zip(reference, lp.top_logprobs, lp.token_logprobs):
        assert 3 <= len(top) <= 4  # the top 3, plus the sampled token when it is not among them
        best = np.sort(row)[::-1][:3]
        np.testing.assert_allclose(sorted(top.values(), reverse=True)[:3], best, atol=2e-4)
        assert chosen == pytest.approx(max(top.values()), abs=1e-6)  # greedy: the sampled token is the top one


def test_chat_applies_the_template_and_returns_the_reasoning_apart(client, served):
    from ipo_jax.data.tokenizer import encode_prompt
    from ipo_jax.serve.reasoning import split_reasoning

    out = client.chat.completions.create(model="policy", messages=MESSAGES, seed=11, max_tokens=12, temperature=1.0,
                                         top_p=0.9, logprobs=True, top_logprobs=2,
                                         extra_body={"return_token_ids": True})
    prompt = encode_prompt(served.tokenizer, MESSAGES)
    (generation,) = generate(served, prompt, [11], max_tokens=12)
    (choice,) = out.choices
    assert out.object == "chat.completion" and choice.token_ids == generation.completion_ids
    assert choice.prompt_token_ids == prompt
    # the tiny template opens <think> in the prompt (as DeepSeek-R1's): the reply starts inside it
    assert served.render_chat(MESSAGES, {}).endswith("<think>\n")
    reasoning, content = split_reasoning(served.decode(generation.tokens), "deepseek_r1")
    assert choice.message.reasoning_content == reasoning and choice.message.content == content
    assert reasoning is not None and choice.message.role == "assistant"
    entries = choice.logprobs.content
    assert [e.token for e in entries] == [served.token_text(t) for t in generation.completion_ids]
    assert all(len(e.top_logprobs) == 2 and e.top_logprobs[0].logprob >= e.logprob - 1e-6 for e in entries)


def test_streams_add_up_to_the_whole_responses(client, served):
    body = dict(model="policy", prompt=PROMPT, n=2, seed=8, max_tokens=10, temperature=1.0, top_p=0.9)
    whole = client.completions.create(**body)
    texts, finishes, chunks = ["", ""], [None, None], list(
        client.completions.create(**body, stream=True, stream_options={"include_usage": True}))
    for chunk in chunks[:-1]:
        for c in chunk.choices:
            texts[c.index] += c.text
            finishes[c.index] = c.finish_reason or finishes[c.index]
    assert texts == [c.text for c in whole.choices] and finishes == [c.finish_reason for c in whole.choices]
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage

    chat = dict(model="policy", messages=MESSAGES, seed=3, max_tokens=12, temperature=1.0, top_p=0.9)
    message = client.chat.completions.create(**chat).choices[0].message
    reasoning, content, roles = "", "", []
    for chunk in client.chat.completions.create(**chat, stream=True):
        delta = chunk.choices[0].delta
        roles += [delta.role] if delta.role else []
        reasoning += getattr(delta, "reasoning_content", None) or ""
        content += delta.content or ""
    assert roles == ["assistant"] and reasoning == message.reasoning_content and content == (message.content or "")


def test_models_list_and_errors_as_the_clients_exceptions(client, url):
    models = client.models.list().data
    assert [m.id for m in models] == ["policy", "policy-2"]
    assert {(m.max_model_len, m.max_prompt_tokens) for m in models} == {(512, 511)}
    with pytest.raises(openai.BadRequestError, match="prompt has 512 tokens; this server takes at most 511"):
        client.completions.create(model="policy", prompt=[5] * 512, max_tokens=1)
    with pytest.raises(openai.BadRequestError, match="more than the model's context of 512"):
        client.completions.create(model="policy", prompt=[5] * 500, max_tokens=13)
    with pytest.raises(openai.BadRequestError, match="messages"):
        client.chat.completions.create(model="policy", messages=[{"role": "wizard", "content": "x"}])
    with pytest.raises(openai.NotFoundError, match="'policy', 'policy-2'"):
        client.completions.create(model="gpt-x", prompt="x", max_tokens=1)
    with pytest.raises(openai.NotFoundError, match="POST /v1/chat/completions"):
        client.get("/embeddings", cast_to=object)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=url, api_key="wrong", max_retries=0).models.list()
    # without a key: a JSON 401 everywhere but /health
    status, out = call(url, "/completions", dict(prompt=[5], max_tokens=1))
    assert status == 401 and out["error"]["code"] == "invalid_api_key"
    with urllib.request.urlopen(url.removesuffix("/v1") + "/health", timeout=30) as response:
        assert json.loads(response.read()) == {"status": "ok"}


def test_reasoning_parsers_on_the_real_qwen3_template():
    from ipo_jax.data.tokenizer import load_tokenizer, packaged_qwen3_tokenizer_dir, render_prompt
    from ipo_jax.serve import ServedModel
    from ipo_jax.serve.reasoning import ReasoningStream, prompt_opens_thinking, resolve_parser, split_reasoning

    tokenizer = load_tokenizer(packaged_qwen3_tokenizer_dir())
    assert ServedModel(None, tokenizer, "q", 64, 128, len(tokenizer)).thinks
    thinking = render_prompt(tokenizer, MESSAGES)
    assert not prompt_opens_thinking(thinking)  # Qwen3 lets the model open <think> itself
    reply = "<think>\nLet me see.\n</think>\n\nThe answer."
    parser = resolve_parser("auto", True, False, reply)
    assert split_reasoning(reply, parser) == ("\nLet me see.\n", "\n\nThe answer.")
    assert split_reasoning("no thinking here", resolve_parser("auto", True, False, "no thinking here")) == (
        None, "no thinking here")
    assert split_reasoning("cut off while thinking", "deepseek_r1") == ("cut off while thinking", None)
    assert split_reasoning("cut off while thinking", "qwen3") == (None, "cut off while thinking")
    assert split_reasoning(reply, "none") == (None, reply)
    assert split_reasoning("x</think>y", resolve_parser("auto", False, False, "x</think>y")) == (None, "x</think>y")
    # streamed a character at a time, the deltas add up to the whole split (no partial </think> leaks)
    for text, opened in ((reply, False), ("reasoning first</think>\n\nthen the answer", True)):
        stream, reasoning, content = ReasoningStream("auto", True, opened), "", ""
        for end in range(1, len(text) + 1):
            r, c = stream.update(text[:end])
            reasoning, content = reasoning + r, content + c
        r, c = stream.finish(text)
        whole = split_reasoning(text, resolve_parser("auto", True, opened, text))
        assert (reasoning + r, content + c) == (whole[0] or "", whole[1] or "")
