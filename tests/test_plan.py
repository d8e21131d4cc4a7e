"""`ipo-jax plan` (ipo_jax/train/plan.py): the real train step compiled from abstract arrays for a
topology, its per-device memory, the fit verdict and exit code, the suggested change, and the
layer extrapolation against a full-depth compile. Tiny preset, 2 simulated devices."""

import re
import shlex

import jax
import pytest
from conftest import flat_config

from ipo_jax.cli import main, parse_config
from ipo_jax.train import plan

GIB = 1024**3
# Activation-heavy for its size (256-token rows, 2 per device), so remat and rows move the peak.
TINY = ["--config", "configs/train_tiny_cpu.py", "--config.data.pairs_per_micro=4", "--config.data.micro_batches=2"]
TOPOLOGY = "2xa100-80"
EXTRAPOLATION_TOLERANCE = 0.05  # relative error of the extrapolated peak (tools/check_plan_extrapolation.py for 8B)

needs_devices = pytest.mark.skipif(len(jax.devices()) < 2, reason="needs 2 (simulated) devices")


def _peak_gib(out: str) -> float:
    return float(re.search(r"peak ([\d.]+) GiB", out).group(1))


def test_topologies():
    v5p = plan.parse_topology("v5p-8")
    assert (v5p.kind, v5p.devices, v5p.device_gib, v5p.tpu_topology) == ("tpu", 4, 95.0, "v5p:2x2x1")
    assert plan.parse_topology("V5P-256").devices == 128
    h100, h200, a100 = (plan.parse_topology(n) for n in ("8xh100", "8xh200", "16xa100-80"))
    assert (h100.devices, h200.devices, a100.devices) == (8, 8, 16)
    assert 79 < h100.device_gib < 80.1 and 140 < h200.device_gib < 141 and a100.device_gib == 80
    for bad in ("v5p-12", "v5e-8", "0xh100", "8xh100s", ""):
        with pytest.raises(plan.PlanError, match="known topologies: v5p-8, v5p-16"):
            plan.parse_topology(bad)


def test_paper_model_shapes_come_from_presets_when_the_checkpoint_is_absent():
    config = parse_config(["--config", "configs/train_qwen3_8b.py", "--config.model.init=hf:/nonexistent/Qwen3-8B"], "train")
    cfg = plan.model_config_for(config)
    assert (cfg.num_layers, cfg.hidden_size, cfg.param_dtype, cfg.dtype) == (36, 4096, config.model.param_dtype, "bfloat16")
    config = parse_config([*TINY, "--config.model.init=hf:/nonexistent/no-such-model"], "train")
    with pytest.raises(plan.PlanError, match="no preset is named 'no-such-model'"):
        plan.model_config_for(config)


def test_unknown_topology_and_bad_flags_are_one_line_exit_2(capsys):
    assert main(["plan", *TINY, "--topology", "v9x-3"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unknown topology 'v9x-3'" in err
    assert "v5p-8" in err and "8xh100" in err and "8xh200" in err and "a100-80" in err
    assert main(["plan", *TINY, "--topology", TOPOLOGY, "--layers", "4"]) == 2
    assert "--layers '4'" in capsys.readouterr().err
    assert main(["plan", *TINY, "--topology", TOPOLOGY, "--headroom", "1.5"]) == 2
    assert main(["plan", *TINY, "--topology", TOPOLOGY, "--config.data.no_such_field=1"]) == 2
    assert main(["plan", *TINY]) == 2  # --topology is required
    assert "--topology" in capsys.readouterr().err


@pytest.mark.parametrize("overrides, message", [
    (["--config.data.max_length=-5", "--config.data.buckets=()"], "config.data.max_length is -5; expected an integer from 2"),
    (["--config.optim.learning_rate=nan"], "config.optim.learning_rate is nan; expected a finite number"),
    (["--config.data.pairs_per_micro=0"], "config.data.pairs_per_micro is 0; expected an integer >= 1"),
    (["--config.data.micro_batches=0"], "config.data.micro_batches is 0; expected an integer >= 1"),
    (["--config.train.logprob_chunk=0"], "config.train.logprob_chunk is 0; expected an integer from 1"),
    (["--config.data.buckets=(0,)"], "config.data.buckets is (0,); expected a tuple of integers from 2"),
    (["--config.data.max_length=1000000000000", "--config.data.buckets=()"], "config.data.max_length is 1000000000000; "
                                                                           "expected integers of at most 2**31 - 1"),
    (["--config.data.max_length=1024", "--config.data.buckets=()"],
     "data.max_length is 1024 tokens, longer than the context of preset:tiny-qwen3 (512 tokens, max_position_embeddings)"),
])
def test_plan_validates_the_settings_as_train_does_before_compiling(overrides, message, capsys, monkeypatch):
    monkeypatch.setattr(plan, "compile_train_step", lambda *a: pytest.fail("compiled a bad config"))
    assert main(["plan", *TINY, *overrides, "--topology", TOPOLOGY]) == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and message in captured.err and captured.out == ""


def test_plan_does_not_need_the_files_only_a_run_reads(tmp_path):
    """Planning on a laptop: no pair file, no tokenizer, no writable output, no checkpoint here."""
    config = parse_config([*TINY, f"--config.data.pairs={tmp_path / 'missing.jsonl'}", f"--config.tokenizer={tmp_path / 'tok'}",
                           "--config.train.out=/proc/ipo-jax-test/run", "--config.model.init=hf:/nonexistent/tiny-qwen3"],
                          "train")
    from ipo_jax.validation import SettingsError, validate_settings

    with pytest.raises(SettingsError):
        validate_settings("train", config)
    validate_settings("plan", config)  # passes: a plan reads none of them
    plan.check_sequence_fits_model(config, plan.model_config_for(config))  # the preset named like the directory


def test_a_topology_larger_than_the_started_backend_is_a_clear_error(capsys):
    # the test process's backend started with a fixed CPU device count; v5p-256 needs 128
    assert main(["plan", *TINY, "--topology", "v5p-256"]) == 2
    err = capsys.readouterr().err
    assert "128 CPU devices" in err and "fresh process" in err


@needs_devices
def test_plan_fits_then_a_tight_budget_gets_a_smaller_change_that_fits(capsys):
    assert main(["plan", *TINY, "--topology", TOPOLOGY]) == 0
    out = capsys.readouterr().out
    assert "fits (" in out and "100% headroom" in out and "simulated with CPU devices" in out
    config = parse_config(TINY, "train")
    base = plan.measure(config, plan.parse_topology(TOPOLOGY)).memory  # the same compile (cached)
    assert base.arguments > 0 and base.temps > 0 and abs(_peak_gib(out) - base.peak / GIB) < 0.01
    # the float32 train state (params + 2 moments) split over 2 devices is among the arguments
    params = plan.model_config_for(config).num_params()
    assert base.arguments >= 3 * 4 * params / 2

    budget = base.peak / GIB / 0.95  # 5% headroom: under the 10% kept free
    assert main(["plan", *TINY, "--topology", TOPOLOGY, "--device-memory", repr(budget)]) == 3
    out = capsys.readouterr().out
    assert "does not fit" in out and "5% headroom, under the 10% kept free" in out
    flags = shlex.split(re.search(r"smallest change that fits: (.*)", out).group(1))
    assert flags and all(f.startswith("--config.") for f in flags)
    # the change really is smaller: planned again from its flags, it fits the same budget
    assert main(["plan", *TINY, *flags, "--topology", TOPOLOGY, "--device-memory", repr(budget)]) == 0
    out = capsys.readouterr().out
    assert "fits (" in out
    changed = plan.measure(parse_config([*TINY, *flags], "train"), plan.parse_topology(TOPOLOGY)).memory
    assert changed.peak <= 0.9 * budget * GIB < base.peak
    # pairs per update are kept whatever the change
    changed_config = parse_config([*TINY, *flags], "train")
    assert changed_config.data.pairs_per_micro * changed_config.data.micro_batches == 8


def test_candidate_changes_keep_pairs_per_update_and_the_mesh_legal():
    config = parse_config(["--config", "configs/train_r1_distill_llama_8b.py", "--config.model.remat=none",
                           "--config.data.pairs_per_micro=16", "--config.data.micro_batches=2"], "train")
    topology = plan.parse_topology("8xh100")
    candidates = list(plan.candidate_changes(config, topology))
    # cheapest first: remat, then rows per micro-batch (16 -> 8: one per device), then tensor, then length
    assert candidates[0] == {"model.remat": "dots_saveable"} and candidates[1] == {"model.remat": "full"}
    assert candidates[2] == {"model.remat": "full", "data.pairs_per_micro": 8, "data.micro_batches": 4}
    for changes in candidates:
        c = plan.with_overrides(config, changes)
        assert c.data.pairs_per_micro * c.data.micro_batches == 32
        parts = topology.devices // c.mesh.tensor
        assert c.data.pairs_per_micro % parts == 0  # prefix-shared rows split over the batch axes
    tensors = [c.get("mesh.tensor", 1) for c in candidates]
    assert tensors == sorted(tensors) and max(tensors) == 8
    lengths = [c.get("data.max_length", 16384) for c in candidates]
    assert lengths == sorted(lengths, reverse=True) and min(lengths) == plan.SHORTEST_SUGGESTED_LENGTH
    assert config.data.max_length == 16384  # with_overrides copies


@needs_devices
def test_layer_extrapolation_agrees_with_a_full_depth_compile(monkeypatch):
    config = parse_config(TINY, "train")
    six_layers = plan.model_config_for(config).replace(num_layers=6)
    monkeypatch.setattr(plan, "model_config_for", lambda c: six_layers)
    topology = plan.parse_topology(TOPOLOGY)
    full = plan.measure(config, topology)
    extrapolated = plan.measure(config, topology, layers=(2, 4))
    assert full.method == "full depth" and extrapolated.method == "extrapolated from 2 and 4 layers"
    # the train state is exactly linear in the layer count
    assert extrapolated.memory.arguments == pytest.approx(full.memory.arguments, rel=1e-3)
    assert extrapolated.memory.peak == pytest.approx(full.memory.peak, rel=EXTRAPOLATION_TOLERANCE)


PAPER_RUNS = ("qwen3_8b", "r1_distill_qwen_7b", "r1_distill_llama_8b")
# the settings a stage-2 config may change without changing the compiled step or its memory
STAGE2_CHANGES = {"model.init", "tokenizer", "reference.init", "data.pairs", "train.out", "train.epochs"}


@pytest.mark.skipif(len(jax.devices()) < 8, reason="needs 8 (simulated) devices")
@pytest.mark.parametrize("topology", ["v5p-8", "8xh100"])
@pytest.mark.parametrize("run", PAPER_RUNS)
def test_each_paper_config_fits_v5p_8_and_8xh100_at_its_max_length(run, topology):
    """The shipped paper configs as they are (8 rows per micro-batch, data.max_length 16384, the
    pipeline configs' longest pair) fit with the default 10% headroom; full-depth compiles of the
    8B step, a few seconds each. Stage 2 compiles the same step: it differs only in what it loads."""
    config = parse_config(["--config", f"configs/train_{run}.py"], "train")
    assert config.data.max_length == 16384 and config.data.pairs_per_micro == 8
    measured = plan.measure(config, plan.parse_topology(topology)).memory
    assert plan.fits(measured.peak, plan.parse_topology(topology)), f"{run} on {topology}: peak {measured.peak / GIB:.1f} GiB"
    stage2 = parse_config(["--config", f"configs/train_{run}_stage2.py"], "train")
    changed = {k for k, v in flat_config(stage2).items() if flat_config(config).get(k) != v}
    assert changed <= STAGE2_CHANGES, changed - STAGE2_CHANGES


# ---------------------------------------------------------------------------------- multi-host (#23)
TINY_CPU = ["--config", "configs/train_tiny_cpu.py"]  # 8 prefix-shared rows x 1 micro-batch


def test_multi_host_topologies_have_hosts_and_devices_per_host():
    expected = {  # name: (devices, hosts, devices per host)
        "v5p-8": (4, 1, 4), "v5p-16": (8, 2, 4), "v5p-64": (32, 8, 4), "v5p-256": (128, 32, 4),
        "4xh100": (4, 1, 4), "8xh100": (8, 1, 8), "16xh100": (16, 2, 8), "32xh200": (32, 4, 8),
        "64xa100-80": (64, 8, 8),
    }
    for name, want in expected.items():
        t = plan.parse_topology(name)
        assert (t.devices, t.hosts, t.devices_per_host) == want, name
    assert plan.parse_topology("16xh100").host_label == "GPU node"
    assert plan.parse_topology("v5p-16").host_label == "TPU VM host"
    with pytest.raises(plan.PlanError, match=r"multiple of 8 \(e.g. 16xh100\)"):
        plan.parse_topology("12xh100")


def test_host_view_of_a_mesh_over_two_gpu_nodes():
    import numpy as np

    config = parse_config([*TINY_CPU, "--config.data.pairs_per_micro=16", "--config.data.micro_batches=2"], "train")
    t = plan.parse_topology("16xh100")
    # fsdp=8 x tensor=2: devices 0-7 on node 0, 8-15 on node 1 (process-major, as make_mesh lays them out)
    view = plan.host_view(config, t, {"data": 1, "fsdp": 8, "tensor": 2}, np.arange(16).reshape(1, 8, 2) // 8)
    assert view.crossing == {"fsdp": 2, "tensor": 1} and view.batch_parts == 8 and view.rows_per_part == 2
    assert [view.host_rows(h) for h in (0, 1)] == ["0-7", "8-15"]
    out = "\n".join(view.lines(peak=2 * GIB))
    assert "hosts: 2 processes (one per GPU node) x 8 devices each = 16 devices" in out
    assert "fsdp=8 spans 2 hosts; tensor=2 within each host (fsdp collectives cross the host network" in out
    assert "global batch 32 pairs per step (16 per micro-batch x 2); per host 16 pairs per step" in out
    assert "per host: 8 x 2.0 GiB = 16.0 GiB of 637.2 GiB" in out and "warning" not in out
    # a tensor axis across both nodes: warned; no batch axis crosses hosts, so each computes all of it
    view = plan.host_view(config, t, {"data": 1, "fsdp": 1, "tensor": 16}, np.arange(16).reshape(1, 1, 16) // 8)
    out = "\n".join(view.lines())
    assert "warning: the tensor axis crosses hosts" in out and "keep mesh.tensor <= 8" in out
    assert "per host 32 pairs per step (the batch axes do not cross hosts" in out
    # rows that do not split over 16 shards: the hint keeps the pairs per step
    hint = plan.batch_fit_hint(parse_config(["--config", "configs/train_qwen3_8b.py"], "train"), 16)
    assert "--config.data.pairs_per_micro=16 --config.data.micro_batches=2 (the same 32 pairs per step)" in hint


@pytest.mark.skipif(len(jax.devices()) < 8, reason="needs 8 (simulated) devices")
def test_v5p_16_plan_prints_the_per_host_view(capsys):
    assert main(["plan", *TINY_CPU, "--topology", "v5p-16"]) == 0
    out = capsys.readouterr().out
    assert "hosts: 2 processes (one per TPU VM host) x 4 devices each = 8 devices" in out
    assert "mesh over hosts: fsdp=8 spans 2 hosts (fsdp collectives cross the host network, DCN)" in out
    assert "batch: 8 rows per micro-batch split over the batch axes (fsdp=8) = 8 shards of 1 row" in out
    assert "host 0 (process 0): rows 0-3 of each micro-batch, 4 pairs per step" in out
    assert "host 1 (process 1): rows 4-7 of each micro-batch, 4 pairs per step" in out
    assert "global batch 8 pairs per step (8 per micro-batch x 1); per host 4 pairs per step" in out
    assert re.search(r"per host: 4 x [\d.]+ GiB = [\d.]+ GiB of 380\.0 GiB", out) and "fits (" in out
    # HSDP: data across the hosts, fsdp within each
    assert main(["plan", *TINY_CPU, "--topology", "v5p-16", "--config.mesh.data=2", "--config.mesh.fsdp=4"]) == 0
    assert "data=2 spans 2 hosts; fsdp=4 within each host (data collectives" in capsys.readouterr().out
    # one host: one line
    assert main(["plan", *TINY_CPU, "--topology", "8xh100"]) == 0
    out = capsys.readouterr().out
    assert "hosts: 1 process (GPU node) x 8 devices; the whole batch (8 pairs per step) on this host" in out


def test_16xh100_plans_16_devices_in_a_fresh_process():
    """16 simulated devices: more than this test process started with, so `ipo-jax plan` runs as a
    user runs it (a fresh process asks JAX for 16 CPU devices before it starts)."""
    import os
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "ipo_jax.cli", "plan", *TINY_CPU, "--topology", "16xh100"]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    run = subprocess.run([*cmd, "--config.data.pairs_per_micro=16"], capture_output=True, text=True, env=env,
                         timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "mesh fsdp=16;" in run.stdout
    assert "hosts: 2 processes (one per GPU node) x 8 devices each = 16 devices" in run.stdout
    assert "host 1 (process 1): rows 8-15 of each micro-batch, 8 pairs per step" in run.stdout
    assert "global batch 16 pairs per step (16 per micro-batch x 1); per host 8 pairs per step" in run.stdout
    # 8 rows do not split over 16 devices: exit 2, with what would
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 2 and "8 rows per micro-batch cannot be split" in run.stderr
    assert "--config.data.pairs_per_micro=16 --config.data.micro_batches=1 (more pairs per step)" in run.stderr


# ---------------------------------------------------------------------------------- GRPO (#27)
GRPO_TINY = ["--config", "configs/grpo_tiny_cpu.py"]  # 32 rows of 96 tokens in 2 micro-batches, beta 0.04
GRPO_RUNS = ("qwen3_8b", "r1_distill_qwen_7b", "r1_distill_llama_8b")


@needs_devices
def test_plan_compiles_the_grpo_update_of_a_grpo_config(capsys, monkeypatch):
    monkeypatch.setattr(plan, "compile_train_step", lambda *a: pytest.fail("a GRPO config planned as a train step"))
    assert main(["plan", *GRPO_TINY, "--topology", TOPOLOGY]) == 0
    out = capsys.readouterr().out
    assert "GRPO update" in out and "96 tokens (prompt 64 + completion 32) x 16 rows per micro-batch x 2" in out
    assert "reference forward yes" in out and "rollout (estimate)" in out and "fits (" in out
    config = parse_config(GRPO_TINY, "grpo")
    with_ref = plan.measure(config, plan.parse_topology(TOPOLOGY)).memory  # the same compile (cached)
    no_ref = plan.measure(parse_config([*GRPO_TINY, "--config.grpo.beta=0.0"], "grpo"),
                          plan.parse_topology(TOPOLOGY)).memory
    params = plan.model_config_for(config).num_params()
    # the reference's float32 weights (split over 2 devices) are arguments only when beta > 0
    assert with_ref.arguments - no_ref.arguments == pytest.approx(4 * params / 2, rel=0.05)
    assert main(["plan", *GRPO_TINY, "--config.grpo.num_generations=1", "--topology", TOPOLOGY]) == 2
    assert "config.grpo.num_generations is 1" in capsys.readouterr().err


@pytest.mark.skipif(len(jax.devices()) < 8, reason="needs 8 (simulated) devices")
@pytest.mark.parametrize("run, topology", [("qwen3_8b", "v5p-8"), ("r1_distill_llama_8b", "8xh100")])
def test_grpo_paper_configs_fit(run, topology):
    """The GRPO paper configs (64 rows of 1024 + 5120 tokens per update, beta 0.04: the reference
    forward in the step) fit; layers extrapolated from 2 and 4 (the full-depth numbers of all
    three models on both topologies are in the README)."""
    config = parse_config(["--config", f"configs/grpo_{run}.py"], "grpo")
    measured = plan.measure(config, plan.parse_topology(topology), layers=(2, 4)).memory
    assert plan.fits(measured.peak, plan.parse_topology(topology)), f"{run} on {topology}: {measured.peak / GIB:.1f} GiB"
