"""Judge failures stop the stage (issue 22, point 3; ipo_jax/judging/guard.py): a judge endpoint
answering 404 (a mistyped model name), a judge whose context is shorter than the stage's requests,
a first batch that fails entirely, and a chunk over ``judge.max_error_share`` end `build-pairs`,
`sample`, `csr` and `eval` with exit code 5 and one line naming the endpoint, model, HTTP status
and the server's message; a failure share under the limit goes on and is reported on stdout.

Against a loopback OpenAI-compatible judge server (GET /v1/models, POST /v1/chat/completions);
the policy is the scripted one of tests/test_pipeline.py (build_policy patched), so nothing is
sampled on a device.  Harmful content is only the placeholder ``[harmful details withheld]``."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from ipo_jax.cli import EXIT_JUDGE_FAILED, main
from ipo_jax.data.tokenizer import packaged_qwen3_tokenizer_dir
from ipo_jax.judging.prompts import CUE_SYSTEM

CONFIGS = Path(__file__).parents[1] / "configs"
NOT_FOUND = {"object": "error", "message": "The model `judge-typo` does not exist.", "type": "NotFoundError",
             "param": None, "code": 404}


class JudgeServer:
    """GET /v1/models -> `models` (None: 404); POST /v1/chat/completions -> `chat(request json)`
    as (status, body).  Records every chat request."""

    def __init__(self):
        self.models = None
        self.chat = None
        self.requests: list[dict] = []
        self.lock = threading.Lock()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _send(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        state: JudgeServer = self.server.state
        if self.path == "/v1/models" and state.models is not None:
            return self._send(200, {"object": "list", "data": state.models})
        self._send(404, {"detail": "Not Found"})

    def do_POST(self):
        state: JudgeServer = self.server.state
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
        with state.lock:
            state.requests.append(body)
        status, payload = state.chat(body)
        self._send(status, payload)


@pytest.fixture
def judge_server():
    state = JudgeServer()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.state = state
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    state.base_url = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    yield state
    httpd.shutdown()
    httpd.server_close()


def chat_reply(content):
    return 200, {"id": "x", "object": "chat.completion",
                 "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}]}


def scripted_judge(request):
    """Cue requests: sentence 3 ('Let me work them out.'); judge requests: unsafe iff the judged
    text holds the harmful placeholder; the probe ('ping'): a word."""
    messages = request["messages"]
    if messages[0]["content"] == CUE_SYSTEM:
        return chat_reply("3")
    return chat_reply("unsafe" if "[harmful details withheld]" in messages[-1]["content"] else "safe")


def is_probe(request) -> bool:
    return request["messages"] == [{"role": "user", "content": "ping"}]


PROMPTS = [{"id": f"p{i}", "prompt": f"How do I do risky thing {i}? [request details withheld]", "kind": "harmful"}
           for i in range(4)]


@pytest.fixture
def scripted(monkeypatch):
    """The scripted policy behind every stage's build_policy; returns the list of made policies."""
    from test_pipeline import ScriptedPolicy

    class Policy(ScriptedPolicy):
        def complete(self, jobs, seed, row_seeds=None):  # eval passes row seeds; the script needs none
            return super().complete(jobs, seed)

    made = []

    def build_policy(config):
        made.append(Policy())
        return made[-1]

    monkeypatch.setattr("ipo_jax.pipeline.run.build_policy", build_policy)
    monkeypatch.setattr("ipo_jax.eval.harness.build_policy", build_policy)
    return made


def _prompts_file(tmp_path, prompts=PROMPTS) -> Path:
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in prompts))
    return path


def _pipeline(stage, server, tmp_path, *overrides, model="judge-model"):
    return main([stage, "--config", str(CONFIGS / "pipeline_tiny_cpu.py"), f"--config.prompts={_prompts_file(tmp_path)}",
                 f"--config.out={tmp_path / 'out'}", "--config.judge.backend=http",
                 f"--config.judge.base_url={server.base_url}", f"--config.judge.model={model}",
                 "--config.judge.api_key_env=", "--config.judge.max_retries=0", "--config.intervention.chunk_prompts=4",
                 "--config.model.init=preset:tiny-qwen3", f"--config.tokenizer={packaged_qwen3_tokenizer_dir()}",
                 *overrides])


def _one_line(err: str, stage: str) -> str:
    assert err.count("\n") == 1, err
    assert err.startswith(f"ipo-jax {stage}: error: "), err
    return err


# --------------------------------------------------------------------------- build-pairs


def test_build_pairs_with_a_judge_answering_404_exits_5_before_sampling(judge_server, scripted, tmp_path, capsys):
    judge_server.chat = lambda request: (404, NOT_FOUND)
    code = _pipeline("build-pairs", judge_server, tmp_path, model="judge-typo")
    err = _one_line(capsys.readouterr().err, "build-pairs")
    assert code == EXIT_JUDGE_FAILED == 5
    assert f"at {judge_server.base_url}/chat/completions" in err and "'judge-typo'" in err
    assert "HTTP 404" in err and "The model `judge-typo` does not exist." in err and "probe request" in err
    assert scripted == []  # stopped before the policy was even built
    assert len(judge_server.requests) == 1 and is_probe(judge_server.requests[0])
    assert not (tmp_path / "out" / "pairs.jsonl").exists()


def test_build_pairs_first_batch_all_errors_exits_5_and_keeps_no_chunk(judge_server, scripted, tmp_path, capsys):
    """The probe is answered, every judge prompt is refused (as a server whose context every
    prompt exceeds, without naming max_model_len): the first batch fails entirely."""
    too_long = {"object": "error", "message": "This model's maximum context length is 512 tokens. However, you "
                "requested 1930 tokens.", "type": "BadRequestError", "code": 400}
    judge_server.chat = lambda request: chat_reply("ok") if is_probe(request) else (400, too_long)
    code = _pipeline("build-pairs", judge_server, tmp_path)
    err = _one_line(capsys.readouterr().err, "build-pairs")
    assert code == 5
    assert "all 8 requests of the first batch failed" in err and "HTTP 400" in err
    assert "maximum context length is 512 tokens" in err and "'judge-model'" in err and judge_server.base_url in err
    assert len(scripted) == 1 and scripted[0].calls == 1  # the originals were sampled, nothing more
    assert not (tmp_path / "out" / "pairs.jsonl").exists()
    assert not list((tmp_path / "out" / "chunks").glob("progress-*.json"))  # the chunk is not marked done


def test_build_pairs_judge_context_shorter_than_its_prompts_exits_5_before_sampling(judge_server, scripted, tmp_path,
                                                                                     capsys):
    judge_server.models = [{"id": "judge-model", "object": "model", "max_model_len": 512}]
    judge_server.chat = scripted_judge
    code = _pipeline("build-pairs", judge_server, tmp_path)
    err = _one_line(capsys.readouterr().err, "build-pairs")
    assert code == 5
    assert "judge context too short" in err and "max_model_len 512 (GET /models)" in err and "'judge-model'" in err
    assert "64 trajectory tokens (sampling.max_new_tokens)" in err and "1,024 reply tokens (judge.max_tokens)" in err
    assert "estimated at 3 characters per token" in err
    assert scripted == [] and all(is_probe(r) for r in judge_server.requests)


def test_build_pairs_context_check_passes_with_a_long_enough_context(judge_server, scripted, tmp_path, capsys):
    judge_server.models = [{"id": "judge-model", "object": "model", "max_model_len": 8192}]
    judge_server.chat = scripted_judge
    assert _pipeline("build-pairs", judge_server, tmp_path) == 0, capsys.readouterr().err
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    (block,) = run["provenance"].values()
    check = block["judge"]["server"]["context_check"]
    assert check["judge"]["limit"] == 8192 and check["judge"]["need"] < 8192 and check["detector"]["limit"] == 8192


def test_context_check_counts_with_the_judge_tokenizer_when_given(judge_server, scripted, tmp_path, capsys):
    """1700 tokens: too short by the 3-characters-per-token estimate (761 template + 64 + 1024),
    long enough counted with the judge's (Qwen3) tokenizer (540 + 64 + 1024)."""
    judge_server.models = [{"id": "judge-model", "object": "model", "max_model_len": 1700}]
    judge_server.chat = scripted_judge
    assert _pipeline("build-pairs", judge_server, tmp_path) == 5
    assert "761 template tokens" in capsys.readouterr().err
    code = _pipeline("build-pairs", judge_server, tmp_path, f"--config.judge.tokenizer={packaged_qwen3_tokenizer_dir()}")
    assert code == 0, capsys.readouterr().err
    (block,) = json.loads((tmp_path / "out" / "run.json").read_text())["provenance"].values()
    assert block["judge"]["server"]["context_check"]["judge"]["template_tokens"] == 540


def _flaky_judge(request):
    """Every request answered, but the original reasoning of prompt p2 fails with a 500."""
    text = request["messages"][-1]["content"]
    if "risky thing 2" in text and "[ASSISTANT'S REASONING]\nOkay, the user asks about something risky. Let me " \
            "think about what it involves. Let me work them out." in text:
        return 500, {"error": {"message": "judge worker crashed on this prompt", "type": "InternalServerError"}}
    return scripted_judge(request)


def test_failures_under_max_error_share_go_on_and_are_reported(judge_server, scripted, tmp_path, capsys):
    """One of the chunk's 60 judge / cue requests fails (1.7%, under the default 5%): the run goes
    on, the count is on stdout and in summary.json."""
    judge_server.chat = _flaky_judge
    code = _pipeline("build-pairs", judge_server, tmp_path)
    out = capsys.readouterr().out
    assert code == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    sent = [r for r in judge_server.requests if not is_probe(r)]  # max_retries 0: one request each
    assert (summary["judge_failed_requests"], summary["judge_requests"]) == (1, len(sent)) == (1, 60)
    assert "judge: 1 of 60 judge / cue-detector requests failed (1.7%; each chunk may fail up to " \
           "judge.max_error_share 0.05)" in out
    assert '"judge_failed_requests": 1' in out
    # p2's reasoning verdict is an error, its answer unsafe: the trajectory is unsafe and intervened on
    assert summary["unsafe_original"] == 4 and summary["pairs"] > 0


def test_failures_over_max_error_share_stop_the_chunk(judge_server, scripted, tmp_path, capsys):
    judge_server.chat = _flaky_judge
    code = _pipeline("build-pairs", judge_server, tmp_path, "--config.judge.max_error_share=0.01")
    err = _one_line(capsys.readouterr().err, "build-pairs")
    assert code == 5
    assert "1 of 60 requests in chunk 0 failed (1.7%, over judge.max_error_share 0.01" in err
    assert "HTTP 500" in err and "judge worker crashed on this prompt" in err
    assert not list((tmp_path / "out" / "chunks").glob("progress-*.json"))


def test_max_error_share_is_validated(judge_server, scripted, tmp_path, capsys):
    judge_server.chat = scripted_judge
    assert _pipeline("build-pairs", judge_server, tmp_path, "--config.judge.max_error_share=1.5") == 2
    assert "config.judge.max_error_share is 1.5; expected a finite number in [0, 1]" in capsys.readouterr().err


# --------------------------------------------------------------------------- sample, csr, eval


def test_sample_with_a_judge_answering_404_exits_5(judge_server, scripted, tmp_path, capsys):
    judge_server.chat = lambda request: (404, NOT_FOUND)
    assert _pipeline("sample", judge_server, tmp_path, model="judge-typo") == 5
    err = _one_line(capsys.readouterr().err, "sample")
    assert "HTTP 404" in err and "does not exist" in err and "'judge-typo'" in err and scripted == []
    assert not (tmp_path / "out" / "trajectories.jsonl").exists()


def _trajectories(tmp_path) -> Path:
    path = tmp_path / "trajectories.jsonl"
    path.write_text(json.dumps({"id": "t1", "prompt": PROMPTS[0]["prompt"], "kind": "harmful",
                                "reasoning": "Okay. Let me think. Let me work them out."}) + "\n")
    return path


def test_csr_with_a_judge_answering_404_exits_5(judge_server, scripted, tmp_path, capsys):
    judge_server.chat = lambda request: (404, NOT_FOUND)
    code = _pipeline("csr", judge_server, tmp_path, f"--config.csr.trajectories={_trajectories(tmp_path)}",
                     model="judge-typo")
    err = _one_line(capsys.readouterr().err, "csr")
    assert code == 5 and "HTTP 404" in err and "does not exist" in err and judge_server.base_url in err
    assert scripted == [] and not (tmp_path / "out" / "csr").exists()


def test_csr_judge_context_too_short_exits_5(judge_server, scripted, tmp_path, capsys):
    judge_server.models = [{"id": "judge-model", "object": "model", "max_model_len": 1000}]
    judge_server.chat = scripted_judge
    code = _pipeline("csr", judge_server, tmp_path, f"--config.csr.trajectories={_trajectories(tmp_path)}",
                     "--config.judge.max_tokens=256")
    err = _one_line(capsys.readouterr().err, "csr")
    assert code == 5 and "max_model_len 1000" in err and "256 reply tokens (judge.max_tokens)" in err
    assert "the longest trajectory + sampling.max_new_tokens" in err and scripted == []


def _eval(server, tmp_path, *overrides, model="judge-model"):
    bench = tmp_path / "safety.jsonl"
    bench.write_text("".join(json.dumps(dict(p, id=p["id"])) + "\n" for p in PROMPTS))
    return main(["eval", "--config", str(CONFIGS / "eval.py"), "--config.model.init=preset:tiny-qwen3",
                 f"--config.benchmarks=jsonl={bench}", "--config.judge.backend=http",
                 f"--config.judge.base_url={server.base_url}", f"--config.judge.model={model}",
                 "--config.judge.api_key_env=", "--config.judge.max_retries=0", f"--config.out={tmp_path / 'eval'}",
                 *overrides])


def test_eval_with_a_judge_answering_404_exits_5(judge_server, scripted, tmp_path, capsys):
    judge_server.chat = lambda request: (404, NOT_FOUND)
    assert _eval(judge_server, tmp_path, model="judge-typo") == 5
    err = _one_line(capsys.readouterr().err, "eval")
    assert "HTTP 404" in err and "The model `judge-typo` does not exist." in err and "'judge-typo'" in err
    assert scripted == [] and not (tmp_path / "eval" / "summary.json").exists()


def test_eval_judge_context_too_short_exits_5(judge_server, scripted, tmp_path, capsys):
    judge_server.models = [{"id": "judge-model", "object": "model", "max_model_len": 4096}]
    judge_server.chat = scripted_judge
    assert _eval(judge_server, tmp_path, "--config.sampling.max_new_tokens=8192") == 5
    err = _one_line(capsys.readouterr().err, "eval")
    assert "max_model_len 4096" in err and "8,192 trajectory tokens (the largest token budget of a judged" in err
    assert scripted == []


def test_eval_first_batch_all_errors_exits_5(judge_server, scripted, tmp_path, capsys):
    judge_server.chat = lambda request: chat_reply("ok") if is_probe(request) else (
        503, {"error": {"message": "no judge replicas available"}})
    assert _eval(judge_server, tmp_path, "--config.judge.backoff=0") == 5
    err = _one_line(capsys.readouterr().err, "eval")
    assert "all 8 requests of the first batch failed" in err and "HTTP 503" in err and "no judge replicas" in err
    assert len(scripted) == 1 and not (tmp_path / "eval" / "summary.json").exists()
