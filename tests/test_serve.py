"""`ipo-jax serve` (ipo_jax/serve/) on a loopback port with a tiny random model and the tiny
tokenizer: its tokens equal the in-process sampler's at the same seeds (one prompt, lists,
n > 1, text prompts, concurrent requests batched together); `build-pairs` through it (the HTTP
policy backend) writes the same pairs and trajectories as in-process; bad requests get HTTP 400
with a JSON error and the server keeps serving; the CLI's --help and a bad --model."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from serve_support import MODEL, PROMPTS, ROOT, call, serving, tiny_served, tiny_world

from ipo_jax.sampling import SamplingConfig, row_seed


@pytest.fixture(scope="module")
def world():
    """The tiny tokenizer and a prompt file (serve_support.tiny_world)."""
    return tiny_world()


@pytest.fixture(scope="module")
def served():
    # the sampler settings of configs/pipeline_tiny_cpu.py, as the in-process pipeline builds them
    return tiny_served()


@pytest.fixture(scope="module")
def url(served):
    with serving(served) as base:
        yield base


def ids_of(response):
    return [c["token_ids"] for c in response["choices"]]


SETTINGS = dict(temperature=1.0, top_p=0.9, max_tokens=10)


def sampled(served, prompts, row_seeds, stop=()):
    config = SamplingConfig(temperature=1.0, top_p=0.9, max_new_tokens=10)
    return served.sampler.generate(prompts, config, stop_strings=stop, row_seeds=row_seeds)


# ----------------------------------------------------------------------------- same tokens as in-process


def test_completions_sample_what_the_in_process_sampler_samples(url, served):
    prompt = served.encode("How do I do something risky?")
    status, out = call(url, "/completions", dict(model=MODEL, prompt=prompt, seed=1234, return_token_ids=True, **SETTINGS))
    assert status == 200 and out["object"] == "text_completion" and out["model"] == MODEL
    (generation,) = sampled(served, [prompt], [1234])
    (choice,) = out["choices"]
    assert choice["token_ids"] == generation.completion_ids and choice["finish_reason"] == generation.finish_reason
    assert choice["text"] == served.decode(generation.tokens) and choice["prompt_token_ids"] == prompt
    assert out["usage"] == {"prompt_tokens": len(prompt), "completion_tokens": len(generation.completion_ids),
                            "total_tokens": len(prompt) + len(generation.completion_ids)}

    # a list of token-id prompts with n = 2: every prompt gets the seeds (seed, row_seed(seed, 1))
    prompts = [prompt, served.encode("A benign photo question"), [5, 6, 7]]
    status, out = call(url, "/completions", dict(prompt=prompts, n=2, seed=77, return_token_ids=True, **SETTINGS))
    assert status == 200 and [c["index"] for c in out["choices"]] == list(range(6))
    expected = sampled(served, [p for p in prompts for _ in range(2)], [77, row_seed(77, 1)] * 3)
    assert ids_of(out) == [g.completion_ids for g in expected]
    assert ids_of(out)[0] != ids_of(out)[1] or ids_of(out)[2] != ids_of(out)[3]  # the two choices differ somewhere

    # a text prompt is the prompt's ids without special tokens; another seed samples other tokens
    status, text_out = call(url, "/completions", dict(prompt="How do I do something risky?", seed=1234,
                                                      return_token_ids=True, **SETTINGS))
    assert status == 200 and ids_of(text_out)[0] == generation.completion_ids
    _, other = call(url, "/completions", dict(prompt=prompt, seed=4321, return_token_ids=True, **SETTINGS))
    assert ids_of(other)[0] == sampled(served, [prompt], [4321])[0].completion_ids != generation.completion_ids
    assert "token_ids" not in call(url, "/completions", dict(prompt=prompt, seed=1, max_tokens=2))[1]["choices"][0]


def test_concurrent_requests_are_batched_without_changing_tokens(url, served):
    prompts = [served.encode(p["prompt"]) for p in PROMPTS] * 3
    with ThreadPoolExecutor(len(prompts)) as pool:
        outs = list(pool.map(lambda r: call(url, "/completions", dict(prompt=prompts[r], seed=row_seed(9, r),
                                                                      return_token_ids=True, **SETTINGS)),
                             range(len(prompts))))
    assert all(status == 200 for status, _ in outs)
    expected = sampled(served, prompts, [row_seed(9, r) for r in range(len(prompts))])
    assert [ids_of(out)[0] for _, out in outs] == [g.completion_ids for g in expected]


def test_a_streaming_rows_first_token_goes_out_after_its_prefill_not_after_a_decode_chunk(served):
    from ipo_jax.serve import Engine, GenerationRequest

    chunk = served.sampler.chunk_tokens
    config = SamplingConfig(temperature=1.0, top_p=0.9, max_new_tokens=chunk + 8)
    prompt = served.encode(PROMPTS[0]["prompt"])
    updates = []
    engine = Engine(served)
    try:
        job = engine.submit(GenerationRequest([prompt], 1, config, (), 4, True, stream=True),
                            on_update=lambda rows: updates.extend(rows))
        (generation,) = job.future.result(timeout=300)
    finally:
        engine.close()
    (expected,) = served.sampler.generate([prompt], config, row_seeds=[4])
    assert generation.completion_ids == expected.completion_ids
    ids_so_far = [ids for _, ids, _ in updates]
    assert len(ids_so_far[0]) == 1 < chunk  # the prefill's token alone, streamed before any decode chunk
    # every update extends the one before (the streamed deltas add up), the last is the whole row
    assert all(b[: len(a)] == a for a, b in zip(ids_so_far, ids_so_far[1:]))
    assert updates[-1][2] is not None and list(updates[-1][1]) == list(generation.completion_ids)


def test_a_request_arriving_while_rows_are_free_starts_within_admit_tokens_steps(served, monkeypatch):
    from ipo_jax.serve import Engine, GenerationRequest

    chunk, admit = served.sampler.chunk_tokens, served.admit_tokens
    assert 1 <= admit < chunk  # the default: 4 steps apart while rows are free, 32 once the batch is full
    programs = served.sampler.programs
    steps_per_call = []
    real_decode_chunk = programs.decode_chunk

    def recording(state, settings, steps):
        steps_per_call.append(steps)
        return real_decode_chunk(state, settings, steps)

    monkeypatch.setattr(programs, "decode_chunk", recording)
    config = SamplingConfig(temperature=1.0, top_p=0.9, max_new_tokens=2 * chunk)
    long_prompt, short_prompt = served.encode(PROMPTS[0]["prompt"]), served.encode(PROMPTS[1]["prompt"])
    long_so_far, short_first = [], []
    engine = Engine(served)
    try:
        def on_long(rows):
            long_so_far[:] = list(rows[-1][1])
            if len(long_so_far) == 1:  # the long row's prefill token: the short request arrives now
                jobs.append(engine.submit(GenerationRequest([short_prompt], 1, config, (), 5, True, stream=True),
                                          on_update=lambda rows: short_first or short_first.append(len(long_so_far))))

        jobs = []
        jobs.append(engine.submit(GenerationRequest([long_prompt], 1, config, (), 4, True, stream=True),
                                  on_update=on_long))
        (long,) = jobs[0].future.result(timeout=300)
        (short,) = jobs[1].future.result(timeout=300)
        # the short one started after one short chunk of the long one, not a whole chunk
        assert short_first and short_first[0] <= 1 + admit < 1 + chunk, (short_first, admit)
        assert steps_per_call and set(steps_per_call) == {admit}  # 2 of 8 rows busy: short chunks only
        # a full batch (8 rows of one request) decodes whole chunks
        steps_per_call.clear()
        full = engine.submit(GenerationRequest([long_prompt], served.sampler.batch_size, config, (), 6, True))
        rows = full.future.result(timeout=300)
        assert steps_per_call[0] == chunk
    finally:
        engine.close()
    # the tokens are what each row samples alone, whatever the chunk lengths
    expected = served.sampler.generate([long_prompt, short_prompt], config, row_seeds=[4, 5])
    assert [long.completion_ids, short.completion_ids] == [g.completion_ids for g in expected]
    assert len(rows) == served.sampler.batch_size


def test_stop_strings_cut_the_text(url, served):
    prompt = served.encode("How do I do something risky?")
    _, free = call(url, "/completions", dict(prompt=prompt, seed=3, return_token_ids=True, **SETTINGS))
    text = free["choices"][0]["text"]
    stop = text[len(text) // 2 : len(text) // 2 + 2]
    if not stop.strip():
        pytest.skip("the sampled text has no usable stop string")  # pragma: no cover - depends on the draw
    _, out = call(url, "/completions", dict(prompt=prompt, seed=3, stop=[stop], return_token_ids=True, **SETTINGS))
    choice = out["choices"][0]
    assert choice["finish_reason"] == "stop" and choice["text"] == text[: text.index(stop)]
    assert choice["token_ids"] == sampled(served, [prompt], [3], stop=(stop,))[0].completion_ids


def test_models_and_health(url):
    assert call(url, "/models") == (200, call(url, "/models")[1])
    status, models = call(url, "/models")
    assert status == 200 and [m["id"] for m in models["data"]] == [MODEL] and models["data"][0]["max_model_len"] == 512
    assert models["data"][0]["max_prompt_tokens"] == 511  # what /completions enforces: below max_model_len
    assert call(url.removesuffix("/v1"), "/health") == (200, {"status": "ok"})


# ----------------------------------------------------------------------------- bad requests


@pytest.mark.parametrize("body, param, words", [
    (dict(prompt=[5, 6], max_tokens=0), "max_tokens", "max_tokens must be an integer >= 1"),
    (dict(prompt=[5, 6], max_tokens="4"), "max_tokens", "max_tokens must be"),
    (dict(prompt=[5, 6], temperature=-1), "temperature", "temperature must be"),
    (dict(prompt=[5, 6], top_p=0), "top_p", "top_p must be"),
    (dict(prompt=[5, 6], seed=-3), "seed", "seed must be an integer in [0, 2147483648)"),
    (dict(prompt=[5, 6], n=0), "n", "n must be"),
    (dict(prompt=[5, 6], frobnicate=1), "frobnicate", "unknown field 'frobnicate'"),
    (dict(prompt=[5, 6], stream="yes"), "stream", "stream must be true or false"),
    (dict(prompt=[5, 6], stream_options={"include_usage": True}), "stream_options", "only allowed with stream true"),
    (dict(prompt=[5, 6], logprobs=21), "logprobs", "logprobs must be an integer in [0, 20]"),
    (dict(prompt=[5, 6], echo=True), "echo", "echo true is not supported"),
    (dict(prompt=[5, 6], stop=[""]), "stop", "stop must be"),
    (dict(prompt=[5, 6], return_token_ids="yes"), "return_token_ids", "return_token_ids must be true or false"),
    (dict(prompt=""), "prompt", "prompt is empty"),
    (dict(prompt=[]), "prompt", "prompt is an empty list"),
    (dict(prompt=[[5], []]), "prompt", "prompt[1] is empty"),
    (dict(prompt=[5, 1.5]), "prompt", "prompt must be a string"),
    (dict(prompt=[5, 10**6]), "prompt", "token id 1000000, outside the model's vocabulary"),
    (dict(prompt=[5] * 512), "prompt", "prompt has 512 tokens; this server takes at most 511"),
    (dict(prompt=[5] * 500, max_tokens=20), "max_tokens", "more than the model's context of 512 tokens"),
    (dict(max_tokens=4), "prompt", "prompt is required"),
    (dict(prompt=[[5]] * 40, n=128), "n", "40 prompts x n=128 is 5120 rows; at most 4096 per request"),
    ([1, 2], None, "must be a JSON object"),
])
def test_bad_requests_get_400_and_the_server_keeps_serving(url, body, param, words):
    status, out = call(url, "/completions", body)
    assert status == 400, out
    error = out["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param and words in error["message"]
    status, out = call(url, "/completions", dict(prompt=[5, 6, 7], max_tokens=2, seed=0))
    assert status == 200 and len(out["choices"]) == 1


def test_bad_json_unknown_model_and_routes(url):
    status, out = call(url, "/completions", raw=b'{"prompt": [1, 2')
    assert status == 400 and "not valid JSON" in out["error"]["message"]
    status, out = call(url, "/completions", dict(model="gpt-x", prompt=[5]))
    assert status == 404 and out["error"]["code"] == "model_not_found" and out["error"]["param"] == "model"
    status, out = call(url, "/nothing-here")
    assert status == 404 and out["error"]["type"] == "invalid_request_error"
    assert "POST /v1/chat/completions, GET /v1/models" in out["error"]["message"]
    status, out = call(url, "/completions", method="GET")
    assert status == 405 and "GET /v1/completions" in out["error"]["message"]
    assert call(url, "/completions", dict(prompt=[5, 6], max_tokens=1, seed=0))[0] == 200


# ----------------------------------------------------------------------------- build-pairs through the server


def _pipeline_args(stage, world, out, *extra):
    return [stage, "--config", str(ROOT / "configs" / "pipeline_tiny_cpu.py"), f"--config.model.init={MODEL}",
            f"--config.tokenizer={world / 'tokenizer'}", f"--config.prompts={world / 'prompts.jsonl'}",
            f"--config.out={out}", "--config.sampling.max_new_tokens=12", "--config.sampler.batch_size=8", *extra]


def _records(path, backend=None):
    """The JSONL records of `path` without their provenance (which names the backend: checked
    to be `backend` when given)."""
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    if backend is not None:
        assert {r["provenance"]["policy_backend"] for r in rows} <= {backend}
    return [{k: v for k, v in r.items() if k != "provenance"} for r in rows]


def test_build_pairs_through_serve_matches_in_process(world, url, tmp_path):
    from ipo_jax.cli import main

    assert main(_pipeline_args("build-pairs", world, tmp_path / "local")) == 0
    assert main(_pipeline_args("build-pairs", world, tmp_path / "http", "--config.policy.backend=http",
                               f"--config.policy.base_url={url}", f"--config.policy.model={MODEL}",
                               "--config.policy.concurrency=4")) == 0
    local, http = tmp_path / "local", tmp_path / "http"
    # the same records but for their provenance (ipo_jax/provenance.py), which tells the two apart
    assert _records(http / "pairs.jsonl", "http") == _records(local / "pairs.jsonl", "local")
    assert json.loads((http / "summary.json").read_text()) == json.loads((local / "summary.json").read_text())
    chunks = sorted(p.name for p in (local / "chunks").glob("trajectories-*.jsonl"))
    assert chunks and chunks == sorted(p.name for p in (http / "chunks").glob("trajectories-*.jsonl"))
    rows = []
    for name in chunks:
        assert _records(http / "chunks" / name, "http") == _records(local / "chunks" / name, "local")
        rows += [json.loads(l) for l in (local / "chunks" / name).read_text().splitlines()]
    # the comparison covers real sampling: every prompt's trajectories, with their sampled ids
    assert len(rows) >= len(PROMPTS) and all(r.get("completion_ids") for r in rows if "completion_ids" in r)
    summary = json.loads((local / "summary.json").read_text())
    assert summary["generations"] >= 3


def test_csr_samples_over_http_equal_in_process(served, url):
    """The csr stage samples through the policy (``complete_forks``): in-process it forks one
    prefill per trace, over HTTP every continuation is its own request; the judge sees the same
    continuations, so the CSR is the same."""
    from ipo_jax.judging.pattern import PatternJudge
    from ipo_jax.pipeline.csr import continuation_safety_ratio
    from ipo_jax.rollout import HttpPolicy, LocalPolicy

    class Recording:
        name = "recording"

        def __init__(self):
            self.inner, self.texts = PatternJudge(), []

        def judge(self, requests):
            self.texts += [(r.part, r.text) for r in requests]
            return self.inner.judge(requests)

    sampling = SamplingConfig(temperature=1.0, top_p=0.9, max_new_tokens=6)
    messages = [{"role": "user", "content": PROMPTS[0]["prompt"]}]
    reasoning = "Okay, let me think. Let me work them out. I will list the steps."
    results = {}
    for name, policy in (("local", LocalPolicy(served.sampler, served.tokenizer, sampling, policy_id=MODEL)),
                         ("http", HttpPolicy(served.tokenizer, sampling, base_url=url, model=MODEL))):
        judge = Recording()
        result = continuation_safety_ratio(policy, served.tokenizer, judge, messages, reasoning, num_samples=3, seed=4,
                                           judge_prompt=PROMPTS[0]["prompt"], window=1)
        results[name] = (judge.texts, result.n_safe.tolist(), result.n_unsafe.tolist(), result.n_errors.tolist())
    assert results["http"] == results["local"]
    texts = [text for _, text in results["local"][0]]
    assert len(results["local"][1]) == 3 and len(set(texts)) > 3  # 3 sentences x 3 samples, not all alike

    # explicit row seeds reach the server as they reach the in-process sampler
    local = LocalPolicy(served.sampler, served.tokenizer, sampling, policy_id=MODEL)
    http = HttpPolicy(served.tokenizer, sampling, base_url=url, model=MODEL)
    jobs = [(messages, "Okay,"), (messages, [5, 6, 7])]
    assert http.complete(jobs, seed=0, row_seeds=[3, 3]) == local.complete(jobs, seed=0, row_seeds=[3, 3])


class SeededScript:
    """A stand-in sampler whose completion of a prompt is one of two scripted texts, chosen by
    the row's seed: so pairs come out (the tiny random model never finishes a turn in a test's
    budget) and they depend on every row getting the same seed over HTTP as in-process."""

    def __init__(self, tokenizer):
        from ipo_jax.data.tokenizer import stop_token_ids

        self.tokenizer, self.end = tokenizer, stop_token_ids(tokenizer)[0]
        self.seeds = []

    def generate(self, prompts, config, stop_strings=(), row_seeds=None):
        from test_pipeline import COMPLIANT, HELPFUL, REFUSAL, SAFE_ORIGINAL, SAFE_TAIL, TRIGGERS, UNSAFE_TAIL

        from ipo_jax.data.tokenizer import encode_text
        from ipo_jax.sampling import Generation

        row_seeds = list(row_seeds) if row_seeds is not None else [row_seed(config.seed, r) for r in range(len(prompts))]
        self.seeds += row_seeds
        out = []
        for ids, seed in zip(prompts, row_seeds):
            text = self.tokenizer.decode(ids, skip_special_tokens=False)
            if any(t in text for t in TRIGGERS):
                completion = UNSAFE_TAIL if seed % 3 == 0 else SAFE_TAIL
            else:
                completion = (HELPFUL if seed % 2 else REFUSAL) if "benign" in text else (
                    SAFE_ORIGINAL if seed % 4 == 0 else COMPLIANT)
            out.append(Generation(encode_text(self.tokenizer, completion), "stop", None, self.end))
        return out


def test_build_pairs_cli_through_serve_equals_in_process_with_a_scripted_sampler(world, tmp_path):
    """`ipo-jax build-pairs --config.policy.backend=http` against `ipo-jax serve` with a
    seed-dependent scripted sampler behind it, and `build_pairs` in-process on the same sampler
    with the same settings: the whole intervention (originals, trigger continuations over several
    rounds, benign candidates) reaches every row with the same seed, so the same non-empty pairs
    come out."""
    from test_pipeline import PROMPTS as MANY, TRIGGERS

    from ipo_jax.cli import main, parse_config
    from ipo_jax.data.prompts import prompt_records_from_config
    from ipo_jax.data.tokenizer import load_tokenizer
    from ipo_jax.judging.pattern import PatternCueDetector, PatternJudge
    from ipo_jax.pipeline.chunks import build_pairs
    from ipo_jax.pipeline.intervene import InterventionConfig
    from ipo_jax.pipeline.triggers import load_triggers
    from ipo_jax.rollout import LocalPolicy
    from ipo_jax.serve import ServedModel

    tokenizer = load_tokenizer(world / "tokenizer")
    prompts, triggers = tmp_path / "prompts.jsonl", tmp_path / "triggers.txt"
    prompts.write_text("".join(json.dumps(dict(r, id=f"{r['id']}-{k}")) + "\n" for k in range(4) for r in MANY))
    triggers.write_text("".join(t + "\n" for t in TRIGGERS))
    remote_sampler = SeededScript(tokenizer)
    served = ServedModel(remote_sampler, tokenizer, "scripted", 4096, 1 << 20, len(tokenizer))
    with serving(served) as base:
        args = ["build-pairs", "--config", str(ROOT / "configs" / "pipeline_tiny_cpu.py"), "--config.model.init=",
                f"--config.tokenizer={world / 'tokenizer'}", f"--config.prompts={prompts}", f"--config.out={tmp_path / 'http'}",
                f"--config.triggers_file={triggers}", "--config.intervention.benign_candidates=3",
                "--config.policy.backend=http", f"--config.policy.base_url={base}", "--config.policy.model=scripted",
                "--config.policy.concurrency=4"]
        assert main(args) == 0

    config = parse_config(args[1:], "build-pairs")
    sampling = SamplingConfig(temperature=config.sampling.temperature, top_p=config.sampling.top_p,
                              top_k=config.sampling.top_k, max_new_tokens=config.sampling.max_new_tokens)
    local_sampler = SeededScript(tokenizer)
    local = build_pairs(prompt_records_from_config(config), tmp_path / "local",
                        LocalPolicy(local_sampler, tokenizer, sampling, policy_id="scripted"), PatternJudge(),
                        PatternCueDetector(), load_triggers(triggers), InterventionConfig(**config.intervention))
    remote = json.loads((tmp_path / "http" / "summary.json").read_text())
    assert (remote.pop("judge_requests"), remote.pop("judge_failed_requests")) == (0, 0)  # the pattern judge: never asked
    assert remote == local
    assert _records(tmp_path / "http" / "pairs.jsonl", "http") == _records(tmp_path / "local" / "pairs.jsonl")
    assert sorted(remote_sampler.seeds) == sorted(local_sampler.seeds)  # the server batches rows in its own order
    # the script's seed-dependent choices made every kind of outcome happen
    assert local["pairs"] > 0 and local["over_refusal_pairs"] > 0 and local["safe_original"] > 0
    assert len(local["success_per_round"]) >= 2


def test_complete_forks_over_http_equal_in_process(world, served, url):
    """HttpPolicy.complete_forks (whole prompts) == LocalPolicy.complete_forks on the tiny model."""
    from ipo_jax.rollout import HttpPolicy, LocalPolicy
    from ipo_jax.sampling import Fork

    sampling = SamplingConfig(temperature=1.0, top_p=0.9, max_new_tokens=6)
    local = LocalPolicy(served.sampler, served.tokenizer, sampling, policy_id=MODEL)
    remote = HttpPolicy(served.tokenizer, sampling, base_url=url, model=MODEL)
    messages = [{"role": "user", "content": PROMPTS[0]["prompt"]}]
    prefix = served.encode("Okay, let me think. Let me work them out.")
    forks = [Fork(cut=3, suffix=(5, 6), n=2), Fork(cut=len(prefix), n=3), Fork(cut=0, n=1, row_seeds=(11,))]
    got, want = remote.complete_forks(messages, prefix, forks, seed=5), local.complete_forks(messages, prefix, forks, seed=5)
    assert [[c.ids for c in group] for group in got] == [[c.ids for c in group] for group in want]
    assert got == want and [len(g) for g in got] == [2, 3, 1]
    jobs = [(messages, prefix[:4]), (messages, "Okay,"), (messages, "")]
    assert remote.complete(jobs, seed=8) == local.complete(jobs, seed=8)


def test_http_backend_needs_its_url_and_model(world, tmp_path, capsys):
    from ipo_jax.cli import main

    args = _pipeline_args("build-pairs", world, tmp_path / "x", "--config.policy.backend=http")
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "config.policy.base_url is ''" in err
    assert main(_pipeline_args("sample", world, tmp_path / "y", "--config.policy.backend=vllm")) == 2
    assert "config.policy.backend is 'vllm'; expected one of 'local', 'http'" in capsys.readouterr().err


# ----------------------------------------------------------------------------- the CLI


def test_serve_help_and_a_bad_model_exit_cleanly(capsys, tmp_path):
    from ipo_jax.cli import main

    assert main(["serve", "--help"]) == 0
    text = capsys.readouterr().out
    assert "/v1/completions" in text and "/v1/chat/completions" in text and "--api-key" in text and "--model" in text and "--port" in text and "127.0.0.1" in text
    for model, words in (("preset:no-such-model", "--model 'preset:no-such-model': expected a known preset"),
                         (f"hf:{tmp_path / 'missing'}", "does not exist"),
                         ("gguf:x", "expected 'preset:<name>', 'hf:<dir>' or 'orbax:<dir>'")):
        assert main(["serve", "--model", model]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("ipo-jax serve: error: ") and words in err
    assert main(["serve", "--model", MODEL, "--mesh", "data"]) == 2
    assert "--mesh 'data': expected axis=size pairs" in capsys.readouterr().err
    assert main(["serve", "--model", MODEL, "--batch-size", "0"]) == 2
    assert "--batch-size is 0; expected an integer >= 1" in capsys.readouterr().err
    assert main(["serve", "--model", MODEL]) == 2  # a preset has no tokenizer of its own
    assert "no tokenizer configured" in capsys.readouterr().err
    assert main(["serve"]) == 2 and "--model" in capsys.readouterr().err


def test_the_serve_command_serves_until_interrupted(world):
    """`ipo-jax serve --port 0` in its own process: one line says where, /health and a completion
    answer, and SIGINT (Ctrl-C) shuts it down as every stage's interrupt: exit code 130, one line."""
    import os
    import signal
    import subprocess
    import sys

    command = [sys.executable, "-m", "ipo_jax.cli", "serve", "--model", MODEL, "--tokenizer", str(world / "tokenizer"),
               "--port", "0", "--max-prompt-length", "64", "--served-model-name", "tiny"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                               env=dict(os.environ, JAX_PLATFORMS="cpu"))
    try:
        line = process.stdout.readline()
        assert line.startswith("serving 'tiny' on http://127.0.0.1:"), (line, process.stderr.read() if process.poll() else "")
        base = line.split(" on ", 1)[1].split()[0]
        assert call(base.removesuffix("/v1"), "/health") == (200, {"status": "ok"})
        status, out = call(base, "/completions", dict(model="tiny", prompt=[5, 6, 7], max_tokens=3, seed=1))
        assert status == 200 and out["model"] == "tiny" and out["choices"][0]["finish_reason"] in ("stop", "length")
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 130
        assert process.stderr.read().strip().splitlines()[-1] == "ipo-jax serve: interrupted"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_a_sharded_server_samples_greedily_what_one_device_does(world, served, url):
    """--mesh: rows over data, KV heads over tensor; greedy tokens equal the one-device server's."""
    from ipo_jax.serve import load_served_model

    sharded = load_served_model(MODEL, tokenizer=str(world / "tokenizer"), batch_size=8, max_prompt_length=512,
                                mesh="data=-1,tensor=2")
    body = dict(prompt=[served.encode(p["prompt"]) for p in PROMPTS], temperature=0, max_tokens=8, seed=0,
                return_token_ids=True)
    with serving(sharded) as sharded_url:
        assert ids_of(call(sharded_url, "/completions", body)[1]) == ids_of(call(url, "/completions", body)[1])


def test_serving_beyond_loopback_warns_on_stderr_and_says_where_on_stdout(monkeypatch, capsys):
    """The two lines `ipo-jax serve` writes itself, through logging: where it serves on stdout, a
    warning on stderr when it listens beyond this machine (no model loads: the load and the server
    are stand-ins)."""
    import types

    from ipo_jax import serve
    from ipo_jax.cli import main

    served = types.SimpleNamespace(name="stand-in", names=("stand-in",), max_prompt_tokens=64, context=128)
    ran = []
    for name in ("IPO_JAX_API_KEY", "VLLM_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(serve, "check_served_settings", lambda *a, **k: None)
    monkeypatch.setattr(serve, "load_served_model", lambda *a, **k: served)
    monkeypatch.setattr(serve, "make_server", lambda *a, **k: (types.SimpleNamespace(run=lambda sockets: ran.append(1),
                                                                                     signals=[]),
                                                               types.SimpleNamespace(close=lambda: None)))
    assert main(["serve", "--model", MODEL, "--host", "0.0.0.0", "--port", "0"]) == 0 and ran == [1]
    captured = capsys.readouterr()
    assert captured.err == ("warning: listening on 0.0.0.0, beyond this machine; the server has no authentication "
                            "(--api-key)\n")
    assert captured.out.startswith("serving 'stand-in' on http://0.0.0.0:") and captured.out.count("\n") == 1
    assert "prompts up to 64 tokens, max_model_len 128" in captured.out
    # with a key (here from the environment, as vLLM's VLLM_API_KEY) there is no warning
    monkeypatch.setenv("VLLM_API_KEY", "k")
    assert main(["serve", "--model", MODEL, "--host", "0.0.0.0", "--port", "0"]) == 0 and ran == [1, 1]
    captured = capsys.readouterr()
    assert captured.err == "" and "API key required" in captured.out
