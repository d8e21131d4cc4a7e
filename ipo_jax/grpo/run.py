"""The `grpo` stage (`run_grpo`): GRPO with the safety judge (or a rule) as reward, the paper's RL
baseline. Each step:

  1. prompts_per_step prompts (the prompt order shuffled per epoch from train.seed)
  2. G completions each from the policy with its CURRENT parameters (ipo_jax/grpo/rollout.py:
     our sampler on the training state, or an HTTP server synced by checkpoint)
  3. rewards (ipo_jax/grpo/rewards.py), group-normalised advantages (ipo_jax.loss.grpo)
  4. num_iterations updates of the jitted step on the batch (ipo_jax/grpo/step.py)

Built so that a refused run writes nothing: the settings (stage "grpo") and train.out (new, empty,
or this run: ipo_jax/train/run_dir.py with RUN_IDENTITY here), the prompts read and checked, the
tokenizer, the judge (the pattern judge refused on prompts without its marker), the model's
configuration against the tokenizer and the mesh; then train.out is written (config.json,
tokenizer/), the model loaded and the step built.

Output directory (train.out), as train's (ipo_jax/train/loop.py):
  config.json, tokenizer/, checkpoints/<update>/ (orbax: train state + prompt position; a step of
  num_iterations updates saves under its last update's number), metrics.jsonl (one line per step),
  tensorboard/, rollouts.jsonl (every completion: step, prompt id, text, finish, reward and its
  parts), policy_sync/ (policy.backend http), final/ (the trained policy, an ipo-jax model dir).

Rerunning the same command resumes from the newest readable checkpoint and redoes exactly the
rollouts an uninterrupted run would have made (the rollout seed is a function of train.seed and
the step; the sampler runs on the restored parameters), so the metrics are the same.

metrics.jsonl per step: reward, reward_std, reward/<component> (each over the rows it applies to),
reward/judge_errors, loss, kl (beta > 0), ratio, clip_low, clip_high, clip_region, entropy,
completion_length (mean, and _min / _max), completions_cut (share that hit max_new_tokens),
tokens (prompt + completion in the update), grad_norm, learning_rate, skipped, update_applied,
rollout_seconds, update_seconds, seconds, tokens_per_second. Exit codes: train's (0, 143 after
SIGTERM with a checkpoint, 3 after train.max_consecutive_skips non-finite steps, 4 not trained).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from ipo_jax.checkpoint import save_orbax
from ipo_jax.checkpoint.init import load_model, model_config
from ipo_jax.data.prompts import prompt_records_from_config
from ipo_jax.data.pairs import prompt_messages
from ipo_jax.data.tiny_tokenizer import build_tiny_tokenizer
from ipo_jax.data.tokenizer import encode_prompt
from ipo_jax.distributed import any_process, initialize_from_environment
from ipo_jax.grpo.batch import pack_rollouts, row_length
from ipo_jax.grpo.config import base_config
from ipo_jax.grpo.rewards import RewardFunction, prompt_text
from ipo_jax.grpo.rollout import HttpRollouts, LocalRollouts, sample_groups
from ipo_jax.grpo.step import LOSS_FIELDS, GRPOStep, batch_shardings, build_grpo_step, settings_from_config
from ipo_jax.judging.build import build_judges, check_judge_fits
from ipo_jax.loss.grpo import group_advantages
from ipo_jax.models.decoder import Decoder
from ipo_jax.rollout import load_policy_tokenizer
from ipo_jax.sampling import row_seed
from ipo_jax.sharding import logical_to_spec, make_mesh, param_shardings
from ipo_jax.train.checkpoints import Checkpoints, checkpoint_manager, restore_newest_readable
from ipo_jax.train.errors import EXIT_NOT_TRAINED, EXIT_PREEMPTED, EXIT_TOO_MANY_SKIPS, TrainingError
from ipo_jax.train.loop import Preemption
from ipo_jax.train.metrics import MetricsLog
from ipo_jax.train.run_dir import check_output_dir, write_run_files
from ipo_jax.train.step import all_finite, put_batch
from ipo_jax.validation import validate_settings

log = logging.getLogger(__name__)

# Settings that decide what a run computes (resuming with another value is refused).
RUN_IDENTITY = ("model.init", "model.param_dtype", "tokenizer", "tiny_tokenizer_vocab", "prompts", "prompts_fields",
                "prompts_split", "prompts_kind", "policy.backend", "sampling", "reward", "grpo", "optim",
                "reference.init", "train.seed")
ROLLOUTS_FILE = "rollouts.jsonl"


@dataclasses.dataclass
class GRPORun:
    """A run ready for its first step (or for resuming)."""

    config: Any
    out: Path
    mesh: Any
    records: list[dict]
    update: GRPOStep
    rollouts: LocalRollouts | HttpRollouts
    rewards: RewardFunction
    rows_multiple: int  # the batch mesh axes' size: rows per micro-batch are a multiple of it
    max_length: int  # the longest row: sampler.max_prompt_length + sampling.max_new_tokens


def run_grpo(config, *, devices=None) -> int:
    """Run (or resume) a GRPO run described by a grpo config; the exit code. `devices`: the
    devices of the mesh (default: all)."""
    initialize_from_environment()
    return run_loop(build_grpo_run(config, devices))


def _check_sizes(config, records: list[dict], model_cfg, mesh) -> int:
    """Prompts enough for a step, rows that split over the mesh, rows within the context; the
    batch axes' size."""
    g, s = config.grpo, config.sampling
    if len(records) < g.prompts_per_step:
        raise TrainingError(f"prompts {config.prompts}: {len(records)} prompts, fewer than grpo.prompts_per_step "
                            f"({g.prompts_per_step})")
    longest = config.sampler.max_prompt_length + s.max_new_tokens
    if longest > model_cfg.max_position_embeddings:
        raise TrainingError(f"sampler.max_prompt_length + sampling.max_new_tokens is {longest} tokens, longer than "
                            f"the context of {config.model.init} ({model_cfg.max_position_embeddings})")
    spec = logical_to_spec(("batch",))[0]
    axes = (spec,) if isinstance(spec, str) else tuple(spec or ())
    parts = int(np.prod([mesh.shape[a] for a in axes]))
    if config.policy.backend == "local" and config.sampler.batch_size % parts:
        raise TrainingError(f"sampler.batch_size {config.sampler.batch_size} does not split over the {parts} devices "
                            "of the batch mesh axes; choose a multiple")
    rows = g.prompts_per_step * g.num_generations
    if g.micro_batches > rows:
        raise TrainingError(f"grpo.micro_batches {g.micro_batches} is more than the {rows} rows of an update")
    return parts


def _tokenizer(config, records: list[dict]):
    """The policy's tokenizer; 'tiny': a small BPE built from the prompts (toy runs, as train's 'tiny')."""
    if config.tokenizer == "tiny":
        return build_tiny_tokenizer([prompt_text(r) for r in records], vocab_size=config.tiny_tokenizer_vocab)
    return load_policy_tokenizer(config)


def _prompts_that_fit(config, records: list[dict], tokenizer) -> list[dict]:
    """The prompts whose chat prompt fits sampler.max_prompt_length (the others are left out, with a
    warning naming the first); a TrainingError when none is left."""
    limit = config.sampler.max_prompt_length
    kept = [r for r in records if len(encode_prompt(tokenizer, prompt_messages(r))) <= limit]
    if len(kept) < len(records):
        first = next(r["id"] for r in records if r not in kept)
        log.warning("%d of %d prompts are longer than sampler.max_prompt_length (%d tokens) and are left out "
                    "(the first: %s)", len(records) - len(kept), len(records), limit, first)
    if not kept:
        raise TrainingError(f"prompts {config.prompts}: every prompt is longer than sampler.max_prompt_length "
                            f"({limit} tokens)")
    return kept


def build_grpo_run(config, devices=None) -> GRPORun:
    """The run the config describes, in the module doc's order."""
    validate_settings("grpo", config)
    if jax.process_count() > 1:  # before anything is read or written
        raise TrainingError(
            f"ipo-jax grpo runs in one JAX process; this is process {jax.process_index()} of {jax.process_count()}. "
            "Its rollouts are sampled and scored on one host (the sampler's host loop reads whole arrays); run it "
            "on one host with all its devices (a v5p-8, one 8-GPU node: what the paper configs use)")
    out = Path(config.train.out)
    check_output_dir(out, config, identity=RUN_IDENTITY, defaults=base_config())
    records = prompt_records_from_config(config)
    tokenizer = _tokenizer(config, records)
    records = _prompts_that_fit(config, records, tokenizer)
    judge = None
    if config.reward.kind == "judge":
        check_judge_fits(config, [prompt_text(r) for r in records], f"prompts {config.prompts}", ("judge",))
    mesh = make_mesh(dict(config.mesh), devices=devices)
    m = config.model
    model_cfg = model_config(m.init, param_dtype=m.param_dtype, dtype=m.dtype, remat=m.remat, attention=m.attention,
                             vocab_needed=len(tokenizer))
    parts = _check_sizes(config, records, model_cfg, mesh)
    _, abstract = nnx.split(nnx.eval_shape(lambda: Decoder(model_cfg, rngs=nnx.Rngs(0))))
    param_shardings(abstract, mesh)  # the model splits over the mesh (a ValueError naming the array otherwise)
    rewards = RewardFunction.from_config(config, judge=build_judges(config)[0] if config.reward.kind == "judge"
                                         else None)
    write_run_files(out, config, tokenizer, [])
    model = load_model(m.init, mesh=mesh, param_dtype=m.param_dtype, dtype=m.dtype, remat=m.remat,
                       attention=m.attention, seed=config.train.seed, vocab_needed=len(tokenizer))
    graphdef, params = nnx.split(model, nnx.Param)
    settings = settings_from_config(config)
    ref_params = None
    if settings.uses_reference and config.reference.init:
        ref = load_model(config.reference.init, mesh=mesh, param_dtype=m.param_dtype, dtype=m.dtype,
                         remat=m.remat, attention=m.attention, vocab_needed=len(tokenizer))
        ref_params = nnx.split(ref, nnx.Param)[1]
    if config.policy.backend == "local":  # built on the loaded params, before they are donated to the train state
        rollouts = LocalRollouts(graphdef, params, tokenizer, config, mesh)
    else:
        rollouts = HttpRollouts(graphdef, config, out)
    update = build_grpo_step(model.cfg, mesh, settings, params=params, ref_params=ref_params)
    rollouts.refresh(update.state.params, 0)
    log.info("grpo: %d prompts, %d per step x %d completions, %d micro-batches, %d update(s) per rollout; loss %s",
             len(records), config.grpo.prompts_per_step, config.grpo.num_generations, config.grpo.micro_batches,
             config.grpo.num_iterations, {k: config.grpo[k] for k in LOSS_FIELDS})
    return GRPORun(config, out, mesh, records, update, rollouts, rewards, parts,
                   config.sampler.max_prompt_length + config.sampling.max_new_tokens)


# ----------------------------------------------------------------------------- the loop


def prompt_order(count: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(count)


def step_records(run: GRPORun, position: dict) -> tuple[list[dict], dict]:
    """The prompts of the step at `position` and the position after it (a new epoch when the
    rest of the order is shorter than a step)."""
    per_step = run.config.grpo.prompts_per_step
    epoch, batch = position["epoch"], position["batch"]
    if (batch + 1) * per_step > len(run.records):
        epoch, batch = epoch + 1, 0
    order = prompt_order(len(run.records), run.config.train.seed, epoch)
    picked = [run.records[i] for i in order[batch * per_step : (batch + 1) * per_step]]
    return picked, {"epoch": epoch, "batch": batch + 1}


def rollout_step(run: GRPORun, step: int, records: list[dict]) -> tuple[dict, dict, list[dict]]:
    """Sample, score and pack one step's rollouts: (device batch, metrics row, rollout lines)."""
    config, G = run.config, run.config.grpo.num_generations
    t0 = time.perf_counter()
    prompt_ids, completions = sample_groups(run.rollouts.policy, records, G, row_seed(config.train.seed, step))
    rows = [r for r in records for _ in range(G)]
    rewards = run.rewards(rows, completions)
    g = config.grpo
    advantages = np.asarray(group_advantages(jnp.asarray(rewards.total.reshape(len(records), G), jnp.float32),
                                             g.scale_rewards, g.reward_std_ddof, g.advantage_eps)).reshape(-1)
    completion_ids = [list(c.ids) for c in completions]
    length = row_length(prompt_ids, completion_ids, run.max_length)
    batch = pack_rollouts(prompt_ids, completion_ids, advantages, g.micro_batches, length, run.rows_multiple)
    lengths = np.array([len(ids) for ids in completion_ids])
    row = {**rewards.means(), "completion_length": float(lengths.mean()),
           "completion_length_min": float(lengths.min()), "completion_length_max": float(lengths.max()),
           "completions_cut": float(np.mean([c.finish_reason == "length" for c in completions])),
           "tokens": int(batch["segment_ids"].astype(bool).sum()), "rollout_seconds": time.perf_counter() - t0}
    lines = [{"step": step, "id": r["id"], "kind": r.get("kind"), "index": i % G, "text": c.text,
              "finish_reason": c.finish_reason, "reward": float(rewards.total[i]), "advantage": float(advantages[i]),
              **rewards.row(i)} for i, (r, c) in enumerate(zip(rows, completions))]
    return put_batch(batch, batch_shardings(run.mesh)), row, lines


def update_step(run: GRPORun, batch: dict) -> dict:
    """num_iterations updates on one rollout batch; the last update's metrics (and its timing)."""
    t0 = time.perf_counter()
    if run.config.grpo.num_iterations > 1:  # the old log-probs: the policy that sampled, before any update
        batch = {**batch, "old_logp": run.update.old_logprobs(batch)}
    for _ in range(run.config.grpo.num_iterations):
        metrics = run.update.run(batch)
    row = {k: float(v) for k, v in jax.device_get(metrics).items()}
    row.pop("tokens", None)  # the loss tokens; the row's 'tokens' counts prompt + completion
    row["completion_tokens"] = float(jax.device_get(metrics["tokens"]))
    row["update_seconds"] = time.perf_counter() - t0
    return row


@dataclasses.dataclass
class _Cursor:
    position: dict
    step: int  # rollout steps done
    last_saved: int | None


def run_loop(run: GRPORun) -> int:
    """From the newest readable checkpoint (or step 0) to train.max_steps; the exit code."""
    c = run.config.train
    checkpoints = Checkpoints(checkpoint_manager(run.out / "checkpoints", c.keep_checkpoints))
    u = run.update
    u.state, position, latest = restore_newest_readable(checkpoints.manager, u.state, u.state_shardings,
                                                        {"epoch": 0, "batch": 0}, run.out, run.config.model.init)
    cursor = _Cursor(position, int(u.state.step) // run.config.grpo.num_iterations, latest)
    run.rollouts.refresh(u.state.params, cursor.step)
    try:
        with MetricsLog(run.out) as metrics, Preemption() as preemption, \
                _RolloutLog(run.out, c.rollouts_file) as rollout_log, \
                tqdm(total=c.max_steps, initial=cursor.step, desc="grpo", unit="step",
                     disable=None if jax.process_index() == 0 else True) as progress:
            exit_code = _steps(run, checkpoints, cursor, metrics, rollout_log, preemption, progress)
    except BaseException:
        try:
            checkpoints.wait()
        except Exception as e:  # noqa: BLE001 -- the error on its way out is the one reported
            log.debug("a pending checkpoint save failed too: %s", e)
        raise
    checkpoints.wait()
    return exit_code or _finish(run, checkpoints, cursor)


def _steps(run: GRPORun, checkpoints, cursor: _Cursor, metrics, rollout_log, preemption, progress) -> int:
    for step in range(cursor.step + 1, run.config.train.max_steps + 1):
        t0 = time.perf_counter()
        records, position = step_records(run, cursor.position)
        batch, row, lines = rollout_step(run, step, records)
        row.update(update_step(run, batch))
        run.rollouts.refresh(run.update.state.params, step)
        cursor.position, cursor.step = position, step
        row.update(step=step, epoch=position["epoch"], seconds=time.perf_counter() - t0)
        row["tokens_per_second"] = row["tokens"] / row["seconds"]
        metrics.write(row)
        rollout_log.write(lines)
        progress.update(1)
        progress.set_postfix(reward=f"{row['reward']:.3f}", loss=f"{row['loss']:.4f}",
                             **({"kl": f"{row['kl']:.4f}"} if "kl" in row else {}))
        exit_code = _after_step(run, checkpoints, cursor, row, preemption)
        if exit_code:
            return exit_code
    return 0


def _after_step(run: GRPORun, checkpoints, cursor: _Cursor, row: dict, preemption) -> int:
    state, c, step = run.update.state, run.config.train, cursor.step
    if not row["update_applied"]:
        log.warning("step %d: loss or gradient not finite (loss %s, grad norm %s); update skipped (%d in a row)",
                    step, row["loss"], row["grad_norm"], int(state.consecutive_skips))
    if int(state.consecutive_skips) >= c.max_consecutive_skips:
        _save(run, checkpoints, cursor)
        log.warning("stopping: %d consecutive non-finite updates; last good state saved at step %d; exit code %d",
                    int(state.consecutive_skips), step, EXIT_TOO_MANY_SKIPS)
        return EXIT_TOO_MANY_SKIPS
    if any_process(preemption.requested):
        _save(run, checkpoints, cursor)
        log.info("SIGTERM: checkpoint saved at step %d; exiting with %d (rerun to resume)", step, EXIT_PREEMPTED)
        return EXIT_PREEMPTED
    if step % c.save_every == 0 or step == c.max_steps:
        _save(run, checkpoints, cursor)
    return 0


def _save(run: GRPORun, checkpoints, cursor: _Cursor) -> None:
    """A checkpoint under the optimizer update count (the state's step), with the prompt position."""
    meta = {"position": cursor.position, "rollout_step": cursor.step, "model_init": run.config.model.init}
    checkpoints.save(int(run.update.state.step), run.update.state, meta)
    cursor.last_saved = cursor.step


def _finish(run: GRPORun, checkpoints, cursor: _Cursor) -> int:
    state = run.update.state
    if cursor.last_saved != cursor.step and cursor.step > 0:
        _save(run, checkpoints, cursor)
        checkpoints.wait()
    if int(state.step) > 0 and int(state.skipped) >= int(state.step):
        log.warning("not trained: all %d updates were skipped; no final model written; exit code %d",
                    int(state.step), EXIT_NOT_TRAINED)
        return EXIT_NOT_TRAINED
    if not bool(all_finite(state.params)):
        log.warning("not trained: the parameters are not finite; no final model written; exit code %d",
                    EXIT_NOT_TRAINED)
        return EXIT_NOT_TRAINED
    save_orbax(nnx.merge(run.update.graphdef, state.params), run.out / "final", overwrite=True)
    log.info("done: %d steps (%d updates, %d skipped); final model in %s", cursor.step, int(state.step),
             int(state.skipped), run.out / "final")
    return 0


class _RolloutLog:
    """rollouts.jsonl (process 0; appended, as metrics.jsonl: a resumed step appears again)."""

    def __init__(self, out: Path, enabled: bool):
        self.path = out / ROLLOUTS_FILE
        self.file = open(self.path, "a", buffering=1) if enabled and jax.process_index() == 0 else None

    def __enter__(self):
        return self

    def write(self, lines: list[dict]) -> None:
        if self.file is None:
            return
        try:
            self.file.write("".join(json.dumps(line) + "\n" for line in lines))
        except OSError as e:
            raise OSError(e.errno, e.strerror, str(self.path)) from None

    def __exit__(self, *exc):
        if self.file is not None:
            self.file.close()


__all__ = ["RUN_IDENTITY", "GRPORun", "build_grpo_run", "run_grpo", "run_loop"]
