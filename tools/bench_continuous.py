"""Continuous batching against static batches: `Sampler.generate` on prompts whose generations
end at different lengths, as a reasoning model's do.

python tools/bench_continuous.py --out tools/results/continuous

The 42M 'small-qwen3' shape of tools/bench_sampler.py (random weights, float32). --prompts prompts
of --prompt-tokens random ids, up to --max-new-tokens new tokens each, --batch rows. A random set
of --end-ids ids ends a generation (with random weights each step draws one of them with
probability about end_ids / vocabulary), so the lengths spread out roughly geometrically up to the
limit; the JSON gives their mean, median and maximum. Both sides draw from the same row seeds and
the script counts the prompts they sampled identically. The sides alternate within each of
--repeats rounds after a warm-up (compilation excluded); medians reported.

Static batches decode until their longest row ends; continuous batching refills a finished row
with the next prompt at the next --chunk-tokens boundary.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_sampler import model_config  # noqa: E402  (the same model shape)

from ipo_jax.models.decoder import init_decoder  # noqa: E402
from ipo_jax.sampling import Sampler, SamplingConfig  # noqa: E402

SIDES = ("static", "continuous")


def _load() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="small-qwen3")
    parser.add_argument("--prompts", type=int, default=128)
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=512)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--chunk-tokens", type=int, default=32)
    parser.add_argument("--end-ids", type=int, default=256, help="how many ids end a generation")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--out", help="write OUT.json and OUT.md")
    args = parser.parse_args()

    cfg = model_config(args.model, args.dtype)
    model = init_decoder(cfg)
    rng = np.random.RandomState(args.seed)
    prompts = [rng.randint(3, cfg.vocab_size, args.prompt_tokens).tolist() for _ in range(args.prompts)]
    end_ids = sorted(rng.choice(np.arange(3, cfg.vocab_size), args.end_ids, replace=False).tolist())
    config = SamplingConfig(temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=args.max_new_tokens, seed=args.seed)
    samplers = {side: Sampler(model, eos_ids=end_ids, batch_size=args.batch, prompt_buckets=[args.prompt_tokens],
                              chunk_tokens=args.chunk_tokens, continuous_batching=side == "continuous")
                for side in SIDES}
    results: dict = dict(
        setup=dict(machine=f"{platform.node()}: {os.cpu_count()} CPUs", load_start=_load(),
                   jax=f"{jax.__version__} ({jax.devices()[0].device_kind})", model=args.model,
                   params=cfg.num_params(), args=vars(args)),
        seconds={side: [] for side in SIDES}, warmup_seconds={},
    )
    outputs = {}
    for side in SIDES:
        start = time.perf_counter()
        outputs[side] = samplers[side].generate(prompts, config)
        results["warmup_seconds"][side] = time.perf_counter() - start
        print(f"warm-up {side}: {results['warmup_seconds'][side]:.1f} s", flush=True)
    lengths = [len(g.completion_ids) for g in outputs["static"]]
    tokens = sum(lengths)
    same = sum(a.completion_ids == b.completion_ids for a, b in zip(outputs["static"], outputs["continuous"]))
    results.update(new_tokens=tokens, prompts_identical=same,
                   lengths=dict(mean=statistics.mean(lengths), median=statistics.median(lengths), max=max(lengths),
                                ended=sum(g.finish_reason == "stop" for g in outputs["static"])))
    print(f"{tokens} new tokens; lengths {results['lengths']}; identical prompts {same}/{len(prompts)}", flush=True)
    for repeat in range(args.repeats):
        for side in SIDES:
            start = time.perf_counter()
            samplers[side].generate(prompts, config)
            seconds = time.perf_counter() - start
            results["seconds"][side].append(seconds)
            print(f"round {repeat + 1} {side}: {seconds:.1f} s ({tokens / seconds:.0f} tokens/s), load {_load()}", flush=True)
    medians = {side: statistics.median(v) for side, v in results["seconds"].items()}
    results["tokens_per_s"] = {side: tokens / m for side, m in medians.items()}
    results["speedup"] = medians["static"] / medians["continuous"]
    results["setup"]["load_end"] = _load()
    print(json.dumps({"speedup": results["speedup"], "tokens_per_s": results["tokens_per_s"]}, indent=1))
    if args.out:
        path = Path(args.out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n")
        s, L = results["setup"], results["lengths"]
        path.with_suffix(".md").write_text("\n".join([
            f"Setup: {s['machine']}, load average {s['load_start']} at start, {s['load_end']} at end; jax {s['jax']}; "
            f"{args.model} ({s['params'] / 1e6:.1f}M, random weights, {args.dtype}); {args.prompts} prompts of "
            f"{args.prompt_tokens} tokens, up to {args.max_new_tokens} new tokens, batch {args.batch}, chunks of "
            f"{args.chunk_tokens}; {args.end_ids} end ids: lengths mean {L['mean']:.0f}, median {L['median']:.0f}, "
            f"max {L['max']} ({L['ended']} of {args.prompts} ended before the limit); median of {args.repeats} rounds.",
            "",
            "| side | seconds | new tokens/s |",
            "|---|---|---|",
            *[f"| {side} | {medians[side]:.1f} | {results['tokens_per_s'][side]:.0f} |" for side in SIDES],
            "",
            f"Continuous batching: **{results['speedup']:.2f}x** static batches; the same tokens for "
            f"{same} of {args.prompts} prompts.",
        ]) + "\n")


if __name__ == "__main__":
    main()
