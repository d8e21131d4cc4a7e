"""A run's output directory (config.train.out): whether it may be used, and the files written once
the run has passed every check (config.json, tokenizer/, skipped_pairs.jsonl).

train.out must be new, empty, or a run of this same config (then it is resumed): a non-empty
directory without a run's config.json is refused (an existing model or data directory is never
written into); a run whose RUN_IDENTITY settings differ is refused with the fields that differ,
unless it never completed a step (a rejected or killed start does not block the corrected one).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import jax

from ipo_jax.checkpoint.atomic import remove_stale_temporaries
from ipo_jax.io import atomic_write_text
from ipo_jax.train.config import base_config
from ipo_jax.train.errors import TrainingError

log = logging.getLogger(__name__)

SKIPPED_PAIRS_FILE = "skipped_pairs.jsonl"

# Settings that decide what a run computes: resuming a run with another value of one of them would
# continue someone else's optimisation (other data order, model or loss), so it is refused. Others
# (max_steps, save_every, mesh, buckets, compute dtype, ...) may change between restarts.
RUN_IDENTITY = (
    "model.init", "model.param_dtype", "tokenizer", "tiny_tokenizer_vocab", "data.pairs", "data.layout",
    "data.mask_from", "data.max_length", "data.pairs_per_micro", "data.micro_batches", "data.seed", "data.shuffle", "data.packing",
    "loss", "optim", "reference.mode", "reference.init", "train.seed",
)


def _has_progress(out: Path) -> bool:
    """Whether train.out holds anything a restart would lose: a checkpoint, metrics, a final model."""
    checkpoints = out / "checkpoints"
    return ((checkpoints.is_dir() and any(p.name.isdigit() for p in checkpoints.iterdir()))
            or (out / "metrics.jsonl").is_file() and (out / "metrics.jsonl").stat().st_size > 0
            or (out / "final").exists())


def _with_defaults(tree: dict, defaults: dict) -> dict:
    """`tree` with every key it lacks taken from `defaults`, recursively."""
    merged = dict(defaults)
    for key, value in tree.items():
        merged[key] = _with_defaults(value, defaults[key]) if isinstance(value, dict) and isinstance(defaults.get(key), dict) else value
    return merged


def _setting(tree, dotted: str):
    for key in dotted.split("."):
        if not isinstance(tree, dict) or key not in tree:
            return "<absent>"
        tree = tree[key]
    return tree


def check_output_dir(out: Path, config, *, identity: tuple[str, ...] = RUN_IDENTITY, defaults=None) -> None:
    """train.out must be new, empty, or a run of this same config (see the module doc). Another
    stage that writes runs the same way (ipo_jax/sft/) passes its own `identity` settings and its
    `defaults` (the ConfigDict a setting added later takes its old value from)."""
    # our own temporary config (a start killed before the rename, or process 0 of a multi-host
    # run writing it while another process checks) does not make the directory someone else's
    if not out.exists() or not [p for p in out.iterdir() if not p.name.startswith(".config.json.tmp")]:
        return
    previous_file = out / "config.json"
    if not previous_file.is_file():
        raise TrainingError(
            f"train.out {out} is not empty and holds no ipo-jax training run (no config.json); "
            "choose a new or empty directory"
        )
    try:
        previous = json.loads(previous_file.read_text())
    except json.JSONDecodeError as e:
        raise TrainingError(f"{previous_file}: not valid JSON ({e}); is {out} a training run of ipo-jax?") from None
    current = json.loads(config.to_json_best_effort())
    # a setting added after the run started (its config.json lacks it) had its default then
    previous = _with_defaults(previous, json.loads((defaults or base_config()).to_json_best_effort()))
    changed = [f"{field}: was {_setting(previous, field)!r}, now {_setting(current, field)!r}"
               for field in identity if _setting(previous, field) != _setting(current, field)]
    if changed and not _has_progress(out):  # a start that failed before its first step holds nothing to resume
        log.info("train.out %s: the previous start with other settings never completed a step; starting afresh", out)
        return
    if changed:
        raise TrainingError(
            f"train.out {out} holds a run with other settings, so it cannot be resumed with these:\n  "
            + "\n  ".join(changed) + "\nrerun with the same settings, or choose a new train.out"
        )


def write_run_files(out: Path, config, tokenizer, dropped: list[dict]) -> None:
    """Create train.out (process 0): leftovers of killed saves removed, config.json (never
    half-written), tokenizer/ (so the final model exports with it), skipped_pairs.jsonl (the
    pairs the length rule dropped; removed when none are, as an earlier start may have left it)."""
    out.mkdir(parents=True, exist_ok=True)
    if jax.process_index() != 0:
        return
    for leftover in remove_stale_temporaries(out):
        log.info("removed %s (left by a save that was killed)", leftover)
    atomic_write_text(out / "config.json", config.to_json_best_effort(indent=2) + "\n")
    tokenizer.save_pretrained(out / "tokenizer")
    write_skipped_pairs(out / SKIPPED_PAIRS_FILE, dropped)


def write_skipped_pairs(path: Path, dropped: list[dict]) -> None:
    """One JSON line per dropped pair (see `ipo_jax.train.data.fit_pairs`); no file when none."""
    if dropped:
        atomic_write_text(path, "".join(json.dumps(s) + "\n" for s in dropped))
    else:
        path.unlink(missing_ok=True)  # left by an earlier start with a shorter max_length
