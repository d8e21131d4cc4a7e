"""tools/bench_grpo.py's harness (no timing, no TRL): the workload it writes for both sides, the
reward both sides compute, how rounds merge, the completion-length guard, and the medians,
tokens/s and ratios of the table."""

import ast
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

_TOOLS = Path(__file__).parents[1] / "tools"
_spec = importlib.util.spec_from_file_location("bench_grpo", _TOOLS / "bench_grpo.py")
bench_grpo = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("bench_grpo", bench_grpo)  # dataclasses look their module up by name
_spec.loader.exec_module(bench_grpo)

TINY = dict(model="tiny", prompts_per_step=2, num_generations=4, prompt_tokens=8, completion_tokens=4,
            warmup=1, steps=2)


def _peer_reward():
    """tools/peers/trl_grpo.py's reward function, read from its source (the peer imports torch and trl)."""
    tree = ast.parse((_TOOLS / "peers" / "trl_grpo.py").read_text())
    fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "even_share_reward")
    scope = {}
    exec(compile(ast.Module(body=[fn], type_ignores=[]), "trl_grpo.py", "exec"), scope)
    return scope["even_share_reward"]


def test_both_sides_compute_the_same_reward():
    completions = [[4, 6, 7, 9], [3], [2, 2], list(range(3, 40))]
    ours = [bench_grpo.rule_reward(c) for c in completions]
    assert ours[:3] == [0.5, 0.0, 1.0]
    assert _peer_reward()(completion_ids=completions, prompts=None) == ours


def test_workload_rejects_shapes_it_cannot_run():
    with pytest.raises(ValueError, match="micro-batches"):
        bench_grpo.Workload(prompts_per_step=3, num_generations=2, micro_batches=4)
    with pytest.raises(ValueError, match="num_generations"):
        bench_grpo.Workload(num_generations=1)
    with pytest.raises(ValueError, match=">= 1"):
        bench_grpo.Workload(steps=0)
    w = bench_grpo.Workload(**TINY)
    assert (w.rows, w.new_tokens_per_step, w.tokens_per_step) == (8, 32, 96)


def test_workload_files_are_written_once_and_rewritten_on_change(tmp_path, monkeypatch):
    saved = []

    def save_hf(model, out):  # the model itself is ipo_jax's save_hf (tested with it); here: when it is written
        saved.append(model)
        Path(out).mkdir(parents=True)
        (Path(out) / "model.safetensors").write_bytes(b"")

    monkeypatch.setattr(bench_grpo, "init_decoder", lambda cfg, seed: (cfg.vocab_size, seed))
    monkeypatch.setattr(bench_grpo, "save_hf", save_hf)
    w = bench_grpo.Workload(**TINY)
    spec = bench_grpo.write_workload(tmp_path / "work", w)
    prompts = json.loads((tmp_path / "work" / "prompts.json").read_text())
    cfg = bench_grpo.model_config("tiny")
    assert saved == [(cfg.vocab_size, w.seed)] and spec["model"]["eos_token_id"] == cfg.eos_token_id
    assert spec["model_dir"] == str(tmp_path / "work" / "model")
    assert np.asarray(prompts).shape == (w.prompts_per_step * (w.warmup + w.steps), w.prompt_tokens)
    assert 3 <= min(map(min, prompts)) and max(map(max, prompts)) < cfg.vocab_size  # no pad / bos / eos id
    bench_grpo.write_workload(tmp_path / "work", w)  # same settings: reused as it is
    assert len(saved) == 1
    bench_grpo.write_workload(tmp_path / "work", bench_grpo.Workload(**{**TINY, "prompt_tokens": 5}))
    assert len(saved) == 2
    assert np.asarray(json.loads((tmp_path / "work" / "prompts.json").read_text())).shape[1] == 5


def _row(name, step, generate, score, length=4):
    steps = len(step)
    return dict(implementation=name, step_seconds=list(step), generate_seconds=list(generate),
                score_seconds=list(score), update_seconds=[s - g - c for s, g, c in zip(step, generate, score)],
                refresh_seconds=[0.1] * steps if name == "ours" else [], logs=[{}] * steps,
                min_completion_length=length, versions={name: "1"},
                check_logps=[-1.0, -2.0] if name == "ours" else [-1.0, -2.5])


def test_rounds_alternate_and_merge(monkeypatch, tmp_path):
    w = bench_grpo.Workload(**TINY)
    calls = []
    monkeypatch.setattr(bench_grpo, "write_workload", lambda work, w: None)
    monkeypatch.setattr(bench_grpo, "run_ours",
                        lambda work, w: calls.append("ours") or _row("ours", [1.0, 2.0], [0.5, 0.5], [0.1, 0.1]))
    monkeypatch.setattr(bench_grpo, "run_trl",
                        lambda work, py, threads=0: calls.append("trl") or _row("trl", [4.0, 5.0], [2, 2], [1, 1]))
    result = bench_grpo.run(w, tmp_path, rounds=3, sides=["ours", "trl"], trl_python="python")
    assert calls == ["ours", "trl", "trl", "ours", "ours", "trl"]
    ours, trl = result["rows"]
    assert len(ours["step_seconds"]) == len(trl["step_seconds"]) == 6 and len(ours["refresh_seconds"]) == 6
    assert len(result["loads"]) == 7
    assert result["same_weights_max_logp_diff"] == 0.5


def test_a_short_completion_stops_the_run(monkeypatch, tmp_path):
    w = bench_grpo.Workload(**TINY)
    monkeypatch.setattr(bench_grpo, "write_workload", lambda work, w: None)
    short = _row("trl", [1.0, 1.0], [0.5, 0.5], [0.1, 0.1], length=3)
    monkeypatch.setattr(bench_grpo, "run_trl", lambda work, py, threads=0: short)
    with pytest.raises(SystemExit, match="3 tokens, expected 4"):
        bench_grpo.run(w, tmp_path, rounds=1, sides=["trl"], trl_python="python")


def test_a_warm_up_step_among_the_timed_ones_stops_the_run(monkeypatch, tmp_path):
    w = bench_grpo.Workload(**TINY)  # 1 warm-up + 2 timed steps
    monkeypatch.setattr(bench_grpo, "write_workload", lambda work, w: None)
    monkeypatch.setattr(bench_grpo, "run_trl", lambda work, py, threads=0: _row("trl", [9.0, 1.0, 1.0], [1] * 3, [0] * 3))
    with pytest.raises(SystemExit, match="3 timed steps, expected 2"):
        bench_grpo.run(w, tmp_path, rounds=1, sides=["trl"], trl_python="python")


def test_summary_medians_tokens_per_second_and_ratios():
    w = bench_grpo.Workload(**TINY)  # 32 new tokens, 96 tokens per step
    rows = [_row("ours", [1.0, 3.0, 2.0], [0.5, 1.0, 0.8], [0.1, 0.1, 0.1]),
            _row("trl", [8.0, 6.0, 4.0], [4.0, 4.0, 2.0], [1.0, 1.0, 1.0])]
    ours, trl = bench_grpo.summarise(rows, w)
    assert ours["median_seconds"]["step"] == 2.0 and trl["median_seconds"]["step"] == 6.0
    assert ours["median_seconds"]["generate"] == 0.8 and ours["median_seconds"]["refresh"] == 0.1
    # train = score + update per step, then the median: ours 0.5, 2.0, 1.2; TRL 4, 2, 2
    assert ours["median_seconds"]["train"] == pytest.approx(1.2) and trl["median_seconds"]["train"] == 2.0
    assert ours["step_tokens_per_second"] == pytest.approx(48.0)
    assert ours["generate_tokens_per_second"] == pytest.approx(40.0)
    assert ours["speedup_vs_trl"]["step"] == pytest.approx(3.0)
    assert ours["speedup_vs_trl"]["generate"] == pytest.approx(5.0)
    assert "refresh" not in trl["speedup_vs_trl"] and trl["speedup_vs_trl"]["step"] == 1.0
    text = bench_grpo.markdown([ours, trl], "setup")
    assert "| ours | 2.00 | 48 | 0.80 | 40 |" in text and "| 3.00x | 5.00x | 1.67x |" in text
    assert "0.100 s (median) give the sampler" in text
