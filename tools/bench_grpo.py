"""One GRPO training step, ours (JAX) against TRL's `GRPOTrainer` (PyTorch), at the same shapes.

python tools/bench_grpo.py --out tools/results/grpo [--trl-python /tmp/trlvenv/bin/python] [--rounds 2]
python tools/bench_grpo.py --model tiny --prompts 2 --generations 4 --completion-tokens 16 --steps 2  # seconds

The workload (written once to --work, read by both sides):
- one random Qwen3-shaped model saved as an HF safetensors directory that both load, so both
  start from the same weights: --model small (hidden 512, 8 layers, 8 query / 4 kv heads of 64,
  MLP 1536, vocabulary 32768, tied: 42M parameters, bench_sampler's small-qwen3) or tiny (the
  tiny-qwen3 preset, 0.12M: per-step overheads);
- random token-id prompts (--prompt-tokens each; --prompts per step, distinct every step);
- G = --generations completions per prompt of exactly --completion-tokens new tokens (no end of
  sequence: ours stops on an id outside the vocabulary, TRL's `generate` gets min_new_tokens),
  plain sampling at temperature 1 (no top-p / top-k);
- a rule reward, the share of even token ids in the completion (no model: the reward is not
  what is timed), group-normalised advantages (scale_rewards 'group');
- the loss: TRL 1.16's defaults (loss_type 'dapo', epsilon 0.2, bias-corrected k3 KL) with
  --beta (default 0.04: the frozen reference's forward is part of every step), on-policy
  (num_iterations 1: no old log-probs pass), one optimizer step per generation, AdamW at a
  constant --learning-rate, no weight decay, betas 0.9 / 0.999, clipping at norm 1, float32.

What is timed, per step (after --warmup steps that include compilation):
- generate: the rollout, prompts x G completions from the current weights. Ours: the sampler
  given the step's parameters, then `Sampler.generate`; TRL: `GRPOTrainer._generate` (transformers
  `generate` with its KV cache, on the model being trained);
- score: rewards, advantages and the batch the update reads. Ours: rewards, `group_advantages`,
  `pack_rollouts` and the copy to the device; TRL: the rest of `_generate_and_score_completions`,
  which also runs the reference model's forward (beta > 0);
- update: ours: the jitted GRPO step (`ipo_jax.grpo.step`: policy forward + backward, the
  reference forward when beta > 0, the loss, AdamW); TRL: its loss forward + backward and the
  optimizer step. Because the reference forward sits in TRL's score and in our update, the two
  are compared as one 'train' part (score + update) as well as alone.
tokens/s: generate = new tokens per second (prompts x G x completion tokens); train and step =
every row's prompt + completion tokens per second.

TRL runs in its own venv (tools/peers/trl_grpo.py, pinned by tools/peers/trl-constraints.txt)
as a subprocess; --rounds N repeats both sides N times, alternating which goes first, and every
number is the median over all rounds' timed steps. The machine's load average is recorded.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO))

from ipo_jax.checkpoint.hf import load_hf, save_hf  # noqa: E402
from ipo_jax.grpo.batch import pack_rollouts  # noqa: E402
from ipo_jax.grpo.step import GRPOStepSettings, batch_shardings, build_grpo_step, completion_logprobs  # noqa: E402
from ipo_jax.loss.grpo import GRPOLossConfig, group_advantages  # noqa: E402
from ipo_jax.models.config import ModelConfig  # noqa: E402
from ipo_jax.models.decoder import init_decoder  # noqa: E402
from ipo_jax.models.presets import preset_config  # noqa: E402
from ipo_jax.sampling import Sampler, SamplingConfig  # noqa: E402
from ipo_jax.sharding import make_mesh  # noqa: E402
from ipo_jax.train.step import OptimConfig, put_batch  # noqa: E402

TRL_SCRIPT = REPO / "tools/peers/trl_grpo.py"
DEFAULT_TRL_PYTHON = "/tmp/trlvenv/bin/python"
SMALL_QWEN3 = dict(  # tools/bench_sampler.py's small-qwen3
    model_type="qwen3", vocab_size=32768, hidden_size=512, intermediate_size=1536, num_layers=8, num_heads=8,
    num_kv_heads=4, head_dim=64, rms_norm_eps=1e-6, rope_theta=1_000_000.0, tie_word_embeddings=True,
    qk_norm=True, max_position_embeddings=4096, bos_token_id=1, eos_token_id=2,
)
PARTS = ("generate", "score", "update")


def model_config(name: str) -> ModelConfig:
    if name == "small":
        return ModelConfig(**SMALL_QWEN3)
    if name == "tiny":
        return preset_config("tiny-qwen3")
    raise ValueError(f"--model must be 'small' or 'tiny', got {name!r}")


@dataclasses.dataclass(frozen=True)
class Workload:
    model: str = "small"
    prompts_per_step: int = 2
    num_generations: int = 8
    prompt_tokens: int = 64
    completion_tokens: int = 128
    beta: float = 0.04
    loss_type: str = "dapo"
    epsilon: float = 0.2
    learning_rate: float = 1e-6
    clip_norm: float = 1.0
    micro_batches: int = 1
    warmup: int = 1
    steps: int = 3
    seed: int = 0
    pad_id: int = 0
    trl_gradient_checkpointing: bool = False  # TRL 1.16's GRPOConfig default is True (ours: remat_policy none)

    def __post_init__(self):
        rows = self.prompts_per_step * self.num_generations
        if min(self.prompts_per_step, self.num_generations, self.prompt_tokens, self.completion_tokens,
               self.micro_batches, self.steps) < 1 or self.warmup < 0:
            raise ValueError(f"every count must be >= 1 (warmup >= 0): {self}")
        if self.num_generations < 2:
            raise ValueError("num_generations must be >= 2 (a group of one has no advantage)")
        if rows % self.micro_batches:
            raise ValueError(f"{rows} rows per step do not split into {self.micro_batches} micro-batches")

    @property
    def rows(self) -> int:
        return self.prompts_per_step * self.num_generations

    @property
    def new_tokens_per_step(self) -> int:
        return self.rows * self.completion_tokens

    @property
    def tokens_per_step(self) -> int:
        return self.rows * (self.prompt_tokens + self.completion_tokens)


def rule_reward(completion: list[int]) -> float:
    """The workload's reward: the share of even token ids (tools/peers/trl_grpo.py: even_share_reward)."""
    return sum(1 for t in completion if t % 2 == 0) / max(len(completion), 1)


def write_workload(work: Path, w: Workload) -> dict:
    """The model (HF safetensors) and prompts both sides read; reused when the settings match."""
    cfg = model_config(w.model)
    spec = dict(workload=dataclasses.asdict(w), model=dict(vocab_size=cfg.vocab_size, eos_token_id=cfg.eos_token_id),
                model_dir=str(work / "model"))
    stamp = work / "workload.json"
    if stamp.is_file() and json.loads(stamp.read_text()) == spec:
        return spec
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    save_hf(init_decoder(cfg, seed=w.seed), work / "model")
    rng = np.random.default_rng(w.seed)
    count = w.prompts_per_step * (w.warmup + w.steps)
    # ids from 3 up: 0-2 are pad / bos / eos
    prompts = rng.integers(3, cfg.vocab_size, (count, w.prompt_tokens)).tolist()
    (work / "prompts.json").write_text(json.dumps(prompts))
    stamp.write_text(json.dumps(spec))
    return spec


class OurGRPO:
    """Our side: the sampler and the GRPO step (ipo_jax.grpo.step) on one model's weights."""

    def __init__(self, work: Path, w: Workload):
        self.w = w
        self.mesh = make_mesh({"fsdp": -1}, devices=jax.devices()[:1])
        self.model = load_hf(str(work / "model"), mesh=self.mesh)
        cfg = self.model.cfg
        self.sampler = Sampler(self.model, eos_ids=[cfg.vocab_size + 1], pad_id=w.pad_id, batch_size=w.rows,
                               prompt_buckets=[w.prompt_tokens])
        total = w.warmup + w.steps
        optim = OptimConfig(learning_rate=w.learning_rate, warmup_steps=0, total_steps=total, end_lr_ratio=1.0,
                            weight_decay=0.0, b1=0.9, b2=0.999, eps=1e-8, clip_norm=w.clip_norm)
        loss = GRPOLossConfig(loss_type=w.loss_type, beta=w.beta, epsilon_low=w.epsilon, epsilon_high=w.epsilon,
                              max_completion_length=w.completion_tokens)
        # entropy on: TRL's loss forward measures the policy's token entropy too
        settings = GRPOStepSettings(loss=loss, optim=optim, entropy=True)
        self.graphdef, params = nnx.split(self.model, nnx.Param)
        self.check_logps = first_prompt_logps(self.graphdef, params, work)
        self.step = build_grpo_step(cfg, self.mesh, settings, params=params)

    def refresh(self) -> None:
        """The sampler runs on the training state's current parameters, swapped in as the `grpo`
        stage does (ipo_jax/grpo/rollout.py, LocalRollouts.refresh; the update donated the old ones)."""
        params = self.step.state.params
        programs = self.sampler.programs
        programs.state = params
        if programs.layers is not None:
            programs.layers = nnx.merge(self.graphdef, params).layer_states()
        jax.block_until_ready(programs.layers)

    def generate(self, prompts: list[list[int]], seed: int) -> list[list[int]]:
        """G completions per prompt (prompt-major) from the current parameters (after `refresh`)."""
        rows = [p for p in prompts for _ in range(self.w.num_generations)]
        config = SamplingConfig(temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=self.w.completion_tokens,
                                seed=seed)
        return [g.completion_ids for g in self.sampler.generate(rows, config)]

    def score(self, prompts: list[list[int]], completions: list[list[int]]) -> tuple[dict, np.ndarray]:
        rewards = np.asarray([rule_reward(c) for c in completions], np.float32).reshape(len(prompts), -1)
        advantages = np.asarray(group_advantages(jnp.asarray(rewards), "group")).reshape(-1)
        rows = [p for p in prompts for _ in range(self.w.num_generations)]
        length = self.w.prompt_tokens + self.w.completion_tokens
        batch = pack_rollouts(rows, completions, advantages, self.w.micro_batches, length)
        return put_batch(batch, batch_shardings(self.mesh)), rewards

    def update(self, batch: dict) -> dict:
        return {k: float(v) for k, v in jax.device_get(self.step.run(batch)).items()}


def first_prompt_logps(graphdef, params, work: Path) -> list[float]:
    """log p of the first prompt's tokens 1.. given the ones before (tools/peers/trl_grpo.py
    computes the same with TRL's model: equal up to float32 rounding when the weights are)."""
    prompt = json.loads((work / "prompts.json").read_text())[0]
    tokens = np.asarray([prompt], np.int32)
    mb = dict(tokens=tokens, positions=np.arange(tokens.shape[1], dtype=np.int32)[None],
              segment_ids=np.ones_like(tokens), targets=np.concatenate([tokens[:, 1:], tokens[:, :1]], axis=1))
    logps, _ = jax.jit(lambda p, b: completion_logprobs(p, graphdef, b, 512))(params, mb)
    return np.asarray(logps)[0, :-1].tolist()


def run_ours(work: Path, w: Workload) -> dict:
    """Warm-up + timed steps of our GRPO step on the workload; per-step seconds of each part."""
    prompts = json.loads((work / "prompts.json").read_text())
    t0 = time.perf_counter()
    ours = OurGRPO(work, w)
    setup = time.perf_counter() - t0
    times = {part: [] for part in PARTS}
    logs, lengths, refresh = [], [], []
    for step in range(w.warmup + w.steps):
        step_prompts = prompts[step * w.prompts_per_step:(step + 1) * w.prompts_per_step]
        t0 = time.perf_counter()
        ours.refresh()
        refresh.append(time.perf_counter() - t0)
        completions = ours.generate(step_prompts, seed=w.seed + step)
        t1 = time.perf_counter()
        batch, rewards = ours.score(step_prompts, completions)
        jax.block_until_ready(batch)
        t2 = time.perf_counter()
        metrics = ours.update(batch)
        t3 = time.perf_counter()
        for part, seconds in zip(PARTS, (t1 - t0, t2 - t1, t3 - t2)):
            times[part].append(seconds)
        lengths.append(min(len(c) for c in completions))
        logs.append(dict(reward=float(rewards.mean()), **metrics))
        print(f"ours step {step + 1}: generate {t1 - t0:.2f} s (refresh {refresh[-1]:.2f}), score {t2 - t1:.3f} s, "
              f"update {t3 - t2:.2f} s; load {load_text()}", flush=True)
    return dict(
        implementation="ours", setup_seconds=setup, warmup_seconds=[sum(t[i] for t in times.values())
                                                                    for i in range(w.warmup)],
        **{f"{part}_seconds": v[w.warmup:] for part, v in times.items()},
        step_seconds=[sum(t[i] for t in times.values()) for i in range(w.warmup, w.warmup + w.steps)],
        refresh_seconds=refresh[w.warmup:], check_logps=ours.check_logps, min_completion_length=min(lengths), logs=logs, versions=dict(jax=jax.__version__),
    )


def run_trl(work: Path, python: str, threads: int = 0) -> dict:
    """TRL's side in its own venv (tools/peers/trl_grpo.py)."""
    if not Path(python).exists():
        raise SystemExit(f"trl: no interpreter at {python}; build it with: python3 -m venv /tmp/trlvenv && "
                         "/tmp/trlvenv/bin/pip install -c tools/peers/trl-constraints.txt trl torch==2.13.0")
    out = work / "trl.json"
    cmd = [python, str(TRL_SCRIPT), "--work", str(work), "--out", str(out), "--threads", str(threads)]
    print("$ " + " ".join(cmd), flush=True)
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "PYTHONPATH")}
    subprocess.run(cmd, check=True, env=env)
    return json.loads(out.read_text())


def summarise(rows: list[dict], w: Workload) -> list[dict]:
    """Medians per part, tokens/s, and the ratio to TRL's median (TRL seconds / ours) per part."""
    out = []
    for r in rows:
        s = {part: statistics.median(r[f"{part}_seconds"]) for part in PARTS}
        s["train"] = statistics.median([a + b for a, b in zip(r["score_seconds"], r["update_seconds"])])
        s["step"] = statistics.median(r["step_seconds"])
        if r.get("refresh_seconds"):  # ours: part of generate (the sampler given the new weights)
            s["refresh"] = statistics.median(r["refresh_seconds"])
        out.append(dict(implementation=r["implementation"], median_seconds=s,
                        generate_tokens_per_second=w.new_tokens_per_step / s["generate"],
                        train_tokens_per_second=w.tokens_per_step / s["train"],
                        step_tokens_per_second=w.tokens_per_step / s["step"],
                        timed_steps=len(r["step_seconds"]), min_completion_length=r["min_completion_length"]))
    trl = next((x for x in out if x["implementation"] == "trl"), None)
    for x in out:
        x["speedup_vs_trl"] = ({k: trl["median_seconds"][k] / v for k, v in x["median_seconds"].items()
                                if k in trl["median_seconds"]} if trl else {})
    return out


def markdown(summary: list[dict], header: str) -> str:
    lines = [f"Setup: {header}.", "",
             "| implementation | step s | step tokens/s | generate s | new tokens/s | score s | update s | "
             "train (score + update) s | train tokens/s | step vs TRL | generate vs TRL | train vs TRL |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for x in summary:
        m, v = x["median_seconds"], x["speedup_vs_trl"]
        ratio = (lambda k: f"{v[k]:.2f}x") if v else (lambda k: "-")  # noqa: E731
        lines.append(
            f"| {x['implementation']} | {m['step']:.2f} | {x['step_tokens_per_second']:.0f} | {m['generate']:.2f} | "
            f"{x['generate_tokens_per_second']:.0f} | {m['score']:.3f} | {m['update']:.2f} | {m['train']:.2f} | "
            f"{x['train_tokens_per_second']:.0f} | {ratio('step')} | {ratio('generate')} | {ratio('train')} |")
    for x in summary:
        if "refresh" in x["median_seconds"]:
            lines += ["", f"Of {x['implementation']}'s generate, {x['median_seconds']['refresh']:.3f} s (median) give "
                      "the sampler the step's new weights (on CPU a per-layer copy of the block weights)."]
    return "\n".join(lines) + "\n"


def load_text() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def run(w: Workload, work: Path, rounds: int, sides: list[str], trl_python: str, threads: int = 0) -> dict:
    """Both sides, `rounds` times, alternating which goes first; every side's timed steps merged."""
    write_workload(work, w)
    runs: dict[str, dict] = {}
    loads = [dict(when="start", load=load_text())]
    for i in range(rounds):
        order = sides if i % 2 == 0 else sides[::-1]
        for side in order:
            print(f"[round {i + 1}] {side} (load {load_text()})", flush=True)
            row = run_ours(work, w) if side == "ours" else run_trl(work, trl_python, threads)
            if len(row["step_seconds"]) != w.steps:  # warm-up steps are never among the timed ones
                raise SystemExit(f"{side}: {len(row['step_seconds'])} timed steps, expected {w.steps}")
            loads.append(dict(when=f"round {i + 1} after {side}", load=load_text()))
            if side in runs:
                for key in [f"{p}_seconds" for p in PARTS] + ["step_seconds", "refresh_seconds", "logs"]:
                    if key in row:
                        runs[side][key] += row[key]
                runs[side]["min_completion_length"] = min(runs[side]["min_completion_length"],
                                                          row["min_completion_length"])
            else:
                runs[side] = row
    for side, row in runs.items():
        if row["min_completion_length"] != w.completion_tokens:
            raise SystemExit(f"{side}: a completion of {row['min_completion_length']} tokens, expected "
                             f"{w.completion_tokens} (the step's shapes would differ)")
    rows = [runs[s] for s in ("ours", "trl") if s in runs]
    result = dict(workload=dataclasses.asdict(w), loads=loads, rows=rows, summary=summarise(rows, w))
    if len(rows) == 2:  # the same weights on both sides: the same log-probs of one prompt
        a, b = (np.asarray(r["check_logps"]) for r in rows)
        result["same_weights_max_logp_diff"] = float(np.abs(a - b).max())
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    d = Workload()
    parser.add_argument("--model", choices=["small", "tiny"], default=d.model)
    parser.add_argument("--prompts", type=int, default=d.prompts_per_step, help="prompts per step")
    parser.add_argument("--generations", type=int, default=d.num_generations, help="G: completions per prompt")
    parser.add_argument("--prompt-tokens", type=int, default=d.prompt_tokens)
    parser.add_argument("--completion-tokens", type=int, default=d.completion_tokens)
    parser.add_argument("--beta", type=float, default=d.beta, help="KL weight (0: no reference model)")
    parser.add_argument("--micro-batches", type=int, default=d.micro_batches)
    parser.add_argument("--warmup", type=int, default=d.warmup)
    parser.add_argument("--steps", type=int, default=d.steps)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--sides", nargs="+", choices=["ours", "trl"], default=["ours", "trl"])
    parser.add_argument("--trl-python", default=DEFAULT_TRL_PYTHON)
    parser.add_argument("--trl-threads", type=int, default=0, help="torch threads for TRL (0: torch's default)")
    parser.add_argument("--work", help="workload directory (default runs/bench-grpo-MODEL)")
    parser.add_argument("--out", help="write OUT.json and OUT.md")
    args = parser.parse_args(argv)
    w = Workload(model=args.model, prompts_per_step=args.prompts, num_generations=args.generations,
                 prompt_tokens=args.prompt_tokens, completion_tokens=args.completion_tokens, beta=args.beta,
                 micro_batches=args.micro_batches, warmup=args.warmup, steps=args.steps)
    work = Path(args.work or REPO / f"runs/bench-grpo-{args.model}")
    cfg = model_config(w.model)
    result = run(w, work, args.rounds, args.sides, args.trl_python, args.trl_threads)
    versions = {k: v for r in result["rows"] for k, v in r["versions"].items()}
    header = (
        f"{platform.node()}: {os.cpu_count()} CPUs, load average {result['loads'][0]['load']} at start, "
        f"{load_text()} at the end; XLA_FLAGS {os.environ.get('XLA_FLAGS', '')!r}, TRL torch threads "
        f"{args.trl_threads or 'default'}; " + ", ".join(f"{k} {v}" for k, v in sorted(versions.items()))
        + f"; model {cfg.num_params() / 1e6:.2f}M params (Qwen3 shape, --model {w.model}), float32; "
        f"{w.prompts_per_step} prompts x G={w.num_generations} completions per step, prompt {w.prompt_tokens} + "
        f"completion {w.completion_tokens} tokens, beta {w.beta}, loss {w.loss_type}, {w.micro_batches} "
        f"micro-batch(es); median of {w.steps} steps after {w.warmup} warm-up"
        + (f", over {args.rounds} rounds alternating the sides" if args.rounds > 1 else "")
        + (f"; the same weights: log-probs of the first prompt's {w.prompt_tokens - 1} tokens agree to "
           f"{result['same_weights_max_logp_diff']:.1e}" if "same_weights_max_logp_diff" in result else ""))
    result["setup"] = header
    text = markdown(result["summary"], header)
    print("\n" + text)
    if args.out:
        path = Path(args.out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
        path.with_suffix(".md").write_text(text)
        print(f"wrote {path.with_suffix('.json')} and {path.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
