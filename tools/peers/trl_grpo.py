"""TRL `GRPOTrainer` on the bench_grpo workload (run with the TRL venv's python; never imported by ipo_jax).

python tools/peers/trl_grpo.py --work runs/bench-grpo --out trl.json

TRL's own training loop runs: `trainer.train()` for warm-up + timed optimizer steps, each one
generation of prompts x G completions (transformers `generate`, KV cache on, `min_new_tokens`
= `max_new_tokens` so every completion has exactly the workload's length), the rule reward,
the frozen reference's log-probs (beta > 0), then the loss, backward and AdamW step. Only the
tokenizer is a placeholder: a word-level vocabulary "<id>" so the workload's token-id prompts
pass through TRL's text interface unchanged (checked below).

Timing, per optimizer step, by wrapping the trainer's methods (calling TRL's code unchanged):
- generate: `_generate` (tokenise the prompts, `generate`, decode);
- score:    the rest of `_generate_and_score_completions` (rewards, advantages, reference
            log-probs; old log-probs when the step is off-policy);
- update:   the rest of the step (TRL's loss forward + backward, clipping, AdamW), i.e. the
            interval between consecutive `on_step_end` callbacks minus the two above.
Writes a JSON record: per-step seconds of each part, TRL's logged metrics per step, versions, and
the model's log-probs of the first prompt's tokens before training (bench_grpo compares them with
ours: the same weights).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from datasets import Dataset
from tokenizers import Tokenizer, pre_tokenizers
from tokenizers.models import WordLevel
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast, TrainerCallback
from trl import GRPOConfig, GRPOTrainer


class TimedGRPOTrainer(GRPOTrainer):
    """GRPOTrainer that records how long its generation and its scoring take (TRL's code unchanged)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.generate_seconds: list[float] = []
        self.rollout_seconds: list[float] = []
        self.completion_lengths: list[list[int]] = []

    def _generate(self, prompts):
        start = time.perf_counter()
        out = super()._generate(prompts)
        self.generate_seconds.append(time.perf_counter() - start)
        self.completion_lengths.append([len(ids) for ids in out[1]])
        return out

    def _generate_and_score_completions(self, inputs):
        start = time.perf_counter()
        out = super()._generate_and_score_completions(inputs)
        self.rollout_seconds.append(time.perf_counter() - start)
        return out


class StepClock(TrainerCallback):
    def __init__(self):
        self.marks, self.logs = [], []

    def on_train_begin(self, args, state, control, **kwargs):
        self.marks.append(time.perf_counter())

    def on_step_end(self, args, state, control, **kwargs):
        self.marks.append(time.perf_counter())

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.logs.append({k: float(v) for k, v in logs.items() if isinstance(v, (int, float))})


def word_tokenizer(vocab_size: int, eos_id: int, pad_id: int) -> PreTrainedTokenizerFast:
    """Token i is the word "<i>" (whitespace-split, no special tokens added), so the text "<5> <9>"
    is the ids [5, 9] and decoding ids gives them back (closed words: the special tokens' words,
    matched anywhere in the text, are never part of another word)."""
    vocab = {word(i): i for i in range(vocab_size)}
    tok = Tokenizer(WordLevel(vocab, unk_token=word(pad_id)))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=word(eos_id), pad_token=word(pad_id),
                                   unk_token=word(pad_id))


def word(i: int) -> str:
    return f"<{i}>"


def even_share_reward(completion_ids, **kwargs) -> list[float]:
    """The workload's rule reward (bench_grpo.rule_reward): the share of even token ids."""
    return [sum(1 for t in ids if t % 2 == 0) / max(len(ids), 1) for ids in completion_ids]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    spec = json.loads((Path(args.work) / "workload.json").read_text())
    w, model_cfg = spec["workload"], spec["model"]
    prompts = json.loads((Path(args.work) / "prompts.json").read_text())
    tokenizer = word_tokenizer(model_cfg["vocab_size"], model_cfg["eos_token_id"], w["pad_id"])
    texts = [" ".join(map(word, p)) for p in prompts]
    if tokenizer(texts[0])["input_ids"] != prompts[0]:
        raise SystemExit("the placeholder tokenizer does not give back the workload's prompt ids")
    steps = w["warmup"] + w["steps"]
    needed = steps * w["prompts_per_step"]
    texts = (texts * -(-needed // len(texts)))[:needed]  # the prompts in file order, one step's worth at a time
    dataset = Dataset.from_dict({"prompt": texts})
    rows = w["prompts_per_step"] * w["num_generations"]

    torch.manual_seed(w["seed"])
    model = AutoModelForCausalLM.from_pretrained(spec["model_dir"], dtype=torch.float32)
    with torch.no_grad():  # the same weights as ours: the log-probs of the first prompt's tokens
        ids = torch.tensor([prompts[0]])
        logits = model(input_ids=ids).logits[0, :-1].float()
        check_logps = torch.log_softmax(logits, -1).gather(-1, ids[0, 1:, None])[:, 0].tolist()
    clock = StepClock()
    with tempfile.TemporaryDirectory() as tmp:
        config = GRPOConfig(
            output_dir=tmp, num_generations=w["num_generations"], per_device_train_batch_size=rows // w["micro_batches"],
            gradient_accumulation_steps=w["micro_batches"], max_steps=steps, max_completion_length=w["completion_tokens"],
            generation_kwargs={"min_new_tokens": w["completion_tokens"]}, temperature=1.0, top_p=1.0, top_k=0,
            beta=w["beta"], loss_type=w["loss_type"], epsilon=w["epsilon"], scale_rewards="group",
            mask_truncated_completions=False, shuffle_dataset=False, num_iterations=1,
            learning_rate=w["learning_rate"], lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
            adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8, max_grad_norm=w["clip_norm"],
            use_cpu=True, bf16=False, fp16=False, logging_steps=1, report_to="none", save_strategy="no",
            disable_tqdm=True, seed=w["seed"], dataloader_num_workers=0, log_completions=False,
            gradient_checkpointing=w["trl_gradient_checkpointing"],
        )
        trainer = TimedGRPOTrainer(model=model, reward_funcs=even_share_reward, args=config, train_dataset=dataset,
                                   processing_class=tokenizer, callbacks=[clock])
        trainer.train()
    totals = [b - a for a, b in zip(clock.marks, clock.marks[1:])]
    gen, rollout = trainer.generate_seconds, trainer.rollout_seconds
    if not (len(totals) == len(gen) == len(rollout) == steps):
        raise SystemExit(f"expected {steps} steps, generations and rollouts; got {len(totals)}, {len(gen)}, "
                         f"{len(rollout)}")
    lengths, k = trainer.completion_lengths, w["warmup"]  # the first k steps are warm-up: reported apart
    result = dict(
        implementation="trl", warmup_seconds=totals[:k], step_seconds=totals[k:], generate_seconds=gen[k:],
        score_seconds=[r - g for r, g in zip(rollout[k:], gen[k:])],
        update_seconds=[t - r for t, r in zip(totals[k:], rollout[k:])],
        completion_tokens=[sum(x) for x in lengths], min_completion_length=min(min(x) for x in lengths),
        logs=clock.logs, check_logps=check_logps, torch_threads=torch.get_num_threads(),
        versions=dict(torch=torch.__version__, trl=__import__("trl").__version__,
                      transformers=__import__("transformers").__version__),
    )
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"trl: step seconds {[round(t, 2) for t in totals]}, generate {[round(t, 2) for t in gen]}")


if __name__ == "__main__":
    main()
