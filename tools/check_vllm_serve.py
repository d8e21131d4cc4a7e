"""Check `ipo-jax serve` against a real vLLM on one HF model (machines that have vLLM; not a test).

python tools/check_vllm_serve.py --vllm-python /tmp/vllmvenv/bin/python --out tools/results/serve_vllm_check
python tools/check_vllm_serve.py --vllm-python ... --model-dir runs/demo/export/hf   # the demo's export

1. Greedy tokens: both servers are started on the same HF directory (`--model-dir`, or
   tools/bench_serve.py's random model, built once under `--work`) and sent the same prompts:
   every prompt of `--prompts` rendered with the tokenizer's chat template, plus
   `--random-prompts` prompts of random ids; each one `POST /v1/completions` with token ids,
   temperature 0, `max_tokens=--max-tokens` and `return_token_ids`. The sampled ids (end id
   included where a row ends on one) are compared token for token; the first difference is
   reported with both sides' top candidates where the server gives logprobs.
2. build-pairs through vLLM: `ipo-jax build-pairs` (configs/pipeline_tiny_cpu.py, the model
   directory's tokenizer, `--prompts`) with `policy.backend=http` pointed at a recording proxy in
   front of vLLM. Checked: the stage exits 0; every trajectory's `completion_ids` is exactly the
   `token_ids` of one of vLLM's answers (the records are token-exact, nothing re-tokenised); every
   pair's prefix_ids + rejected_ids is its original trajectory's completion_ids. A random model
   writes trajectories but rarely pairs (it never finishes a turn); the demo's export makes pairs.

Writes OUT.json / OUT.md; exit code 0 only when every check passed.
"""

from __future__ import annotations

import argparse
import http.server
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_serve  # noqa: E402  (the servers, the built model)

ROOT = bench_serve.ROOT


def post(base_url: str, body: dict, timeout: float = 600.0) -> dict:
    request = urllib.request.Request(base_url + "/completions", data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def rendered_prompts(model_dir: Path, prompts_file: Path, random_count: int, vocab: int) -> list[dict]:
    """[{id, ids}]: the prompt file's prompts through the chat template, then random-id prompts."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    out = []
    for line in prompts_file.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            ids = tokenizer.apply_chat_template([{"role": "user", "content": row["prompt"]}], tokenize=True,
                                                add_generation_prompt=True)
            ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
            out.append(dict(id=row["id"], ids=[int(i) for i in ids]))
    for i, ids in enumerate(bench_serve.make_prompts(random_count, 16, vocab, seed=1) if random_count else []):
        out.append(dict(id=f"random-{i}", ids=ids))
    return out


def greedy_ids(base_url: str, ids: list[int], max_tokens: int) -> tuple[list[int], str]:
    out = post(base_url, dict(model=bench_serve.MODEL_NAME, prompt=ids, max_tokens=max_tokens, temperature=0,
                              return_token_ids=True))
    choice = out["choices"][0]
    return [int(t) for t in choice["token_ids"]], choice["finish_reason"]


def compare_greedy(urls: dict[str, str], prompts: list[dict], max_tokens: int) -> list[dict]:
    rows = []
    for prompt in prompts:
        (ours, our_finish), (theirs, their_finish) = (greedy_ids(urls[s], prompt["ids"], max_tokens)
                                                      for s in ("ipo-jax", "vllm"))
        first = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), None)
        if first is None and len(ours) != len(theirs):
            first = min(len(ours), len(theirs))
        rows.append(dict(id=prompt["id"], prompt_tokens=len(prompt["ids"]), equal=ours == theirs,
                         first_difference=first, ipo_jax=ours, vllm=theirs, finish=[our_finish, their_finish]))
        print(f"{prompt['id']}: {'equal' if ours == theirs else f'differ at {first}'} ({len(ours)} / {len(theirs)} "
              f"tokens, {our_finish} / {their_finish})", flush=True)
    return rows


class RecordingProxy:
    """A loopback HTTP proxy that forwards POSTs to `upstream` and keeps every (request, response) body."""

    def __init__(self, upstream: str):
        self.exchanges: list[tuple[dict, dict]] = []
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):  # noqa: N802 - the http.server name
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                path = self.path.removeprefix("/v1")
                request = urllib.request.Request(upstream + path, data=body, method="POST",
                                                 headers={"Content-Type": "application/json"})
                try:
                    with urllib.request.urlopen(request, timeout=600) as response:
                        status, answer = response.status, response.read()
                except urllib.error.HTTPError as e:
                    status, answer = e.code, e.read()
                if status == 200:
                    proxy.exchanges.append((json.loads(body), json.loads(answer)))
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def build_pairs_through(vllm_url: str, model_dir: Path, prompts_file: Path, out: Path, max_new_tokens: int) -> dict:
    """Run build-pairs against vLLM through the recording proxy; the checks of the module docstring."""
    shutil.rmtree(out, ignore_errors=True)  # a fresh run, not a resumed one
    proxy = RecordingProxy(vllm_url)
    command = [sys.executable, "-m", "ipo_jax.cli", "build-pairs",
               "--config", str(ROOT / "configs/pipeline_tiny_cpu.py"),
               "--config.model.init=", f"--config.tokenizer={model_dir}", f"--config.prompts={prompts_file}",
               f"--config.out={out}", f"--config.sampling.max_new_tokens={max_new_tokens}",
               "--config.policy.backend=http", f"--config.policy.base_url={proxy.base_url}",
               f"--config.policy.model={bench_serve.MODEL_NAME}", "--config.policy.concurrency=8"]
    start = time.perf_counter()
    try:
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=3600)
    finally:
        proxy.close()
    seconds = time.perf_counter() - start
    answered = {tuple(int(t) for t in answer["choices"][0]["token_ids"]) for _, answer in proxy.exchanges}
    trajectories = [json.loads(line) for path in sorted((out / "chunks").glob("trajectories-*.jsonl"))
                    for line in path.read_text().splitlines() if line.strip()]
    with_ids = [t for t in trajectories if "completion_ids" in t]
    pairs_path = out / "pairs.jsonl"
    lines = pairs_path.read_text().splitlines() if pairs_path.exists() else []
    pairs = [json.loads(line) for line in lines if line.strip()]
    originals: dict[str, list[int]] = {}  # a harmful prompt's first trajectory: its original
    for t in with_ids:
        if t.get("kind") == "harmful":
            originals.setdefault(t["id"], t["completion_ids"])
    pair_ok = [p["prefix_ids"] + p["rejected_ids"] == originals[p["prompt_id"]] for p in pairs
               if p.get("prefix_ids") and p.get("prompt_id") in originals]  # the pairs cut from an original
    summary_path = out / "summary.json"
    exact = sum(tuple(t["completion_ids"]) in answered for t in with_ids)
    return dict(exit_code=done.returncode, seconds=seconds, stderr_tail=done.stderr[-2000:],
                requests=len(proxy.exchanges), trajectories=len(with_ids), trajectories_token_exact=exact,
                pairs=len(pairs), pairs_checked=len(pair_ok), pairs_prefix_plus_rejected_equal=sum(pair_ok),
                summary=json.loads(summary_path.read_text()) if summary_path.exists() else None)


def passed(greedy: list[dict], pairs: dict | None) -> bool:
    ok = bool(greedy) and all(r["equal"] for r in greedy)
    if pairs is not None:
        ok = ok and pairs["exit_code"] == 0 and pairs["trajectories"] > 0
        ok = ok and pairs["trajectories_token_exact"] == pairs["trajectories"]
        ok = ok and pairs["pairs_prefix_plus_rejected_equal"] == pairs["pairs_checked"]
    return ok


def write(out: Path, report: dict) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    greedy, pairs = report["greedy"], report["build_pairs"]
    equal = sum(r["equal"] for r in greedy)
    lines = [f"Setup: {report['setup']}.", "", "| check | result |", "|---|---|",
             f"| greedy ids, {len(greedy)} prompts x up to {report['max_tokens']} tokens | {equal} / {len(greedy)} "
             f"token-for-token equal |"]
    for r in greedy:
        if not r["equal"]:
            lines.append(f"| {r['id']} | first difference at token {r['first_difference']} |")
    if pairs is not None:
        lines += [f"| build-pairs through vLLM | exit {pairs['exit_code']}, {pairs['requests']} requests, "
                  f"{pairs['seconds']:.0f} s |",
                  f"| trajectories whose completion_ids are one of vLLM's token_ids "
                  f"| {pairs['trajectories_token_exact']} / {pairs['trajectories']} |",
                  f"| pairs with prefix_ids + rejected_ids == the original's ids "
                  f"| {pairs['pairs_prefix_plus_rejected_equal']} / {pairs['pairs_checked']} "
                  f"({pairs['pairs']} pairs) |"]
    lines.append(f"| all checks | {'passed' if report['passed'] else 'FAILED'} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vllm-python", help="a Python that imports vllm (default: this one)")
    p.add_argument("--model-dir", help="an HF model directory with its tokenizer (default: bench_serve's model)")
    p.add_argument("--shape", choices=sorted(bench_serve.SHAPES), default="small-qwen3", help="the built model's shape")
    p.add_argument("--vocab", type=int, default=32768, help="the built model's vocabulary")
    p.add_argument("--work", default="runs/bench-serve", help="the built model, logs, build-pairs output")
    p.add_argument("--prompts", default=str(ROOT / "configs/sample_prompts.jsonl"),
                   help="JSONL prompts (id, prompt, kind)")
    p.add_argument("--random-prompts", type=int, default=4, help="extra prompts of 16 random ids")
    p.add_argument("--max-tokens", type=int, default=32, help="greedy tokens per prompt")
    p.add_argument("--pairs-max-new-tokens", type=int, default=32, help="build-pairs' sampling.max_new_tokens")
    p.add_argument("--skip-build-pairs", action="store_true", help="only the greedy comparison")
    p.add_argument("--ipo-url",
                   help="a running ipo-jax serve of --model-dir (.../v1, model 'bench') instead of starting one")
    p.add_argument("--vllm-url", help="a running vLLM of --model-dir (.../v1, model 'bench') instead of starting one")
    p.add_argument("--startup-timeout", type=float, default=900.0)
    p.add_argument("--out", help="write OUT.json and OUT.md (e.g. tools/results/serve_vllm_check)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    vllm_python = bench_serve.find_vllm(args.vllm_python)
    if vllm_python is None and not args.vllm_url:
        print("vLLM is not installed here (pass --vllm-python); nothing to check", file=sys.stderr)
        return 2
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    model_dir = Path(args.model_dir).resolve() if args.model_dir else work / f"model-{args.shape}-v{args.vocab}"
    if not (model_dir / "config.json").is_file():
        if args.model_dir:
            raise SystemExit(f"--model-dir {args.model_dir}: no config.json there")
        bench_serve.build_model_dir(model_dir, args.shape, args.vocab)
    facts = bench_serve.model_facts(model_dir)
    prompts = rendered_prompts(model_dir, Path(args.prompts), args.random_prompts, facts["vocab_size"])
    longest = max(len(p["ids"]) for p in prompts)
    server_args = argparse.Namespace(
        prompt_length=max(longest, 512), max_tokens=max(args.max_tokens, args.pairs_max_new_tokens) + 64,
        chunk_tokens=32, ipo_args="", vllm_args="", vllm_python=vllm_python,
        vllm_kv_gib=2)
    given = {"ipo-jax": args.ipo_url, "vllm": args.vllm_url}
    servers = {name: bench_serve.Server(name, model_dir, server_args, work / f"check-{name}.log", 8)
               for name in ("ipo-jax", "vllm") if not given[name]}
    try:
        urls = {name: url.rstrip("/") for name, url in given.items() if url}
        urls.update({name: server.wait_ready(args.startup_timeout) for name, server in servers.items()})
        version = bench_serve.server_version("vllm", urls["vllm"])
        greedy = compare_greedy(urls, prompts, args.max_tokens)
        pairs = None if args.skip_build_pairs else build_pairs_through(
            urls["vllm"], model_dir, Path(args.prompts).resolve(), work / "pairs-vllm", args.pairs_max_new_tokens)
    finally:
        for server in servers.values():
            server.stop(30)
    setup = (f"{platform.node()}: {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}; vLLM {version}; model "
             f"{model_dir.name} ({facts['params'] / 1e6:.1f}M params, vocab {facts['vocab_size']}, float32)")
    report = dict(setup=setup, vllm_version=version, model=facts, model_dir=str(model_dir), max_tokens=args.max_tokens,
                  greedy=greedy, build_pairs=pairs)
    report["passed"] = passed(greedy, pairs)
    if pairs is not None:
        print(f"build-pairs: exit {pairs['exit_code']}, {pairs['trajectories_token_exact']} / {pairs['trajectories']} "
              f"trajectories token-exact, {pairs['pairs']} pairs")
    if args.out:
        write(Path(args.out), report)
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    import signal

    signal.signal(signal.SIGTERM, bench_serve._stop_on_sigterm)
    sys.exit(main())
