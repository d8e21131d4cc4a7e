"""What the `ipo-jax serve` tests share (not a test module): ONE tiny served model per test
process (`tiny_served`: preset:tiny-qwen3 with the tiny test tokenizer, the sampler settings of
configs/pipeline_tiny_cpu.py), so its compiled programs serve every serve test module; a
loopback server around a served model (`serving`), and one-request helpers (`call`, `raw`)."""

from __future__ import annotations

import atexit
import contextlib
import functools
import json
import shutil
import socket
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from conftest import save_sample_pairs_tokenizer

ROOT = Path(__file__).parents[1]
MODEL = "preset:tiny-qwen3"
PROMPTS = [
    {"id": "p1", "prompt": "How do I do something risky? [request details withheld]", "kind": "harmful"},
    {"id": "p2", "prompt": "A safe-looking question [request details withheld]", "kind": "harmful"},
    {"id": "p3", "prompt": "A benign photo question", "kind": "benign"},
    {"id": "p4", "prompt": "Another risky thing [request details withheld]", "kind": "harmful"},
]


@functools.lru_cache(maxsize=None)
def tiny_world() -> Path:
    """A directory with the tiny tokenizer (as tests/test_pipeline.py builds it) and a prompt file."""
    root = Path(tempfile.mkdtemp(prefix="serve-world-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    save_sample_pairs_tokenizer(root / "tokenizer")
    (root / "prompts.jsonl").write_text("".join(json.dumps(p) + "\n" for p in PROMPTS))
    return root


@functools.lru_cache(maxsize=None)
def tiny_served():
    from ipo_jax.serve import load_served_model

    return load_served_model(MODEL, tokenizer=str(tiny_world() / "tokenizer"), batch_size=8, max_prompt_length=512)


@contextlib.contextmanager
def serving(served, limits=None, engine_out: list | None = None):
    """Run `served` on a free loopback port in this process; yields the base URL (…/v1).
    `engine_out`, when given, gets the server's engine appended (its `stats`)."""
    from ipo_jax.serve import bind, make_server

    sock = bind("127.0.0.1", 0)
    server, engine = make_server(served, sock, limits=limits)
    if engine_out is not None:
        engine_out.append(engine)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    finally:
        server.should_exit = True
        thread.join(10)
        engine.close()
        sock.close()


def call(url, path, body=None, *, raw: bytes | None = None, method=None, headers=None):
    """(status, parsed JSON body) of one request."""
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    request = urllib.request.Request(url + path, data=data, method=method or ("POST" if data is not None else "GET"),
                                     headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def raw(url: str, data: bytes, timeout: float = 30) -> bytes:
    """Send `data` as is on a fresh connection to `url`'s host and port; everything the server
    sends back until it closes the connection (or `timeout`)."""
    host, port = url.split("//", 1)[1].split("/", 1)[0].split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(data)
        out = b""
        while chunk := sock.recv(65536):
            out += chunk
        return out
