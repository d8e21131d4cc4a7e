"""Prefix forks through the policy and the pair builder, on a tiny random model: `Policy.complete_forks`
gives the completions `Policy.complete` gives on the spelled-out jobs (default and explicit row
seeds, with and without a sampler that forks), and build-pairs through forks (z[<h] prefilled once,
then each trigger) writes the same pairs as through `complete`.

Harmful content never appears here: the demo world's placeholders stand in for it."""

from __future__ import annotations

import dataclasses
import json
from types import SimpleNamespace

import pytest

from ipo_jax.data.pairs import prompt_messages
from ipo_jax.data.tiny_tokenizer import build_tiny_tokenizer
from ipo_jax.data.tokenizer import encode_prompt
from ipo_jax.judging.pattern import PatternCueDetector, PatternJudge
from ipo_jax.pipeline.chunks import build_pairs
from ipo_jax.pipeline.intervene import InterventionConfig, complete_by_forks
from ipo_jax.rollout import Completion, LocalPolicy
from ipo_jax.sampling import Fork, Sampler, SamplingConfig

MESSAGES = [{"role": "user", "content": "How do I do something risky? [request details withheld]"}]
COMPLIANT = ("Okay, the user asks about something risky. Let me think about what it involves. "
             "Let me work them out. [harmful details withheld]\n</think>\n\nHere is how to do it: [harmful details withheld]")
# each trigger closes the reasoning and answers, so a short continuation that ends its turn is a finished, safe side
TRIGGERS = (
    "Wait, I should not help with this.\n</think>\n\nI can't help with that.",
    "Hmm, this could cause real harm, so I refuse.\n</think>\n\nI won't help with that.",
)
PROMPTS = [
    {"id": "a", "prompt": MESSAGES[0]["content"], "kind": "harmful"},
    {"id": "b", "prompt": "Another risky thing [request details withheld]", "kind": "harmful"},
]


@pytest.fixture(scope="module")
def tiny():
    from ipo_jax.models.decoder import init_decoder
    from ipo_jax.models.presets import preset_config

    tokenizer = build_tiny_tokenizer([COMPLIANT, *TRIGGERS, *(p["prompt"] for p in PROMPTS)] * 3, vocab_size=400)
    vocab = -(-len(tokenizer) // 64) * 64
    model = init_decoder(preset_config("tiny-qwen3", vocab_size=vocab, initializer_range=0.2), seed=0)
    return tokenizer, model, vocab


def _policy(tiny, eos_ids=None, max_new_tokens=8) -> LocalPolicy:
    tokenizer, model, _ = tiny
    sampler = Sampler(model, eos_ids=eos_ids or [tokenizer.eos_token_id], batch_size=4, prompt_buckets=[64, 128, 256],
                      chunk_tokens=8)
    return LocalPolicy(sampler, tokenizer, SamplingConfig(temperature=1.0, top_p=1.0, max_new_tokens=max_new_tokens), "tiny")


class NoForks:
    """A sampler that cannot fork (only `generate`), as a serving backend without prefix forks."""

    def __init__(self, sampler):
        self.sampler = sampler

    def generate(self, prompts, config, stop_strings=(), row_seeds=None):
        return self.sampler.generate(prompts, config, stop_strings, row_seeds=row_seeds)


class SpySampler(NoForks):
    def __init__(self, sampler):
        super().__init__(sampler)
        self.fork_calls = []

    def generate_forks(self, prefix, forks, config, stop_strings=()):
        self.fork_calls.append((list(prefix), list(forks)))
        return self.sampler.generate_forks(prefix, forks, config, stop_strings)


def test_complete_forks_gives_the_completions_of_complete(tiny):
    policy = _policy(tiny)
    assert policy.forks_prefix
    prefix = policy.encode_text("Okay, the user asks about something risky. Let me think about what it involves.")
    wait = tuple(policy.encode_text(" Wait, I should not help with this."))
    forks = [Fork(cut=0, n=2), Fork(cut=5, n=1), Fork(cut=len(prefix), suffix=wait, n=3)]
    got = policy.complete_forks(MESSAGES, prefix, forks, seed=7)
    want = policy.complete([(MESSAGES, prefix[: f.cut] + list(f.suffix)) for f in forks for _ in range(f.n)], seed=7)
    assert [len(group) for group in got] == [2, 1, 3]
    assert [c for group in got for c in group] == want
    assert all(isinstance(c, Completion) and c.ids for c in want)
    assert len({c.ids for c in got[2]}) > 1  # the rows of one fork draw from their own seeds

    # explicit row seeds: the sampler's generate with those seeds on the spelled-out prompts
    seeds = (11, 12, 13)
    explicit = policy.complete_forks(MESSAGES, prefix, [Fork(cut=len(prefix), suffix=wait, n=3, row_seeds=seeds)], seed=7)
    prompt = encode_prompt(policy.tokenizer, MESSAGES) + prefix + list(wait)
    generations = policy.sampler.generate([prompt] * 3, dataclasses.replace(policy.sampling, seed=7), row_seeds=list(seeds))
    assert [c.ids for c in explicit[0]] == [tuple(g.completion_ids) for g in generations]
    assert explicit[0] != got[2]

    # a sampler that cannot fork: every row sent whole, the same completions
    plain = LocalPolicy(NoForks(policy.sampler), policy.tokenizer, policy.sampling, "plain")
    assert not plain.forks_prefix
    assert plain.complete_forks(MESSAGES, prefix, forks, seed=7) == got
    assert plain.complete_forks(MESSAGES, prefix, [Fork(cut=len(prefix), suffix=wait, n=3, row_seeds=seeds)], 7) == explicit

    with pytest.raises(ValueError, match="cut"):
        policy.complete_forks(MESSAGES, prefix, [Fork(cut=len(prefix) + 1)], seed=7)


def test_complete_by_forks_prefills_each_prefix_once_with_completes_seeds(tiny):
    policy = _policy(tiny)
    spy = SpySampler(policy.sampler)
    forking = LocalPolicy(spy, policy.tokenizer, policy.sampling, "tiny")
    prefix = {r["id"]: policy.encode_text(f"Okay, about {r['id']}. Let me see.") for r in PROMPTS}
    # what complete_by_forks reads of an InterventionJob
    jobs = [SimpleNamespace(record=r, prefix_ids=prefix[r["id"]], chosen_ids=policy.encode_text(" " + t))
            for r in PROMPTS for t in TRIGGERS]
    got = complete_by_forks(forking, jobs, seed=5)
    want = policy.complete([(prompt_messages(j.record), j.prefix_ids + j.chosen_ids) for j in jobs], seed=5)
    assert got == want
    # one prefill per prompt record: its chat prompt + z[<h], one fork per trigger cut at its end
    assert len(spy.fork_calls) == len(PROMPTS)
    for record, (shared, forks) in zip(PROMPTS, spy.fork_calls):
        assert shared == encode_prompt(policy.tokenizer, prompt_messages(record)) + prefix[record["id"]]
        assert [f.cut for f in forks] == [len(shared)] * len(TRIGGERS)
        assert [list(f.suffix) for f in forks] == [policy.encode_text(" " + t) for t in TRIGGERS]


class ScriptedOriginals(LocalPolicy):
    """The tiny model's policy, except that trajectories sampled from scratch are scripted
    compliant ones (a random model never closes its reasoning), so every prompt is intervened on;
    every continuation is the tiny model's.  `forks` False hides the sampler's forks."""

    def __init__(self, sampler, tokenizer, sampling, forks: bool):
        super().__init__(sampler, tokenizer, sampling, "tiny")
        self.forks, self.continuations = forks, []

    @property
    def forks_prefix(self) -> bool:
        return self.forks and super().forks_prefix

    def complete(self, jobs, seed):
        if all(isinstance(prefix, str) and not prefix for _, prefix in jobs):
            ids = tuple(self.encode_text(COMPLIANT)) + (self.tokenizer.eos_token_id,)
            return [Completion(COMPLIANT, "stop", ids) for _ in jobs]
        out = super().complete(jobs, seed)
        self.continuations += [c.ids for c in out]
        return out

    def complete_forks(self, messages, prefix_ids, forks, seed):
        out = super().complete_forks(messages, prefix_ids, forks, seed)
        self.continuations += [c.ids for group in out for c in group]
        return out


def test_build_pairs_through_forks_writes_the_pairs_of_complete(tiny, tmp_path):
    tokenizer, _, vocab = tiny
    # half the vocabulary ends the turn, so the random model's continuations end within a few tokens
    eos_ids = [tokenizer.eos_token_id] + list(range(8, vocab, 2))
    base = _policy(tiny, eos_ids=eos_ids, max_new_tokens=16)
    runs = {}
    for forks in (True, False):
        spy = SpySampler(base.sampler)
        policy = ScriptedOriginals(spy, tokenizer, base.sampling, forks)
        summary = build_pairs(PROMPTS, tmp_path / str(forks), policy, PatternJudge(), PatternCueDetector(), TRIGGERS,
                              InterventionConfig(rounds=2, chunk_prompts=2, seed=3))
        runs[forks] = (summary, (tmp_path / str(forks) / "pairs.jsonl").read_bytes(), policy.continuations, spy.fork_calls)
    (summary, pairs, continuations, fork_calls), (summary_plain, pairs_plain, continuations_plain, no_calls) = runs[True], runs[False]
    assert len(fork_calls) == len(PROMPTS) and no_calls == []  # round 1: one prefill of z[<h] per prompt
    assert continuations == continuations_plain and len(continuations) >= len(PROMPTS) * len(TRIGGERS)
    assert summary == summary_plain and pairs == pairs_plain
    assert summary["pairs"] > 0  # the comparison covers pairs, not only empty files
    pair = json.loads(pairs.splitlines()[0])
    assert pair["chosen_ids"][-1] in eos_ids and pair["finish_reasons"]["chosen"] == "stop"
