"""Rollout throughput: prefix forks (one prefill, many continuations) against re-prefilling every
continuation, and against transformers `generate`, on the pipeline's two fork workloads.

python tools/bench_rollout.py --out tools/results/rollout

Workloads (all on the 42M 'small-qwen3' shape of tools/bench_sampler.py, random weights, float32;
transformers gets the same model exported to HF format):

* csr: one --trajectory-token trajectory (random ids), --samples continuations of --new-tokens
  new tokens after each of --positions sentence positions (cuts evenly spaced, the last at the
  trajectory's end), as `ipo_jax.pipeline.csr` samples them.
  - fork: ONE ``Sampler.generate_forks`` call, ``Fork(cut, n=samples)`` per position, batch
    --csr-batch (rows of different positions share a batch);
  - reprefill: one ``Sampler.generate`` call per position on ``samples`` copies of
    ``prefix[:cut]``, with the row seeds the fork gives those rows (so both sample the same
    tokens: checked, `tokens_equal` in the JSON); its prompt buckets are the exact cut lengths
    (no padding: the best case for re-prefilling);
  - transformers: ``generate`` per position with ``num_return_sequences=samples`` (it expands
    the prompt and prefills every copy), ``use_cache=True``.
* intervention: one --trajectory-token prefix and --triggers triggers of --trigger-tokens ids,
  --new-tokens new tokens after each (prefix + trigger), as build-pairs samples a prompt's
  round: fork (``Fork(cut=len(prefix), suffix=trigger)`` each), reprefill (one ``generate`` on
  the prefix + trigger rows), transformers (one ``generate`` on those rows).
* decode: plain decoding, --decode-batch prompts of --decode-prompt tokens, --new-tokens new
  tokens (ours ``generate`` vs transformers ``generate``; bench_sampler's measurement).

Every row decodes exactly --new-tokens tokens (no EOS: ours has an end id outside the
vocabulary, transformers min_new_tokens), sampling at temperature 1 without top-k / top-p.
Our sides are warmed up once on the same shapes (compilation excluded; the warm-up time is in
the JSON); transformers gets a short warm-up.  The sides are timed alternately within each of
--repeats rounds and the median is reported.  Transformers is timed with each of --torch-threads
(default: torch's default) as a side of its own and its better median is compared (on a loaded
machine torch's thread pool can be many times slower than one thread).  The setup line gives the machine's load average at the start and
at the end: the machine may be shared.

--positions, --samples, --new-tokens, --trajectory-tokens, --repeats and --csr-repeats scale the workload down
for a quick check (e.g. --positions 2 --samples 4 --new-tokens 16 --trajectory-tokens 128).
The JSON is rewritten after every timed side, so a long run that is cut short keeps what it
measured (``complete: false``).
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
from bench_sampler import _transformers_model, model_config  # noqa: E402  (the same model shape and export)

from ipo_jax.models.decoder import init_decoder  # noqa: E402
from ipo_jax.sampling import Fork, Sampler, SamplingConfig, row_seed  # noqa: E402

SIDES = ("fork", "reprefill", "transformers")
WORKLOADS = ("decode", "intervention", "csr")


def _load() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


# --------------------------------------------------------------------------- workloads


class CSRWorkload:
    def __init__(self, model, cfg, args, rng):
        self.args, self.n = args, args.samples
        self.prefix = rng.randint(3, cfg.vocab_size, args.trajectory_tokens).tolist()
        step = args.trajectory_tokens // args.positions
        self.cuts = [args.trajectory_tokens - step * (args.positions - 1 - i) for i in range(args.positions)]
        self.config = SamplingConfig(temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=args.new_tokens, seed=args.seed)
        make = lambda batch: Sampler(model, eos_ids=[cfg.vocab_size + 1], batch_size=batch,  # noqa: E731
                                     prompt_buckets=sorted(set(self.cuts)), chunk_tokens=args.chunk_tokens)
        # The fork batches rows of any positions together (--csr-batch); re-prefilling runs one
        # position per call, so its batch is the position's --samples copies (no padding rows).
        self.sampler = make(args.csr_batch or args.samples)
        self.reprefill_sampler = self.sampler if (args.csr_batch or args.samples) == args.samples else make(args.samples)
        self.tokens = args.positions * args.samples * args.new_tokens

    def decode_batches(self, side: str) -> list[tuple[int, list[int]]]:
        """(shared prefix slots, each row's own slots at its first decode step) per decode batch."""
        if side == "fork":  # rows in order of cut, the batch sharing the prefix up to its largest cut
            cuts = sorted(c for c in self.cuts for _ in range(self.n))
            size = self.args.csr_batch or self.n
            return [(max(cuts[i : i + size]), [1] * len(cuts[i : i + size])) for i in range(0, len(cuts), size)]
        return [(0, [cut] * self.n) for cut in self.cuts]

    def fork(self):
        forks = [Fork(cut=c, n=self.n) for c in self.cuts]
        return [[g.tokens for g in group] for group in self.sampler.generate_forks(self.prefix, forks, self.config)]

    def reprefill(self):
        out = []
        for i, cut in enumerate(self.cuts):  # the fork's default row seeds: flattened row i * n + j
            seeds = [row_seed(self.config.seed, i * self.n + j) for j in range(self.n)]
            out.append([g.tokens for g in self.reprefill_sampler.generate([self.prefix[:cut]] * self.n, self.config,
                                                                     row_seeds=seeds)])
        return out

    def transformers(self, reference):
        import torch

        for cut in self.cuts:
            ids = torch.tensor([self.prefix[:cut]], dtype=torch.long)
            _hf_generate(reference, ids, self.args.new_tokens, num_return_sequences=self.n)


class InterventionWorkload:
    def __init__(self, model, cfg, args, rng):
        self.args = args
        self.prefix = rng.randint(3, cfg.vocab_size, args.trajectory_tokens).tolist()
        self.triggers = [rng.randint(3, cfg.vocab_size, args.trigger_tokens).tolist() for _ in range(args.triggers)]
        self.config = SamplingConfig(temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=args.new_tokens, seed=args.seed)
        length = args.trajectory_tokens + args.trigger_tokens
        self.sampler = Sampler(model, eos_ids=[cfg.vocab_size + 1], batch_size=args.triggers,
                               prompt_buckets=sorted({args.trajectory_tokens, length}), chunk_tokens=args.chunk_tokens)
        self.tokens = args.triggers * args.new_tokens

    def decode_batches(self, side: str) -> list[tuple[int, list[int]]]:
        own = 1 + self.args.trigger_tokens  # the last prefix token and the trigger
        if side == "fork":
            return [(len(self.prefix), [own] * self.args.triggers)]
        return [(0, [len(self.prefix) + self.args.trigger_tokens] * self.args.triggers)]

    def fork(self):
        forks = [Fork(cut=len(self.prefix), suffix=tuple(t)) for t in self.triggers]
        return [[g.tokens for g in group] for group in self.sampler.generate_forks(self.prefix, forks, self.config)]

    def reprefill(self):
        generations = self.sampler.generate([self.prefix + t for t in self.triggers], self.config)
        return [[g.tokens] for g in generations]

    def transformers(self, reference):
        import torch

        _hf_generate(reference, torch.tensor([self.prefix + t for t in self.triggers], dtype=torch.long), self.args.new_tokens)


class DecodeWorkload:
    def __init__(self, model, cfg, args, rng):
        self.args = args
        self.prompts = [rng.randint(3, cfg.vocab_size, args.decode_prompt).tolist() for _ in range(args.decode_batch)]
        self.config = SamplingConfig(temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=args.new_tokens, seed=args.seed)
        self.sampler = Sampler(model, eos_ids=[cfg.vocab_size + 1], batch_size=args.decode_batch,
                               prompt_buckets=[args.decode_prompt], chunk_tokens=args.chunk_tokens)
        self.tokens = args.decode_batch * args.new_tokens

    def decode_batches(self, side: str) -> list[tuple[int, list[int]]]:
        return [(0, [self.args.decode_prompt] * self.args.decode_batch)]

    def reprefill(self):  # plain decoding: ours
        return [[g.tokens] for g in self.sampler.generate(self.prompts, self.config)]

    def transformers(self, reference):
        import torch

        _hf_generate(reference, torch.tensor(self.prompts, dtype=torch.long), self.args.new_tokens)


def decode_roofline(cfg, dtype: str, batches, new_tokens: int, bandwidth_gbs: float) -> dict:
    """The memory-bandwidth bound of decoding: each step reads the weights (the layers, the final
    norm and the output projection: the input embedding only for its rows) and every key / value
    slot the batch attends to (a fork's shared prefix once per batch, each row's own slots).
    `batches`: (shared slots, [row's own slots at its first decode step]) per decode batch; each
    row decodes `new_tokens` - 1 steps after the token its prefill draws. Prefill is left out (it
    is compute-bound), so this is an upper bound on decode tokens/s at that bandwidth."""
    size = np.dtype(dtype).itemsize
    weights = cfg.num_params() - (0 if cfg.tie_word_embeddings else cfg.vocab_size * cfg.hidden_size)
    slot = cfg.num_layers * 2 * cfg.num_kv_heads * cfg.head_dim * size  # bytes of one token's keys and values
    steps = new_tokens - 1
    total = 0
    for shared, own in batches:
        # step t reads shared + sum(own_r + t) slots (the new token's slot written, then read)
        slots = steps * (shared + sum(own)) + len(own) * steps * (steps + 1) // 2
        total += steps * weights * size + slots * slot
    tokens = sum(len(own) for _, own in batches) * new_tokens
    seconds = total / (bandwidth_gbs * 1e9)
    return dict(bytes_read=total, weight_bytes_per_step=weights * size, kv_bytes_per_slot=slot,
                decode_steps=steps * len(batches), tokens_per_s=tokens / seconds if seconds else None)


def _hf_generate(reference, ids, new_tokens: int, num_return_sequences: int = 1):
    import torch

    with torch.no_grad():
        out = reference.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens, min_new_tokens=new_tokens,
            do_sample=True, temperature=1.0, top_p=1.0, top_k=0, use_cache=True, pad_token_id=0,
            num_return_sequences=num_return_sequences,
        )
    assert out.shape == (ids.shape[0] * num_return_sequences, ids.shape[1] + new_tokens)


# --------------------------------------------------------------------------- driver


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workloads", nargs="+", choices=WORKLOADS, default=list(WORKLOADS))
    parser.add_argument("--sides", nargs="+", choices=SIDES, default=list(SIDES))
    parser.add_argument("--model", default="small-qwen3")
    parser.add_argument("--positions", type=int, default=16)
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--trajectory-tokens", type=int, default=1024)
    parser.add_argument("--triggers", type=int, default=6)
    parser.add_argument("--trigger-tokens", type=int, default=16)
    parser.add_argument("--decode-batch", type=int, default=32)
    parser.add_argument("--decode-prompt", type=int, default=64)
    parser.add_argument("--csr-batch", type=int, default=0,
                        help="the fork's batch size on csr (default: --samples); re-prefill always runs a position's "
                             "--samples rows per call")
    parser.add_argument("--chunk-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--csr-repeats", type=int, default=0, help="rounds on csr (default: --repeats; it is the long one)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--torch-threads", type=int, nargs="+", default=[0],
                        help="thread counts transformers is timed with, each a side of its own; the best median is "
                             "compared (0: torch's default)")
    parser.add_argument("--bandwidth-gbs", type=float, default=0.0,
                        help="the device's memory bandwidth in GB/s (e.g. 4800 for an H200): adds each side's "
                             "decode roofline (weights + KV bytes read per step) to the JSON and the table")
    parser.add_argument("--out", help="write OUT.json and OUT.md")
    args = parser.parse_args()
    if args.trajectory_tokens % args.positions:
        parser.error("--trajectory-tokens must be a multiple of --positions (evenly spaced cuts)")

    import torch

    default_threads = torch.get_num_threads()
    thread_counts = sorted({t or default_threads for t in args.torch_threads}, reverse=True)
    cfg = model_config(args.model, args.dtype)
    model = init_decoder(cfg)
    reference = _transformers_model(model) if "transformers" in args.sides else None
    load_start = _load()
    setup = dict(
        machine=f"{platform.node()}: {os.cpu_count()} CPUs", load_start=load_start,
        jax=f"{jax.__version__} ({jax.devices()[0].device_kind})", torch=torch.__version__, torch_threads=thread_counts,
        model=args.model, params=cfg.num_params(), dtype=args.dtype, args=vars(args),
    )
    results: dict = {"setup": setup, "complete": False, "workloads": {}}
    rng = np.random.RandomState(args.seed)
    makers = dict(decode=DecodeWorkload, intervention=InterventionWorkload, csr=CSRWorkload)
    for name in args.workloads:
        work = makers[name](model, cfg, args, rng)
        sides = [s for s in args.sides if hasattr(work, s) and s != "transformers"]
        if "transformers" in args.sides:
            sides += [f"transformers@{t}" for t in thread_counts]
        entry = results["workloads"].setdefault(name, dict(new_tokens=work.tokens, seconds={s: [] for s in sides}, warmup_seconds={}))
        if args.bandwidth_gbs:
            entry["roofline"] = {side: decode_roofline(cfg, args.dtype, work.decode_batches(side), args.new_tokens,
                                                       args.bandwidth_gbs)
                                 for side in ("fork", "reprefill") if side in sides}
            entry["roofline_bandwidth_gbs"] = args.bandwidth_gbs
        print(f"\n{name}: {work.tokens} new tokens per run; sides {sides}; load {_load()}", flush=True)
        outputs = {}
        for side in sides:  # warm-up: ours compiles on the timed shapes; transformers a short call
            start = time.perf_counter()
            if side.startswith("transformers"):
                torch.set_num_threads(int(side.split("@")[1]))
                _hf_generate(reference, torch.tensor([[5] * 64] * 2), 8)
            else:
                outputs[side] = getattr(work, side)()
            entry["warmup_seconds"][side] = time.perf_counter() - start
            print(f"  warm-up {side}: {entry['warmup_seconds'][side]:.1f} s", flush=True)
        if name != "decode" and {"fork", "reprefill"} <= set(outputs):
            entry["tokens_equal"] = outputs["fork"] == outputs["reprefill"]
            entry["rows_compared"] = _compare(outputs["fork"], outputs["reprefill"])
            print(f"  fork tokens == reprefill tokens: {entry['tokens_equal']} ({entry['rows_compared']})", flush=True)
        entry["rounds"] = rounds = args.csr_repeats if name == "csr" and args.csr_repeats else args.repeats
        entry["load_after"] = {s: [] for s in sides}
        for repeat in range(rounds):
            for side in sides:
                start = time.perf_counter()
                if side.startswith("transformers"):
                    torch.set_num_threads(int(side.split("@")[1]))
                    work.transformers(reference)
                else:
                    getattr(work, side)()
                seconds = time.perf_counter() - start
                entry["seconds"][side].append(seconds)
                entry["load_after"][side].append(_load())
                print(f"  round {repeat + 1} {side}: {seconds:.1f} s ({work.tokens / seconds:.0f} tokens/s), load {_load()}",
                      flush=True)
                _summarise(entry)
                if args.out:
                    _write(args.out, results)
    results["complete"] = True
    setup["load_end"] = _load()
    if args.out:
        _write(args.out, results)
    print(json.dumps({f"{name}_{k}": v for name, e in results["workloads"].items() for k, v in e.items() if k.startswith("speedup")},
                     indent=1))


def _compare(fork: list, reprefill: list) -> dict:
    """How many rows the two sides sampled identically, and where the others first differ (the
    fork attends over the whole prefix cache with the slots past its cut masked, re-prefilling
    over exactly its prefix: float rounding differs, and a sampled token can flip)."""
    rows = [(a, b) for fa, fb in zip(fork, reprefill) for a, b in zip(fa, fb)]
    first = [next((t for t, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b))) for a, b in rows if a != b]
    return dict(rows=len(rows), rows_equal=len(rows) - len(first), tokens=sum(len(a) for a, _ in rows),
                tokens_before_first_difference=sorted(first))


def _summarise(entry: dict) -> None:
    medians = {s: statistics.median(v) for s, v in entry["seconds"].items() if v}
    entry["median_seconds"] = medians
    entry["tokens_per_s"] = {s: entry["new_tokens"] / m for s, m in medians.items()}
    theirs = {s: m for s, m in medians.items() if s.startswith("transformers@")}
    if theirs:  # transformers at its best thread count
        best = min(theirs, key=theirs.get)
        medians["transformers"] = theirs[best]
        entry["tokens_per_s"]["transformers"] = entry["new_tokens"] / theirs[best]
        entry["transformers_threads"] = int(best.split("@")[1])
    ours = medians.get("fork", medians.get("reprefill"))
    if "fork" in medians and "reprefill" in medians:
        entry["speedup_vs_reprefill"] = medians["reprefill"] / medians["fork"]
    if ours and "transformers" in medians:
        entry["speedup_vs_transformers"] = medians["transformers"] / ours


def _write(out: str, results: dict) -> None:
    for name, entry in results["workloads"].items():  # the headline keys at the top level
        for key in ("speedup_vs_reprefill", "speedup_vs_transformers"):
            if key in entry:
                results[f"{name}_{key}"] = entry[key]
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n")
    s, a = results["setup"], results["setup"]["args"]
    header = (f"{s['machine']}, load average (1/5/15 min) {s['load_start']} at start, {s.get('load_end', '-')} at end; "
              f"jax {s['jax']}, torch {s['torch']} (threads tried: {s['torch_threads']}, the better median kept); {s['model']} "
              f"({s['params'] / 1e6:.1f}M, random weights, {s['dtype']}); {a['new_tokens']} new tokens per row, "
              f"temperature 1, no top-k/top-p; median of the alternating rounds ("
              + ", ".join(f"{n} {e.get('rounds', '-')}" for n, e in results["workloads"].items()) + ")"
              + ("" if results["complete"] else "; INCOMPLETE run"))
    titles = dict(
        csr=f"CSR: {a['samples']} continuations after each of {a['positions']} positions of a {a['trajectory_tokens']}-token "
            f"trajectory (fork batch {a['csr_batch'] or a['samples']}, re-prefill batch {a['samples']})",
        intervention=f"intervention: {a['triggers']} triggers ({a['trigger_tokens']} tokens) after a {a['trajectory_tokens']}-token prefix",
        decode=f"plain decode: batch {a['decode_batch']}, prompt {a['decode_prompt']}",
    )
    lines = [f"Setup: {header}.", "",
             "| workload | ours, fork (tokens/s) | ours, re-prefill / plain generate (tokens/s) | transformers (tokens/s) | fork vs re-prefill | ours vs transformers |",
             "|---|---|---|---|---|---|"]
    for name, entry in results["workloads"].items():
        t = entry.get("tokens_per_s", {})
        cell = lambda side: f"{t[side]:.0f}" if side in t else "-"  # noqa: E731
        threads = f" ({entry['transformers_threads']} thr)" if "transformers_threads" in entry else ""
        ratio = lambda key: f"{entry[key]:.1f}x" if key in entry else "-"  # noqa: E731
        lines.append(f"| {titles[name]} | {cell('fork')} | {cell('reprefill')} | {cell('transformers')}{threads} | "
                     f"{ratio('speedup_vs_reprefill')} | {ratio('speedup_vs_transformers')} |")
    compared = [f"{n}: {e['rows_compared']['rows_equal']} of {e['rows_compared']['rows']} rows identical"
                for n, e in results["workloads"].items() if "rows_compared" in e]
    roofs = [f"{n} {side} {r['tokens_per_s']:.0f}" for n, e in results["workloads"].items()
             for side, r in e.get("roofline", {}).items()]
    if roofs:
        bandwidth = next(e["roofline_bandwidth_gbs"] for e in results["workloads"].values() if "roofline" in e)
        lines += ["", f"Decode bandwidth roofline at {bandwidth:g} GB/s (weights + KV bytes read per step, prefill "
                  "left out; tokens/s): " + ", ".join(roofs) + "."]
    lines += ["", "Ours vs transformers compares the fork where there is one (plain decode: our `generate`). "
              "Fork and re-prefill draw from the same row seeds (" + ("; ".join(compared) or "not compared") + ")."]
    path.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
