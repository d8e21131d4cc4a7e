"""Serving benchmark: concurrent clients against `ipo-jax serve` and `vllm serve` on one HF model.

python tools/bench_serve.py --concurrency 1 8 32 --requests 64 --out tools/results/serve
python tools/bench_serve.py --servers ipo-jax --model-dir runs/demo/export/hf --concurrency 4

Both servers are started by this script, one after the other, on a free loopback port, on the
same HF model directory (`--model-dir`, or one built here: a random `--shape` model with a
byte-level BPE tokenizer of `--vocab` tokens trained on seeded synthetic words, written once to
`--work`/model and reused); each is polled on /health, sent the same requests and stopped
(SIGTERM, then its process group killed after --stop-timeout). vLLM runs as `--vllm-python -m
vllm.entrypoints.openai.api_server` (default: this Python, if it imports vllm) with float32
weights, `VLLM_CPU_KVCACHE_SPACE=--vllm-kv-gib` (unless set) and its own OpenMP binding unless
--vllm-threads-bind is given; without vLLM the run measures `ipo-jax serve` alone and says so.

Requests: `--requests` prompts of `--prompt-length` random token ids (seeded, the same for both
servers and every level), each one `POST /v1/completions` with `max_tokens=--max-tokens`,
`temperature` (default 0, greedy) and a per-request seed, sent by `C` concurrent clients for each
`C` in --concurrency (asyncio and the official `openai` client, no retries), after an untimed
warm-up of `--warmup-requests` (default 2 x `C`) through the same `C` clients: the first `C`
at once, then each client's next as its last one ends, so the warm-up meets the shapes the
timed part meets (`ipo-jax serve` compiles a program on its first use; vLLM at startup). Lengths are kept equal: vLLM gets `ignore_eos`; `ipo-jax serve`
has no such option, so the built model's end-of-sequence embedding row is zero (its logit is 0,
below the maximum of a random model's logits at every step: greedy never ends a row early).
Every request's completion tokens are counted from `usage` and the table says the range, so an
early end shows.

Streaming (`--stream auto`, the default): each server is probed once with `stream: true`; where
it streams (server-sent events with `stream_options.include_usage`), the requests stream and the
time to first token (first chunk with a choice) is measured; where it answers 400, requests do
not stream and TTFT is left empty.

Batch: `ipo-jax serve` runs --batch-size rows per device call, idle rows padded, so by default it
is started anew for each level with --batch-size = that level's clients; vLLM (no padding) is
started once with --max-num-seqs = the largest level. `--batch-size N` sets both, one start each.

Per (server, concurrency): completion tokens / wall seconds, requests / wall seconds, p50 and
p99 latency and TTFT (numpy's linear-interpolation percentiles over the requests), tokens per
request, errors. Writes OUT.json (setup line with machine, load and versions; every request's
numbers) and OUT.md (the table). The machine may be shared: the load average is recorded before
each server's run.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHAPES = {  # hidden, MLP, layers, query heads, kv heads, head dim (Qwen3, tied embeddings)
    "small-qwen3": (512, 1536, 8, 8, 4, 64),  # tools/bench_sampler.py's ~42M shape (there with vocab 32768)
    "tiny-qwen3": (64, 128, 2, 4, 2, 32),
}
SERVERS = ("ipo-jax", "vllm")
MODEL_NAME = "bench"  # the served model name on both servers


# --------------------------------------------------------------------------- the model


def synthetic_corpus(seed: int = 0, words: int = 200_000) -> list[str]:
    """Seeded pseudo-words (lowercase letters, 1-10 long) in lines of 12: enough distinct pairs
    for a BPE of tens of thousands of merges."""
    rng = np.random.RandomState(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    lengths = rng.randint(1, 11, words)
    chars = letters[rng.randint(0, 26, int(lengths.sum()))]
    out, start = [], 0
    for n in lengths:
        out.append("".join(chars[start : start + n]))
        start += n
    return [" ".join(out[i : i + 12]) for i in range(0, len(out), 12)]


def build_model_dir(out: Path, shape: str, vocab: int, seed: int = 0, max_position_embeddings: int = 2048) -> Path:
    """A random Qwen3 model of `shape` with a tokenizer of at most `vocab` tokens (the model's
    vocabulary is the tokenizer's size), saved as an HF directory; eos's embedding row zeroed."""
    from ipo_jax.checkpoint import save_hf
    from ipo_jax.data.tiny_tokenizer import build_tiny_tokenizer
    from ipo_jax.models.config import ModelConfig
    from ipo_jax.models.decoder import init_decoder

    if shape not in SHAPES:
        raise ValueError(f"--shape {shape!r}: expected one of {', '.join(SHAPES)}")
    tokenizer = build_tiny_tokenizer(synthetic_corpus(seed, words=min(200_000, 8 * vocab)), vocab_size=vocab)
    tokenizer_dir = out.parent / (out.name + ".tokenizer")
    tokenizer.save_pretrained(tokenizer_dir)
    hidden, mlp, layers, heads, kv_heads, head_dim = SHAPES[shape]
    cfg = ModelConfig(model_type="qwen3", vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=mlp,
                      num_layers=layers, num_heads=heads, num_kv_heads=kv_heads, head_dim=head_dim, rms_norm_eps=1e-6,
                      rope_theta=1_000_000.0, tie_word_embeddings=True, qk_norm=True,
                      max_position_embeddings=max_position_embeddings, bos_token_id=tokenizer.bos_token_id,
                      eos_token_id=tokenizer.eos_token_id)
    model = init_decoder(cfg, seed=seed)
    model.embed[...] = model.embed[...].at[tokenizer.eos_token_id].set(0.0)
    save_hf(model, out, tokenizer_dir=tokenizer_dir, overwrite=True)
    shutil.rmtree(tokenizer_dir)
    return out


def model_facts(model_dir: Path) -> dict:
    config = json.loads((model_dir / "config.json").read_text())
    hidden, layers, vocab = config["hidden_size"], config["num_hidden_layers"], config["vocab_size"]
    kv = config["num_key_value_heads"] * config.get("head_dim", hidden // config["num_attention_heads"])
    q = config["num_attention_heads"] * config.get("head_dim", hidden // config["num_attention_heads"])
    per_layer = hidden * (2 * q + 2 * kv) + 3 * hidden * config["intermediate_size"]
    params = layers * per_layer + vocab * hidden * (1 if config.get("tie_word_embeddings") else 2)
    return dict(model_type=config["model_type"], params=params, vocab_size=vocab, hidden_size=hidden, layers=layers,
                torch_dtype=config.get("torch_dtype") or config.get("dtype"),
                max_position_embeddings=config["max_position_embeddings"])


def make_prompts(count: int, length: int, vocab: int, seed: int = 0, low: int = 7) -> list[list[int]]:
    """`count` prompts of `length` random ids in [low, vocab) (above the tiny tokenizer's specials)."""
    if length < 1 or count < 1:
        raise ValueError(f"--requests ({count}) and --prompt-length ({length}) must be >= 1")
    if vocab <= low:
        raise ValueError(f"a vocabulary of {vocab} has no ids above the {low} special tokens")
    rng = np.random.RandomState(seed)
    return rng.randint(low, vocab, (count, length)).tolist()


# --------------------------------------------------------------------------- statistics


def percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def summarize(results: list[dict], wall: float) -> dict:
    """The row of one (server, concurrency) run: `results` are the requests' dicts (latency,
    ttft or None, tokens, error or None), `wall` the seconds from the first send to the last answer."""
    if wall <= 0:
        raise ValueError(f"wall time {wall} must be > 0")
    ok = [r for r in results if r["error"] is None]
    latencies = [r["latency"] for r in ok]
    ttfts = [r["ttft"] for r in ok if r["ttft"] is not None]
    tokens = [r["tokens"] for r in ok]
    return dict(requests=len(results), errors=len(results) - len(ok), wall_s=wall,
                completion_tokens=int(sum(tokens)), tokens_per_s=sum(tokens) / wall, requests_per_s=len(ok) / wall,
                latency_p50_s=percentile(latencies, 50), latency_p99_s=percentile(latencies, 99),
                ttft_p50_s=percentile(ttfts, 50), ttft_p99_s=percentile(ttfts, 99),
                tokens_min=min(tokens) if tokens else None, tokens_max=max(tokens) if tokens else None)


# --------------------------------------------------------------------------- clients


@dataclasses.dataclass
class Target:
    """A running server: where it is and what its requests need."""

    name: str  # "ipo-jax" | "vllm"
    base_url: str  # .../v1
    extra_body: dict
    stream: bool = False
    version: str | None = None


async def one_request(client, target: Target, prompt: list[int], args, seed: int) -> dict:
    """Send one completion; its latency, time to first token (streaming), completion tokens."""
    kwargs = dict(model=MODEL_NAME, prompt=prompt, max_tokens=args.max_tokens, temperature=args.temperature,
                  seed=seed, extra_body=target.extra_body or None)
    start = time.perf_counter()
    ttft, tokens, error = None, 0, None
    try:
        if target.stream:
            chunks = 0
            stream = await client.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs)
            async for chunk in stream:
                if chunk.choices:
                    chunks += 1
                    if ttft is None:
                        ttft = time.perf_counter() - start
                if chunk.usage is not None:
                    tokens = chunk.usage.completion_tokens
            tokens = tokens or chunks  # a server without usage in its stream: one token per chunk
        else:
            response = await client.completions.create(**kwargs)
            tokens = response.usage.completion_tokens
    except Exception as e:  # noqa: BLE001 - counted, and the first one shown
        error = f"{type(e).__name__}: {e}"[:300]
    return dict(latency=time.perf_counter() - start, ttft=ttft, tokens=tokens, error=error)


async def run_level(target: Target, prompts: list[list[int]], concurrency: int, args) -> tuple[list[dict], float]:
    """All `prompts` through `concurrency` clients (a semaphore); (request dicts, wall seconds)."""
    import openai

    client = openai.AsyncOpenAI(base_url=target.base_url, api_key=args.api_key or "EMPTY", max_retries=0,
                                timeout=args.request_timeout)
    gate = asyncio.Semaphore(concurrency)

    async def gated(i: int, prompt: list[int]) -> dict:
        async with gate:
            return await one_request(client, target, prompt, args, seed=args.seed + i)

    try:
        # untimed warm-up in the same closed loop, so the shapes the timed part meets (batch refills,
        # short chunks while rows are free) are compiled before it: ours compiles on first use
        warmup = args.warmup_requests or 2 * concurrency
        await asyncio.gather(*(gated(i, prompts[i % len(prompts)]) for i in range(warmup)))
        start = time.perf_counter()
        results = await asyncio.gather(*(gated(i, p) for i, p in enumerate(prompts)))
        wall = time.perf_counter() - start
    finally:
        await client.close()
    return list(results), wall


async def supports_streaming(target: Target, args, prompt: list[int]) -> bool:
    import openai

    client = openai.AsyncOpenAI(base_url=target.base_url, api_key=args.api_key or "EMPTY", max_retries=0,
                                timeout=args.request_timeout)
    try:
        stream = await client.completions.create(model=MODEL_NAME, prompt=prompt, max_tokens=2, temperature=0,
                                                 stream=True, stream_options={"include_usage": True},
                                                 extra_body=target.extra_body or None)
        return any([chunk.choices async for chunk in stream])
    except openai.BadRequestError:
        return False
    finally:
        await client.close()


# --------------------------------------------------------------------------- servers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def find_vllm(explicit: str | None) -> str | None:
    """The Python that has vLLM: `explicit` (checked), else this one if it imports vllm, else None."""
    python = explicit or sys.executable
    probe = "import importlib.util, sys; sys.exit(importlib.util.find_spec('vllm') is None)"
    found = os.access(python, os.X_OK) and subprocess.run([python, "-c", probe], capture_output=True).returncode == 0
    if explicit and not found:
        raise ValueError(f"--vllm-python {explicit!r}: not a Python that imports vllm")
    return python if found else None


def server_command(name: str, model_dir: Path, args, port: int, batch: int) -> list[str]:
    """`ipo-jax serve` (--batch-size `batch`) or vLLM's API server (--max-num-seqs `batch`)."""
    if name == "ipo-jax":
        return [sys.executable, "-m", "ipo_jax.cli", "serve", "--model", f"hf:{model_dir}", "--port", "0",
                "--served-model-name", MODEL_NAME, "--batch-size", str(batch),
                "--max-prompt-length", str(args.prompt_length), "--chunk-tokens", str(args.chunk_tokens),
                *args.ipo_args.split()]
    # `python -m` the API server: vllm-cpu's `vllm` script asks for the version of a distribution named `vllm`
    return [args.vllm_python, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
            "--host", "127.0.0.1", "--port", str(port),
            "--served-model-name", MODEL_NAME, "--dtype", "float32", "--max-model-len",
            str(args.prompt_length + args.max_tokens), "--max-num-seqs", str(batch),
            "--seed", "0", *args.vllm_args.split()]


class Server:
    """One server process in its own process group, its output in `log`."""

    def __init__(self, name: str, model_dir: Path, args, log: Path, batch: int):
        port = free_port()
        self.name, self.log_path = name, log
        self.log = open(log, "a")
        env = dict(os.environ)
        if name == "vllm":
            env.setdefault("VLLM_CPU_KVCACHE_SPACE", str(args.vllm_kv_gib))
            if getattr(args, "vllm_threads_bind", ""):  # vLLM's default: one core kept for its scheduler
                env["VLLM_CPU_OMP_THREADS_BIND"] = args.vllm_threads_bind
        self.process = subprocess.Popen(server_command(name, model_dir, args, port, batch), stdout=subprocess.PIPE,
                                        stderr=self.log, text=True, cwd=ROOT, env=env, start_new_session=True)
        self.base_url = f"http://127.0.0.1:{port}/v1"

    def wait_ready(self, timeout: float) -> str:
        """Block until /health answers 200 (the URL read from ipo-jax serve's first line); the base URL."""
        deadline = time.monotonic() + timeout
        if self.name == "ipo-jax":
            for line in self.process.stdout:  # ...; "serving 'bench' on http://127.0.0.1:PORT/v1 ..."
                self.log.write(line)
                match = re.search(r"serving .* on (http://\S+?/v1)", line)
                if match:
                    self.base_url = match.group(1)
                    break
            else:
                raise RuntimeError(f"ipo-jax serve exited before it said where it listens; log: {self.log_path}")
        self.log.flush()
        threading_copy(self.process.stdout, self.log)
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode} before it was ready; "
                                   f"log: {self.log_path}")
            if http_get(self.base_url.removesuffix("/v1") + "/health") == 200:
                return self.base_url
            time.sleep(0.5)
        raise RuntimeError(f"{self.name} was not ready after {timeout:.0f} s; log: {self.log_path}")

    def stop(self, timeout: float) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # SIGINT may be ignored in a background job's children
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.process.pid, signal.SIGKILL)  # the group this script started (vLLM's engine processes)
        except (ProcessLookupError, PermissionError):
            pass
        self.process.wait()
        self.log.close()


def threading_copy(source, sink) -> None:
    """Copy the rest of `source` (a pipe) into `sink` in a daemon thread, so the pipe never fills."""
    import threading

    def copy():
        for line in source:
            sink.write(line)
            sink.flush()

    threading.Thread(target=copy, daemon=True).start()


def http_get(url: str, timeout: float = 5.0) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status
    except (urllib.error.URLError, OSError):
        return None


def server_version(name: str, base_url: str) -> str | None:
    if name == "ipo-jax":
        return None
    try:
        with urllib.request.urlopen(base_url.removesuffix("/v1") + "/version", timeout=5) as response:
            return json.loads(response.read()).get("version")
    except (urllib.error.URLError, OSError, ValueError):
        return None


# --------------------------------------------------------------------------- the run


def bench_server(name: str, model_dir: Path, prompts: list[list[int]], args, work: Path) -> list[dict]:
    """Every concurrency level against `name`; its table rows. `ipo-jax serve` runs a fixed number
    of rows per device call (--batch-size, idle rows padded), so without --batch-size it is
    started anew for each level with --batch-size = the level's clients; vLLM batches what is
    running (no padding) and is started once, with --max-num-seqs = the largest level."""
    url = args.ipo_url if name == "ipo-jax" else args.vllm_url
    if url or name == "vllm" or args.batch_size:
        groups = [(args.batch_size or max(args.concurrency), args.concurrency)]
    else:
        groups = [(level, [level]) for level in args.concurrency]
    rows = []
    for batch, levels in groups:
        rows += bench_levels(name, url, batch, levels, model_dir, prompts, args, work)
    return rows


def bench_levels(name: str, url: str | None, batch: int, levels: list[int], model_dir: Path, prompts: list[list[int]],
                 args, work: Path) -> list[dict]:
    """Start `name` with `batch` (unless `url` names a running one), run `levels`, stop it."""
    load = os.getloadavg()[0]
    server, ready_s = None, None
    if url:
        base_url = url.rstrip("/")
    else:
        server = Server(name, model_dir, args, work / f"{name}.log", batch)
        started = time.perf_counter()
    try:
        if server is not None:
            base_url = server.wait_ready(args.startup_timeout)
            ready_s = time.perf_counter() - started
        target = Target(name, base_url, {"ignore_eos": True} if name == "vllm" else {},
                        version=server_version(name, base_url))
        probe = args.stream == "auto" and asyncio.run(supports_streaming(target, args, prompts[0]))
        target.stream = args.stream == "on" or probe
        rows = []
        for concurrency in levels:
            results, wall = asyncio.run(run_level(target, prompts, concurrency, args))
            row = dict(server=name, version=target.version, concurrency=concurrency, batch=None if url else batch,
                       streamed=target.stream, load_at_start=load, startup_s=ready_s, **summarize(results, wall),
                       results=results)
            first_error = next((r["error"] for r in results if r["error"]), None)
            print(format_row(row) + (f"  first error: {first_error}" if first_error else ""), flush=True)
            rows.append(row)
        return rows
    finally:
        if server is not None:
            server.stop(args.stop_timeout)


def _fmt(value, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def format_row(r: dict) -> str:
    tokens = f"{r['tokens_min']}" if r["tokens_min"] == r["tokens_max"] else f"{r['tokens_min']}-{r['tokens_max']}"
    server = r["server"] + (f" {r['version']}" if r.get("version") else "")
    batch = "-" if r.get("batch") is None else r["batch"]
    return (f"| {server} | {r['concurrency']} | {batch} | {r['requests']} | {r['tokens_per_s']:.0f} "
            f"| {r['requests_per_s']:.2f} "
            f"| {_fmt(r['latency_p50_s'])} | {_fmt(r['latency_p99_s'])} | {_fmt(r['ttft_p50_s'], 3)} "
            f"| {_fmt(r['ttft_p99_s'], 3)} | {tokens} | {r['errors']} |")


TABLE_HEADER = ("| server | clients | batch | requests | tokens/s | requests/s | p50 latency s | p99 latency s "
                "| p50 TTFT s | p99 TTFT s | tokens/request | errors |\n"
                "|---|---|---|---|---|---|---|---|---|---|---|---|")


def write_results(out: Path, setup: str, facts: dict, rows: list[dict]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(dict(setup=setup, model=facts, rows=rows), indent=1) + "\n")
    lines = [f"Setup: {setup}.", "", TABLE_HEADER, *(format_row(r) for r in rows)]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--servers", nargs="+", choices=SERVERS, default=list(SERVERS),
                   help="which servers to run (default both; vllm is skipped, with a note, where not installed)")
    p.add_argument("--model-dir", help="an HF model directory with its tokenizer (default: build one, --shape/--vocab)")
    p.add_argument("--shape", choices=sorted(SHAPES), default="small-qwen3", help="shape of the built model")
    p.add_argument("--vocab", type=int, default=32768, help="tokenizer (= model) vocabulary of the built model")
    p.add_argument("--work", default="runs/bench-serve", help="the built model (reused) and the servers' logs")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32], help="concurrent clients, one run each")
    p.add_argument("--requests", type=int, default=64, help="timed requests per concurrency level")
    p.add_argument("--prompt-length", type=int, default=64, help="prompt tokens per request")
    p.add_argument("--warmup-requests", type=int, default=0,
                   help="untimed requests before each level, through its clients (default: 2 x clients)")
    p.add_argument("--max-tokens", type=int, default=128, help="completion tokens per request")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--seed", type=int, default=0, help="prompts' seed; request i gets seed + i")
    p.add_argument("--stream", choices=("auto", "on", "off"), default="auto", help="stream where the server can")
    p.add_argument("--batch-size", type=int, default=0,
                   help="ipo-jax --batch-size and vllm --max-num-seqs (default: ipo-jax restarted per level with "
                        "the level's clients, vllm the largest --concurrency)")
    p.add_argument("--chunk-tokens", type=int, default=32, help="ipo-jax serve --chunk-tokens")
    p.add_argument("--ipo-args", default="", help="more ipo-jax serve arguments, one string")
    p.add_argument("--vllm-python",
                   help="a Python that imports vllm, e.g. /tmp/vllmvenv/bin/python (default: this one)")
    p.add_argument("--vllm-args", default="", help="more vllm serve arguments, one string")
    p.add_argument("--vllm-threads-bind", default="",
                   help="VLLM_CPU_OMP_THREADS_BIND, e.g. 0-1 for both cores (default: vLLM's own, which keeps one "
                        "core for its scheduler; pinning every core collapsed under other load here)")
    p.add_argument("--vllm-kv-gib", type=int, default=2, help="VLLM_CPU_KVCACHE_SPACE unless set (default 2)")
    p.add_argument("--ipo-url",
                   help="bench this running ipo-jax serve (.../v1, model name 'bench') instead of starting one")
    p.add_argument("--vllm-url", help="bench this running vLLM (.../v1, model name 'bench') instead of starting one")
    p.add_argument("--api-key", default="", help="Bearer key sent to both (default none)")
    p.add_argument("--startup-timeout", type=float, default=900.0, help="seconds for a server to answer /health")
    p.add_argument("--stop-timeout", type=float, default=30.0, help="seconds after SIGTERM before the group is killed")
    p.add_argument("--request-timeout", type=float, default=600.0, help="seconds per request")
    p.add_argument("--out", help="write OUT.json and OUT.md (e.g. tools/results/serve)")
    args = p.parse_args(argv)
    for flag in ("requests", "prompt_length", "max_tokens", "vocab", "chunk_tokens"):
        if getattr(args, flag) < 1:
            p.error(f"--{flag.replace('_', '-')} must be >= 1")
    if min(args.concurrency) < 1 or args.batch_size < 0 or args.temperature < 0 or args.warmup_requests < 0:
        p.error("--concurrency must be >= 1, --batch-size, --warmup-requests and --temperature >= 0")
    return args


def _stop_on_sigterm(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")  # so the servers started here are stopped on the way out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if args.model_dir:
        model_dir = Path(args.model_dir).resolve()
        if not (model_dir / "config.json").is_file():
            raise SystemExit(f"--model-dir {args.model_dir}: no config.json there")
    else:
        model_dir = (work / f"model-{args.shape}-v{args.vocab}").resolve()
        if not (model_dir / "config.json").is_file():
            build_model_dir(model_dir, args.shape, args.vocab, max_position_embeddings=max(
                2048, args.prompt_length + args.max_tokens))
    facts = model_facts(model_dir)
    prompts = make_prompts(args.requests, args.prompt_length, facts["vocab_size"], args.seed)
    servers = list(args.servers)
    notes = []
    if "vllm" in servers and not args.vllm_url:
        args.vllm_python = find_vllm(args.vllm_python)
        if args.vllm_python is None:
            servers.remove("vllm")
            notes.append("vllm not installed: ipo-jax serve alone")
    setup = (f"{platform.node()}: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start; "
             f"model {model_dir.name} ({facts['params'] / 1e6:.1f}M params, "
             f"vocab {facts['vocab_size']}, {facts['torch_dtype']}); {args.requests} requests x prompt "
             f"{args.prompt_length} + {args.max_tokens} new tokens, temperature {args.temperature}; python "
             f"{platform.python_version()}" + "".join(f"; {n}" for n in notes))
    if "vllm" in servers and not args.vllm_url:
        setup += f"; vLLM threads bind {args.vllm_threads_bind or os.environ.get('VLLM_CPU_OMP_THREADS_BIND', 'auto')}"
    print(setup, flush=True)
    print(TABLE_HEADER, flush=True)
    rows = []
    for name in servers:
        rows += bench_server(name, model_dir, prompts, args, work)
    if args.out:
        write_results(Path(args.out), setup, facts, rows)
    return 1 if any(r["errors"] for r in rows) else 0


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    sys.exit(main())
