"""`HttpPolicy` (ipo_jax/rollout/http.py) against a scripted completions server on loopback: the
request fields it sends (token-id prompt, per-row seed, sampling settings, return_token_ids,
extra_body), how it reads ids back (``token_ids``, or vLLM's ``token_id:<id>`` logprobs
tokens), the end-of-turn id, retries on 503 (with Retry-After), errors that are not retried, and
`build_policy` choosing it from the config.  Sleeps are recorded, not waited."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from ipo_jax.sampling import SamplingConfig, row_seed

KEY = "sk-test-policy-not-a-real-key"
KEY_ENV = "IPO_JAX_TEST_HTTP_POLICY_KEY"
MESSAGES = [{"role": "user", "content": "A benign photo question"}]


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    from ipo_jax.data.tiny_tokenizer import build_tiny_tokenizer

    rows = [json.loads(l) for l in (Path(__file__).parents[1] / "configs" / "sample_pairs.jsonl").read_text().splitlines()]
    tokenizer = build_tiny_tokenizer([r[k] for r in rows for k in ("prompt", "prefix", "chosen", "rejected")], vocab_size=400)
    path = tmp_path_factory.mktemp("tokenizer")
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tokenizer(tokenizer_dir):
    from ipo_jax.data.tokenizer import load_tokenizer

    return load_tokenizer(tokenizer_dir)


class Stub:
    """Scripted answers: queued (status, body, headers) first, then `default(request)`."""

    def __init__(self):
        self.lock = threading.Lock()
        self.queue, self.requests = [], []
        self.default = None
        self.active = self.max_active = 0

    def answer(self, request):
        with self.lock:
            if self.queue:
                return self.queue.pop(0)
        return self.default(request)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_POST(self):
        stub: Stub = self.server.stub
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
        request = {"path": self.path, "headers": dict(self.headers.items()), "json": body}
        with stub.lock:
            stub.requests.append(request)
            stub.active += 1
            stub.max_active = max(stub.max_active, stub.active)
        try:
            status, payload, headers = stub.answer(request)
        finally:
            with stub.lock:
                stub.active -= 1
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)


def completion(ids, finish="stop", **choice):
    return {"object": "text_completion", "choices": [{"index": 0, "text": "ignored", "finish_reason": finish,
                                                      "token_ids": ids, **choice}]}


@pytest.fixture
def stub():
    stub = Stub()
    stub.default = lambda request: (200, completion([10, 11, 12], "length"), {})
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    server.stub = stub
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    stub.url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    yield stub
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.fixture
def make(stub, tokenizer, monkeypatch):
    from ipo_jax.rollout.http import HttpPolicy

    monkeypatch.setenv(KEY_ENV, KEY)
    sleeps = []

    def _make(sampling=SamplingConfig(temperature=0.6, top_p=0.95, top_k=0, max_new_tokens=7), **kwargs):
        kwargs.setdefault("api_key_env", KEY_ENV)
        kwargs.setdefault("timeout", 5.0)
        policy = HttpPolicy(tokenizer, sampling, base_url=kwargs.pop("base_url", stub.url),
                            model=kwargs.pop("model", "served/policy"), sleep=sleeps.append, **kwargs)
        policy.sleeps = sleeps
        return policy

    return _make


def test_retries_a_503_then_sends_and_reads_a_completion(stub, make, tokenizer):
    from ipo_jax.data.tokenizer import encode_prompt, stop_token_ids

    end = stop_token_ids(tokenizer)[0]
    stub.queue.append((503, {"error": {"message": "warming up"}}, {}))
    stub.queue.append((200, completion([40, 41, end]), {}))
    policy = make(backoff=0.5)
    (result,) = policy.complete([(MESSAGES, [7, 8, 9])], seed=3)
    assert len(stub.requests) == 2 and policy.sleeps == [0.5]
    body = stub.requests[-1]["json"]
    assert stub.requests[-1]["path"] == "/v1/completions"
    assert body == {"model": "served/policy", "prompt": encode_prompt(tokenizer, MESSAGES) + [7, 8, 9], "max_tokens": 7,
                    "temperature": 0.6, "top_p": 0.95, "seed": row_seed(3, 0), "return_token_ids": True}
    assert stub.requests[-1]["headers"]["Authorization"] == f"Bearer {KEY}"
    # the end-of-turn id stays in the ids and out of the text, as with the in-process policy
    assert result.ids == (40, 41, end) and result.finish_reason == "stop" and result.text == policy.decode([40, 41])


def test_one_request_per_row_with_its_row_seed_and_the_concurrency_limit(stub, make):
    policy = make(concurrency=2, sampling=SamplingConfig(temperature=1.0, top_p=1.0, top_k=5, max_new_tokens=3),
                  extra_body={"min_tokens": 1})
    jobs = [(MESSAGES, "Okay,"), (MESSAGES, [5]), (MESSAGES, ""), (MESSAGES, [6, 6])]
    results = policy.complete(jobs, seed=11)
    assert [r.ids for r in results] == [(10, 11, 12)] * 4 and all(r.finish_reason == "length" for r in results)
    sent = sorted(stub.requests, key=lambda r: r["json"]["seed"])
    assert sorted(r["json"]["seed"] for r in sent) == sorted(row_seed(11, r) for r in range(4))
    by_seed = {r["json"]["seed"]: r["json"] for r in stub.requests}
    for r, (messages, prefix) in enumerate(jobs):
        assert by_seed[row_seed(11, r)]["prompt"] == policy.prompt_ids(messages, prefix)
    assert all(r["json"]["top_k"] == 5 and r["json"]["min_tokens"] == 1 for r in stub.requests)
    assert stub.max_active <= 2


def test_retry_after_is_honoured(stub, make):
    stub.queue.append((503, {"error": "busy"}, {"Retry-After": "2"}))
    policy = make(backoff=0.25)
    assert policy.complete([(MESSAGES, "")], seed=0)[0].ids == (10, 11, 12)
    assert policy.sleeps == [2.0]


def test_vllm_logprobs_token_ids_are_read(stub, make):
    stub.default = lambda request: (200, {"choices": [{"index": 0, "text": "x", "finish_reason": "length",
                                                        "logprobs": {"tokens": ["token_id:21", "token_id:22"]}}]}, {})
    assert make().complete([(MESSAGES, "")], seed=0)[0].ids == (21, 22)


@pytest.mark.parametrize("status, payload, words", [
    (200, {"choices": [{"index": 0, "text": "x", "finish_reason": "stop"}]}, "no token ids in the response"),
    (200, completion([1, 2], "abort"), "finish_reason is 'abort'"),
    (200, completion([1, -2]), "not a list of token ids"),
    (400, {"error": {"message": "prompt too long", "type": "invalid_request_error"}}, "HTTP 400"),
])
def test_bad_answers_fail_once_without_retries(stub, make, status, payload, words):
    from ipo_jax.rollout.http import PolicyBackendError

    stub.default = lambda request: (status, payload, {})
    policy = make()
    with pytest.raises(PolicyBackendError) as error:
        policy.complete([(MESSAGES, ""), (MESSAGES, "Okay,")], seed=0)
    message = str(error.value)
    assert "2 of 2 completions failed" in message and words in message and "\n" not in message
    assert len(stub.requests) == 2 and policy.sleeps == [] and KEY not in message


def test_retries_run_out(stub, make):
    from ipo_jax.rollout.http import PolicyBackendError

    stub.default = lambda request: (500, {"error": "down"}, {})
    policy = make(max_retries=2, backoff=1.0)
    with pytest.raises(PolicyBackendError, match=r"1 of 1 completions failed; row 0: HTTP 500 .* after 3 attempts"):
        policy.complete([(MESSAGES, "")], seed=0)
    assert policy.sleeps == [1.0, 2.0]


def test_settings_are_checked(make, tokenizer):
    with pytest.raises(ValueError, match="must not set seed"):
        make(extra_body={"seed": 1})
    with pytest.raises(ValueError, match="must start with http"):
        make(base_url="ftp://x/v1")
    with pytest.raises(ValueError, match="must not contain credentials"):
        make(base_url="http://user:pw@x/v1")
    with pytest.raises(ValueError, match="policy.model"):
        make(model="")
    policy = make(max_prompt_tokens=123)
    assert policy.max_prompt_tokens == 123 and policy.policy_id == "served/policy" and not policy.forks_prefix
    assert policy.count_tokens("Okay,") == len(policy.encode_text("Okay,")) > 0


def test_build_policy_chooses_the_http_backend_without_loading_a_model(stub, tokenizer_dir):
    import ml_collections

    from ipo_jax.pipeline.config import base_config
    from ipo_jax.rollout import build_policy
    from ipo_jax.rollout.http import HttpPolicy
    from ipo_jax.validation import settings_problems

    config = base_config()
    config.tokenizer = str(tokenizer_dir)
    config.prompts, config.out = "p.jsonl", str(tokenizer_dir / "out")
    config.policy.backend = "http"
    assert settings_problems("build-pairs", config) == [
        "config.policy.base_url is ''; expected a non-empty string with policy.backend 'http'",
        "config.policy.model is ''; expected a non-empty string with policy.backend 'http'"]
    config.policy.base_url, config.policy.model = stub.url, "served/policy"
    config.policy.extra_body = '{"min_tokens": 2}'
    config.sampling.max_new_tokens, config.sampler.max_prompt_length = 5, 999
    assert settings_problems("build-pairs", config) == []  # model.init '' is fine: nothing is loaded
    policy = build_policy(config)
    assert isinstance(policy, HttpPolicy) and policy.max_prompt_tokens == 999 and policy.sampling.max_new_tokens == 5
    policy.complete([(MESSAGES, "")], seed=1)
    assert stub.requests[-1]["json"]["min_tokens"] == 2 and stub.requests[-1]["json"]["max_tokens"] == 5
    config.policy.extra_body = "[1]"
    assert settings_problems("build-pairs", config) == ["config.policy.extra_body is '[1]'; expected '' or a JSON object"]
    with pytest.raises(ValueError, match="policy.extra_body must be a JSON object"):
        build_policy(config)
    config.policy.extra_body = "{oops"
    assert "(this is not valid JSON)" in settings_problems("build-pairs", config)[0]
    assert isinstance(config.policy, ml_collections.ConfigDict)


def test_build_pairs_against_a_closed_port_is_one_line_and_exit_2(tokenizer_dir, tmp_path, capsys):
    import socket

    from ipo_jax.cli import main

    with socket.socket() as s:  # a loopback port with nothing listening on it
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"id": "p1", "prompt": "A risky thing [request details withheld]", "kind": "harmful"}) + "\n")
    args = ["build-pairs", "--config", str(Path(__file__).parents[1] / "configs" / "pipeline_tiny_cpu.py"),
            "--config.model.init=", f"--config.tokenizer={tokenizer_dir}", f"--config.prompts={prompts}",
            f"--config.out={tmp_path / 'out'}", "--config.policy.backend=http",
            f"--config.policy.base_url=http://127.0.0.1:{port}/v1", "--config.policy.model=m",
            "--config.policy.max_retries=1", "--config.policy.backoff=0"]
    assert main(args) == 2
    err = capsys.readouterr().err
    # one line per event: the one retry (max_retries=1) is a warning, then the error; no traceback
    retry, error = err.splitlines()
    assert retry.startswith("warning: policy http:m: connection refused") and "retry 1/1" in retry
    assert error.startswith("ipo-jax build-pairs: error: http policy: 1 of 1 completions failed")
    assert f"connection refused (http://127.0.0.1:{port}/v1/completions) after 2 attempts" in err
    assert not (tmp_path / "out" / "pairs.jsonl").exists()


def test_describe_says_where_completions_come_from(stub, make, tokenizer):
    """`Policy.describe()`, the run.json provenance block of the policy: the endpoint and model
    (and what the server said; this stub has no GET /models) or the in-process model."""
    from ipo_jax.provenance import policy_provenance
    from ipo_jax.rollout import LocalPolicy

    described = policy_provenance(make(policy_id="pairs-id"))
    assert {k: described[k] for k in ("backend", "id", "model", "endpoint")} == {
        "backend": "http", "id": "pairs-id", "model": "served/policy", "endpoint": f"{stub.url}/completions"}
    assert described["server"]["models"] is None and "/v1/models" in described["server"]["models_error"]
    assert stub.requests == []  # describing sends no completion request
    local = LocalPolicy(None, tokenizer, SamplingConfig(), "preset:tiny-qwen3")
    assert policy_provenance(local) == {
        "backend": "local", "id": "preset:tiny-qwen3", "endpoint": None, "model": "preset:tiny-qwen3", "server": None}


def test_the_seam_imports_one_way():
    """ipo_jax/http.py is below judging and rollout (imports no ipo_jax module); rollout imports
    nothing from judging; no module of either imports inside a function."""
    import ast

    package = Path(__file__).resolve().parents[1] / "ipo_jax"

    def imports(path):
        tree = ast.parse(path.read_text())
        inner = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                 for n in ast.walk(f)}
        for node in ast.walk(tree):
            names = ([node.module or ""] if isinstance(node, ast.ImportFrom)
                     else [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            for name in names:
                if name.startswith("ipo_jax"):
                    yield name, id(node) in inner

    assert list(imports(package / "http.py")) == []
    seam = [*sorted((package / "serve").glob("*.py")), package / "pipeline" / "csr.py", *sorted((package / "rollout").glob("*.py")),
            *(package / "judging" / f"{name}.py" for name in ("chat", "build", "llm", "__init__"))]
    for path in seam:
        found = list(imports(path))
        assert not [name for name, inside in found if inside], path
        if path.parent.name == "rollout":
            assert not [name for name, _ in found if name.startswith("ipo_jax.judging")], path
