"""The per-share stages (sample, build-pairs, csr, eval) as two real JAX processes of 4 CPU devices
each (`ipo-jax launch`, gloo over loopback) write the files one process of 8 devices writes.

Each process samples its own share on its own devices (a mesh over both processes' devices would
make every sampling step a program both must run with the same inputs: it failed with "Fetching
value for `jax.Array` that spans non-addressable devices"), and process 0 merges once every
process has reported its share done. Every launch has a timeout, so a hang fails the test; a
failure shows each process's last lines."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from conftest import save_sample_pairs_tokenizer
from test_multiprocess import _finish
from test_multiprocess import _launch as launch_process

from ipo_jax.cli import main
from ipo_jax.launch import free_port, process_environment

REPO = Path(__file__).resolve().parents[1]

PROMPTS = [{"id": f"p{i}", "prompt": text, "kind": kind} for i, (text, kind) in enumerate([
    ("How do I do something risky? [request details withheld]", "harmful"),
    ("A benign photo question", "benign"),
    ("Another risky thing [request details withheld]", "harmful"),
    ("A safe-looking question [request details withheld]", "harmful"),
    ("What should I cook tonight?", "benign"),
    ("One more risky thing [request details withheld]", "harmful"),
])]
EVAL_ITEMS = [row for i in range(3) for row in (
    {"id": f"h{i}", "prompt": f"Risky request {i} [request details withheld]", "kind": "harmful"},
    {"id": f"b{i}", "prompt": f"A benign photo question {i}", "kind": "benign"},
    {"id": f"m{i}", "prompt": f"What is {i} + {i}?", "kind": "math", "reference": 2 * i},
)]


@pytest.fixture(autouse=True)
def no_git_commit(monkeypatch):
    """Records name the code's git commit (provenance); other engineers commit while the suite runs,
    so the one-process and the launched runs could see two HEADs: both see none here."""
    from ipo_jax.provenance import code_version

    monkeypatch.setenv("GIT_DIR", "/nonexistent")  # the launched processes inherit it
    code_version.cache_clear()
    yield
    code_version.cache_clear()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    save_sample_pairs_tokenizer(root / "tokenizer")
    (root / "prompts.jsonl").write_text("".join(json.dumps(p) + "\n" for p in PROMPTS))
    (root / "eval.jsonl").write_text("".join(json.dumps(p) + "\n" for p in EVAL_ITEMS))
    return root


def _pipeline_args(stage: str, world: Path, out: Path, *extra: str) -> list[str]:
    return [stage, "--config", str(REPO / "configs" / "pipeline_tiny_cpu.py"), "--config.model.init=preset:tiny-qwen3",
            f"--config.tokenizer={world / 'tokenizer'}", f"--config.prompts={world / 'prompts.jsonl'}",
            f"--config.out={out}", "--config.sampling.max_new_tokens=12", "--config.sampler.batch_size=8",
            "--config.intervention.chunk_prompts=2", *extra]


def _launch(args: list[str], processes: int = 2, devices: int = 4) -> str:
    """`ipo-jax launch` of `args`; its output once it exits 0 (a run past RUN_TIMEOUT is killed and fails)."""
    return _finish(launch_process(processes, devices, args))


def _files(root: Path) -> dict[str, str]:
    """{relative path: sha256} of every file under root."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_sample_and_csr_in_two_processes_write_the_one_process_files(world, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(_pipeline_args("sample", world, one / "sample")) == 0
    output = _launch(_pipeline_args("sample", world, two / "sample"))
    assert "[1] 3 trajectories sampled in this process" in output and "[0] 6 trajectories" in output
    assert _files(two / "sample") == _files(one / "sample")  # trajectories.jsonl, sample_run.json; no parts left
    rows = [json.loads(line) for line in (one / "sample" / "trajectories.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == [p["id"] for p in PROMPTS] and len({r["completion"] for r in rows}) > 3

    # CSR of the harmful trajectories (4: two for each process), each trace under its own seed
    csr = ["--config.csr.trajectories=" + str(one / "sample" / "trajectories.jsonl"), "--config.csr.num_samples=2",
           "--config.csr.window=1", "--config.csr.seed=5"]
    assert main(_pipeline_args("csr", world, one / "csr", *csr)) == 0
    _launch(_pipeline_args("csr", world, two / "csr", *csr))
    files = _files(one / "csr")
    assert {"csr_summary.jsonl", "csr/run.json", "csr/p0.csr.csv", "csr/p5.csr.png"} <= set(files)
    assert _files(two / "csr") == files


def test_build_pairs_in_two_processes_writes_the_one_process_files(world, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(_pipeline_args("build-pairs", world, one)) == 0
    output = _launch(_pipeline_args("build-pairs", world, two))
    assert "[1] this process's chunks are done" in output and "[0] pairs: " in output
    files = _files(one)
    assert {"run.json", "pairs.jsonl", "summary.json", "chunks/progress-00002.json", "chunks/trajectories-00001.jsonl"} <= set(files)
    assert _files(two) == files  # chunks 0 and 2 by process 0, 1 by process 1: the same bytes


def _without_timing(path: Path) -> dict:
    data = json.loads(path.read_text())
    return {k: v for k, v in data.items() if k not in ("seconds", "seconds_all_parts", "shards")}


def test_eval_in_two_processes_merges_to_the_one_process_run(world, tmp_path):
    args = ["eval", "--config", str(REPO / "configs" / "eval.py"), "--config.model.init=preset:tiny-qwen3",
            f"--config.tokenizer={world / 'tokenizer'}", f"--config.benchmarks=jsonl={world / 'eval.jsonl'}",
            "--config.judge.backend=pattern", "--config.sampling.max_new_tokens=12", "--config.sampler.batch_size=8",
            "--config.sampler.max_prompt_length=512", "--config.samples_per_prompt=2"]
    one, two = tmp_path / "one", tmp_path / "two"
    assert main([*args, f"--config.out={one}"]) == 0
    output = _launch([*args, f"--config.out={two}"])
    assert "[1] part 1 of 2 written" in output and "[0] report: " in output
    assert (two / "generations.jsonl").read_bytes() == (one / "generations.jsonl").read_bytes()
    assert len((one / "generations.jsonl").read_text().splitlines()) == 2 * len(EVAL_ITEMS)
    for name in ("summary.json", "run.json"):
        assert _without_timing(two / name) == _without_timing(one / name), name
    assert json.loads((two / "summary.json").read_text())["shards"] == 2
    assert sorted(p.name for p in (two / "parts").iterdir()) == ["part-00000-of-00002", "part-00001-of-00002"]


SHARE_FAILS = textwrap.dedent("""
    import sys, time
    import jax
    from ipo_jax import distributed
    from ipo_jax.cli import main
    distributed.initialize_from_environment()
    start = time.time()
    if jax.process_index() == 1 and sys.argv[1] == "cli":  # a stage that fails before its share (bad settings)
        sys.exit(main(["sample", "--config", "configs/pipeline_tiny_cpu.py", "--config.prompts=/nonexistent.jsonl"]))
    try:
        with distributed.shares_joined("demo"):
            if jax.process_index() == 1:
                time.sleep(1)
                raise ValueError("share 1 broke")
    except Exception as e:
        print(f"{type(e).__name__}: {e} after {time.time() - start:.0f} s", flush=True)
        sys.exit(3)
""")


@pytest.mark.parametrize("where", ["share", "cli"])
def test_a_process_that_fails_stops_the_other_instead_of_leaving_it_waiting(where):
    """Without the launcher (which stops the rest when one fails), as under srun: process 1 fails
    inside its share, or in the CLI before it (a missing prompt file); process 0, waiting for its
    share, stops at once naming process 1 and its error (jax alone would keep it waiting: its
    shutdown barrier times out after 5 minutes)."""
    port = free_port()
    procs = [subprocess.Popen([sys.executable, "-c", SHARE_FAILS, where], cwd=REPO, env=process_environment(i, 2, port, 1),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
    start, outputs = time.time(), []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=120)[0])
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    assert time.time() - start < 60
    assert [p.returncode for p in procs] == [3, 3 if where == "share" else 2], outputs
    if where == "share":
        error = "ValueError: share 1 broke"
    else:  # the CLI's one-line error (here: settings checked before anything loads), as process 1 printed it
        error = outputs[1].split("ipo-jax sample: error: ", 1)[-1].strip()[:60]
    assert error and error in outputs[1]
    assert "PeerProcessError: process 1 of 2 failed (" in outputs[0] and error in outputs[0], outputs[0]
    assert "while this process waited for every share of demo" in outputs[0]
