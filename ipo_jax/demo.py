"""The main job on the embedded default: the model round trip on each family, then a short
IPO training run exported to Hugging Face format.

1. For every preset in the config: build a random decoder, export it to an HF directory,
   reload it with transformers and compare logits (left-padded batch) and greedy decoding
   through our KV cache; re-import the HF directory (bitwise), save and restore with orbax.
2. Train with IPO on the shipped sample pairs (configs/train_tiny_cpu.py), export the final
   policy with its tokenizer to HF format, reload it with transformers and check that it
   prefers the chosen (safe) continuation of a training pair over the rejected one.
Prints tables and writes <out>/summary.{md,json}; exit code 1 if any check fails.
The IPO demo world (pipeline -> pairs -> training -> evaluation) replaces this later.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ipo_jax.checkpoint import load_hf, load_orbax, save_hf, save_orbax
from ipo_jax.models.decoder import init_decoder
from ipo_jax.models.presets import preset_config
from ipo_jax.sampling import Sampler, SamplingConfig


def _check_preset(name: str, config, out: Path) -> dict:
    import torch
    import transformers

    cfg = preset_config(name, initializer_range=config.initializer_range)
    model = init_decoder(cfg, seed=config.seed)
    rng = np.random.RandomState(config.seed)
    tokens = rng.randint(0, cfg.vocab_size, (config.batch, config.length)).astype(np.int32)
    segment_ids = np.ones_like(tokens)
    segment_ids[-1, : config.length // 3] = 0  # one left-padded row
    positions = np.maximum(np.cumsum(segment_ids, axis=1) - 1, 0)
    real = segment_ids != 0

    hf_dir = save_hf(model, out / name / "hf", overwrite=True)
    ours, _ = model(jnp.asarray(tokens), jnp.asarray(positions), jnp.asarray(segment_ids))
    ours = np.asarray(ours)
    reference = transformers.AutoModelForCausalLM.from_pretrained(hf_dir).eval()
    with torch.no_grad():
        theirs = reference(
            input_ids=torch.tensor(tokens, dtype=torch.long),
            attention_mask=torch.tensor(segment_ids, dtype=torch.long),
            position_ids=torch.tensor(positions, dtype=torch.long),
        ).logits.numpy()
    logit_diff = float(np.abs(ours - theirs)[real].max())

    prompt = tokens[:2, : config.length // 2]
    # greedy through our sampler (KV cache); an EOS id outside the vocabulary decodes the full length
    sampler = Sampler(model, eos_ids=[cfg.vocab_size], batch_size=len(prompt), prompt_buckets=[prompt.shape[1]])
    generations = sampler.generate(prompt.tolist(), SamplingConfig(temperature=0.0, max_new_tokens=config.new_tokens))
    our_tokens = np.asarray([g.tokens for g in generations])
    reference.generation_config.eos_token_id = None  # decode the full length on both sides
    with torch.no_grad():
        hf_tokens = reference.generate(
            torch.tensor(prompt, dtype=torch.long),
            attention_mask=torch.ones(prompt.shape, dtype=torch.long),
            max_new_tokens=config.new_tokens,
            do_sample=False,
        )[:, prompt.shape[1] :].numpy()
    greedy_match = float((our_tokens == hf_tokens).mean())

    reimported = load_hf(hf_dir)
    bitwise = all(
        np.array_equal(np.asarray(a[...]), np.asarray(b[...]))
        for (_, a), (_, b) in zip(nnx.to_flat_state(nnx.state(model)), nnx.to_flat_state(nnx.state(reimported)))
    )
    save_orbax(reimported, out / name / "orbax", overwrite=True)
    restored, _ = load_orbax(out / name / "orbax")(jnp.asarray(tokens), jnp.asarray(positions), jnp.asarray(segment_ids))
    orbax_exact = bool(np.array_equal(np.asarray(restored), ours))

    ok = logit_diff <= config.logit_tolerance and greedy_match == 1.0 and bitwise and orbax_exact
    return dict(
        preset=name,
        model_type=cfg.model_type,
        params=cfg.num_params(),
        logit_scale=float(np.abs(theirs[real]).max()),
        max_logit_diff=logit_diff,
        greedy_tokens_matching=greedy_match,
        hf_round_trip_bitwise=bitwise,
        orbax_exact=orbax_exact,
        ok=ok,
        hf_dir=str(hf_dir),
    )


def _train_and_export(config, out: Path) -> dict:
    """Short IPO run, HF export with tokenizer, and a preference check through transformers."""
    import torch
    import transformers

    from ipo_jax.checkpoint import save_hf
    from ipo_jax.cli import parse_config
    from ipo_jax.data.pairs import read_pair_records, tokenize_pair
    from ipo_jax.data.tokenizer import load_tokenizer
    from ipo_jax.train.loop import train

    run = out / "train"
    train_config = parse_config(
        ["--config", config.train_config, f"--config.train.out={run}", f"--config.reference.cache_dir={run}"], "train"
    )
    code = train(train_config)
    if code:
        return dict(ok=False, exit_code=code)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    hf_dir = save_hf(load_orbax(run / "final"), out / "trained-hf", tokenizer_dir=run / "tokenizer", overwrite=True)

    # Through transformers: the DPO implicit reward margin of every training pair, using the
    # exported policy's log-probs and the reference log-probs the run cached.
    tokenizer = load_tokenizer(hf_dir)
    policy = transformers.AutoModelForCausalLM.from_pretrained(hf_dir).eval()
    with np.load(next(run.glob("*.reference-logps.npz"))) as cache:
        ref = dict(zip(cache["ids"].tolist(), zip(cache["ref_chosen"], cache["ref_rejected"])))

    def suffix_logp(trunk: np.ndarray, suffix: np.ndarray) -> float:
        ids = torch.tensor(np.concatenate([trunk, suffix])[None], dtype=torch.long)
        with torch.no_grad():
            logp = torch.log_softmax(policy(ids).logits[0, :-1].float(), -1)
        targets = ids[0, 1:]
        return float(logp[torch.arange(len(targets)), targets][len(trunk) - 1 :].sum())

    margins = []
    for record in read_pair_records(train_config.data.pairs):
        pair = tokenize_pair(tokenizer, record)
        ref_c, ref_r = ref[pair.id]
        margins.append((suffix_logp(pair.trunk, pair.chosen) - ref_c) - (suffix_logp(pair.trunk, pair.rejected) - ref_r))
    margins = np.asarray(margins) * train_config.loss.beta
    first, last = rows[:3], rows[-3:]
    mean = lambda xs, k: float(np.mean([x[k] for x in xs]))  # noqa: E731
    result = dict(
        steps=len(rows),
        loss_first=mean(first, "loss"),
        loss_last=mean(last, "loss"),
        reward_accuracy_first=mean(first, "reward_accuracy"),
        reward_accuracy_last=mean(last, "reward_accuracy"),
        transformers_reward_accuracy=float((margins > 0).mean()),
        transformers_mean_margin=float(margins.mean()),
        hf_dir=str(hf_dir),
    )
    result["ok"] = result["loss_last"] < result["loss_first"] and result["transformers_reward_accuracy"] >= 0.9
    return result


def run_demo(config) -> int:
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"ipo-jax demo: model round trip on {', '.join(config.presets)} ({jax.device_count()} {jax.default_backend()} device(s))")
    start = time.time()
    rows = []
    for name in config.presets:
        t0 = time.time()
        row = _check_preset(name, config, out)
        row["seconds"] = round(time.time() - t0, 2)
        rows.append(row)
        print(f"  {name}: {'ok' if row['ok'] else 'FAILED'} in {row['seconds']:.1f}s")

    header = f"| preset | type | params | max abs logit diff (scale) | greedy {config.new_tokens} tokens = transformers | HF round trip | orbax |"
    lines = [header, "|" + "---|" * 7]
    for r in rows:
        lines.append(
            f"| {r['preset']} | {r['model_type']} | {r['params'] / 1e3:.0f}K | {r['max_logit_diff']:.1e} ({r['logit_scale']:.1f}) "
            f"| {r['greedy_tokens_matching']:.0%} | {'bitwise' if r['hf_round_trip_bitwise'] else 'DIFFERS'} "
            f"| {'exact' if r['orbax_exact'] else 'DIFFERS'} |"
        )
    table = "\n".join(lines)
    print("\n" + table + "\n")
    print(f"\nIPO training on the sample pairs ({config.train_config}) ...")
    trained = _train_and_export(config, out)
    if "steps" in trained:
        train_table = (
            "| steps | loss first -> last | reward accuracy first -> last | exported HF model via transformers: reward accuracy (mean margin) |\n"
            "|---|---|---|---|\n"
            f"| {trained['steps']} | {trained['loss_first']:.3f} -> {trained['loss_last']:.3f} "
            f"| {trained['reward_accuracy_first']:.2f} -> {trained['reward_accuracy_last']:.2f} "
            f"| {trained['transformers_reward_accuracy']:.2f} ({trained['transformers_mean_margin']:.2f}) |"
        )
        print("\n" + train_table + "\n")
        table += "\n\n" + train_table
    (out / "summary.json").write_text(json.dumps({"rows": rows, "training": trained, "seconds": time.time() - start}, indent=2) + "\n")
    (out / "summary.md").write_text(table + "\n")
    print(f"wrote {out / 'summary.md'} and {out / 'summary.json'}; exported HF models under {out}/<preset>/hf;")
    print(f"trained model exported to {trained.get('hf_dir')} (loads with transformers.AutoModelForCausalLM)")
    failed = [r["preset"] for r in rows if not r["ok"]] + ([] if trained["ok"] else ["training"])
    if failed:
        print(f"FAILED: {', '.join(failed)}")
        return 1
    return 0
