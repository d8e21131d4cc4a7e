"""Sampler throughput (new tokens per second) on a random model of a preset shape.

python tools/bench_sampler.py --preset tiny-qwen3 --batch-sizes 1 8 32 --prompt-length 64 --new-tokens 128
Compile time is excluded (one warm-up call per batch size). Prints a markdown table.
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np

from ipo_jax.models.decoder import init_decoder
from ipo_jax.models.presets import preset_config
from ipo_jax.sampling import Sampler, SamplingConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny-qwen3")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--prompt-length", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--chunk-tokens", type=int, default=32)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--transformers", action="store_true", help="also time transformers generate (KV cache) on the same model")
    args = parser.parse_args()

    cfg = preset_config(args.preset, param_dtype=args.dtype, dtype=args.dtype)
    model = init_decoder(cfg)
    rng = np.random.RandomState(0)
    config = SamplingConfig(temperature=1.0, top_p=1.0, max_new_tokens=args.new_tokens)
    print(f"{args.preset} ({cfg.num_params() / 1e6:.2f}M params, {args.dtype}) on {jax.devices()[0].device_kind}")
    reference = _transformers_model(model) if args.transformers else None
    print("| batch | new tokens | seconds | tokens/s | transformers tokens/s | ratio |\n|---|---|---|---|---|---|")
    for batch in args.batch_sizes:
        sampler = Sampler(model, eos_ids=[cfg.vocab_size + 1], batch_size=batch, prompt_buckets=[args.prompt_length],
                          chunk_tokens=args.chunk_tokens)
        prompts = [rng.randint(3, cfg.vocab_size, args.prompt_length).tolist() for _ in range(batch)]
        sampler.generate(prompts, config)  # compile
        start = time.perf_counter()
        out = sampler.generate(prompts, config)
        seconds = time.perf_counter() - start
        tokens = sum(len(g.tokens) for g in out)
        theirs = _time_transformers(reference, prompts, args.new_tokens) if reference is not None else None
        ours = tokens / seconds
        extra = f"{theirs:.0f} | {ours / theirs:.1f}x" if theirs else "- | -"
        print(f"| {batch} | {tokens} | {seconds:.2f} | {ours:.0f} | {extra} |")


def _transformers_model(model):
    import tempfile

    import transformers

    from ipo_jax.checkpoint import save_hf

    path = save_hf(model, tempfile.mkdtemp() + "/hf")
    return transformers.AutoModelForCausalLM.from_pretrained(path).eval()


def _time_transformers(reference, prompts, new_tokens) -> float:
    import torch

    ids = torch.tensor(prompts, dtype=torch.long)
    kwargs = dict(attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                  do_sample=True, temperature=1.0, top_p=1.0, top_k=0, use_cache=True)
    with torch.no_grad():
        reference.generate(ids, **kwargs)  # warm-up
        start = time.perf_counter()
        out = reference.generate(ids, **kwargs)
    return (out.shape[1] - ids.shape[1]) * ids.shape[0] / (time.perf_counter() - start)


if __name__ == "__main__":
    main()
