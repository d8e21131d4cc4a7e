"""TRL `DPOTrainer` on the bench_train workload (run with the TRL venv's python, never imported by ipo_jax).

python tools/peers/trl_dpo.py --work runs/bench-train --reference precomputed --warmup 1 --steps 4 --out r.json

The pairs are token ids already, so TRL's text tokenisation is bypassed (`_prepare_dataset`
returns them as they are; it is not part of a step either way); prompt = prompt + reasoning
prefix (the trunk), completion = the suffix after the cue. Objective: loss_type
["sigmoid", "sft"] with weights [1, alpha]; AdamW at a constant rate, clipping at norm 1, the
pairs in file order (train_sampling_strategy "sequential"), float32 on the CPU.

A step's time is the interval between consecutive `on_step_end` callbacks (the first from
`on_train_begin`), so it includes collation, forward, backward, the optimizer and logging.
Writes a JSON record with the step times, per-step losses and the reference pass time.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from datasets import Dataset
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast, TrainerCallback
from trl import DPOConfig, DPOTrainer


class PreTokenizedDPOTrainer(DPOTrainer):
    """DPOTrainer fed token ids directly (prompt_ids / chosen_ids / rejected_ids columns)."""

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        return dataset

    def _precompute_ref_logps(self, dataset, name, batch_size):
        start = time.perf_counter()
        out = super()._precompute_ref_logps(dataset, name, batch_size)
        self.reference_seconds = time.perf_counter() - start
        return out


class StepClock(TrainerCallback):
    def __init__(self):
        self.marks, self.losses, self.learning_rates = [], [], []

    def on_train_begin(self, args, state, control, **kwargs):
        self.marks.append(time.perf_counter())

    def on_step_end(self, args, state, control, **kwargs):
        self.marks.append(time.perf_counter())

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.losses.append(float(logs["loss"]))
            self.learning_rates.append(float(logs.get("learning_rate", float("nan"))))


def placeholder_tokenizer(eos_id: int, pad_id: int) -> PreTrainedTokenizerFast:
    """Only the collator's pad id and the trainer's eos / pad names are used (the ids are given)."""
    vocab = {"<unk>": 0, "<eos>": eos_id, "<pad>": pad_id}
    tok = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<pad>", unk_token="<unk>")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", required=True)
    parser.add_argument("--reference", choices=["precomputed", "on_the_fly"], required=True)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    work = Path(args.work)
    spec = json.loads((work / "workload.json").read_text())
    w = spec["settings"]["workload"]
    records = json.loads((work / "pairs.json").read_text())
    total = args.warmup + args.steps
    n_pairs = total * w["pairs_per_step"]
    records = (records * (-(-n_pairs // len(records))))[:n_pairs]
    dataset = Dataset.from_list([
        dict(prompt_ids=r["prompt_ids"] + r["prefix_ids"], chosen_ids=r["chosen_ids"], rejected_ids=r["rejected_ids"])
        for r in records
    ])

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(spec["model_dir"], dtype=torch.float32)
    ref_model = AutoModelForCausalLM.from_pretrained(spec["model_dir"], dtype=torch.float32)
    clock = StepClock()
    with tempfile.TemporaryDirectory() as tmp:
        config = DPOConfig(
            output_dir=tmp, per_device_train_batch_size=w["pairs_per_step"], max_steps=total,
            learning_rate=w["learning_rate"], lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
            adam_beta1=w["b1"], adam_beta2=w["b2"], adam_epsilon=w["eps"], max_grad_norm=w["clip_norm"],
            beta=w["beta"], loss_type=["sigmoid", "sft"], loss_weights=[1.0, w["alpha"]],
            precompute_ref_log_probs=args.reference == "precomputed", max_length=None,
            train_sampling_strategy="sequential", use_cpu=True, bf16=False, fp16=False,
            logging_steps=1, report_to="none", save_strategy="no", disable_tqdm=True, seed=0,
            dataloader_num_workers=0,
        )
        trainer = PreTokenizedDPOTrainer(
            model=model, ref_model=ref_model, args=config, train_dataset=dataset,
            processing_class=placeholder_tokenizer(eos_id=spec["settings"]["model"]["eos_token_id"], pad_id=0),
            callbacks=[clock],
        )
        trainer.train()
    times = [b - a for a, b in zip(clock.marks, clock.marks[1:])]
    reference_seconds = getattr(trainer, "reference_seconds", 0.0)
    result = dict(
        implementation="trl", layout="duplicated", reference=args.reference,
        step_seconds=times[args.warmup:], compile_seconds=times[0] if times else 0.0,
        losses=clock.losses, learning_rates=clock.learning_rates,
        reference_seconds_per_pair=reference_seconds / max(len(records), 1),
        torch_threads=torch.get_num_threads(), versions=dict(torch=torch.__version__, trl=__import__("trl").__version__),
    )
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"trl ({args.reference}): step seconds {[round(t, 3) for t in times]}, losses {clock.losses}")


if __name__ == "__main__":
    main()
