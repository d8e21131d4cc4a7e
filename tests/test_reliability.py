"""Issue #7, reliability and safety of the tool itself: faults injected into real runs (SIGKILL at
random training steps and inside a checkpoint save, a killed pair builder, damaged checkpoints,
non-finite steps, a faulty judge endpoint on loopback), bad inputs through the command line, and
safe loading. Each test states the fault and checks the observable outcome.

Training subprocesses run on one simulated device and share the suite's XLA compile cache
(conftest), like tests/test_train.py, whose helpers they reuse. Harmful content is only ever the
placeholder ``[harmful details withheld]``.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import random
import re
import subprocess
import sys
import threading
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest
from test_judging_http import KEY, KEY_ENV, chat, free_port, reply
from test_judging_http import server  # noqa: F401 (the loopback endpoint fixture)
from test_pipeline import COMPLIANT, SAFE_TAIL, TRIGGERS, ScriptedPolicy
from test_train import REPO, _finish, _losses, _metrics, _run_cli, _train_args

from ipo_jax.cli import main
from ipo_jax.train import checkpoints, data, loop, run_dir
from ipo_jax.train.step import TrainState

FIXTURES = Path(__file__).parent / "fixtures" / "reliability"
STEPS = ["--config.train.max_steps=20", "--config.train.save_every=5"]  # as test_train's resume test: one compiled step


def _tmp_names(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if "tmp" in p.name)


# ============================================================================ training: SIGKILL, anywhere


class _Uninterrupted:
    """The reference: the same 20-step run, never interrupted (one device, as the faulty runs).
    It runs in the background while the faulty runs go on (the 2-core CI machine has a core for
    it); `.out()` waits for it."""

    def __init__(self, out: Path):
        self._out, self.proc = out, _run_cli(_train_args(out, *STEPS))

    def out(self) -> Path:
        if self.proc.returncode is None:
            _finish(self.proc)
        return self._out


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    run = _Uninterrupted(tmp_path_factory.mktemp("uninterrupted"))
    yield run
    if run.proc.poll() is None:  # a test failed before waiting for it
        run.proc.kill()
        run.proc.communicate()


def _run_faulty(fault: dict, args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    return subprocess.Popen([sys.executable, str(FIXTURES / "faulty_cli.py"), json.dumps(fault), *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _complete_checkpoints(out: Path) -> list[int]:
    return sorted(int(p.name) for p in (out / "checkpoints").iterdir() if p.name.isdigit())


def test_sigkill_at_random_steps_and_inside_a_save_resumes_bitwise(uninterrupted, tmp_path):
    """Five SIGKILLs at random points of one 20-step run (seeded; IPO_JAX_FAULT_SEED picks others):
    four at random steps, before or after the step's update, and one while a checkpoint is being
    written. Each restart (the same command) resumes from the newest *complete* checkpoint; the
    half-written one is never read; every step's loss equals the uninterrupted run's, bitwise."""
    rng = random.Random(int(os.environ.get("IPO_JAX_FAULT_SEED", "7")))
    save_kill = rng.choice([5, 10, 15])
    kills = [dict(at="step", step=s, when=rng.choice(["before", "after"]))
             for s in rng.sample([s for s in range(1, 20) if s != save_kill], 4)]
    kills = sorted(kills + [dict(at="save", step=save_kill)], key=lambda k: k["step"])
    print("kill schedule:", kills)

    out, log = tmp_path / "run", tmp_path / "faults.jsonl"
    args = _train_args(out, *STEPS)
    expected_resume = None  # the newest complete checkpoint when the previous process died
    for number, kill in enumerate(kills):
        proc = _run_faulty(dict(kill, signal="SIGKILL", log=str(log)), args)
        output, _ = proc.communicate(timeout=300)
        assert proc.returncode == -9, output  # killed, not finished or failed
        fired = json.loads(log.read_text().splitlines()[-1])
        assert fired["step"] == kill["step"]
        if expected_resume:
            assert f"resumed from {out / 'checkpoints' / str(expected_resume)} (step {expected_resume}," in output
        else:
            assert "resumed from" not in output
        steps_logged = [r["step"] for r in _metrics(out)]
        if kill["at"] == "save":  # the checkpoint was being written when the process died
            assert fired["committed"] is False and fired["in_progress"], fired
            assert max(steps_logged) == kill["step"] and kill["step"] not in _complete_checkpoints(out)
        else:  # killed before the step's metrics line was written, whether the update ran or not
            assert max(steps_logged, default=0) == kill["step"] - 1
        expected_resume = max(_complete_checkpoints(out), default=None)
        assert expected_resume is None or expected_resume < kill["step"]

    # A kill can also land inside a metrics.jsonl write (a power loss rather than a signal):
    # the restart drops the partial line, so the file stays one JSON object a line.
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"loss": 0.5, "st')
    output = _finish(_run_cli(args))
    assert f"resumed from {out / 'checkpoints' / str(expected_resume)} (step {expected_resume}," in output
    assert "dropping a partial last line" in output
    want, got = _losses(uninterrupted.out()), _losses(out)
    assert sorted(got) == sorted(want) == list(range(1, 21))
    for step in range(1, 21):
        assert got[step] == want[step], (step, got[step], want[step])
    assert _complete_checkpoints(out) == [10, 15, 20] and (out / "final" / "model_config.json").is_file()
    assert _tmp_names(out / "checkpoints") == []  # the killed save's temporary directory was removed


# ============================================================================ damaged checkpoints (no training needed)


def _tiny_state(value: float, step: int, shape=(4, 8)) -> TrainState:
    zero = jnp.zeros((), jnp.int32)
    return TrainState(params={"w": jnp.full(shape, value, jnp.float32)}, opt_state={"mu": jnp.full(shape, -value, jnp.float32)},
                      step=jnp.asarray(step, jnp.int32), skipped=zero, consecutive_skips=zero)


@pytest.fixture
def three_checkpoints(tmp_path):
    """A run directory with checkpoints 2, 4, 6 written by the loop's own manager settings."""
    out = tmp_path / "run"
    manager = checkpoints.checkpoint_manager(out / "checkpoints", keep=5, asynchronous=False)
    for step in (2, 4, 6):
        manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(_tiny_state(float(step), step)),
                                                   meta=ocp.args.JsonSave({"position": {"epoch": 0, "batch": step}})))
    manager.close()
    return out


def _restore(out: Path, template: TrainState):
    manager = checkpoints.checkpoint_manager(out / "checkpoints", keep=5, asynchronous=False)
    shardings = jax.tree.map(lambda x: x.sharding, template)
    return manager, checkpoints.restore_newest_readable(manager, template, shardings, {"epoch": 0, "batch": 0}, out, "preset:test")


def _truncate_files(d: Path):
    for f in d.rglob("*"):
        if f.is_file() and f.stat().st_size:
            f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def _flip_bytes(d: Path):
    for f in (d / "state").rglob("d/*"):
        data = bytearray(f.read_bytes())
        data[len(data) // 2] ^= 0xFF
        f.write_bytes(bytes(data))


def _remove_array_data(d: Path):  # a partial copy: metadata there, array data missing
    for f in (d / "state").rglob("d/*"):
        f.unlink()


def _garble_meta(d: Path):
    (d / "meta" / "metadata").write_text('{"position": ')


# orbax's asyncio loop is closed while tensorstore still reports the damaged read: noise, not the outcome
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("damage", [_truncate_files, _flip_bytes, _remove_array_data, _garble_meta],
                         ids=["truncated", "flipped-bytes", "array-data-missing", "meta-cut"])
def test_a_damaged_latest_checkpoint_is_reported_and_the_previous_one_used(three_checkpoints, damage, caplog):
    out = three_checkpoints
    damage(out / "checkpoints" / "6")
    with caplog.at_level("INFO", logger="ipo_jax"):
        manager, (state, position, step) = _restore(out, _tiny_state(0.0, 0))
    printed = caplog.text
    assert step == 4 and position == {"epoch": 0, "batch": 4} and int(state.step) == 4
    np.testing.assert_array_equal(np.asarray(state.params["w"]), np.full((4, 8), 4.0, np.float32))
    assert f"checkpoint {out / 'checkpoints' / '6'} is unreadable (" in printed
    assert f"moved unreadable checkpoint {out / 'checkpoints' / '6'} to {out / 'unreadable_checkpoints' / '6'}" in printed
    assert (out / "unreadable_checkpoints" / "6").is_dir() and manager.all_steps() == [2, 4]
    # the run goes on and saves step 6 again without colliding with the damaged copy
    manager.save(6, args=ocp.args.Composite(state=ocp.args.StandardSave(_tiny_state(6.5, 6)),
                                            meta=ocp.args.JsonSave({"position": {"epoch": 0, "batch": 6}})))
    manager.wait_until_finished()
    assert manager.all_steps() == [2, 4, 6]


def test_when_no_checkpoint_reads_back_the_run_stops_and_nothing_is_moved(three_checkpoints):
    out = three_checkpoints
    for step in (2, 4, 6):
        _truncate_files(out / "checkpoints" / str(step))
    with pytest.raises(loop.TrainingError, match=r"none of the 3 checkpoints .* reads back(.|\n)*nothing was moved"):
        _restore(out, _tiny_state(0.0, 0))
    assert _complete_checkpoints(out) == [2, 4, 6] and not (out / "unreadable_checkpoints").exists()


def test_a_checkpoint_of_another_shape_is_an_error_not_a_fallback(three_checkpoints):
    out = three_checkpoints
    with pytest.raises(loop.TrainingError) as err:
        _restore(out, _tiny_state(0.0, 0, shape=(4, 16)))
    message = str(err.value)
    assert f"checkpoint {out / 'checkpoints' / '6'} holds a model of another shape" in message
    assert "params/w: the checkpoint has [4, 8] float32, this run's model needs [4, 16] float32" in message
    assert "opt_state/mu: the checkpoint has [4, 8]" in message
    assert _complete_checkpoints(out) == [2, 4, 6] and not (out / "unreadable_checkpoints").exists()


def _checkpoints_with_checksums(out: Path) -> Path:
    """Checkpoints 2, 4, 6 as the loop writes them: the meta item records each array's checksum."""
    from ipo_jax.checkpoint.orbax import CHECKSUMS_KEY, array_checksums

    manager = checkpoints.checkpoint_manager(out / "checkpoints", keep=5, asynchronous=False)
    rng = np.random.RandomState(0)
    for step in (2, 4, 6):
        state = _tiny_state(float(step), step)
        # random values: the compressed array file then is large enough to flip bytes in its middle
        state = state.replace(params={"w": jnp.asarray(rng.randn(64, 64).astype(np.float32))})
        meta = {"position": {"epoch": 0, "batch": step}, CHECKSUMS_KEY: array_checksums(state)}
        manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)))
    manager.close()
    return out


def _flip_64_bytes_of_the_largest_array_file(d: Path, seed: int) -> None:
    """The issue's damage: 64 bytes flipped in the checkpoint's largest file (the compressed data
    still decodes, to different numbers)."""
    largest = max((d / "state").rglob("d/*"), key=lambda f: f.stat().st_size)
    data = bytearray(largest.read_bytes())
    start = np.random.RandomState(seed).randint(100, len(data) - 100)
    for i in range(start, start + 64):
        data[i] ^= 0xFF
    largest.write_bytes(bytes(data))


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_flipped_bits_that_still_decode_fail_the_checksums_and_the_previous_checkpoint_is_used(tmp_path, capsys, caplog, seed):
    out = _checkpoints_with_checksums(tmp_path / "run")
    template = _tiny_state(0.0, 0).replace(params={"w": jnp.zeros((64, 64), jnp.float32)})
    _flip_64_bytes_of_the_largest_array_file(out / "checkpoints" / "6", seed)
    # orbax alone reads the damaged checkpoint back without complaint, as different numbers
    manager = checkpoints.checkpoint_manager(out / "checkpoints", keep=5, asynchronous=False)
    raw = manager.restore(6, args=ocp.args.Composite(state=ocp.args.StandardRestore(template), meta=ocp.args.JsonRestore()))
    rng = np.random.RandomState(0)
    saved = {step: rng.randn(64, 64).astype(np.float32) for step in (2, 4, 6)}
    assert not np.array_equal(np.asarray(raw["state"].params["w"]), saved[6])
    manager.close()

    with caplog.at_level("INFO", logger="ipo_jax"):
        manager, (state, position, step) = _restore(out, template)
    printed = capsys.readouterr()
    assert step == 4 and position == {"epoch": 0, "batch": 4}
    np.testing.assert_array_equal(np.asarray(state.params["w"]), saved[4])
    (line,) = [r.getMessage() for r in caplog.records if "is unreadable" in r.getMessage()]
    assert line.startswith(f"checkpoint {out / 'checkpoints' / '6'} is unreadable (ValueError: ")
    assert "differ from the checksums recorded at save time: params/w: checksum" in line
    assert "Traceback" not in printed.out + printed.err
    assert (out / "unreadable_checkpoints" / "6").is_dir() and manager.all_steps() == [2, 4]


def test_a_step_moved_aside_twice_is_kept_twice_side_by_side(three_checkpoints, caplog):
    out = three_checkpoints
    for round_ in (1, 2):
        _truncate_files(out / "checkpoints" / "6")
        with caplog.at_level("INFO", logger="ipo_jax"):
            manager, (_, _, step) = _restore(out, _tiny_state(0.0, 0))
        assert step == 4
        manager.save(6, args=ocp.args.Composite(state=ocp.args.StandardSave(_tiny_state(6.0, 6)),
                                                meta=ocp.args.JsonSave({"position": {"epoch": 0, "batch": 6}})))
        manager.wait_until_finished()
        manager.close()
    aside = out / "unreadable_checkpoints"
    assert sorted(p.name for p in aside.iterdir()) == ["6", "6.2"]
    assert not (aside / "6" / "6").exists() and (aside / "6.2" / "state").is_dir()
    assert f"moved unreadable checkpoint {out / 'checkpoints' / '6'} to {aside / '6.2'}" in caplog.text


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_the_fallback_prints_one_line_per_unreadable_checkpoint_and_no_traceback(three_checkpoints, capsys, caplog):
    out = three_checkpoints
    _truncate_files(out / "checkpoints" / "6")
    _truncate_files(out / "checkpoints" / "4")
    with caplog.at_level("INFO"):
        _, (_, _, step) = _restore(out, _tiny_state(0.0, 0))
        jax.effects_barrier()
    printed = capsys.readouterr()
    assert step == 2
    assert [r.getMessage()[:80] for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")] == []  # orbax's own
    assert "Traceback" not in printed.out + printed.err and printed.err.strip() == ""
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("ipo_jax")]
    assert [l.split(" is unreadable")[0] for l in lines if "is unreadable" in l] == \
        [f"checkpoint {out / 'checkpoints' / '6'}", f"checkpoint {out / 'checkpoints' / '4'}"]
    assert len(lines) == 5 and all("\n" not in l for l in lines)  # two unreadable, two moved, one resumed


def test_an_update_that_leaves_an_optimizer_moment_non_finite_is_skipped():
    """A damaged Adam second moment (-2.4e38, as the issue's bit flip gave): loss and gradient are
    finite, the update would make parameters NaN; it is skipped, nothing changes."""
    import optax
    from flax import nnx
    from test_train import ONE_DEVICE, _batch, _pairs

    from ipo_jax.loss import LossConfig
    from ipo_jax.models.decoder import init_decoder
    from ipo_jax.models.presets import preset_config
    from ipo_jax.sharding import make_mesh, shard_model
    from ipo_jax.train.step import batch_shardings, init_train_state, jit_train_step, make_train_step, put_batch

    mesh = make_mesh(ONE_DEVICE["mesh_shape"], devices=ONE_DEVICE["devices"])
    graphdef, params = nnx.split(shard_model(init_decoder(preset_config("tiny-qwen3"), seed=1), mesh), nnx.Param)
    tx = optax.adam(1e-3)
    state, shardings = init_train_state(params, tx, mesh)
    adam = state.opt_state[0]
    damaged_nu = jax.tree.map(lambda x: x.at[(0,) * x.ndim].set(-2.4e38), adam.nu)
    state = state.replace(opt_state=(adam._replace(nu=damaged_nu), *state.opt_state[1:]))
    before = jax.tree.map(np.asarray, (state.params, state.opt_state))
    step = jit_train_step(make_train_step(graphdef, tx, LossConfig(), optax.constant_schedule(1e-3), chunk_size=8, mesh=mesh),
                          shardings, mesh)
    state, metrics = step(state, put_batch(_batch(_pairs(4), 1), batch_shardings(mesh)), None)
    metrics = jax.device_get(metrics)
    assert np.isfinite(metrics["loss"]) and np.isfinite(metrics["grad_norm"])
    assert metrics["update_applied"] == 0 and int(state.skipped) == 1
    for a, b in zip(jax.tree.leaves(before), jax.tree.leaves((state.params, state.opt_state))):
        np.testing.assert_array_equal(a, np.asarray(b))


def test_killed_save_leftovers_are_removed_and_a_half_renamed_directory_restored(tmp_path):
    from ipo_jax.checkpoint.atomic import remove_stale_temporaries

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    run = tmp_path / "run"
    (run / f".final.tmp-{dead.pid}").mkdir(parents=True)
    (run / f".final.tmp-{dead.pid}" / "model_config.json").write_text("{}")
    (run / f".metrics.jsonl.tmp-{dead.pid}").write_text("half")
    (run / f".export.old-{dead.pid}").mkdir()  # killed between moving export/ aside and renaming the new one in
    (run / f".final.tmp-{os.getpid()}").mkdir()  # this process's own: in use
    removed = remove_stale_temporaries(run)
    assert sorted(p.name for p in removed) == [f".final.tmp-{dead.pid}", f".metrics.jsonl.tmp-{dead.pid}"]
    assert sorted(p.name for p in run.iterdir()) == [f".final.tmp-{os.getpid()}", "export"]


def test_exports_get_ordinary_modes(tmp_path):
    from ipo_jax.checkpoint import save_hf, save_orbax
    from ipo_jax.models.decoder import init_decoder
    from ipo_jax.models.presets import preset_config

    mask = os.umask(0o022)
    try:
        model = init_decoder(preset_config("tiny-qwen3"), seed=0)
        save_hf(model, tmp_path / "hf")
        save_orbax(model, tmp_path / "orbax")
    finally:
        os.umask(mask)
    for root in (tmp_path / "hf", tmp_path / "orbax"):
        modes = {p.relative_to(tmp_path): p.stat().st_mode & 0o777 for p in [root, *root.rglob("*")]}
        assert modes[root.relative_to(tmp_path)] == 0o755
        assert {m for p, m in modes.items() if (tmp_path / p).is_file()} == {0o644}, modes
        assert {m for p, m in modes.items() if (tmp_path / p).is_dir()} == {0o755}, modes
    assert (tmp_path / "hf" / "model.safetensors").stat().st_mode & 0o777 == 0o644


def test_an_orbax_model_directory_with_flipped_bits_is_refused(tmp_path):
    from ipo_jax.checkpoint import load_orbax, save_orbax
    from ipo_jax.checkpoint.hf import CheckpointError
    from ipo_jax.models.decoder import init_decoder
    from ipo_jax.models.presets import preset_config

    save_orbax(init_decoder(preset_config("tiny-qwen3"), seed=0), tmp_path / "model")
    load_orbax(tmp_path / "model")  # reads back as saved
    largest = max((tmp_path / "model" / "params").rglob("d/*"), key=lambda f: f.stat().st_size)
    data = bytearray(largest.read_bytes())
    for i in range(len(data) // 2, len(data) // 2 + 64):
        data[i] ^= 0xFF
    largest.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"params: the stored parameters are damaged \(they do not match the checksums "
                                              r"in model_config.json\): [a-z_/]+: checksum 0x[0-9a-f]{8}, recorded 0x[0-9a-f]{8}"):
        load_orbax(tmp_path / "model")


# ============================================================================ non-finite steps through the loop


def test_non_finite_steps_are_skipped_counted_and_stop_the_run_with_the_last_good_state(tmp_path, monkeypatch, capsys):
    """NaN reference log-probs (as a corrupted cache would give) at steps 3 and 6, 7, 8: step 3 is
    skipped and the run goes on; three in a row stop it with exit code 3 and a checkpoint whose
    parameters and optimizer state are bitwise those after step 5, the last applied update."""
    poisoned, calls = {3, 6, 7, 8}, []
    put_batch = loop.put_batch

    def put_poisoned(batch, shardings):
        calls.append(1)
        if len(calls) in poisoned:
            batch = dict(batch, ref_chosen=np.full_like(batch["ref_chosen"], np.nan))
        return put_batch(batch, shardings)

    monkeypatch.setattr(loop, "put_batch", put_poisoned)
    out = tmp_path / "run"
    # the tiny config's 30 steps (compiled once with test_train's 30-step run); stops at step 8
    assert main(_train_args(out, "--config.train.save_every=5", "--config.train.max_consecutive_skips=3")) == loop.EXIT_TOO_MANY_SKIPS
    captured = capsys.readouterr()
    printed = captured.err  # warnings: one line each
    assert printed.count("\n") == 5 and "Traceback" not in captured.out + captured.err  # 4 skipped steps, the stop
    rows = {r["step"]: r for r in _metrics(out)}
    assert sorted(rows) == list(range(1, 9))
    assert [s for s, r in rows.items() if r["update_applied"] == 0] == [3, 6, 7, 8]
    assert [rows[s]["skipped"] for s in range(1, 9)] == [0, 0, 1, 1, 1, 2, 3, 4]
    assert "step 3: loss or gradient not finite" in printed and "update skipped (1 in a row, 1 in all)" in printed
    assert ("stopping: 3 consecutive non-finite steps (loss or gradient); last good state saved at step 8 "
            "(parameters and optimizer state as after step 5, the last applied update); exit code 3") in printed
    assert _complete_checkpoints(out) == [5, 8] and not (out / "final").exists()

    with ocp.StandardCheckpointer() as reader:
        after_5 = reader.restore((out / "checkpoints" / "5" / "state").absolute())
        stopped = reader.restore((out / "checkpoints" / "8" / "state").absolute())
    for part in ("params", "opt_state"):
        a, b = jax.tree.leaves(after_5[part]), jax.tree.leaves(stopped[part])
        assert len(a) == len(b) > 0
        for x, y in zip(a, b):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert (int(stopped["step"]), int(stopped["skipped"]), int(stopped["consecutive_skips"])) == (8, 4, 3)


def test_a_run_whose_every_update_is_skipped_exits_4_without_a_final_model(tmp_path, monkeypatch, capsys):
    """A start refused for its data (no pair fits max_length 16) leaves nothing; one that failed
    after its checks (the model could not be read) left config.json of other settings, and a killed
    final save left .final.tmp-PID: neither blocks the corrected rerun. That rerun's every update
    is non-finite (NaN reference log-probs): exit 4, no final/, metrics strict JSON."""
    from ipo_jax.train import build

    out = tmp_path / "run"
    assert main(_train_args(out, "--config.data.max_length=16")) == 2
    assert not out.exists()  # refused before anything was written

    def unreadable_model(*args, **kwargs):
        raise OSError(5, "Input/output error", "/models/policy/model.safetensors")

    monkeypatch.setattr(build, "load_model", unreadable_model)
    assert main(_train_args(out, "--config.data.seed=3")) == 2
    assert (out / "config.json").is_file() and json.loads((out / "config.json").read_text())["data"]["seed"] == 3
    monkeypatch.undo()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (out / f".final.tmp-{dead.pid}").mkdir()
    capsys.readouterr()

    put_batch = loop.put_batch
    monkeypatch.setattr(loop, "put_batch", lambda batch, shardings: put_batch(
        dict(batch, ref_chosen=np.full_like(batch["ref_chosen"], np.nan)), shardings))
    args = _train_args(out, "--config.train.max_steps=3", "--config.train.save_every=5")
    assert main(args) == loop.EXIT_NOT_TRAINED == 4
    captured = capsys.readouterr()
    printed = captured.out + captured.err
    assert "the previous start with other settings never completed a step; starting afresh" in printed
    assert f"removed {out / f'.final.tmp-{dead.pid}'} (left by a save that was killed)" in printed
    assert "not trained: all 3 updates were skipped (non-finite loss, gradient or update); no final model written; exit code 4" in printed
    assert not (out / "final").exists() and _complete_checkpoints(out) == [3]
    rows = [json.loads(line, parse_constant=lambda c: pytest.fail(f"metrics.jsonl holds {c}, not strict JSON"))
            for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["update_applied"], r["loss"]) for r in rows] == [(1, 0, None), (2, 0, None), (3, 0, None)]


# ============================================================================ the pair builder, killed


def _worker(out: Path, fault: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(FIXTURES / "build_pairs_worker.py"), str(out), json.dumps(fault)],
                          cwd=REPO, capture_output=True, text=True, timeout=120, check=False)


def test_a_killed_pair_builder_restarts_to_exactly_the_uninterrupted_pair_set(tmp_path, caplog):
    """SIGKILL the pair builder (a subprocess) mid-chunk, between a chunk's files and its progress
    record, half way through writing a chunk file, and half way through writing the merged
    pairs.jsonl; damage a finished chunk file as a power loss could. The final restart gives
    byte for byte the pairs and summary of an uninterrupted run; no partial file is read."""
    sys.path.insert(0, str(FIXTURES))
    try:
        import build_pairs_worker
    finally:
        sys.path.remove(str(FIXTURES))
    build_pairs_worker.run(tmp_path / "whole")
    want_pairs = (tmp_path / "whole" / "pairs.jsonl").read_text()
    want_summary = json.loads((tmp_path / "whole" / "summary.json").read_text())
    assert len(want_pairs.splitlines()) == 5

    out, log = tmp_path / "killed", str(tmp_path / "faults.jsonl")
    chunks = out / "chunks"

    def kill(fault):
        done = _worker(out, dict(fault, log=log))
        assert done.returncode == -9, done.stdout + done.stderr
        return json.loads(Path(log).read_text().splitlines()[-1])

    kill({"at": "policy-call", "call": 4})  # chunk 0 takes 3 calls: this is chunk 1's first
    assert (chunks / "progress-00000.json").is_file() and not (chunks / "pairs-00001.jsonl").exists()

    kill({"at": "before-progress", "chunk": 1})
    assert (chunks / "pairs-00001.jsonl").is_file() and not (chunks / "progress-00001.json").exists()

    fired = kill({"at": "write", "file": "pairs-00003.jsonl"})  # chunk 1 redone, chunk 2 done, chunk 3 cut
    assert 0 < (chunks / fired["partial"]).stat().st_size == fired["written"] < fired["size"]
    assert (chunks / "progress-00001.json").is_file() and (chunks / "progress-00002.json").is_file()
    assert not (chunks / "pairs-00003.jsonl").exists() and not (chunks / "progress-00003.json").exists()

    fired = kill({"at": "write", "file": "pairs.jsonl"})
    assert not (out / "pairs.jsonl").exists() and (out / fired["partial"]).is_file()
    assert all((chunks / f"progress-{i:05d}.json").is_file() for i in range(4))
    assert not _tmp_names(chunks)  # the restart removed the partial chunk file of the run before

    # a finished chunk's file cut short after the fact (its progress record says otherwise)
    damaged = chunks / "pairs-00000.jsonl"
    damaged.write_bytes(damaged.read_bytes()[:-25])

    with caplog.at_level(logging.INFO, logger="ipo_jax.pipeline.chunks"):
        build_pairs_worker.run(out)  # the same call, uninterrupted
    printed = caplog.text
    assert "chunk 0: pairs-00000.jsonl does not match the sha256 in progress-00000.json (cut short or altered); redoing it" in printed
    assert "resuming: 3 of 4 chunks already done" in printed
    assert (out / "pairs.jsonl").read_text() == want_pairs
    assert json.loads((out / "summary.json").read_text()) == want_summary
    ids = [json.loads(line)["id"] for line in want_pairs.splitlines()]
    assert len(ids) == len(set(ids))
    assert _tmp_names(out) == []


def test_pair_builder_refuses_an_out_dir_holding_another_run(tmp_path):
    from test_pipeline import PROMPTS

    from ipo_jax.judging.pattern import PatternCueDetector, PatternJudge
    from ipo_jax.pipeline.chunks import BuildPairsError, build_pairs
    from ipo_jax.pipeline.intervene import InterventionConfig

    cfg = InterventionConfig(rounds=3, chunk_prompts=2, benign_candidates=2)
    build_pairs(PROMPTS, tmp_path, ScriptedPolicy(), PatternJudge(), PatternCueDetector(), TRIGGERS, cfg)
    before = (tmp_path / "pairs.jsonl").read_bytes()
    with pytest.raises(BuildPairsError, match=r"holds pairs of another build-pairs run(.|\n)*triggers: was"):
        build_pairs(PROMPTS, tmp_path, ScriptedPolicy(), PatternJudge(), PatternCueDetector(), TRIGGERS[:1], cfg)
    with pytest.raises(BuildPairsError, match=r"prompts_sha256: was"):
        build_pairs(PROMPTS[:3], tmp_path, ScriptedPolicy(), PatternJudge(), PatternCueDetector(), TRIGGERS, cfg)
    assert (tmp_path / "pairs.jsonl").read_bytes() == before


# ============================================================================ judge endpoint faults, through the pipeline


FAULT_PROMPTS = [
    {"id": case, "prompt": f"Risky request [request details withheld] case-{case}", "kind": "harmful"}
    for case in ("ok", "rate-limited", "timeout", "server-error", "garbage")
]


def _endpoint_with_faults():
    """A handler for the scripted server: one fault per prompt, the API key echoed back in every
    failure (as a careless proxy might), cue requests answered with sentence 3."""
    from ipo_jax.judging.prompts import CUE_SYSTEM

    lock, rate_limited = threading.Lock(), set()

    def handle(request):
        messages = request["json"]["messages"]
        text = messages[-1]["content"]
        if messages[0]["content"] == CUE_SYSTEM:
            return reply(chat("3"))  # "Let me work them out." is sentence 3 of the scripted trajectory
        if "case-timeout" in text:
            return reply(chat("safe"), delay=3.0)  # far beyond the client's 0.3 s timeout
        if "case-server-error" in text:
            return reply({"error": f"overloaded (key {KEY})"}, status=503)
        if "case-garbage" in text:
            return reply(f"<html>proxy error for {KEY}</html>")
        if "case-rate-limited" in text:
            with lock:
                first = text not in rate_limited
                rate_limited.add(text)
            if first:
                return reply({"error": "slow down"}, status=429, headers={"Retry-After": "7"})
        return reply(chat("unsafe" if "[harmful details withheld]" in text else "safe"))

    return handle


def test_judge_faults_are_retried_then_counted_as_judge_errors_never_as_verdicts(server, tmp_path, monkeypatch):
    """The HTTP judge and cue detector against a loopback server that times out, answers 503,
    429 with Retry-After (then succeeds) or garbage, for different prompts; and against a closed
    port. Failures are retried with backoff, then recorded as judge errors, excluded from the
    safe/unsafe counts and counted in the run's summary; the key never reaches a written file."""
    from ipo_jax.judging.chat import HttpChat
    from ipo_jax.judging.llm import LLMCueDetector, LLMJudge
    from ipo_jax.pipeline.chunks import build_pairs
    from ipo_jax.pipeline.intervene import InterventionConfig

    monkeypatch.setenv(KEY_ENV, KEY)
    server.handler = _endpoint_with_faults()
    sleeps = []
    options = dict(api_key_env=KEY_ENV, timeout=0.3, max_retries=2, backoff=0.01, sleep=sleeps.append)
    chat_backend = HttpChat(server.base_url, "judge-model", **options)
    judge, detector = LLMJudge(chat_backend), LLMCueDetector(chat_backend)
    cfg = InterventionConfig(rounds=1, chunk_prompts=5)
    summary = build_pairs(FAULT_PROMPTS, tmp_path / "faulty", ScriptedPolicy(), judge, detector, TRIGGERS[:1], cfg)

    assert summary["prompts"] == 5 and summary["judge_errors"] == 3
    assert summary["unsafe_original"] == 2 and summary["safe_original"] == 0 and summary["unsafe_share"] == 1.0
    assert summary["pairs"] == 2 and json.loads((tmp_path / "faulty" / "summary.json").read_text())["judge_errors"] == 3
    pairs = [json.loads(l) for l in (tmp_path / "faulty" / "pairs.jsonl").read_text().splitlines()]
    assert sorted(p["id"] for p in pairs) == ["ok/t0/r1", "rate-limited/t0/r1"]
    assert all(p["chosen"].endswith(SAFE_TAIL) and p["rejected"] == COMPLIANT[p["h"]["char"]:] for p in pairs)
    rows = {r["id"]: r for r in map(json.loads, (tmp_path / "faulty" / "chunks" / "trajectories-00000.jsonl").read_text().splitlines())}
    assert {i: r["label"] for i, r in rows.items()} == {"ok": "unsafe", "rate-limited": "unsafe", "timeout": "error",
                                                      "server-error": "error", "garbage": "error"}
    reasons = {i: rows[i]["verdicts"]["reasoning"]["reason"] for i in ("timeout", "server-error", "garbage")}
    assert "timed out after 0.3 s" in reasons["timeout"] and "3 attempts" in reasons["timeout"]
    assert "HTTP 503" in reasons["server-error"] and "3 attempts" in reasons["server-error"]
    assert "not JSON" in reasons["garbage"]
    assert 7.0 in sleeps  # Retry-After honoured; the other waits are the exponential backoff
    assert all(r["headers"].get("Authorization") == f"Bearer {KEY}" for r in server.requests)

    # connection refused: every verdict is an error, nothing is counted as safe or unsafe
    closed = dict(options, max_retries=1)
    url = f"http://127.0.0.1:{free_port()}/v1"
    down = build_pairs(FAULT_PROMPTS[:2], tmp_path / "down", ScriptedPolicy(), LLMJudge(HttpChat(url, "judge-model", **closed)),
                       LLMCueDetector(HttpChat(url, "judge-model", **closed)), TRIGGERS[:1], cfg)
    assert (down["judge_errors"], down["safe_original"], down["unsafe_original"], down["pairs"]) == (2, 0, 0, 0)
    assert down["unsafe_share"] is None
    trajectory = json.loads((tmp_path / "down" / "chunks" / "trajectories-00000.jsonl").read_text().splitlines()[0])
    assert "connection refused" in trajectory["verdicts"]["reasoning"]["reason"]

    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(written) >= 10 and not [str(p) for p in written if KEY in p.read_text(errors="replace")]


# ============================================================================ bad input: clear errors, exit code 2


def _pairs_file(path: Path, bad) -> Path:
    good = {"id": "a", "prompt": "p [request details withheld]", "prefix": "Let me think. ", "chosen": "I refuse.",
            "rejected": "Sure. [harmful details withheld]"}
    bad_line = bad if isinstance(bad, str) else json.dumps({**good, "id": "b", **bad})
    path.write_text(json.dumps(good) + "\n" + bad_line + "\n")
    return path


@pytest.mark.parametrize("bad, message", [
    ('{"id": "b", "prompt": ', r"pairs.jsonl:2: not valid JSON"),
    ({"rejected": None}, r"pairs.jsonl:2: field 'rejected' should be str, got NoneType"),
    ({"prompt": 7}, r"pairs.jsonl:2: field 'prompt' should be str or list, got int"),
    ({"prompt": "   "}, r"pairs.jsonl:2 \(id 'b'\): field 'prompt' is empty"),
    ({"chosen": ""}, r"pairs.jsonl:2 \(id 'b'\): field 'chosen' is empty"),
    ({"chosen": "Sure. [harmful details withheld]"}, r"pairs.jsonl:2 \(id 'b'\): chosen and rejected are identical"),
    ({"h": {"char": 400, "token": 3}}, r"pairs.jsonl:2 \(id 'b'\): field 'h' is 400, outside the sequence: the original "
                                       r"trajectory \(prefix \+ rejected\) has 46 characters, so h must be in 0..46"),
    ({"h": -1}, r"field 'h' is -1, outside the sequence"),
    ({"h": {"char": 3}}, r"field 'h' is 3 but the prefix \(z\[<h\]\) has 14 characters"),
    ({"h": {"char": "14"}}, r"field 'h.char' should be an integer character index, got '14'"),
], ids=["malformed-json", "wrong-type-rejected", "wrong-type-prompt", "empty-prompt", "empty-suffix",
        "chosen-equals-rejected", "h-after-the-end", "h-negative", "h-not-where-prefix-ends", "h-wrong-type"])
def test_bad_pair_records_are_named_with_file_line_id_and_field(tmp_path, capsys, bad, message):
    pairs = _pairs_file(tmp_path / "pairs.jsonl", bad)
    assert main(_train_args(tmp_path / "out", f"--config.data.pairs={pairs}")) == 2
    assert re.search(message, capsys.readouterr().err)


def test_the_length_rule_drops_whole_pairs_counts_and_reports_each_reason(tmp_path):
    """A pair longer than max_length is dropped whole (never cut), listed with its reason and lengths;
    within data.max_dropped_share the rest train."""
    from ipo_jax.data.pairs import TokenizedPair

    ids = lambda n: np.arange(3, 3 + n, dtype=np.int32)
    pairs = [TokenizedPair("fits", ids(4), ids(4), ids(6), ids(6)),            # 20 tokens
             TokenizedPair("long", ids(4), ids(4), ids(20), ids(5)),           # 33: dropped, not cut
             TokenizedPair("hopeless", ids(10), ids(20), ids(3), ids(3))]      # trunk 30 > 24
    config = ml_collections.ConfigDict({"data": {"max_length": 24, "layout": "prefix_shared", "max_dropped_share": 0.7}})
    kept, dropped = data.fit_pairs(pairs, config, where={"long": "p.jsonl:2"})
    assert kept == pairs[:1] and [d["id"] for d in dropped] == ["long", "hopeless"]
    run_dir.write_skipped_pairs(tmp_path / "skipped_pairs.jsonl", dropped)
    lines = [json.loads(line) for line in (tmp_path / "skipped_pairs.jsonl").read_text().splitlines()]
    assert lines == [
        {"id": "long", "reason": "pair_too_long", "at": "p.jsonl:2", "tokens": 33, "max_length": 24,
         "prompt": 4, "prefix": 4, "chosen": 20, "rejected": 5},
        {"id": "hopeless", "reason": "trunk_too_long", "tokens": 36, "max_length": 24,
         "prompt": 10, "prefix": 20, "chosen": 3, "rejected": 3},
    ]
    config.data.max_dropped_share = 0.6  # 2 of 3 is more than that
    with pytest.raises(loop.TrainingError, match=r"2 of 3 pairs \(66.7%\) are longer than data.max_length 24 .*"
                                                 r"the longest, 'hopeless', has 36 tokens"):
        data.fit_pairs(pairs, config)


def test_no_pair_fitting_max_length_is_a_clear_error(tmp_path, capsys):
    assert main(_train_args(tmp_path / "out", "--config.data.max_length=16", "--config.data.max_dropped_share=1.0")) == 2
    err = capsys.readouterr().err
    assert "16 of 16 pairs (100.0%) are longer than data.max_length 16 and would be dropped (every pair would be dropped)" in err
    assert "raise data.max_length" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_a_tokenizer_larger_than_the_models_vocabulary_is_refused(hf_dirs, tmp_path, capsys):
    """The pairs' tiny tokenizer has several hundred tokens; the HF model's vocabulary is 128."""
    args = _train_args(tmp_path / "out", f"--config.model.init=hf:{hf_dirs['qwen2'][0]}")
    assert main(args) == 2
    assert re.search(r"the tokenizer has \d+ tokens but the model's vocabulary is 128; they do not belong together",
                     capsys.readouterr().err)


def test_an_unsupported_architecture_is_refused_by_name(tmp_path, capsys):
    model = tmp_path / "mixtral"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "mixtral", "architectures": ["MixtralForCausalLM"],
                                                   "auto_map": {"AutoModelForCausalLM": "modeling_evil.Evil"}}))
    assert main(["convert", "--from", "hf", "--to", "orbax", str(model), str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert f"{model / 'config.json'}: model_type 'mixtral' (architectures ['MixtralForCausalLM']) is not supported; " \
           "expected one of ('llama', 'qwen2', 'qwen3')" in err
    assert not (tmp_path / "o").exists()


def test_a_model_directory_of_another_shape_names_each_array(hf_dirs, tmp_path, capsys):
    from ipo_jax.checkpoint import load_hf, save_orbax

    save_orbax(load_hf(hf_dirs["qwen2"][0]), tmp_path / "model")
    config_file = tmp_path / "model" / "model_config.json"
    meta = json.loads(config_file.read_text())
    meta["hf_config"]["intermediate_size"] = 80  # the config now describes another shape than the arrays
    config_file.write_text(json.dumps(meta))
    assert main(["convert", "--from", "orbax", "--to", "hf", str(tmp_path / "model"), str(tmp_path / "hf")]) == 2
    err = capsys.readouterr().err
    assert "the parameters do not match model_config.json" in err
    assert "blocks/mlp/up_proj/kernel: stored [2, 64, 96], model_config.json needs [2, 64, 80]" in err
    assert not (tmp_path / "hf").exists()


@pytest.mark.parametrize("override, fragment", [
    ("--config.train.max_stepz=5", "max_stepz"),
    ("--config.train.max_steps=many", "max_steps"),
    ("--config.data.shuffle=maybe", "shuffle"),
])
def test_a_bad_config_override_is_refused_with_its_name_and_exit_code_2(tmp_path, capsys, override, fragment):
    assert main(_train_args(tmp_path / "out", override)) == 2
    err = capsys.readouterr().err
    assert err.startswith("ipo-jax train: error: bad config or override:") and fragment in err
    assert not (tmp_path / "out").exists()  # refused before anything was written


@pytest.mark.parametrize("mesh, message", [
    (["--config.mesh.fsdp=3"], r"mesh \{'data': 1, 'fsdp': 3, 'tensor': 1\} needs 3 devices, but 8 are available"),
    (["--config.mesh.fsdp=-1", "--config.mesh.tensor=3"], r"8 devices are not divisible by 3"),
    (["--config.mesh.fsdp=2", "--config.mesh.tensor=4"], r"kv_heads.*size 2\) is not divisible by mesh axes tensor \(size 4\)"),
], ids=["axes-need-other-device-count", "minus-one-does-not-divide", "tensor-does-not-divide-kv-heads"])
def test_a_mesh_that_does_not_divide_is_refused(tmp_path, capsys, mesh, message):
    assert main(_train_args(tmp_path / "out", *mesh)) == 2
    assert re.search(message, capsys.readouterr().err)


def test_a_non_empty_output_directory_is_refused(tmp_path, capsys):
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("keep me")
    assert main(_train_args(busy)) == 2
    assert "is not empty and holds no ipo-jax training run (no config.json)" in capsys.readouterr().err
    assert sorted(p.name for p in busy.iterdir()) == ["notes.txt"]


def test_resuming_a_run_with_other_settings_is_refused_by_field(uninterrupted, capsys):
    finished = uninterrupted.out()
    before = sorted(str(p) for p in finished.rglob("*"))
    assert main(_train_args(finished, *STEPS, "--config.model.init=preset:tiny-llama", "--config.loss.beta=0.5")) == 2
    err = capsys.readouterr().err
    assert "holds a run with other settings, so it cannot be resumed with these" in err
    assert "model.init: was 'preset:tiny-qwen3', now 'preset:tiny-llama'" in err and "loss: was" in err
    assert sorted(str(p) for p in finished.rglob("*")) == before


# ============================================================================ safe loading


def test_a_pickle_checkpoint_is_refused_and_never_unpickled(tmp_path, capsys):
    """pytorch_model.bin holding a pickle that would create a file when unpickled: refused with a
    message, and the file is never created."""
    import pathlib

    class Payload:
        def __reduce__(self):
            return pathlib.Path.touch, (tmp_path / "UNPICKLED",)

    model = tmp_path / "pickled"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "qwen2", "vocab_size": 128, "hidden_size": 64,
                                                   "intermediate_size": 96, "num_hidden_layers": 2,
                                                   "num_attention_heads": 4, "num_key_value_heads": 2}))
    (model / "pytorch_model.bin").write_bytes(pickle.dumps(Payload()))
    assert main(["convert", "--from", "hf", "--to", "orbax", str(model), str(tmp_path / "o")]) == 2
    assert "only pickle-based weights found (pytorch_model.bin); these are never loaded" in capsys.readouterr().err
    assert not (tmp_path / "UNPICKLED").exists()


def test_a_tokenizer_asking_for_remote_code_is_refused_without_running_it(tmp_path):
    import shutil

    from ipo_jax.data.tokenizer import load_tokenizer, packaged_qwen3_tokenizer_dir

    tok = tmp_path / "tok"
    shutil.copytree(packaged_qwen3_tokenizer_dir(), tok)
    (tok / "evil.py").write_text(f"import pathlib\npathlib.Path({str(tmp_path / 'RAN')!r}).touch()\n")
    config = json.loads((tok / "tokenizer_config.json").read_text())
    config.update(auto_map={"AutoTokenizer": ["evil.EvilTokenizer", None]}, tokenizer_class="EvilTokenizer")
    (tok / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="custom code"):
        load_tokenizer(tok)
    assert not (tmp_path / "RAN").exists()


def test_the_package_never_trusts_remote_code_or_unpickles():
    """A source check of the whole package: nothing enables remote code, nothing unpickles."""
    forbidden = {
        r"trust_remote_code\s*=\s*True": "remote code enabled",
        r"\bpickle\.loads?\(|\bcloudpickle\b|\bdill\b|\bjoblib\b": "unpickling",
        r"\btorch\.load\(": "torch.load (pickle)",
        r"allow_pickle\s*=\s*True": "numpy pickle loading",
        r"\bnp\.load\((?![^)]*allow_pickle=False)": "np.load without allow_pickle=False",
    }
    found = []
    sources = sorted((REPO / "ipo_jax").rglob("*.py"))
    assert len(sources) > 30
    for path in sources:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            for pattern, what in forbidden.items():
                if re.search(pattern, line):
                    found.append(f"{path.relative_to(REPO)}:{number}: {what}: {line.strip()}")
    assert found == []
    # the one tokenizer entry point passes trust_remote_code=False explicitly
    assert "trust_remote_code=False" in (REPO / "ipo_jax" / "data" / "tokenizer.py").read_text()
