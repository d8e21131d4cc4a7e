"""Prefix fork: `generate_forks` prefills the prefix once and gives the same tokens as
`generate` on the spelled-out prompts with the same row seeds."""

import jax
import numpy as np
import pytest

from ipo_jax.models.decoder import init_decoder
from ipo_jax.models.presets import preset_config
from ipo_jax.sampling import Fork, ForkError, Sampler, SamplingConfig, row_seed

NO_EOS = 10_000
GREEDY = SamplingConfig(temperature=0.0, max_new_tokens=11)
SAMPLED = SamplingConfig(temperature=1.0, top_p=0.9, max_new_tokens=11, seed=4)


@pytest.fixture(scope="module", params=["tiny-qwen3", "tiny-llama"])
def model(request):
    return init_decoder(preset_config(request.param), seed=1)


@pytest.fixture(scope="module")
def qwen3():
    return init_decoder(preset_config("tiny-qwen3"), seed=1)


PREFIX = np.random.RandomState(0).randint(3, 250, 23).tolist()
# several cuts in one batch, suffixes of different lengths, n not a multiple of the batch (4),
# a cut at the end of the prefix, a suffix after a cut inside it, a suffix alone (cut 0)
FORKS = [
    Fork(cut=9, n=3),
    Fork(cut=23, n=2),
    Fork(cut=14, suffix=(7, 8, 9, 10, 11), n=2),
    Fork(cut=1, n=1),
    Fork(cut=23, suffix=(42,), n=1),
    Fork(cut=0, suffix=(5, 6), n=2),
    Fork(cut=5, suffix=(99, 98), n=2, row_seeds=(123, 2**31 - 1)),
]


def _spelled_out(forks, seed):
    prompts, seeds = [], []
    for fork in forks:
        for j in range(fork.n):
            prompts.append(PREFIX[: fork.cut] + list(fork.suffix))
            seeds.append(fork.row_seeds[j] if fork.row_seeds is not None else row_seed(seed, len(seeds)))
    return prompts, seeds


def _count_calls(programs, name):
    calls = []
    program = getattr(programs, name)

    def counted(*args, **kwargs):
        calls.append(1)
        return program(*args, **kwargs)

    setattr(programs, name, counted)
    return calls


@pytest.mark.parametrize("config", [GREEDY, SAMPLED], ids=["greedy", "sampled"])
def test_forks_equal_generate_on_the_spelled_out_prompts(model, config):
    sampler = Sampler(model, eos_ids=[NO_EOS], batch_size=4, prompt_buckets=[32], chunk_tokens=4)
    prompts, seeds = _spelled_out(FORKS, config.seed)
    expected = [g.tokens for g in sampler.generate(prompts, config, row_seeds=seeds)]
    prefills = _count_calls(sampler.programs, "prefill_prefix")
    reprefills = _count_calls(sampler.programs, "prefill")
    forks = sampler.generate_forks(PREFIX, FORKS, config)
    assert [len(gs) for gs in forks] == [f.n for f in FORKS]
    assert [g.tokens for gs in forks for g in gs] == expected
    assert all(g.finish_reason == "length" and len(g.tokens) == config.max_new_tokens for gs in forks for g in gs)
    assert len(prefills) == 1 and reprefills == []  # the prefix once, no prompt re-prefilled
    if config is SAMPLED:  # really sampled: the continuations of one fork differ
        assert len({tuple(g.tokens) for g in forks[0]}) == FORKS[0].n


def test_forks_on_the_stacked_layer_path_with_an_end_id_and_stop_strings(qwen3):
    model = qwen3
    decode = lambda ids: "".join(f"<{t}>" for t in ids)  # noqa: E731
    free = Sampler(model, eos_ids=[NO_EOS], batch_size=4, prompt_buckets=[32], chunk_tokens=4, decode=decode)
    forks = FORKS[:4]
    plain = free.generate_forks(PREFIX, forks, SAMPLED)
    eos = plain[0][1].tokens[4]  # a token the second row of the first fork samples fifth
    sampler = Sampler(model, eos_ids=[eos], batch_size=4, prompt_buckets=[32], chunk_tokens=4, decode=decode,
                      unstack_layers=False)
    prompts, seeds = _spelled_out(forks, SAMPLED.seed)
    stop = next(f"<{t}>" for t in plain[2][0].tokens[3:] if t != eos and t not in plain[0][1].tokens[:5])
    expected = sampler.generate(prompts, SAMPLED, stop_strings=[stop], row_seeds=seeds)
    got = [g for gs in sampler.generate_forks(PREFIX, forks, SAMPLED, stop_strings=[stop]) for g in gs]
    assert [(g.tokens, g.finish_reason, g.end_id, g.text) for g in got] == [
        (g.tokens, g.finish_reason, g.end_id, g.text) for g in expected
    ]
    assert got[1].end_id == eos and got[1].finish_reason == "stop" and got[1].tokens == plain[0][1].tokens[:len(got[1].tokens)]
    assert any(g.finish_reason == "stop" and g.end_id is None and g.text.endswith(stop) for g in got)


def test_fork_programs_compile_once_per_bucket(qwen3):
    model = qwen3
    sampler = Sampler(model, eos_ids=[NO_EOS], batch_size=4, prompt_buckets=[32], chunk_tokens=4)
    sampler.generate_forks(PREFIX, [Fork(cut=20, n=5)], GREEDY)
    compiles = []

    def listener(event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            compiles.append(event)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:  # other cuts, counts and settings; own tokens of one token as before
        sampler.generate_forks(PREFIX[:17], [Fork(cut=3, n=2), Fork(cut=17, n=3)], SAMPLED)
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    assert compiles == []


@pytest.mark.parametrize(
    "fork, message",
    [
        (Fork(cut=24), "cut 24 is outside the prefix of 23 tokens"),
        (Fork(cut=-1), "cut -1 is outside"),
        (Fork(cut=0), "empty prompt"),
        (Fork(cut=3, n=0), "n must be at least 1"),
        (Fork(cut=3, n=2, row_seeds=(1,)), "1 row_seeds for n=2"),
        (Fork(cut=3, row_seeds=(2**31,)), r"\[0, 2\*\*31\)"),
    ],
)
def test_bad_forks_are_refused(qwen3, fork, message):
    sampler = Sampler(qwen3, eos_ids=[NO_EOS], batch_size=4, prompt_buckets=[32])
    with pytest.raises(ValueError, match=message):
        sampler.generate_forks(PREFIX, [Fork(cut=2), fork], GREEDY)
    assert sampler.generate_forks(PREFIX, [], GREEDY) == []
    assert issubclass(ForkError, ValueError)
