"""Training throughput of the IPO step: ours (both layouts, both reference modes) against TRL's
`DPOTrainer` (PyTorch) and google-tunix's `DPOTrainer` (JAX) on one workload.

make bench-train          # builds the peer venvs (.bench/trl, .bench/tunix) on first use, then runs this
python tools/bench_train.py --out tools/results/train [--peers trl tunix] [--steps 4]
python tools/bench_train.py --shape long --model 8m --out tools/results/train_long   # realistic IPO lengths

The workload (written to --work, reused by every implementation):
- one random Qwen2-shaped model, saved once as an HF safetensors directory that every
  implementation loads, so all start from the same weights: --model 52m (hidden 512, 6 layers,
  8 query / 2 kv heads, MLP 1536, vocabulary 32768, untied, qkv bias: 51.7M parameters) or 8m
  (hidden 256, 4 layers, 4 query / 2 kv heads, MLP 1024, vocabulary 8192: 8.1M parameters);
- random token-id pairs: prompt + reasoning prefix (the shared trunk) and a chosen and a
  rejected suffix, identical lengths so that every implementation's batch carries no padding
  and all average the SFT term over the same tokens. --shape short: trunk 64 + 128, suffixes
  64 + 64, 4 pairs per step; --shape long (realistic IPO lengths): trunk 64 + 1472, suffixes
  256 + 256, 2 pairs per step;
- the objective IPO uses: sigmoid DPO (beta 0.1) on the suffix tokens only, plus 0.2 x the mean
  NLL of the chosen suffix (for the peers: prompt = trunk, completion = suffix; TRL's loss_type
  ["sigmoid", "sft"] with weights [1, 0.2], tunix's DPO with its SFT term), float32, AdamW at a
  constant learning rate (no weight decay, betas 0.9 / 0.999), gradient clipping at norm 1,
  the same pairs in the same order.

Our step runs with the attention kernel(s) of --attention (dense, blockwise); --rounds N runs
the whole sequence (ours, then the peers, per reference mode) N times, alternating the sides so
that a change in the machine's load hits both, and reports the median step over all rounds.

Each implementation runs --warmup steps (compilation, excluded) and then --steps timed steps;
a step's time includes building its batch from the stored pairs. The per-step losses are printed
side by side: step 1 is the same function of the same weights and the same pairs everywhere (it
must agree to float32 precision); later steps agree as closely as the optimizers do.

Reference log-probs: 'on the fly' runs the frozen reference forward inside every step;
'precomputed' runs one reference pass over the pairs first (its time per pair is reported on
its own and amortises over epochs) and the step reads the stored values.

Roofline: the machine's matmul rate is measured (float32 jnp.dot of --matmul-size squares, best
of 5) and divided by the model FLOPs one pair needs in the cheapest layout (prefix-shared: trunk
once, both suffixes; forward + backward = 3 forwards, + 1 forward with the reference on the fly);
'share of roofline' is measured pairs/s over that bound. The duplicated layout and the peers
compute the trunk twice, so their share is bounded by 320 / 512 of the bound.
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

REPO = Path(__file__).resolve().parent.parent
PEERS = {
    "trl": dict(script=REPO / "tools/peers/trl_dpo.py", python=REPO / ".bench/trl/bin/python",
                references=("precomputed", "on_the_fly")),
    # tunix's DPOTrainer runs the reference forward inside every step; it has no precomputed mode
    "tunix": dict(script=REPO / "tools/peers/tunix_dpo.py", python=REPO / ".bench/tunix/bin/python",
                  references=("on_the_fly",)),
}

_QWEN2 = dict(model_type="qwen2", rms_norm_eps=1e-6, rope_theta=1_000_000.0, tie_word_embeddings=False, qkv_bias=True,
              max_position_embeddings=4096, bos_token_id=1, eos_token_id=2)
MODELS = {
    "52m": dict(_QWEN2, vocab_size=32768, hidden_size=512, intermediate_size=1536, num_layers=6, num_heads=8,
                num_kv_heads=2, head_dim=64),
    "8m": dict(_QWEN2, vocab_size=8192, hidden_size=256, intermediate_size=1024, num_layers=4, num_heads=4,
               num_kv_heads=2, head_dim=64),
}
MODEL = MODELS["52m"]
SHAPES = {
    "short": dict(prompt_tokens=64, prefix_tokens=128, suffix_tokens=64, pairs_per_step=4, num_pairs=32),
    "long": dict(prompt_tokens=64, prefix_tokens=1472, suffix_tokens=256, pairs_per_step=2, num_pairs=16),
}


@dataclasses.dataclass(frozen=True)
class Workload:
    num_pairs: int = 32
    prompt_tokens: int = 64
    prefix_tokens: int = 128
    suffix_tokens: int = 64
    pairs_per_step: int = 4
    beta: float = 0.1
    alpha: float = 0.2
    learning_rate: float = 1e-4
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    clip_norm: float = 1.0
    seed: int = 0

    @property
    def trunk_tokens(self) -> int:
        return self.prompt_tokens + self.prefix_tokens

    @property
    def duplicated_tokens_per_pair(self) -> int:
        return 2 * (self.trunk_tokens + self.suffix_tokens)

    @property
    def shared_tokens_per_pair(self) -> int:
        return self.trunk_tokens + 2 * self.suffix_tokens


def write_workload(work: Path, w: Workload, model: dict = MODEL) -> None:
    """The model (HF safetensors) and pairs every implementation reads; reused when settings match."""
    from ipo_jax.checkpoint.hf import save_hf
    from ipo_jax.models.config import ModelConfig
    from ipo_jax.models.decoder import init_decoder

    settings = dict(model=model, workload=dataclasses.asdict(w))
    stamp = work / "workload.json"
    if stamp.is_file() and json.loads(stamp.read_text()).get("settings") == settings:
        return
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    decoder = init_decoder(ModelConfig(**model), seed=w.seed)
    save_hf(decoder, work / "model")
    rng = np.random.default_rng(w.seed)
    draw = lambda n: rng.integers(3, model["vocab_size"], n).tolist()  # noqa: E731 (ids 0-2 are special)
    pairs = [
        dict(id=f"pair-{i}", prompt_ids=draw(w.prompt_tokens), prefix_ids=draw(w.prefix_tokens),
             chosen_ids=draw(w.suffix_tokens), rejected_ids=draw(w.suffix_tokens))
        for i in range(w.num_pairs)
    ]
    (work / "pairs.json").write_text(json.dumps(pairs))
    stamp.write_text(json.dumps(dict(settings=settings, model_dir=str(work / "model"), pairs=str(work / "pairs.json"))))


def matmul_rate(size: int) -> float:
    """Best-of-5 float32 matmul FLOP/s of this machine through XLA (all its CPU threads)."""
    a = jnp.asarray(np.random.default_rng(0).standard_normal((size, size), np.float32))
    dot = jax.jit(lambda x: x @ x)
    dot(a).block_until_ready()
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        dot(a).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    return 2 * size**3 / best


def run_ours(work: Path, w: Workload, layout: str, reference: str, warmup: int, steps: int,
             attention: str = "dense", block: int = 0) -> dict:
    from ipo_jax.checkpoint.hf import load_hf
    from ipo_jax.data.pairs import PairBatches, TokenizedPair
    from ipo_jax.loss import LossConfig
    from ipo_jax.sharding import make_mesh
    from ipo_jax.train import reference as reference_lib
    from ipo_jax.train.step import (OptimConfig, batch_shardings, init_train_state, jit_train_step,
                                    learning_rate_schedule, make_optimizer, make_train_step, put_batch)
    from flax import nnx

    mesh = make_mesh({"fsdp": -1}, devices=jax.devices()[:1])
    records = json.loads((work / "pairs.json").read_text())
    as_ids = lambda r, k: np.asarray(r[k], np.int32)  # noqa: E731
    pairs = [TokenizedPair(r["id"], as_ids(r, "prompt_ids"), as_ids(r, "prefix_ids"), as_ids(r, "chosen_ids"),
                           as_ids(r, "rejected_ids")) for r in records]
    length = pairs[0].row_length(layout)
    batches = PairBatches(pairs, w.pairs_per_step, 1, layout, "cue", [length], shuffle=False)
    blocks = dict(attention_block_q=block, attention_block_k=block) if block else {}
    model = load_hf(str(work / "model"), mesh=mesh, attention=attention, **blocks)
    graphdef, params = nnx.split(model, nnx.Param)
    total = warmup + steps
    optim = OptimConfig(learning_rate=w.learning_rate, warmup_steps=0, total_steps=total, end_lr_ratio=1.0,
                        weight_decay=0.0, b1=w.b1, b2=w.b2, eps=w.eps, clip_norm=w.clip_norm)
    loss_cfg = LossConfig(objective="dpo", beta=w.beta, alpha=w.alpha)
    on_the_fly = reference == "on_the_fly"
    ref_params, ref_c, ref_r, ref_seconds = None, None, None, 0.0
    if on_the_fly:
        ref_params = jax.tree.map(jnp.copy, params)
    else:
        ref_batches = PairBatches(pairs, w.pairs_per_step, 1, layout, "cue", [length], shuffle=False)
        compute = lambda: reference_lib.compute_reference_logps(params, graphdef, ref_batches, mesh, 512)  # noqa: E731
        compute()  # compiles
        t0 = time.perf_counter()
        ref_c, ref_r = compute()
        ref_seconds = time.perf_counter() - t0
    tx = make_optimizer(optim)
    state, state_shardings = init_train_state(params, tx, mesh)
    ref_shardings = None if ref_params is None else jax.tree.map(lambda x: x.sharding, ref_params)
    step_fn = jit_train_step(
        make_train_step(graphdef, tx, loss_cfg, learning_rate_schedule(optim), chunk_size=512,
                        reference_on_the_fly=on_the_fly, mesh=mesh),
        state_shardings, mesh, ref_shardings,
    )
    shardings = batch_shardings(mesh)
    losses, dpo_terms, times, lrs = [], [], [], []
    for step in range(total):
        t0 = time.perf_counter()
        batch, idx = batches.batch(0, step % batches.batches_per_epoch)
        shape = batch["pair_valid"].shape
        zeros = np.zeros(shape, np.float32)
        batch["ref_chosen"] = zeros if ref_c is None else ref_c[idx].reshape(shape)
        batch["ref_rejected"] = zeros if ref_r is None else ref_r[idx].reshape(shape)
        state, metrics = step_fn(state, put_batch(batch, shardings), ref_params)
        metrics = jax.device_get(metrics)
        times.append(time.perf_counter() - t0)
        losses.append(float(metrics["loss"]))
        dpo_terms.append(float(metrics["preference_loss"]))
        lrs.append(float(metrics["learning_rate"]))
    timed = times[warmup:]
    return dict(
        implementation="ours", layout=layout, reference=reference, step_seconds=timed,
        attention=attention + (f" {model.cfg.attention_block_q}" if attention == "blockwise" else ""),
        compile_seconds=times[0], losses=losses, dpo_losses=dpo_terms, learning_rates=lrs,
        reference_seconds_per_pair=ref_seconds / w.num_pairs if not on_the_fly else 0.0,
        tokens_per_pair_forward=length if layout == "prefix_shared" else 2 * length,
    )


def run_peer(name: str, work: Path, w: Workload, reference: str, warmup: int, steps: int, python: str | None) -> dict:
    peer = PEERS[name]
    python = Path(python or peer["python"])
    if not python.exists():
        raise SystemExit(f"{name}: no interpreter at {python}; run `make bench-venvs` (or pass --{name}-python)")
    out = work / f"{name}-{reference}.json"
    cmd = [str(python), str(peer["script"]), "--work", str(work), "--reference", reference,
           "--warmup", str(warmup), "--steps", str(steps), "--out", str(out)]
    print("$ " + " ".join(cmd), flush=True)
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "PYTHONPATH")}
    subprocess.run(cmd, check=True, env=env)
    return json.loads(out.read_text())


def summarise(row: dict, w: Workload, roofline_pairs: dict[str, float]) -> dict:
    seconds = statistics.median(row["step_seconds"])
    pairs_s = w.pairs_per_step / seconds
    row.update(
        median_step_seconds=seconds,
        pairs_per_second=pairs_s,
        # the same numerator for every implementation: the pair's tokens (trunk + chosen, trunk + rejected)
        tokens_per_second=pairs_s * w.duplicated_tokens_per_pair,
        share_of_roofline=pairs_s / roofline_pairs[row["reference"]],
    )
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", help="workload directory (reused; default runs/bench-train[-SHAPE-MODEL])")
    parser.add_argument("--out", help="write OUT.json and OUT.md")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="short", help="pair lengths (see above)")
    parser.add_argument("--model", choices=sorted(MODELS), default="52m", help="model size (see above)")
    parser.add_argument("--attention", nargs="+", default=["dense"], choices=["dense", "blockwise"],
                        help="our attention kernel(s) (model.attention)")
    parser.add_argument("--attention-block", type=int, default=0,
                        help="blockwise query and key block size (default: ModelConfig's)")
    parser.add_argument("--peers", nargs="*", default=["trl", "tunix"], choices=sorted(PEERS))
    parser.add_argument("--trl-python", help="python of the TRL venv (default .bench/trl/bin/python)")
    parser.add_argument("--tunix-python", help="python of the tunix venv (default .bench/tunix/bin/python)")
    parser.add_argument("--layouts", nargs="+", default=["duplicated", "prefix_shared"])
    parser.add_argument("--references", nargs="+", default=["precomputed", "on_the_fly"])
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=1, help="repeat everything, alternating sides")
    parser.add_argument("--matmul-size", type=int, default=2048)
    args = parser.parse_args()

    from ipo_jax.models.config import ModelConfig
    from ipo_jax.train.mfu import train_flops_per_token

    w = Workload(**SHAPES[args.shape])
    model = MODELS[args.model]
    default_work = "runs/bench-train" if (args.shape, args.model) == ("short", "52m") else \
        f"runs/bench-train-{args.shape}-{args.model}"
    work = Path(args.work or REPO / default_work)
    write_workload(work, w, model)
    cfg = ModelConfig(**model)
    rate = matmul_rate(args.matmul_size)
    n_tok = w.shared_tokens_per_pair
    flops_per_pair = {
        ref: n_tok * train_flops_per_token(cfg, n_tok, ref == "on_the_fly") for ref in ("precomputed", "on_the_fly")
    }
    roofline_pairs = {ref: rate / f for ref, f in flops_per_pair.items()}
    header = (
        f"{platform.node()}: {os.cpu_count()} CPUs, load average {load_text()} at start; "
        f"jax {jax.__version__} ({jax.devices()[0].device_kind}); measured float32 matmul rate "
        f"{rate / 1e9:.1f} GFLOP/s; model {cfg.num_params() / 1e6:.1f}M params (Qwen2 shape, --model {args.model}); "
        f"{w.pairs_per_step} pairs per step, trunk {w.trunk_tokens} + suffixes {w.suffix_tokens} / {w.suffix_tokens} "
        f"tokens (--shape {args.shape}); median of {args.steps} steps after {args.warmup} warm-up"
        + (f", over {args.rounds} rounds alternating the sides" if args.rounds > 1 else "")
    )
    print(header, flush=True)
    runs: dict[tuple, dict] = {}  # one row per (implementation, layout, reference, attention), rounds merged

    def record(row: dict) -> None:
        key = (row["implementation"], row.get("layout", "duplicated"), row["reference"], row.get("attention", "-"))
        if key in runs:
            runs[key]["step_seconds"] += row["step_seconds"]
            runs[key]["loads"].append(os.getloadavg()[0])
        else:
            runs[key] = dict(row, loads=[os.getloadavg()[0]])

    for round_index in range(args.rounds):
        peers_first = round_index % 2 == 1  # alternate which side runs first in each round
        for reference in args.references:
            ours = [(layout, kind) for kind in args.attention for layout in args.layouts]
            peers = [p for p in args.peers if reference in PEERS[p]["references"]]
            sides = [("peer", p) for p in peers] + [("ours", o) for o in ours]
            if not peers_first:
                sides = sides[len(peers):] + sides[: len(peers)]
            for side, what in sides:
                if side == "ours":
                    layout, kind = what
                    print(f"[round {round_index + 1}] ours: {layout}, reference {reference}, {kind} attention", flush=True)
                    record(run_ours(work, w, layout, reference, args.warmup, args.steps, kind, args.attention_block))
                else:
                    print(f"[round {round_index + 1}] {what}: reference {reference}", flush=True)
                    record(run_peer(what, work, w, reference, args.warmup, args.steps, getattr(args, f"{what}_python")))
    rows = [summarise(r, w, roofline_pairs) for r in runs.values()]
    header += f"; load average {load_text()} at the end"
    report(rows, header, w, roofline_pairs, flops_per_pair, args.out)


def load_text() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def report(rows, header, w, roofline_pairs, flops_per_pair, out) -> None:
    lines = [f"Setup: {header}.", "",
             "| implementation | layout | reference | attention | pairs/s | tokens/s | step s | reference pass s/pair | "
             "vs TRL | vs tunix | share of roofline |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    by = {(r["implementation"], r["reference"]): r for r in rows if r["implementation"] != "ours"}
    for r in rows:
        ratios = []
        for peer in ("trl", "tunix"):
            p = by.get((peer, r["reference"]))
            ratios.append(f"{r['pairs_per_second'] / p['pairs_per_second']:.2f}x" if p else "-")
        ref_pass = f"{r['reference_seconds_per_pair']:.3f}" if r["reference"] == "precomputed" else "-"
        lines.append(
            f"| {r['implementation']} | {r.get('layout', 'duplicated')} | {r['reference']} | {r.get('attention', '-')} | "
            f"{r['pairs_per_second']:.2f} | {r['tokens_per_second']:.0f} | {r['median_step_seconds']:.2f} | {ref_pass} | "
            f"{ratios[0]} | {ratios[1]} | {r['share_of_roofline']:.0%} |"
        )
    lines += ["", "Roofline (measured matmul rate / model FLOPs per pair in the prefix-shared layout): "
              + ", ".join(f"{ref} {roofline_pairs[ref]:.2f} pairs/s ({flops_per_pair[ref] / 1e9:.1f} GFLOP per pair)"
                          for ref in roofline_pairs), "",
              "Loss per step (step 1 is the same function of the same weights and pairs everywhere; TRL and ours: "
              "DPO + 0.2 x NLL of the chosen suffix; tunix: DPO only, compare with our DPO-term rows):", "",
              "| implementation | layout | reference | attention | "
              + " | ".join(f"step {i + 1}" for i in range(len(rows[0]["losses"]))) + " |",
              "|---|---|---|---|" + "---|" * len(rows[0]["losses"])]
    for r in rows:
        lines.append(f"| {r['implementation']} | {r.get('layout', 'duplicated')} | {r['reference']} | {r.get('attention', '-')} | "
                     + " | ".join(f"{x:.5f}" for x in r["losses"]) + " |")
    for r in rows:  # tunix's DPO has no SFT term: compare it with our DPO term alone
        if "dpo_losses" in r:
            lines.append(f"| {r['implementation']} (DPO term only) | {r['layout']} | {r['reference']} | {r['attention']} | "
                         + " | ".join(f"{x:.5f}" for x in r["dpo_losses"]) + " |")
    text = "\n".join(lines) + "\n"
    print("\n" + text)
    if out:
        path = Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.with_suffix(".json").write_text(json.dumps(dict(setup=header, rows=rows), indent=1) + "\n")
        path.with_suffix(".md").write_text(text)
        print(f"wrote {path.with_suffix('.json')} and {path.with_suffix('.md')}")


if __name__ == "__main__":
    sys.exit(main())
