"""`ipo-jax serve` against bad and slow clients (in process, loopback, the tiny model of
serve_support, a 256 KiB body limit and a 1 s read timeout): bodies over the limit are refused
from their Content-Length (or while read) with a JSON 413; deeply nested JSON and texts too long
to fit are JSON 400s, the text refused before it is tokenised; tokenising runs off the event
loop; connections that stall in their headers are closed and stalled bodies get a 408; a short
request joins long ones at the next chunk instead of waiting for them, and requests whose
client disconnects leave the batch."""

from __future__ import annotations

import dataclasses
import json
import socket
import threading
import time

import pytest
from serve_support import call, raw, serving, tiny_served

from ipo_jax.serve import Limits, ServedModel

LIMIT = 256 << 10


class SlowTokenizing(ServedModel):
    """The tiny model with a tokenizer that takes 1.5 s for a text containing '[slow]'."""

    def encode(self, text: str) -> list[int]:
        if "[slow]" in text:
            time.sleep(1.5)
        return super().encode(text)


@pytest.fixture(scope="module")
def server():
    """(base URL, engine) of the limited server."""
    shared = tiny_served()
    fields = {f.name: getattr(shared, f.name) for f in dataclasses.fields(ServedModel)}
    engines = []
    with serving(SlowTokenizing(**fields), Limits(max_request_bytes=LIMIT, read_timeout=1.0), engines) as base:
        yield base, engines[0]


def request_bytes(path: str, body: bytes | None = None, headers: str = "") -> bytes:
    length = "" if body is None else f"Content-Length: {len(body)}\r\n"
    return (f"POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n{length}{headers}\r\n").encode() + (
        body or b"")


def status_and_json(response: bytes) -> tuple[int, dict]:
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def test_bodies_over_the_limit_are_413_before_they_are_read(server):
    url, _ = server
    start = time.monotonic()
    # 50 MB announced, nothing sent: refused from the header alone
    status, out = status_and_json(raw(url, request_bytes("/v1/completions", headers="Content-Length: 50000000\r\n")))
    assert status == 413 and out["error"]["code"] == "request_too_large" and f"at most {LIMIT}" in out["error"]["message"]
    assert time.monotonic() - start < 5
    # chunked (no Content-Length): refused once the bytes read pass the limit
    piece = b"x" * (64 << 10)
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for _ in range(5)) + b"0\r\n\r\n"
    status, out = status_and_json(raw(url, request_bytes("/v1/completions", headers="Transfer-Encoding: chunked\r\n")
                                      + chunks))
    assert status == 413 and "over 262144 bytes" in out["error"]["message"]
    assert call(url, "/completions", dict(prompt=[5, 6], max_tokens=1, seed=0))[0] == 200


def test_nesting_and_over_long_texts_are_json_400s(server):
    url, _ = server
    deep = b'{"prompt": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    status, out = call(url, "/completions", raw=deep)
    assert status == 400 and "nested too deeply" in out["error"]["message"]
    status, out = call(url, "/chat/completions", raw=b'{"messages": [{"role": "user", "content": "\xff"}]}')
    assert status == 400 and "not valid JSON" in out["error"]["message"]
    start = time.monotonic()
    status, out = call(url, "/completions", dict(prompt="[slow] " + "a" * 20_000, max_tokens=1))
    assert status == 400 and "20007 characters; no prompt over 10731 fits the server's 511 tokens" in out["error"]["message"]
    assert time.monotonic() - start < 1.4  # refused before the (slow) tokenizer ran
    status, out = call(url, "/chat/completions", dict(messages=[{"role": "user", "content": "b" * 20_000}]))
    assert status == 400 and out["error"]["param"] == "messages" and "characters" in out["error"]["message"]


def test_tokenising_does_not_block_other_requests(server):
    url, _ = server
    result = {}
    slow = threading.Thread(target=lambda: result.update(out=call(url, "/completions", dict(
        prompt="[slow] a question", max_tokens=1, seed=0))))
    slow.start()
    time.sleep(0.3)  # the slow request is being tokenised now
    start = time.monotonic()
    assert call(url.removesuffix("/v1"), "/health") == (200, {"status": "ok"})
    assert time.monotonic() - start < 0.5 and slow.is_alive()
    slow.join(60)
    assert result["out"][0] == 200


def test_stalled_headers_are_closed_and_stalled_bodies_get_408(server):
    url, _ = server
    host, port = url.split("//")[1].split("/")[0].split(":")
    stalled = [socket.create_connection((host, int(port)), timeout=10) for _ in range(20)]
    for sock in stalled:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: te")  # and never the rest
    start = time.monotonic()
    assert all(sock.recv(100) == b"" for sock in stalled)  # closed by the server, nothing answered
    assert 0.5 < time.monotonic() - start < 5
    for sock in stalled:
        sock.close()
    # headers complete, the body stalls after 10 of 100 bytes: a JSON 408 after the read timeout
    out = raw(url, request_bytes("/v1/completions", headers="Content-Length: 100\r\n") + b'{"prompt":')
    status, body = status_and_json(out)
    assert status == 408 and body["error"]["code"] == "request_timeout"


def _long_request(url: str) -> socket.socket:
    """A request for 3 x 440 tokens (n = 3), sent on a socket left open (its answer never read)."""
    host, port = url.split("//")[1].split("/")[0].split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    body = json.dumps(dict(prompt=[5, 6, 7], n=3, max_tokens=440, temperature=1.0, top_p=0.9, seed=4)).encode()
    sock.sendall(request_bytes("/v1/completions", body))
    return sock


def _wait(condition, seconds: float, shown=None) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out {shown}"
        time.sleep(0.02)


def test_a_short_request_joins_long_ones_and_a_disconnected_one_leaves(server):
    url, engine = server
    stats = engine.stats
    rows, cancelled, finished = stats["rows"], stats["cancelled_rows"], stats["finished_rows"]
    long = _long_request(url)
    _wait(lambda: stats["rows"] >= rows + 3 and stats["chunks"] > 0, 120)  # its three rows are decoding
    steps = stats["decode_steps"]
    status, out = call(url, "/completions", dict(prompt=[8, 9], max_tokens=2, temperature=1.0, top_p=0.9, seed=1,
                                                 return_token_ids=True))
    assert status == 200 and len(out["choices"][0]["token_ids"]) <= 2
    long.setblocking(False)
    with pytest.raises(BlockingIOError):  # the long one has not answered: the short one did not wait for it
        long.recv(1)
    assert stats["decode_steps"] - steps < 440 and stats["cancelled_rows"] == cancelled
    long.close()  # the client goes away: its rows still decoding leave the batch at the next chunk
    # (a row of the random model may have ended early, on an end-of-sequence id)
    _wait(lambda: stats["cancelled_rows"] + stats["finished_rows"] == cancelled + finished + 4, 30, stats)
    assert stats["cancelled_rows"] > cancelled
    before = stats["chunks"]
    time.sleep(0.5)
    assert stats["chunks"] == before  # nothing left to decode
