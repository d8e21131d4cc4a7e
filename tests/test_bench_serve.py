"""tools/bench_serve.py: its statistics (percentiles, tokens/s, errors), its argument checks, its
seeded prompts, the built model (eos's embedding row zero, so greedy rows run to max_tokens), and
one short run against a real `ipo-jax serve` (vLLM left out), and the server command lines."""

import importlib.util
import json
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

_spec = importlib.util.spec_from_file_location("bench_serve", Path(__file__).parents[1] / "tools" / "bench_serve.py")
bench_serve = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("bench_serve", bench_serve)  # its dataclass looks its module up there
_spec.loader.exec_module(bench_serve)


def _request(latency, tokens, ttft=None, error=None):
    return dict(latency=latency, ttft=ttft, tokens=tokens, error=error)


def test_summary_counts_tokens_over_wall_time_and_leaves_failed_requests_out():
    results = [_request(1.0, 10, 0.1), _request(3.0, 10, 0.3), _request(2.0, 12, None), _request(9.0, 0, error="x")]
    row = bench_serve.summarize(results, wall=4.0)
    assert row["requests"] == 4 and row["errors"] == 1 and row["completion_tokens"] == 32
    assert row["tokens_per_s"] == pytest.approx(8.0) and row["requests_per_s"] == pytest.approx(0.75)
    # numpy's linear interpolation over the three answered requests: p50 = 2, p99 at rank 1.98 -> 2.98
    assert row["latency_p50_s"] == pytest.approx(2.0) and row["latency_p99_s"] == pytest.approx(2.98)
    assert row["ttft_p50_s"] == pytest.approx(0.2) and row["ttft_p99_s"] == pytest.approx(0.298)
    assert (row["tokens_min"], row["tokens_max"]) == (10, 12)
    empty = bench_serve.summarize([_request(1.0, 0, error="refused")], wall=1.0)
    assert empty["latency_p50_s"] is None and empty["tokens_min"] is None and empty["tokens_per_s"] == 0
    with pytest.raises(ValueError, match="wall time"):
        bench_serve.summarize(results, wall=0.0)


def test_arguments_are_checked_and_prompts_are_seeded():
    args = bench_serve.parse_args([])
    assert args.servers == ["ipo-jax", "vllm"] and args.concurrency == [1, 8, 32] and args.temperature == 0.0
    for bad in (["--requests", "0"], ["--concurrency", "4", "0"], ["--max-tokens", "0"], ["--servers", "sglang"],
                ["--warmup-requests", "-1"]):
        with pytest.raises(SystemExit) as exit_info:
            bench_serve.parse_args(bad)
        assert exit_info.value.code == 2
    prompts = bench_serve.make_prompts(5, 12, 300, seed=3)
    assert prompts == bench_serve.make_prompts(5, 12, 300, seed=3) != bench_serve.make_prompts(5, 12, 300, seed=4)
    assert np.array(prompts).shape == (5, 12) and 7 <= np.min(prompts) and np.max(prompts) < 300
    with pytest.raises(ValueError, match="no ids above"):
        bench_serve.make_prompts(1, 4, 7)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return bench_serve.build_model_dir(tmp_path_factory.mktemp("bench-serve") / "model", "tiny-qwen3", 300)


def test_the_built_model_cannot_end_a_greedy_row(model_dir):
    from safetensors.numpy import load_file

    config = json.loads((model_dir / "config.json").read_text())
    tokenizer = json.loads((model_dir / "tokenizer.json").read_text())
    assert config["vocab_size"] == len(tokenizer["model"]["vocab"]) == 300
    (embed,) = [v for k, v in load_file(model_dir / "model.safetensors").items() if "embed_tokens" in k]
    assert not embed[config["eos_token_id"]].any()
    assert np.count_nonzero(np.abs(embed).sum(axis=1) == 0) == 1  # only eos's row
    assert bench_serve.model_facts(model_dir)["vocab_size"] == 300


@pytest.fixture(scope="module")
def ipo_url(model_dir):
    """`ipo-jax serve` on the built model, in this process on a free loopback port (as
    tests/test_serve.py runs it: a second process would spend most of the test importing jax)."""
    from ipo_jax.serve import bind, load_served_model, make_server

    served = load_served_model(f"hf:{model_dir}", name=bench_serve.MODEL_NAME, batch_size=2, max_prompt_length=8)
    sock = bind("127.0.0.1", 0)
    server, engine = make_server(served, sock)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.01)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    server.should_exit = True
    thread.join(10)
    engine.close()
    sock.close()


def test_a_short_run_against_ipo_jax_serve(model_dir, ipo_url, tmp_path):
    out = tmp_path / "serve"
    code = bench_serve.main(["--servers", "ipo-jax", "--ipo-url", ipo_url, "--model-dir", str(model_dir),
                             "--concurrency", "1", "2", "--requests", "2", "--prompt-length", "8", "--max-tokens", "3",
                             "--work", str(tmp_path), "--out", str(out)])
    assert code == 0
    report = json.loads(out.with_suffix(".json").read_text())
    assert [(r["server"], r["concurrency"]) for r in report["rows"]] == [("ipo-jax", 1), ("ipo-jax", 2)]
    for row in report["rows"]:
        assert row["errors"] == 0 and row["requests"] == 2 and len(row["results"]) == 2
        assert row["tokens_min"] == row["tokens_max"] == 3 and row["completion_tokens"] == 6
        assert row["tokens_per_s"] == pytest.approx(6 / row["wall_s"])
        assert 0 < row["latency_p50_s"] <= row["latency_p99_s"] <= row["wall_s"]
        if row["streamed"]:  # once the server streams: the first token comes before the whole answer
            assert 0 < row["ttft_p50_s"] <= row["latency_p99_s"]
        else:
            assert row["ttft_p50_s"] is None
    table = out.with_suffix(".md").read_text()
    assert bench_serve.TABLE_HEADER in table and table.count("| ipo-jax |") == 2
    # a request the server refuses is counted as an error, and the exit code says so
    assert bench_serve.main(["--servers", "ipo-jax", "--ipo-url", ipo_url, "--model-dir", str(model_dir),
                             "--concurrency", "1", "--requests", "1", "--prompt-length", "9", "--max-tokens", "2",
                             "--work", str(tmp_path)]) == 1


def test_server_commands():
    args = bench_serve.parse_args(["--prompt-length", "32", "--max-tokens", "8"])
    args.vllm_python = "/venv/bin/python"
    ours = bench_serve.server_command("ipo-jax", Path("/m"), args, 1234, 16)
    assert ours[1:5] == ["-m", "ipo_jax.cli", "serve", "--model"] and ours[5] == "hf:/m"
    assert ours[ours.index("--batch-size") + 1] == "16" and ours[ours.index("--port") + 1] == "0"
    theirs = bench_serve.server_command("vllm", Path("/m"), args, 1234, 16)
    assert theirs[:3] == ["/venv/bin/python", "-m", "vllm.entrypoints.openai.api_server"]
    assert theirs[theirs.index("--max-model-len") + 1] == "40" and theirs[theirs.index("--max-num-seqs") + 1] == "16"
    assert theirs[theirs.index("--port") + 1] == "1234" and theirs[theirs.index("--served-model-name") + 1] == "bench"


def test_ipo_jax_is_restarted_per_level_unless_a_batch_size_is_given(monkeypatch):
    calls = []
    monkeypatch.setattr(bench_serve, "bench_levels",
                        lambda name, url, batch, levels, *rest: calls.append((name, url, batch, levels)) or [])
    args = bench_serve.parse_args(["--concurrency", "1", "8", "32"])
    for name in ("ipo-jax", "vllm"):
        bench_serve.bench_server(name, Path("/m"), [], args, Path("/w"))
    assert calls == [("ipo-jax", None, 1, [1]), ("ipo-jax", None, 8, [8]), ("ipo-jax", None, 32, [32]),
                     ("vllm", None, 32, [1, 8, 32])]
    calls.clear()
    args = bench_serve.parse_args(["--concurrency", "1", "8", "--batch-size", "4", "--vllm-url", "http://h/v1"])
    for name in ("ipo-jax", "vllm"):
        bench_serve.bench_server(name, Path("/m"), [], args, Path("/w"))
    assert calls == [("ipo-jax", None, 4, [1, 8]), ("vllm", "http://h/v1", 4, [1, 8])]
