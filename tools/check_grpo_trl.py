"""Our GRPO loss (ipo_jax/loss/grpo.py) against TRL's `GRPOTrainer` on identical tensors.

Run with a venv that has TRL, torch and jax (never imported by ipo_jax), from the repository root:

  python3 -m venv /tmp/trlvenv
  /tmp/trlvenv/bin/pip install -c tools/peers/trl-constraints.txt trl torch==2.13.0 jax flax
  /tmp/trlvenv/bin/python tools/check_grpo_trl.py [--json result.json]

TRL's own code computes TRL's numbers; only its model and its sampler are replaced:
- advantages: `GRPOTrainer._generate_and_score_completions`, with `_generate` returning fixed
  token ids and `_calculate_rewards` fixed rewards (3 prompts x 4 completions, one group with
  equal rewards), per scale_rewards;
- loss, d loss / d logp and the logged metrics (kl, clip_ratio/low_mean, high_mean,
  region_mean): `GRPOTrainer._compute_loss` in train mode, with
  `_get_per_token_logps_and_entropies` returning fixed float32 log-probs (a leaf that collects
  the gradient), per loss_type, beta and clip range; one case puts a token's ratio exactly on
  the upper clip bound; the micro-batch cases run TRL with gradient accumulation 2 on half the
  batch against ours with the whole batch's totals (bnpo: ours / 2, TRL's local normalisation).
A tiny Llama built from a config stands in for the model (TRL builds the reference from it
when beta > 0); its forward pass is never used for the numbers.

Prints the max abs difference per case (float32 on both sides) and exits 1 if one exceeds TOLERANCE.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import warnings
from pathlib import Path

import datasets
import numpy as np
import torch
import transformers
from datasets import Dataset
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
from trl import GRPOConfig, GRPOTrainer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import jax
import jax.numpy as jnp

from ipo_jax.loss.grpo import GRPOLossConfig, average_grpo_metrics, group_advantages, grpo_loss

PROMPTS, G, T, VOCAB = 3, 4, 7, 16
# float32 on both sides, values of size ~1: a few ulps of the largest term
TOLERANCE = 2e-6
TRL_METRICS = {"kl": "kl", "clip_low": "clip_ratio/low_mean", "clip_high": "clip_ratio/high_mean",
               "clip_region": "clip_ratio/region_mean"}


class FixedTensorsGRPOTrainer(GRPOTrainer):
    """GRPOTrainer whose sampler, reward functions and model forward return given tensors."""

    fixed: dict | None = None  # the tensors to return, set on the instance before each call

    def _generate(self, prompts):
        f = self.fixed
        completions = ["c"] * len(prompts)
        return f["prompt_ids"], f["completion_ids"], None, completions, None, {}, None, []

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        return torch.tensor(self.fixed["rewards"], dtype=torch.float32).reshape(-1, 1)

    def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep, **kwargs):
        logps = self.fixed["logps"]
        return logps, torch.zeros_like(logps), None


def tiny_model_dir(root: Path) -> str:
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
                         bos_token_id=1, eos_token_id=2, pad_token_id=0)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(root / "tiny")
    return str(root / "tiny")


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {"<pad>": 0, "<bos>": 1, "<eos>": 2, **{f"w{i}": i for i in range(3, VOCAB)}}
    tok = Tokenizer(WordLevel(vocab, unk_token="<pad>"))
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<pad>", bos_token="<bos>")


def make_trainer(model_dir, work, accumulation=1, **settings) -> FixedTensorsGRPOTrainer:
    args = GRPOConfig(
        output_dir=str(work / "out"), num_generations=G, per_device_train_batch_size=PROMPTS * G // accumulation,
        gradient_accumulation_steps=accumulation, max_completion_length=T, use_cpu=True, bf16=False, fp16=False,
        report_to="none", save_strategy="no", disable_tqdm=True, seed=0, logging_steps=1, **settings)
    dataset = Dataset.from_dict({"prompt": [f"w{3 + i}" for i in range(PROMPTS)]})
    trainer = FixedTensorsGRPOTrainer(model=model_dir, reward_funcs=lambda completions, **kw: [0.0] * len(completions),
                                      args=args, train_dataset=dataset, processing_class=tiny_tokenizer())
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = accumulation
    return trainer


def make_batch(seed=0):
    rng = np.random.RandomState(seed)
    rewards = rng.choice([0.0, 0.5, 1.0, 2.0], size=(PROMPTS, G)).astype(np.float32)
    rewards[2] = 1.0  # a group with equal rewards: advantage 0
    rows = PROMPTS * G
    lp = (-rng.uniform(0.05, 4.0, (rows, T))).astype(np.float32)
    old = (lp - rng.uniform(-0.6, 0.6, (rows, T))).astype(np.float32)
    ref = (lp + rng.normal(0.0, 0.5, (rows, T))).astype(np.float32)
    lengths = rng.randint(2, T + 1, rows)
    lengths[5] = 0  # no loss token
    lengths[0] = T
    mask = np.arange(T)[None, :] < lengths[:, None]
    return rewards, lp, old, ref, mask


def trl_advantages(model_dir, work, rewards, scale_rewards):
    trainer = make_trainer(model_dir, work, scale_rewards=scale_rewards)
    trainer.fixed = dict(rewards=rewards, prompt_ids=[[1, 3 + p] for p in range(PROMPTS) for _ in range(G)],
                         completion_ids=[[4, 5, 2]] * (PROMPTS * G))
    inputs = [{"prompt": f"w{3 + p}"} for p in range(PROMPTS) for _ in range(G)]
    return trainer._generate_and_score_completions(inputs)["advantages"].numpy()


def trl_loss(trainer, lp, old, ref, adv, mask, num_items):
    logps = torch.tensor(lp, requires_grad=True)
    trainer.fixed = dict(logps=logps)
    rows = lp.shape[0]
    prompt = torch.ones((rows, 2), dtype=torch.long)
    inputs = dict(prompt_ids=prompt, prompt_mask=prompt, completion_ids=torch.full((rows, T), 4, dtype=torch.long),
                  completion_mask=torch.tensor(mask.astype(np.int64)), advantages=torch.tensor(adv),
                  old_per_token_logps=torch.tensor(old), ref_per_token_logps=torch.tensor(ref),
                  num_items_in_batch=torch.tensor(float(num_items)))
    trainer._metrics["train"].clear()
    loss = trainer._compute_loss(trainer.model, inputs)
    loss.backward()
    metrics = {ours: trainer._metrics["train"][theirs][-1] for ours, theirs in TRL_METRICS.items()
               if trainer._metrics["train"].get(theirs)}
    return loss.item(), logps.grad.numpy(), metrics


def our_loss(cfg, lp, old, ref, adv, mask, **totals):
    def loss(x):
        return grpo_loss(x, jnp.asarray(old), jnp.asarray(ref), jnp.asarray(adv), jnp.asarray(mask), cfg, **totals)

    (value, sums), grad = jax.value_and_grad(loss, has_aux=True)(jnp.asarray(lp))
    means = average_grpo_metrics(sums)
    return float(value), np.asarray(grad), {k: float(means[k]) for k in TRL_METRICS if k in means}


def compare(name, trl, ours, scale=1.0):
    (trl_value, trl_grad, trl_metrics), (value, grad, metrics) = trl, ours
    diffs = {"loss": abs(trl_value - value * scale), "grad": float(np.abs(trl_grad - grad * scale).max())}
    for key, theirs in trl_metrics.items():
        diffs[key] = abs(theirs - metrics[key])
    return dict(case=name, loss=trl_value, **{f"diff_{k}": v for k, v in diffs.items()})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()
    warnings.filterwarnings("ignore")  # TRL's notes on the settings chosen here (tiny model, CPU, no vLLM)
    rewards, lp, old, ref, mask = make_batch()
    results, adv_rows = [], []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model_dir = tiny_model_dir(work)
        for scale in ("group", "batch", "none"):
            theirs = trl_advantages(model_dir, work, rewards, scale)
            ours = np.asarray(group_advantages(jnp.asarray(rewards), scale)).reshape(-1)
            adv_rows.append(dict(case=f"advantages scale_rewards={scale}", diff=float(np.abs(theirs - ours).max()),
                                 max_abs=float(np.abs(theirs).max())))
        adv = np.asarray(group_advantages(jnp.asarray(rewards))).reshape(-1).astype(np.float32)
        tokens = int(mask.sum())

        cases = []
        for loss_type in ("grpo", "bnpo", "dr_grpo", "dapo"):
            for beta in (0.0, 0.04):
                for eps_low, eps_high in ((0.2, 0.2), (0.2, 0.28)):
                    cases.append((f"{loss_type} beta={beta} eps=({eps_low},{eps_high})", loss_type, beta, eps_low,
                                  eps_high, True))
            cases.append((f"{loss_type} beta=0.04, KL without the ratio", loss_type, 0.04, 0.2, 0.2, False))
        # a token exactly on the upper bound: eps_high from the ratio torch computes for a token with
        # A > 0 and rho in (1.05, 1.5) (XLA's exp has to give the same float32 for it to be exact here too)
        ratio = np.asarray(torch.exp(torch.tensor(lp) - torch.tensor(old)))
        candidates = np.argwhere(mask & (adv[:, None] > 0) & (ratio > 1.05) & (ratio < 1.5))
        if len(candidates):
            row, slot = candidates[0]
            edge_ratio = float(ratio[row, slot])
            jax_ratio = float(jnp.exp(jnp.asarray(lp[row, slot]) - jnp.asarray(old[row, slot])))
            cases.append((f"bnpo, one ratio on the bound (XLA's rho the same bits: {edge_ratio == jax_ratio})",
                          "bnpo", 0.0, 0.2, edge_ratio - 1.0, True))
        for name, loss_type, beta, eps_low, eps_high, kl_correction in cases:
            trainer = make_trainer(model_dir, work, loss_type=loss_type, beta=beta, epsilon=eps_low,
                                   epsilon_high=eps_high, use_bias_correction_kl=kl_correction)
            cfg = GRPOLossConfig(loss_type=loss_type, beta=beta, epsilon_low=eps_low, epsilon_high=eps_high,
                                 max_completion_length=T, kl_bias_correction=kl_correction)
            results.append(compare(name, trl_loss(trainer, lp, old, ref, adv, mask, tokens),
                                   our_loss(cfg, lp, old, ref, adv, mask)))

        # micro-batches: TRL with gradient accumulation 2 on the first half; ours with the whole batch's totals
        half = slice(0, PROMPTS * G // 2)
        for loss_type in ("grpo", "bnpo", "dr_grpo", "dapo"):
            trainer = make_trainer(model_dir, work, accumulation=2, loss_type=loss_type, beta=0.04)
            cfg = GRPOLossConfig(loss_type=loss_type, beta=0.04, max_completion_length=T)
            theirs = trl_loss(trainer, lp[half], old[half], ref[half], adv[half], mask[half], tokens)
            ours = our_loss(cfg, lp[half], old[half], ref[half], adv[half], mask[half],
                            total_sequences=PROMPTS * G, total_tokens=tokens)
            results.append(compare(f"{loss_type} beta=0.04, micro-batch 1 of 2", theirs, ours,
                                   scale=0.5 if loss_type == "bnpo" else 1.0))

    import trl
    versions = dict(trl=trl.__version__, torch=torch.__version__, jax=jax.__version__)
    print("versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    for row in adv_rows:
        print(f"{row['case']:<60} max |TRL - ours| {row['diff']:.2e}  (max |A| {row['max_abs']:.3f})")
    keys = ["diff_loss", "diff_grad", "diff_kl", "diff_clip_low", "diff_clip_high", "diff_clip_region"]
    print(f"{'case':<60} {'TRL loss':>10} " + " ".join(f"{k[5:]:>11}" for k in keys))
    worst = max([r["diff"] for r in adv_rows] + [r[k] for r in results for k in keys if k in r])
    for r in results:
        print(f"{r['case']:<60} {r['loss']:>10.6f} " + " ".join(f"{r[k]:>11.2e}" if k in r else f"{'-':>11}"
                                                                  for k in keys))
    verdict = "PASS" if worst <= TOLERANCE else "FAIL"
    print(f"{verdict}: largest difference {worst:.2e} (tolerance {TOLERANCE:.0e}, float32 on both sides)")
    if args.json:
        Path(args.json).write_text(json.dumps(dict(versions=versions, advantages=adv_rows, loss=results,
                                                   worst=worst, tolerance=TOLERANCE), indent=1) + "\n")
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
