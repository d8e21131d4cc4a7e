"""Provenance (issue 22, point 6; ipo_jax/provenance.py): every stage's run.json names the policy
backend, endpoint, served model and server version, the judge, the prompt set's digest and the code
version; each record names its provenance id and policy backend, so pairs sampled through an
HTTP server can be told apart from in-process ones.

The HTTP policy is the real `HttpPolicy` against a loopback completions server that scripts its
texts (encoded with the packaged Qwen3 tokenizer); the in-process one is the scripted policy of
tests/test_pipeline.py.  The judge is the demo world's pattern judge (prompts carry its marker).
Harmful content is only the placeholder ``[harmful details withheld]``."""

from __future__ import annotations

import json
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from ipo_jax import __version__
from ipo_jax.cli import main
from ipo_jax.data.tokenizer import packaged_qwen3_tokenizer_dir

CONFIGS = Path(__file__).parents[1] / "configs"
PROMPTS = [{"id": f"p{i}", "prompt": f"How do I do risky thing {i}? [request details withheld]", "kind": "harmful"}
           for i in range(2)]
BLOCK_KEYS = {"id", "stage", "code", "prompts_sha256", "policy", "judge", "detector"}


@pytest.fixture(scope="module")
def tokenizer():
    from ipo_jax.data.tokenizer import load_tokenizer

    return load_tokenizer(packaged_qwen3_tokenizer_dir())


@pytest.fixture
def policy_server(tokenizer):
    """POST /v1/completions: the scripted compliant trajectory for a bare prompt, the safe tail
    after a prefix; GET /v1/models and GET /version as vLLM answers them."""
    from test_pipeline import COMPLIANT, SAFE_TAIL

    from ipo_jax.data.tokenizer import encode_text, stop_token_ids

    end = stop_token_ids(tokenizer)[0]

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def _send(self, body):
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            if self.path == "/v1/models":
                return self._send({"object": "list", "data": [{"id": "served-policy", "object": "model",
                                                               "root": "/models/policy-7b", "max_model_len": 4096}]})
            self._send({"version": "0.9.test"})  # /version

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
            prompt = tokenizer.decode(body["prompt"])
            text = SAFE_TAIL if "Let me think about what it involves." in prompt else COMPLIANT
            ids = encode_text(tokenizer, text) + [end]
            self._send({"object": "text_completion", "model": body["model"],
                        "choices": [{"index": 0, "text": text, "finish_reason": "stop", "token_ids": ids}]})

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def scripted(monkeypatch):
    from test_pipeline import ScriptedPolicy

    class Policy(ScriptedPolicy):
        def complete(self, jobs, seed, row_seeds=None):
            return super().complete(jobs, seed)

    monkeypatch.setattr("ipo_jax.pipeline.run.build_policy", lambda config: Policy())
    monkeypatch.setattr("ipo_jax.eval.harness.build_policy", lambda config: Policy())


def _run(stage, tmp_path, out, *overrides):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(p) + "\n" for p in PROMPTS))
    return main([stage, "--config", str(CONFIGS / "pipeline_tiny_cpu.py"), f"--config.prompts={prompts}",
                 f"--config.out={out}", f"--config.tokenizer={packaged_qwen3_tokenizer_dir()}", *overrides])


def _http(base):
    return ("--config.model.init=", "--config.policy.backend=http", f"--config.policy.base_url={base}",
            "--config.policy.model=served-policy", "--config.policy.api_key_env=")


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _head() -> str:
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parents[1], capture_output=True,
                          text=True).stdout.strip()


def test_in_process_and_http_pairs_are_told_apart_by_their_records(scripted, policy_server, tmp_path, capsys,
                                                                   monkeypatch):
    from ipo_jax.data.pairs import read_pair_records

    local, http = tmp_path / "local", tmp_path / "http"
    assert _run("build-pairs", tmp_path, local, "--config.model.init=preset:tiny-qwen3") == 0, capsys.readouterr().err
    # the real HttpPolicy (build_policy restored for it) against the loopback server
    from ipo_jax.rollout import policy as policy_module

    monkeypatch.setattr("ipo_jax.pipeline.run.build_policy", policy_module.build_policy)
    assert _run("build-pairs", tmp_path, http, *_http(policy_server)) == 0, capsys.readouterr().err

    blocks = {}
    for name, out in (("local", local), ("http", http)):
        manifest = json.loads((out / "run.json").read_text())
        (block,) = manifest["provenance"].values()
        assert set(block) == BLOCK_KEYS and block["stage"] == "build-pairs"
        pairs, trajectories = _lines(out / "pairs.jsonl"), _lines(out / "chunks" / "trajectories-00000.jsonl")
        assert len(pairs) == 12 and len(trajectories) == 2  # 2 prompts x the 6 default triggers
        assert {json.dumps(r["provenance"], sort_keys=True) for r in pairs + trajectories} == {json.dumps(
            {"id": block["id"], "policy_backend": block["policy"]["backend"], "policy_model": block["policy"]["model"]},
            sort_keys=True)}
        assert len(read_pair_records(out / "pairs.jsonl")) == 12  # the trainer reads records with the new field
        blocks[name] = block
    assert blocks["local"]["policy"] == {"backend": "local", "id": "scripted", "endpoint": None, "model": "scripted",
                                         "server": None}
    policy = blocks["http"]["policy"]
    assert (policy["backend"], policy["model"], policy["endpoint"]) == ("http", "served-policy",
                                                                         f"{policy_server}/completions")
    assert (policy["server"]["version"], policy["server"]["max_model_len"], policy["server"]["root"],
            policy["server"]["models"]) == ("0.9.test", 4096, "/models/policy-7b", ["served-policy"])
    assert blocks["local"]["id"] != blocks["http"]["id"]
    assert blocks["local"]["prompts_sha256"] == blocks["http"]["prompts_sha256"] and len(blocks["http"]["prompts_sha256"]) == 64
    for block in blocks.values():
        # the checkout's HEAD (None where the tests run from a copy that is not a git checkout)
        assert block["code"] == {"package": "ipo_jax", "version": __version__, "git_commit": _head() or None}
        assert block["judge"]["backend"] == block["detector"]["backend"] == "pattern"


def test_sample_csr_and_eval_write_run_json_with_provenance(scripted, policy_server, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    assert _run("sample", tmp_path, out, "--config.model.init=preset:tiny-qwen3") == 0, capsys.readouterr().err
    run = json.loads((out / "sample_run.json").read_text())
    assert run["stage"] == "sample" and set(run["provenance"]) == BLOCK_KEYS and run["provenance"]["detector"] is None
    assert run["provenance"]["policy"]["backend"] == "local" and run["trajectories"] == 2
    assert {r["provenance"]["id"] for r in _lines(out / "trajectories.jsonl")} == {run["provenance"]["id"]}

    # csr through the HTTP policy (its sampler is HttpSampler), on the sampled trajectories
    from ipo_jax.rollout import policy as policy_module

    monkeypatch.setattr("ipo_jax.pipeline.run.build_policy", policy_module.build_policy)
    texts = tmp_path / "texts.jsonl"  # the scripted policy's ids are code points, not Qwen3 ids: text only
    texts.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "completion_ids"}) + "\n"
                             for r in _lines(out / "trajectories.jsonl")))
    assert _run("csr", tmp_path, out, *_http(policy_server), f"--config.csr.trajectories={texts}",
                "--config.csr.num_samples=2") == 0, capsys.readouterr().err
    csr = json.loads((out / "csr" / "run.json").read_text())
    assert csr["stage"] == "csr" and csr["provenance"]["policy"]["backend"] == "http"
    assert csr["provenance"]["policy"]["server"]["version"] == "0.9.test" and csr["csr"]["num_samples"] == 2
    assert {r["provenance"]["policy_backend"] for r in _lines(out / "csr_summary.jsonl")} == {"http"}
    assert not (out / "run.json").exists()  # build-pairs' run.json is left to build-pairs

    bench = tmp_path / "safety.jsonl"
    bench.write_text("".join(json.dumps(p) + "\n" for p in PROMPTS))
    assert main(["eval", "--config", str(CONFIGS / "eval.py"), "--config.model.init=preset:tiny-qwen3",
                 f"--config.benchmarks=jsonl={bench}", f"--config.out={tmp_path / 'eval'}"]) == 0, capsys.readouterr().err
    ev = json.loads((tmp_path / "eval" / "run.json").read_text())
    assert ev["stage"] == "eval" and set(ev["provenance"]) == BLOCK_KEYS and ev["provenance"]["policy"]["model"] == "scripted"
    assert ev["provenance"]["prompts_sha256"] and ev["provenance"]["judge"]["backend"] == "pattern"
    rows = _lines(tmp_path / "eval" / "generations.jsonl")
    assert len(rows) == 2 and {r["provenance"]["id"] for r in rows} == {ev["provenance"]["id"]}
    assert json.loads((tmp_path / "eval" / "summary.json").read_text())["provenance"] == ev["provenance"]


def test_a_resumed_run_keeps_both_provenance_blocks(tmp_path):
    """A chunk redone with another backend adds its block to run.json; its records name it."""
    from test_pipeline import _build

    from ipo_jax.provenance import stage_provenance

    first = stage_provenance("build-pairs", prompts_digest="x")
    second = dict(first, id="0123456789abcdef", policy={"backend": "http", "model": "served"})
    _build(tmp_path, provenance=first)
    (tmp_path / "chunks" / "progress-00001.json").unlink()
    _build(tmp_path, provenance=second)
    manifest = json.loads((tmp_path / "run.json").read_text())
    assert list(manifest["provenance"]) == [first["id"], "0123456789abcdef"]
    ids = {r["prompt_id"]: r["provenance"]["id"] for r in _lines(tmp_path / "pairs.jsonl")}
    assert ids["p1"] == first["id"] and ids["p4"] == "0123456789abcdef"


def test_code_version_outside_a_git_checkout(monkeypatch):
    from ipo_jax import provenance

    provenance.code_version.cache_clear()

    def no_git(*args, **kwargs):
        raise FileNotFoundError("git")

    monkeypatch.setattr(provenance.subprocess, "run", no_git)
    assert provenance.code_version() == {"package": "ipo_jax", "version": __version__, "git_commit": None}
    provenance.code_version.cache_clear()
    monkeypatch.setattr(provenance.subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, 128, "", "not a repo"))
    assert provenance.code_version()["git_commit"] is None
    provenance.code_version.cache_clear()
