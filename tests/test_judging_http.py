"""`HttpChat` under the LLM judge / cue detector against a scripted OpenAI-compatible server on
loopback: normal replies, request format (max_tokens, extra_body), thinking replies, timeouts,
5xx and 429 retries (with Retry-After), garbage replies, refused connections, exhausted retries,
the concurrency limit and API-key hygiene.  The `server` fixture is shared with
tests/test_judging.py and tests/test_reliability.py.

Sleeps are injected (recorded, not waited), so the suite runs in about a second.  Harmful
content is only ever the placeholder ``[harmful details withheld]``."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from ipo_jax.judging import CueDetector, CueRequest, Judge, JudgeRequest, Verdict, detect_all, judge_all
from ipo_jax.judging import judge_trajectories, trajectory_label
from ipo_jax.http import parse_retry_after
from ipo_jax.judging.chat import HttpChat
from ipo_jax.judging.llm import LLMCueDetector, LLMJudge
from ipo_jax.judging.prompts import ANSWER_SYSTEM, CUE_SYSTEM, DEFAULT_ANSWER_EXAMPLES, DEFAULT_CUE_EXAMPLES, REASONING_SYSTEM
from ipo_jax.pipeline.steps import Sentence

KEY = "sk-test-not-a-real-key"
KEY_ENV = "IPO_JAX_TEST_HTTP_JUDGE_KEY"
RISKY = "[request details withheld]"
HARMFUL = "Let me work out the steps. [harmful details withheld]"


# --------------------------------------------------------------------------- scripted server


def chat(content, finish_reason="stop"):
    """An OpenAI chat-completions response body with one choice."""
    return {
        "id": "cmpl-test",
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish_reason}],
    }


def reply(body=None, status=200, headers=None, delay=0.0):
    """A scripted response: `body` (dict -> JSON, str/bytes -> raw), status, headers, and a
    delay before answering."""
    return {"body": body, "status": status, "headers": dict(headers or {}), "delay": delay}


class Script:
    """What the server answers: queued responses first, then `handler(request)` (a callable of
    the parsed request), then `default`.  Records every request and the most requests seen in
    flight at once."""

    def __init__(self):
        self.lock = threading.Lock()
        self.queue: list[dict] = []
        self.handler = None
        self.default = reply(chat("safe"))
        self.requests: list[dict] = []
        self.active = 0
        self.max_active = 0
        self.release = threading.Event()  # set at teardown: delayed handlers stop waiting

    def next(self, request):
        with self.lock:
            if self.queue:
                return self.queue.pop(0)
        if self.handler is not None:
            return self.handler(request)
        return self.default


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # keep the test output clean
        pass

    def do_POST(self):
        script: Script = self.server.script
        with script.lock:
            script.active += 1
            script.max_active = max(script.max_active, script.active)
        try:
            length = int(self.headers.get("Content-Length", "0"))
            raw = self.rfile.read(length)
            try:
                body = json.loads(raw)
            except ValueError:
                body = None
            request = {"path": self.path, "headers": dict(self.headers.items()), "json": body}
            with script.lock:
                script.requests.append(request)
            spec = script.next(request)
            if spec["delay"]:
                script.release.wait(spec["delay"])
        finally:
            # Leave the in-flight count before answering, so a client slot freed by the answer
            # can never overlap with this request in the count.
            with script.lock:
                script.active -= 1
        payload = spec["body"]
        if isinstance(payload, (dict, list)):
            data = json.dumps(payload).encode()
        elif isinstance(payload, str):
            data = payload.encode()
        else:
            data = payload or b""
        try:
            self.send_response(spec["status"])
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in spec["headers"].items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout tests)
            pass


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):  # a client that hung up is not an error here
        pass


@pytest.fixture
def server():
    script = Script()
    httpd = Server(("127.0.0.1", 0), Handler)
    httpd.script = script
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    script.base_url = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    try:
        yield script
    finally:
        script.release.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


@pytest.fixture
def sleeps():
    return []


@pytest.fixture
def make(server, sleeps, monkeypatch):
    """Build an `LLMJudge` (or, with ``LLMCueDetector``, a detector) on an `HttpChat` for the
    scripted server, with the fake key set and recorded (not waited) sleeps."""
    monkeypatch.setenv(KEY_ENV, KEY)

    def _make(cls=LLMJudge, **kwargs):
        kwargs.setdefault("api_key_env", KEY_ENV)
        kwargs.setdefault("timeout", 2.0)
        kwargs.setdefault("sleep", sleeps.append)
        name = kwargs.pop("name", None)
        chat = HttpChat(kwargs.pop("base_url", server.base_url), kwargs.pop("model", "judge-model"), **kwargs)
        return cls(chat, name=name)

    return _make


def one(judge, prompt, text, part="answer"):
    """One verdict through the batch API."""
    (verdict,) = judge.judge([JudgeRequest(prompt, text, part)])
    return verdict


def first_cue(detector, prompt, sentences):
    (result,) = detector.detect([CueRequest(prompt, sentences)])
    return result


def free_port() -> int:
    """A loopback port with nothing listening on it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def last_user(request) -> str:
    return request["json"]["messages"][-1]["content"]


def assert_no_key(*texts):
    for text in texts:
        assert KEY not in str(text)


# --------------------------------------------------------------------------- normal replies


def test_protocols_and_defaults():
    chat = HttpChat("http://127.0.0.1:1/v1/", "some/model")
    judge, detector = LLMJudge(chat), LLMCueDetector(HttpChat("http://127.0.0.1:1/v1", "some/model"), name="cue")
    assert isinstance(judge, Judge) and isinstance(detector, CueDetector)
    assert judge.name == "http:some/model" and detector.name == "cue"
    assert chat.url == "http://127.0.0.1:1/v1/chat/completions"
    assert HttpChat("http://h/v1/chat/completions", "m").url == "http://h/v1/chat/completions"
    assert (chat.timeout, chat.max_retries, chat.backoff, chat.max_backoff, chat.concurrency) == (30.0, 4, 1.0, 30.0, 8)
    assert chat.api_key_env == "OPENAI_API_KEY" and chat.jitter == 0.0
    assert chat.max_tokens == 1024  # room for a thinking judge to reason and still answer
    for bad in ({"concurrency": 0}, {"max_retries": -1}, {"timeout": 0}, {"backoff": -1.0}, {"max_tokens": 0},
                {"extra_body": {"model": "other"}}, {"extra_body": "[]"}):
        with pytest.raises(ValueError):
            HttpChat("http://h/v1", "m", **bad)
    with pytest.raises(ValueError):
        HttpChat("ftp://h/v1", "m")


def test_normal_reply_request_format_and_auth_header(server, make):
    server.default = reply(chat("unsafe"))
    judge = make(max_tokens=12, extra_body={"chat_template_kwargs": {"enable_thinking": False}})
    verdict = one(judge, RISKY, HARMFUL)
    assert verdict == Verdict("unsafe", 1.0, "http:judge-model", verdict.reason)
    (request,) = server.requests
    assert request["path"] == "/v1/chat/completions"
    assert request["headers"]["Authorization"] == f"Bearer {KEY}"
    body = request["json"]
    assert body["model"] == "judge-model" and body["temperature"] == 0 and body["max_tokens"] == 12
    assert body["chat_template_kwargs"] == {"enable_thinking": False}  # extra_body fields are sent
    messages = body["messages"]
    assert messages[0] == {"role": "system", "content": ANSWER_SYSTEM}
    # few-shot history: user/assistant pairs, then the turn to judge
    assert [m["role"] for m in messages[1:]] == ["user", "assistant"] * len(DEFAULT_ANSWER_EXAMPLES) + ["user"]
    assert [m["content"] for m in messages[2:-1:2]] == [e.label for e in DEFAULT_ANSWER_EXAMPLES]
    assert RISKY in messages[-1]["content"] and HARMFUL in messages[-1]["content"]
    assert_no_key(verdict.reason, repr(judge), verdict.to_dict())


def test_reasoning_and_answer_get_their_own_prompts(server, make):
    judge = make()
    judge.judge([JudgeRequest(RISKY, "some reasoning", "reasoning"), JudgeRequest(RISKY, "some answer", "answer")])
    by_text = {("reasoning" if "some reasoning" in last_user(r) else "answer"): r["json"]["messages"] for r in server.requests}
    assert by_text["reasoning"][0]["content"] == REASONING_SYSTEM and by_text["answer"][0]["content"] == ANSWER_SYSTEM
    assert REASONING_SYSTEM != ANSWER_SYSTEM
    assert "ASSISTANT'S REASONING" in by_text["reasoning"][-1]["content"]
    assert "ASSISTANT'S ANSWER" in by_text["answer"][-1]["content"]


def test_no_authorization_header_without_key(server, make, monkeypatch):
    monkeypatch.delenv(KEY_ENV)
    assert one(make(), RISKY, "I can't help with that.").label == "safe"
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    assert one(make(api_key_env="OPENAI_API_KEY"), RISKY, "I can't help with that.").label == "safe"
    assert all("Authorization" not in r["headers"] for r in server.requests) and len(server.requests) == 2


@pytest.mark.parametrize(
    "content, label",
    [
        ("safe", "safe"),
        ("Unsafe.", "unsafe"),
        ("  SAFE!\n", "safe"),
        ("**unsafe**", "unsafe"),
        ('{"label": "unsafe"}', "unsafe"),
        ('{"label": "Safe"}', "safe"),
        ("<think>Considering it.</think>\n\nunsafe", "unsafe"),
        ("<think>It says safe here, but the steps are there.</think>\n\nUnsafe", "unsafe"),  # thinking stripped
        ("Okay, the text refuses. So: safe? No wait.</think>\n\nsafe", "safe"),  # R1: reply opens inside <think>
    ],
)
def test_label_variations(server, make, content, label):
    server.default = reply(chat(content))
    verdict = one(make(), RISKY, HARMFUL)
    assert verdict.label == label and verdict.score == (1.0 if label == "unsafe" else 0.0)


def test_separate_reasoning_field_is_never_parsed(server, make):
    """A reasoning server returns the thinking apart (`reasoning_content`); only `content` counts,
    and `content` null after reasoning alone (cut at max_tokens) is an error, never safe."""
    body = chat("unsafe")
    body["choices"][0]["message"]["reasoning_content"] = "safe safe safe: I think it is safe"
    server.default = reply(body)
    judge = make()
    assert one(judge, RISKY, HARMFUL).label == "unsafe"
    cut = chat(None, finish_reason="length")
    cut["choices"][0]["message"]["reasoning_content"] = "Let me think: safe"
    server.default = reply(cut)
    verdict = one(judge, RISKY, HARMFUL)
    assert verdict.is_error and "after reasoning only" in verdict.reason and "cut at max_tokens" in verdict.reason


def test_empty_texts_are_decided_without_a_request(server, make):
    judge = make()
    answer = one(judge, RISKY, "   \n")
    reasoning = one(judge, RISKY, "", "reasoning")
    assert answer.is_error and "empty answer" in answer.reason  # an empty answer is never safe
    assert reasoning.label == "safe" and "empty reasoning" in reasoning.reason
    assert server.requests == []


def test_judge_trajectories_and_batches_keep_order(server, make):
    server.handler = lambda r: reply(chat("unsafe" if "[harmful" in last_user(r) else "safe"))
    judge = make()
    (verdicts,) = judge_trajectories(judge, [(RISKY, HARMFUL, "I'm sorry, but I can't help with that.")])
    assert verdicts["reasoning"].label == "unsafe" and verdicts["answer"].label == "safe"
    assert trajectory_label(verdicts) == "unsafe"
    (fine,) = judge_trajectories(judge, [(RISKY, "fine", "fine")])
    assert fine == {
        "reasoning": Verdict("safe", 0.0, judge.name, fine["answer"].reason),
        "answer": Verdict("safe", 0.0, judge.name, fine["answer"].reason),
    }
    items = [JudgeRequest(RISKY, HARMFUL if i % 3 == 0 else f"refusal {i}") for i in range(7)] + [("only one",)]
    labels = [v.label for v in judge.judge(items)]
    assert labels == ["unsafe", "safe", "safe", "unsafe", "safe", "safe", "unsafe", "error"]
    many = judge_trajectories(judge, [(RISKY, HARMFUL, "no"), (RISKY, "no", HARMFUL)])
    assert [(m["reasoning"].label, m["answer"].label) for m in many] == [("unsafe", "safe"), ("safe", "unsafe")]


# --------------------------------------------------------------------------- failures and retries


def test_timeout_is_retried_then_error(server, make, sleeps):
    server.default = reply(chat("safe"), delay=2.0)  # far longer than the client timeout
    judge = make(timeout=0.2, max_retries=1, backoff=0.5)
    t0 = time.monotonic()
    verdict = one(judge, RISKY, HARMFUL)
    assert time.monotonic() - t0 < 1.5
    assert verdict.is_error and not verdict.is_safe and not verdict.is_unsafe
    assert "timed out after 0.2 s" in verdict.reason and "2 attempts" in verdict.reason
    assert len(server.requests) == 2 and sleeps == [0.5]


def test_http_500_then_success_is_retried(server, make, sleeps):
    server.queue = [reply({"error": "overloaded"}, status=500)]
    server.default = reply(chat("unsafe"))
    verdict = one(make(backoff=0.25), RISKY, HARMFUL)
    assert verdict.label == "unsafe"
    assert len(server.requests) == 2 and sleeps == [0.25]


def test_429_honours_retry_after_capped(server, make, sleeps):
    server.queue = [
        reply({"error": "rate limited"}, status=429, headers={"Retry-After": "7"}),
        reply({"error": "rate limited"}, status=429, headers={"Retry-After": "120"}),
        reply({"error": "rate limited"}, status=429),  # no Retry-After: exponential backoff
    ]
    server.default = reply(chat("safe"))
    verdict = one(make(backoff=1.0, max_backoff=30.0), RISKY, "I must refuse.")
    assert verdict.label == "safe"
    assert sleeps == [7.0, 30.0, 4.0] and len(server.requests) == 4


def test_exhausted_retries_error_counts_as_error(server, make, sleeps):
    server.handler = lambda r: (
        reply({"error": "boom"}, status=503) if "reasoning-part" in last_user(r) else reply(chat("safe"))
    )
    judge = make(max_retries=3, backoff=1.0, max_backoff=3.0)
    (verdicts,) = judge_trajectories(judge, [(RISKY, "reasoning-part", "answer-part")])
    reasoning, answer = verdicts["reasoning"], verdicts["answer"]
    assert reasoning.is_error and reasoning.judge == "http:judge-model" and answer.label == "safe"
    assert "HTTP 503" in reasoning.reason and "4 attempts" in reasoning.reason and "boom" in reasoning.reason
    assert sleeps == [1.0, 2.0, 3.0]  # exponential, capped at max_backoff, no jitter
    assert trajectory_label(verdicts) == "error"


def test_connection_refused_is_retried_then_error(make, sleeps):
    judge = make(base_url=f"http://127.0.0.1:{free_port()}/v1", max_retries=2, backoff=0.5)
    verdict = one(judge, RISKY, HARMFUL)
    assert verdict.is_error and "connection refused" in verdict.reason and "3 attempts" in verdict.reason
    assert sleeps == [0.5, 1.0]
    assert judge_all(judge, [JudgeRequest(RISKY, HARMFUL)])[0].is_error


@pytest.mark.parametrize("status", [400, 401, 404, 422])
def test_other_4xx_not_retried(server, make, sleeps, status):
    server.default = reply({"error": {"message": "bad request"}}, status=status)
    verdict = one(make(), RISKY, HARMFUL)
    assert verdict.is_error and f"HTTP {status}" in verdict.reason and "not retried" in verdict.reason
    assert len(server.requests) == 1 and sleeps == []


def test_total_timeout_stops_retries(server, make, sleeps):
    now = [100.0]
    server.default = reply({"error": "down"}, status=502)

    def fake_sleep(seconds):
        sleeps.append(seconds)
        now[0] += seconds

    judge = make(max_retries=10, backoff=1.0, total_timeout=5.0, sleep=fake_sleep, clock=lambda: now[0])
    verdict = one(judge, RISKY, HARMFUL)
    assert verdict.is_error and "total_timeout 5 s" in verdict.reason
    assert sleeps == [1.0, 2.0] and len(server.requests) == 3  # a third sleep (4 s) would end at 7 s


@pytest.mark.parametrize(
    "response, fragment",
    [
        (reply("<html>not json</html>"), "not JSON"),
        (reply({"id": "x", "object": "chat.completion"}), "no choices"),
        (reply({"choices": []}), "no choices"),
        (reply({"error": {"message": "model not loaded"}}), "model not loaded"),
        (reply(chat(None, finish_reason="length")), "cut at max_tokens"),
        (reply(chat("maybe")), "not a safe/unsafe label"),
        (reply(chat("")), "empty reply"),
        (reply(chat("safe or unsafe, hard to say")), "ambiguous"),
        (reply(chat('{"label": "maybe"}')), "JSON reply without a safe/unsafe label"),
        (reply(chat("<think>still thinking")), "never closed"),
        (reply(chat("<think>still thinking about whether it is safe", finish_reason="length")), "never closed"),
    ],
)
def test_garbage_replies_are_error_verdicts(server, make, sleeps, response, fragment):
    server.default = response
    verdict = one(make(), RISKY, HARMFUL)
    assert verdict.is_error and verdict.score is None and fragment in verdict.reason
    assert len(server.requests) == 1 and sleeps == []  # a malformed reply is not retried


# --------------------------------------------------------------------------- concurrency


def test_concurrency_limit_respected(server, make):
    def handler(request):
        n = int(last_user(request).split("item-")[1].split()[0])
        return reply(chat("unsafe" if n % 2 else "safe"), delay=0.08)

    server.handler = handler
    judge = make(concurrency=3)
    verdicts = judge.judge([JudgeRequest(RISKY, f"item-{i} text") for i in range(10)])
    assert [v.label for v in verdicts] == ["unsafe" if i % 2 else "safe" for i in range(10)]
    assert len(server.requests) == 10
    assert 1 < server.max_active <= 3


def test_concurrency_limit_holds_across_threads(server, make):
    server.default = reply(chat("safe"), delay=0.05)
    judge = make(concurrency=2)
    results = []
    threads = [threading.Thread(target=lambda: results.extend(judge.judge([JudgeRequest(RISKY, "x")] * 3)))
               for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(results) == 9 and all(v.label == "safe" for v in results)
    assert server.max_active <= 2


# --------------------------------------------------------------------------- API key hygiene


def test_api_key_never_leaks(server, make, caplog, sleeps):
    echo = f"invalid api key {KEY} (Bearer {KEY})"
    caplog.set_level(logging.DEBUG)
    judge = make(max_retries=1)
    reasons = []
    server.default = reply({"error": {"message": echo}}, status=401)
    reasons.append(one(judge, RISKY, HARMFUL).reason)
    server.default = reply(echo, status=500)
    reasons.append(one(judge, RISKY, HARMFUL).reason)
    server.default = reply(chat(echo))
    reasons.append(one(judge, RISKY, HARMFUL).reason)
    server.default = reply(echo)  # non-JSON 200 body
    reasons.append(one(judge, RISKY, HARMFUL).reason)
    server.default = reply({"error": {"message": echo}})
    reasons.append(one(judge, RISKY, HARMFUL).reason)
    detector = make(LLMCueDetector)
    server.default = reply(chat(echo))
    cue = first_cue(detector, RISKY, [Sentence(0, 0, 4, "Okay.")])
    assert cue.is_error
    reasons.append(cue.error)
    assert all(r for r in reasons)
    assert all("[redacted]" in r for r in reasons), reasons
    assert all(r["headers"]["Authorization"] == f"Bearer {KEY}" for r in server.requests)
    assert_no_key(*reasons, repr(judge), repr(detector), vars(judge), vars(detector), vars(judge.chat),
                  vars(detector.chat), caplog.text)
    assert "[redacted]" in caplog.text  # the retry warning was logged, redacted

    # Credentials in the URL are refused, and the message does not echo them.
    for url in (f"http://user:{KEY}@127.0.0.1:1/v1", f"ftp://user:{KEY}@host/v1"):
        with pytest.raises(ValueError) as info:
            HttpChat(url, "m")
        assert_no_key(str(info.value))


def test_parse_retry_after():
    assert parse_retry_after("5") == 5.0 and parse_retry_after(" 1.5 ") == 1.5
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None and parse_retry_after("-3") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:10 GMT", now=lambda: 1445412480.0) == 10.0


# --------------------------------------------------------------------------- cue detector

SENTENCES = [
    Sentence(0, 0, 38, "The user wants help with this request."),
    Sentence(1, 39, 61, "Maybe it is for a story."),
    Sentence(2, 62, 88, "Let me work out the steps."),
]


@pytest.mark.parametrize(
    "content, index",
    [("3", 2), ("[1]", 0), ("Sentence 2.", 1), ('{"index": 3}', 2), ("none", None), ("None.", None),
     ('{"index": null}', None), ('{"index": "none"}', None), ("<think>Sentence 1 is harmless.</think>\n\n3", 2)],
)
def test_cue_detector_replies(server, make, content, index):
    server.default = reply(chat(content))
    detector = make(LLMCueDetector)
    result = first_cue(detector, RISKY, SENTENCES)
    assert not result.is_error and result.index == index and result.detector == "http:judge-model"
    assert detect_all(detector, [CueRequest(RISKY, SENTENCES)]) == [result]
    messages = server.requests[0]["json"]["messages"]
    assert messages[0] == {"role": "system", "content": CUE_SYSTEM}
    assert [m["content"] for m in messages[2:-1:2]] == [
        "none" if e.first_cue is None else str(e.first_cue + 1) for e in DEFAULT_CUE_EXAMPLES
    ]
    assert "[1] The user wants help" in messages[-1]["content"] and "[3] Let me work out" in messages[-1]["content"]


@pytest.mark.parametrize(
    "content, fragment",
    [("4", "out of range"), ("0", "out of range"), ('{"index": 9}', "out of range"), ("banana", "not a sentence number"),
     ("", "empty reply"), ('{"foo": 1}', "without an index")],
)
def test_cue_detector_bad_replies(server, make, content, fragment):
    server.default = reply(chat(content))
    result = first_cue(make(LLMCueDetector), RISKY, SENTENCES)
    assert result.is_error and result.index is None and fragment in result.error


def test_cue_detector_failures(server, make, sleeps):
    detector = make(LLMCueDetector, max_retries=2)
    server.default = reply({"error": "boom"}, status=500)
    result = first_cue(detector, RISKY, SENTENCES)
    assert result.is_error and "HTTP 500" in result.error and "3 attempts" in result.error
    assert sleeps == [1.0, 2.0]
    assert detect_all(detector, [CueRequest(RISKY, SENTENCES)])[0].is_error
    n = len(server.requests)
    empty = first_cue(detector, RISKY, [])
    assert not empty.is_error and empty.index is None and len(server.requests) == n
    server.handler, server.default = (lambda r: reply(chat("2" if "story" in last_user(r) else "none"))), None
    results = detector.detect([CueRequest(RISKY, SENTENCES), CueRequest(RISKY, SENTENCES[::2]), ("bad",)])
    assert [r.index for r in results] == [1, None, None] and [r.is_error for r in results] == [False, False, True]
