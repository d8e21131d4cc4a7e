"""Continuous batching in `Sampler.generate`: with more prompts than rows, a row whose generation
ended takes the next prompt at the next chunk boundary (prefilled apart, written into the row's
part of a ring cache). Every prompt gets what static batches give it -- the same tokens, finish
reason and end id, greedy and sampled, on one device and on the 8-device mesh -- in fewer decode
chunks when generations end at different lengths."""

import numpy as np
import pytest

from ipo_jax.models.decoder import init_decoder
from ipo_jax.models.presets import preset_config
from ipo_jax.sampling import Sampler, SamplingConfig
from ipo_jax.sharding import make_mesh, shard_model

CFG = preset_config("tiny-qwen2")
GREEDY = SamplingConfig(temperature=0.0, max_new_tokens=24)
SAMPLED = SamplingConfig(temperature=1.0, top_p=0.95, max_new_tokens=24, seed=5)
NO_EOS = 10_000


def _prompts(count=13):
    rng = np.random.RandomState(1)
    return [rng.randint(3, 250, int(n)).tolist() for n in rng.randint(2, 30, count)]


def _outcome(generations):
    return [(g.tokens, g.finish_reason, g.end_id) for g in generations]


def _end_ids(model, config, prompts):
    """End ids that end the generations at spread-out lengths: the two ids drawn most often
    after the first token in an unended run (found, not assumed, so the test keeps its bite
    whatever the random weights)."""
    unended = Sampler(model, eos_ids=[NO_EOS], batch_size=4, prompt_buckets=[16, 32], chunk_tokens=4,
                      continuous_batching=False).generate(prompts, config)
    counts = np.bincount(np.concatenate([g.tokens[1:] for g in unended]), minlength=CFG.vocab_size)
    return [int(i) for i in np.argsort(counts)[-2:]]


def _count_calls(programs, name):
    calls = []
    method = getattr(programs, name)

    def spy(*args, **kwargs):
        calls.append(1)
        return method(*args, **kwargs)

    setattr(programs, name, spy)
    return calls


@pytest.fixture(scope="module")
def model():
    return init_decoder(CFG, seed=0)


@pytest.mark.parametrize("config", [GREEDY, SAMPLED], ids=["greedy", "sampled"])
def test_continuous_batching_gives_each_prompt_the_static_result_in_fewer_chunks(model, config):
    prompts = _prompts()
    eos = _end_ids(model, config, prompts)
    make = lambda continuous: Sampler(model, eos_ids=eos, batch_size=4, prompt_buckets=[16, 32],  # noqa: E731
                                      chunk_tokens=4, continuous_batching=continuous)
    static, continuous = make(False), make(True)
    static_chunks = _count_calls(static.programs, "decode_chunk")
    chunks, inserts = _count_calls(continuous.programs, "decode_chunk"), _count_calls(continuous.programs, "insert")
    expected = _outcome(static.generate(prompts, config))
    got = _outcome(continuous.generate(prompts, config))
    assert got == expected
    lengths = [len(tokens) for tokens, *_ in expected]
    reasons = {reason for _, reason, _ in expected}
    assert reasons == {"stop", "length"} and len(set(lengths)) >= 4  # generations really end apart
    assert inserts  # rows were refilled
    assert len(chunks) < len(static_chunks)


def test_continuous_batching_with_stop_strings_and_a_one_token_budget(model):
    """Stop strings end rows on the host (their rows refilled too), and max_new_tokens=1 ends
    every row at its first token (all refills, no decoding)."""
    prompts = _prompts(9)
    decode = lambda ids: " ".join(str(t) for t in ids)  # noqa: E731
    make = lambda continuous: Sampler(model, eos_ids=[NO_EOS], batch_size=2, prompt_buckets=[32],  # noqa: E731
                                      chunk_tokens=4, decode=decode, continuous_batching=continuous)
    static = make(False).generate(prompts, SAMPLED)
    stop = [decode(static[i].tokens[2:4]) for i in (0, 3)]  # two-token strings that do occur
    expected = _outcome(make(False).generate(prompts, SAMPLED, stop_strings=stop))
    assert any(reason == "stop" for _, reason, _ in expected)
    assert _outcome(make(True).generate(prompts, SAMPLED, stop_strings=stop)) == expected
    one = SamplingConfig(temperature=1.0, max_new_tokens=1, seed=2)
    sampler = make(True)
    chunks = _count_calls(sampler.programs, "decode_chunk")
    assert _outcome(sampler.generate(prompts, one)) == _outcome(make(False).generate(prompts, one))
    assert not chunks


def test_continuous_batching_on_the_mesh_equals_static_on_one_device(model):
    prompts = _prompts()
    eos = _end_ids(model, GREEDY, prompts)
    expected = _outcome(Sampler(model, eos_ids=eos, batch_size=4, prompt_buckets=[16, 32], chunk_tokens=4,
                                continuous_batching=False).generate(prompts, GREEDY))
    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    sharded = Sampler(shard_model(init_decoder(CFG, seed=0), mesh), eos_ids=eos, batch_size=4,
                      prompt_buckets=[16, 32], chunk_tokens=4, mesh=mesh)
    inserts = _count_calls(sharded.programs, "insert")
    assert _outcome(sharded.generate(prompts, GREEDY)) == expected
    assert inserts
    assert sharded.scheduler.refill_size(1) == 4 and sharded.scheduler.refill_size(3) == 4  # refills a multiple of data x fsdp
