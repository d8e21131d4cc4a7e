"""The training loop around the jitted step: data, reference log-probs, checkpoints, metrics, signals.

Output directory (config.train.out):
  config.json           the resolved config of the run
  tokenizer/            the tokenizer used (so the final model exports with it)
  checkpoints/<step>/   orbax: train state (params, optimizer, counters) + data position
  metrics.jsonl         one JSON line per step (appended; after a resume, the re-run steps
                        appear again and the later line for a step is the one that counts;
                        update_applied 0 marks a skipped non-finite step, whose non-finite
                        values are null: every line is strict JSON)
  unreadable_checkpoints/<step>/   damaged checkpoints moved out of the way (see below)
  tensorboard/          event files (tensorboard --logdir <out>/tensorboard)
  skipped_pairs.jsonl   pairs dropped as longer than data.max_length (prompt + prefix + chosen +
                        rejected; never cut), one line each: id, reason, file:line, lengths
  final/                the trained policy as an ipo-jax model directory (convert it to HF
                        with `ipo-jax convert --from orbax --to hf <out>/final <dir>`)

Re-running the same command resumes from the newest complete checkpoint and continues with
exactly the batches and optimizer state an uninterrupted run would have had. A save cut short
by a kill is never read (orbax commits a checkpoint by renaming it into place; the leftover
temporary directory is removed). A checkpoint that does not read back (corrupted or partial
files) is reported, the previous one is used, and the damaged one is moved to
unreadable_checkpoints/<step> (<step>.2, .3, ... when that step was moved aside before); a
checkpoint of another model shape, or a train.out holding a run with other settings
(RUN_IDENTITY) or no run at all, is an error. Every checkpoint records a checksum of each array
(`ipo_jax.checkpoint.orbax.array_checksums`) in its `meta` item; a restored state whose arrays
do not match them (flipped bits that still decode) counts as unreadable. Temporary directories
of a save killed half-way (`.final.tmp-PID`, orbax's) are removed when the run starts again.

The settings are validated (ipo_jax/validation.py) and the pair file read before anything is
written to train.out; a train.out whose run never completed a step may be restarted with other
settings (a rejected start does not block the corrected one).

Exit codes: 0 done; EXIT_PREEMPTED (143) after SIGTERM, with a checkpoint of the step reached;
EXIT_TOO_MANY_SKIPS (3) after train.max_consecutive_skips non-finite steps in a row, with a
checkpoint holding the last good state; EXIT_NOT_TRAINED (4) when the run ends with every update
skipped or with non-finite parameters (no final/ is written); the CLI gives 2 for a
TrainingError or a SettingsError (bad input).
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import shutil
import signal
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx
from tqdm.auto import tqdm

from ipo_jax.checkpoint import save_orbax
from ipo_jax.checkpoint.atomic import remove_stale_temporaries
from ipo_jax.checkpoint.orbax import CHECKSUMS_KEY, array_checksums, checksum_mismatches
from ipo_jax.checkpoint.init import load_model, tokenizer_dir_for
from ipo_jax.data.pairs import (
    PairBatches,
    TokenizedPair,
    default_buckets,
    has_token_ids,
    length_problem,
    pair_length,
    prompt_messages,
    read_pair_sources,
)
from ipo_jax.data.tokenizer import load_tokenizer
from ipo_jax.distributed import all_processes, any_process, barrier, initialize_from_environment, is_main_process
from ipo_jax.io import atomic_write_text
from ipo_jax.loss import LossConfig
from ipo_jax.sharding import make_mesh
from ipo_jax.train import reference as reference_lib
from ipo_jax.train.config import base_config
from ipo_jax.train.mfu import peak_flops_per_device, train_flops_per_token
from ipo_jax.train.step import all_finite
from ipo_jax.validation import validate_settings
from ipo_jax.train.step import (
    OptimConfig,
    batch_shardings,
    check_batch_fits_mesh,
    init_train_state,
    jit_train_step,
    learning_rate_schedule,
    make_optimizer,
    make_train_step,
    put_batch,
)

log = logging.getLogger(__name__)

EXIT_PREEMPTED = 143  # 128 + SIGTERM: schedulers read it as "terminated, may be restarted"
EXIT_TOO_MANY_SKIPS = 3
EXIT_NOT_TRAINED = 4  # every update skipped, or non-finite parameters at the end: no final/ model


class TrainingError(RuntimeError):
    pass


def _tokenizer(config, records, out: Path):
    source = config.tokenizer
    if source == "tiny":  # build a small BPE from the pair texts (tiny CPU runs and tests)
        from ipo_jax.data.tiny_tokenizer import build_tiny_tokenizer

        with_ids = next((r for r in records if has_token_ids(r)), None)
        if with_ids is not None:
            raise TrainingError(
                f"{with_ids['_file']}:{with_ids['_line']} (id {with_ids['id']!r}) carries token ids (prefix_ids ...) of the "
                "tokenizer that sampled it, but tokenizer='tiny' builds a new vocabulary from the texts; set tokenizer to "
                "that tokenizer's directory"
            )

        corpus = []
        for r in records:
            corpus += [m["content"] for m in prompt_messages(r)] + [r["prefix"], r["chosen"], r["rejected"]]
        tokenizer = build_tiny_tokenizer(corpus, vocab_size=config.tiny_tokenizer_vocab)
    else:
        tokenizer = load_tokenizer(tokenizer_dir_for(source, config.model.init))
    if jax.process_index() == 0:
        tokenizer.save_pretrained(out / "tokenizer")
    return tokenizer


def _tokenize(records, tokenizer) -> list[TokenizedPair]:
    """Tokenise through a datasets.Dataset (prompt messages, and the token ids a record carries, as
    JSON, so each column has one type); records with ids keep them (see ipo_jax/data/pairs.py)."""
    import datasets

    from ipo_jax.data.pairs import ID_FIELDS, tokenize_pair

    carried = ID_FIELDS + ("_file", "_line")
    table = datasets.Dataset.from_dict(
        {
            "id": [r["id"] for r in records],
            "messages": [json.dumps(prompt_messages(r)) for r in records],
            "prefix": [r["prefix"] for r in records],
            "chosen": [r["chosen"] for r in records],
            "rejected": [r["rejected"] for r in records],
            "carried": [json.dumps({k: r[k] for k in carried if r.get(k) is not None}) for r in records],
        }
    )

    def encode(row):
        record = {**row, **json.loads(row["carried"]), "prompt": json.loads(row["messages"]), "system": None}
        pair = tokenize_pair(tokenizer, record)
        return {"prompt_tok": pair.prompt, "prefix_tok": pair.prefix, "chosen_tok": pair.chosen, "rejected_tok": pair.rejected}

    table = table.map(encode, remove_columns=["messages", "prefix", "chosen", "rejected", "carried"], desc="tokenize pairs")
    to_np = lambda x: np.asarray(x, np.int32)  # noqa: E731
    return [
        TokenizedPair(row["id"], to_np(row["prompt_tok"]), to_np(row["prefix_tok"]), to_np(row["chosen_tok"]),
                      to_np(row["rejected_tok"]), source=int(record.get("_source", 0)))
        for row, record in zip(table, records)
    ]


def _fit_pairs(pairs, config, out: Path, where: dict[str, str] | None = None):
    """(kept pairs, dropped pairs) under the length rule (ipo_jax/data/pairs.py `fit_to_length`, one
    rule for every layout): a pair whose prompt + prefix + chosen + rejected exceed data.max_length
    is dropped, never cut. Each dropped pair is listed in <out>/skipped_pairs.jsonl with its reason (`length_problem`), its
    lengths and `where` it was read (file:line, by id). More than data.max_dropped_share of the pairs
    dropped, or none left, is a TrainingError naming the longest pair and the setting to raise."""
    if config.data.get("packing") and config.data.layout != "prefix_shared":  # checked before the model loads
        raise TrainingError(f"data.packing needs data.layout 'prefix_shared', got {config.data.layout!r}")
    max_length = config.data.max_length
    limit = config.data.get("max_dropped_share", base_config().data.max_dropped_share)
    kept, dropped = [], []
    for pair in pairs:
        reason = length_problem(pair, max_length)
        if reason is None:
            kept.append(pair)
            continue
        dropped.append({"id": pair.id, "reason": reason, **({"at": where[pair.id]} if where and pair.id in where else {}),
                        "tokens": pair_length(pair), "max_length": max_length, "prompt": len(pair.prompt),
                        "prefix": len(pair.prefix), "chosen": len(pair.chosen), "rejected": len(pair.rejected)})
    path = out / "skipped_pairs.jsonl"
    if jax.process_index() == 0:
        if dropped:
            atomic_write_text(path, "".join(json.dumps(s) + "\n" for s in dropped))
        else:
            path.unlink(missing_ok=True)  # left by an earlier start with a shorter max_length
    share = len(dropped) / len(pairs) if pairs else 0.0
    if dropped and (not kept or share > limit):
        longest = max(dropped, key=lambda s: s["tokens"])
        at = f" ({longest['at']})" if "at" in longest else ""
        why = "every pair would be dropped" if not kept else f"more than data.max_dropped_share {limit:g}"
        raise TrainingError(
            f"{len(dropped)} of {len(pairs)} pairs ({share:.1%}) are longer than data.max_length {max_length} "
            f"and would be dropped ({why}); the longest, {longest['id']!r}{at}, has {longest['tokens']} tokens "
            f"(prompt + prefix + chosen + rejected); raise data.max_length to at least {longest['tokens']} "
            f"(`ipo-jax plan` checks the memory) or data.max_dropped_share; the dropped pairs are listed in {path}"
        )
    return kept, dropped


def _reference_params(spec: str, config, mesh, vocab_needed: int, policy_params):
    """The weights of a reference model other than the initial policy (reference.init), loaded like
    the policy (same mesh and dtypes); it must have the policy's architecture and shapes."""
    m = config.model
    reference = load_model(spec, mesh=mesh, param_dtype=m.param_dtype, dtype=m.dtype, remat=m.remat,
                           attention=m.attention, seed=config.train.seed, vocab_needed=vocab_needed)
    _, ref_params = nnx.split(reference, nnx.Param)
    problems = shape_mismatches(ref_params, policy_params)
    if problems:
        raise TrainingError(f"reference.init {spec!r} is not the policy's architecture ({m.init!r}):\n  "
                            + "\n  ".join(problems[:10]))
    return ref_params


class _Preemption:
    """Turns SIGTERM into a flag the loop checks between steps."""

    def __init__(self):
        self.requested = False
        self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        self.requested = True

    def restore(self):
        signal.signal(signal.SIGTERM, self._previous)


def _summary_writer_class():
    """tensorboardX's SummaryWriter, imported without torch when torch is not loaded yet:
    tensorboardX imports torch (seconds, on every restart of a preempted run) only to recognise
    torch tensors, and this loop logs Python floats. Later `import torch` works as usual."""
    import sys

    if "torch" in sys.modules or "tensorboardX" in sys.modules:
        from tensorboardX import SummaryWriter

        return SummaryWriter
    sys.modules["torch"] = None  # makes `import torch` raise ImportError, as when it is not installed
    try:
        from tensorboardX import SummaryWriter
    finally:
        del sys.modules["torch"]
    return SummaryWriter


def _metrics_writers(out: Path):
    if jax.process_index() != 0:
        return None, None
    return open(out / "metrics.jsonl", "a", buffering=1), _summary_writer_class()(str(out / "tensorboard"))


def _flat_shapes(tree) -> dict[str, tuple]:
    """'params/blocks/mlp/up_proj/kernel' -> (shape, dtype) for every array of a train state or of
    its orbax metadata (where an nnx Variable's array carries a trailing 'value' key, dropped here)."""
    flat = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        keys = [str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path]
        if keys and keys[-1] == "value":
            keys = keys[:-1]
        flat["/".join(keys)] = (tuple(leaf.shape), str(leaf.dtype))
    return flat


def shape_mismatches(metadata_tree, abstract) -> list[str]:
    """What differs between a checkpoint's arrays and this run's train state, by name."""
    stored, wanted = _flat_shapes(metadata_tree), _flat_shapes(abstract)
    problems = [
        f"{name}: the checkpoint has {list(stored[name][0])} {stored[name][1]}, this run's model needs {list(shape)} {dtype}"
        for name, (shape, dtype) in wanted.items() if name in stored and stored[name] != (shape, dtype)
    ]
    problems += [f"{name}: missing from the checkpoint" for name in wanted if name not in stored]
    problems += [f"{name}: in the checkpoint, not in this run's model" for name in stored if name not in wanted]
    return problems


def checkpoint_manager(directory: Path, keep: int, *, asynchronous: bool = True) -> ocp.CheckpointManager:
    """The run's orbax CheckpointManager: <directory>/<step>/{state,meta}.

    orbax logs an error with the file's contents for each damaged checkpoint it lists; those are
    silenced here: `_restore_newest_readable` reports each unreadable checkpoint in one line."""
    with _quiet_orbax():
        return ocp.CheckpointManager(
            Path(directory).absolute(),
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep, enable_async_checkpointing=asynchronous,
                # a save cut short by a kill leaves <step>.orbax-checkpoint-tmp; it is never read, and removed here
                cleanup_tmp_directories=True,
            ),
            # handlers known up front, so a checkpoint's array shapes can be read before restoring it
            item_handlers={"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()},
        )


def _restore_newest_readable(manager, state, state_shardings, position, out: Path, model_init: str = ""):
    """Restore the newest checkpoint that reads back; (state, position, step or None).

    A checkpoint that fails to restore (corrupted or partial files, or contents that contradict
    its step) is reported and the previous one is tried. Once one reads back, the unreadable
    newer ones are moved to <out>/unreadable_checkpoints/<step> -- kept, never deleted -- so later
    saves of those steps do not collide with them. If none reads back, nothing is moved and the
    run stops: a filesystem outage must not turn into a silent restart from step 0.

    A checkpoint whose arrays have other names or shapes than this run's model is not damaged but
    another model's (a changed config or a reused train.out): an error, never a reason to fall back.
    """
    abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, state_shardings)
    unreadable: list[tuple[int, str]] = []
    for step in sorted(manager.all_steps(), reverse=True):
        where = out / "checkpoints" / str(step)
        try:
            with _quiet_orbax():
                metadata = manager.item_metadata(step)["state"]
            problems = shape_mismatches(getattr(metadata, "tree", metadata), abstract) if metadata is not None else []
        except Exception:  # unreadable metadata: the restore below fails too and says why
            problems = []
        if problems:
            shown = "\n  ".join(problems[:10]) + (f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else "")
            raise TrainingError(
                f"checkpoint {where} holds a model of another shape than this run's (model.init {model_init!r}):\n  {shown}\n"
                "resume with the config that wrote it, or choose a new train.out"
            )
        # Several processes each read their own shards: a damaged file may fail on one of them only.
        # Each stage's verdict is agreed before the next (the checksums are a computation over every
        # process's arrays), so all processes restore the same step or all move on to the previous one.
        restored, reason = None, None
        try:
            with _quiet_orbax():
                restored = manager.restore(
                    step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore())
                )
        except Exception as e:  # orbax / tensorstore raise many types for damaged files
            reason = " ".join(f"{type(e).__name__}: {e}".split())[:300]  # one line
        if all_processes(reason is None):
            reason = _contents_problem(restored, step)
            if not all_processes(reason is None) and reason is None:
                reason = "another process found its contents damaged"
        elif reason is None:
            reason = "another process could not read its part of it"
        if reason is not None:
            print(f"checkpoint {where} is unreadable ({reason}); trying the previous one")
            unreadable.append((step, reason))
            continue
        position = restored["meta"]["position"]
        if unreadable and is_main_process():
            for bad, _ in unreadable:
                aside = _unused_path(out / "unreadable_checkpoints" / str(bad))
                aside.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(str(out / "checkpoints" / str(bad)), str(aside))
                print(f"moved unreadable checkpoint {out / 'checkpoints' / str(bad)} to {aside} (kept for inspection)")
        if unreadable:
            barrier("unreadable checkpoints moved")  # no process reloads the directory before they are moved
            manager.reload()
        print(f"resumed from {where} (step {step}, epoch {position['epoch']}, batch {position['batch']})")
        return restored["state"], position, step
    if unreadable:
        listed = "\n  ".join(f"{out / 'checkpoints' / str(s)}: {reason}" for s, reason in unreadable)
        raise TrainingError(
            f"none of the {len(unreadable)} checkpoints in {out / 'checkpoints'} reads back:\n  {listed}\n"
            f"nothing was moved. If the filesystem is healthy and they are really damaged, move "
            f"{out / 'checkpoints'} aside and rerun to start from step 0"
        )
    return state, position, None


def _contents_problem(restored, step: int) -> str | None:
    """Why a restored checkpoint cannot be trusted (its contents contradict its step, or an array's
    checksum differs from the one recorded at save time), or None. Every process calls it."""
    try:
        position = restored["meta"]["position"]
        if int(restored["state"].step) != step or not {"epoch", "batch"} <= set(position):
            return f"ValueError: its contents contradict its step: state.step {int(restored['state'].step)}, position {position}"
    except (KeyError, TypeError) as e:
        return f"{type(e).__name__}: its meta item lacks the data position ({e})"
    recorded = restored["meta"].get(CHECKSUMS_KEY)
    if recorded is None:  # checkpoints written before checksums were recorded have none
        return None
    bad = checksum_mismatches(recorded, restored["state"])
    if bad:
        return f"ValueError: {len(bad)} array(s) differ from the checksums recorded at save time: {'; '.join(bad[:3])}"
    return None


def _unused_path(path: Path) -> Path:
    """`path`, or `path.2`, `path.3`, ... if it is taken (a step moved aside twice is kept twice, side by side)."""
    candidate, n = path, 1
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.name}.{n}")
    return candidate


def _ignore_closed_loop_noise(unraisable) -> None:
    """orbax closes its asyncio loop while tensorstore still reports a damaged read back to it:
    a RuntimeError('Event loop is closed') with no bearing on the outcome, printed as a
    traceback per array. Drop those; everything else goes to Python's default hook."""
    if isinstance(unraisable.exc_value, RuntimeError) and "Event loop is closed" in str(unraisable.exc_value):
        return
    sys.__unraisablehook__(unraisable)


@contextlib.contextmanager
def _quiet_orbax():
    """A restore attempt that may fail: orbax's and absl's own error logs (with tracebacks) are
    silenced -- the loop reports a failed restore in one line of its own."""
    loggers = [logging.getLogger(name) for name in ("absl", "orbax", "orbax.checkpoint")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    sys.unraisablehook = _ignore_closed_loop_noise  # stays: the noise can arrive after the restore returns
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _has_progress(out: Path) -> bool:
    """Whether train.out holds anything a restart would lose: a checkpoint, metrics, a final model."""
    checkpoints = out / "checkpoints"
    return ((checkpoints.is_dir() and any(p.name.isdigit() for p in checkpoints.iterdir()))
            or (out / "metrics.jsonl").is_file() and (out / "metrics.jsonl").stat().st_size > 0
            or (out / "final").exists())


def _drop_partial_metrics_line(path: Path) -> None:
    """A run killed while appending to metrics.jsonl may leave a last line without its newline;
    cut it off (the step is recomputed after the resume) so the file stays one JSON object a line."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    data = path.read_bytes()
    if data.endswith(b"\n"):
        return
    keep = data.rfind(b"\n") + 1
    print(f"{path}: dropping a partial last line of {len(data) - keep} bytes (a killed write); its step is recomputed")
    with open(path, "r+b") as f:
        f.truncate(keep)


# Settings that decide what a run computes: resuming a run with another value of one of them would
# continue someone else's optimisation (other data order, model or loss), so it is refused. Others
# (max_steps, save_every, mesh, buckets, compute dtype, ...) may change between restarts.
RUN_IDENTITY = (
    "model.init", "model.param_dtype", "tokenizer", "tiny_tokenizer_vocab", "data.pairs", "data.layout",
    "data.mask_from", "data.max_length", "data.pairs_per_micro", "data.micro_batches", "data.seed", "data.shuffle", "data.packing",
    "loss", "optim", "reference.mode", "reference.init", "train.seed",
)


def _with_defaults(tree: dict, defaults: dict) -> dict:
    """`tree` with every key it lacks taken from `defaults`, recursively."""
    merged = dict(defaults)
    for key, value in tree.items():
        merged[key] = _with_defaults(value, defaults[key]) if isinstance(value, dict) and isinstance(defaults.get(key), dict) else value
    return merged


def check_output_dir(out: Path, config) -> None:
    """train.out must be new, empty, or a run of this same config (then it is resumed).

    A non-empty directory without a run's config.json is refused (an existing model or data
    directory is never written into); a run whose identity settings differ is refused with the
    fields that differ."""
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
    previous = _with_defaults(previous, json.loads(base_config().to_json_best_effort()))

    def get(tree, dotted):
        for key in dotted.split("."):
            if not isinstance(tree, dict) or key not in tree:
                return "<absent>"
            tree = tree[key]
        return tree

    changed = [f"{field}: was {get(previous, field)!r}, now {get(current, field)!r}"
               for field in RUN_IDENTITY if get(previous, field) != get(current, field)]
    if changed and not _has_progress(out):  # a start that failed before its first step holds nothing to resume
        print(f"train.out {out}: the previous start with other settings never completed a step; starting afresh")
        return
    if changed:
        raise TrainingError(
            f"train.out {out} holds a run with other settings, so it cannot be resumed with these:\n  "
            + "\n  ".join(changed) + "\nrerun with the same settings, or choose a new train.out"
        )


def train(config) -> int:
    """Run (or resume) a training run described by an ml_collections config. Returns the exit code."""
    initialize_from_environment()  # several processes (SLURM, TPU slice, JAX_* variables) or one
    validate_settings("train", config)  # before anything is read or written
    out = Path(config.train.out)
    check_output_dir(out, config)
    mesh = make_mesh(dict(config.mesh))
    records, pair_sources = read_pair_sources(config.data.pairs)
    out.mkdir(parents=True, exist_ok=True)
    if jax.process_index() == 0:
        for leftover in remove_stale_temporaries(out):
            print(f"removed {leftover} (left by a save that was killed)")
        atomic_write_text(out / "config.json", config.to_json_best_effort(indent=2) + "\n")  # never half-written
        _drop_partial_metrics_line(out / "metrics.jsonl")

    tokenizer = _tokenizer(config, records, out)
    # the data is checked before the model is loaded: a bad pair file fails in seconds, not after a 70B load
    where = {r["id"]: f"{r['_file']}:{r['_line']}" for r in records if "_file" in r and "_line" in r}
    pairs, dropped = _fit_pairs(_tokenize(records, tokenizer), config, out, where)
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(collections.Counter(s["reason"] for s in dropped).items()))
    print(
        f"pairs: {len(records)} read, {len(pairs)} used, {len(dropped)} dropped as longer than data.max_length "
        f"{config.data.max_length} (never cut)"
        + (f": {reasons}, {len(dropped) / len(records):.1%} (see {out / 'skipped_pairs.jsonl'})" if dropped else "")
    )
    m = config.model
    model = load_model(m.init, mesh=mesh, param_dtype=m.param_dtype, dtype=m.dtype, remat=m.remat,
                       attention=m.attention, seed=config.train.seed, vocab_needed=len(tokenizer))

    d = config.data
    buckets = list(d.buckets) if d.buckets else default_buckets(d.max_length, steps_per_octave=2)
    batches = PairBatches(pairs, d.pairs_per_micro, d.micro_batches, d.layout, d.mask_from, buckets, d.seed, d.shuffle,
                          packing=d.packing, weights=[s.weight for s in pair_sources])
    print(batches.describe([str(s.path) for s in pair_sources]))
    check_batch_fits_mesh(d.pairs_per_micro * (2 if d.layout == "duplicated" else 1), mesh)
    loss_cfg = LossConfig(**config.loss)
    max_steps = config.train.max_steps or config.train.epochs * batches.batches_per_epoch
    optim_cfg = OptimConfig(**config.optim, total_steps=max_steps)
    chunk = config.train.logprob_chunk

    model_cfg = model.cfg
    graphdef, params = nnx.split(model, nnx.Param)
    on_the_fly = loss_cfg.needs_reference and config.reference.mode == "on_the_fly"
    ref_params, ref_c, ref_r = None, np.zeros(len(pairs), np.float32), np.zeros(len(pairs), np.float32)
    ref_init = config.reference.init or m.init
    reference_params = None  # the frozen reference's weights, when it is not the initial policy
    if loss_cfg.needs_reference and ref_init != m.init:
        reference_params = _reference_params(ref_init, config, mesh, len(tokenizer), params)
        print(f"reference model: {ref_init} (the policy starts from {m.init})")
    if on_the_fly:
        # frozen copy: the policy's buffers are donated
        ref_params = reference_params if reference_params is not None else jax.tree.map(jnp.copy, params)
    elif loss_cfg.needs_reference:
        if config.reference.mode != "precomputed":
            raise TrainingError(f"reference.mode {config.reference.mode!r}: expected 'precomputed' or 'on_the_fly'")
        settings = dict(mask_from=d.mask_from, layout=d.layout, max_length=d.max_length, dtype=config.model.param_dtype,
                        compute=config.model.dtype, tokenizer=len(tokenizer), seed=config.train.seed,
                        **({"packing": True} if d.packing else {}))
        pair_files = [s.path for s in pair_sources]
        key = reference_lib.fingerprint(ref_init, pair_files, settings)
        cache_file = reference_lib.cache_file_for(pair_files, config.reference.cache_dir)
        ref_batches = PairBatches(pairs, d.pairs_per_micro, 1, d.layout, d.mask_from, buckets, shuffle=False, packing=d.packing)
        ref_c, ref_r, cached = reference_lib.load_or_compute(
            cache_file, key, [p.id for p in pairs],
            lambda: reference_lib.compute_reference_logps(
                params if reference_params is None else reference_params, graphdef, ref_batches, mesh, chunk),
        )
        del reference_params  # the cached log-probs are all the precomputed mode keeps of it
        print(f"reference log-probs: {'loaded from' if cached else 'computed and cached in'} {cache_file}")

    tx = make_optimizer(optim_cfg)
    state, state_shardings = init_train_state(params, tx, mesh)
    del model  # the policy now lives in the train state (its buffers were donated)
    ref_shardings = None if ref_params is None else jax.tree.map(lambda x: x.sharding, ref_params)
    step_fn = jit_train_step(
        make_train_step(graphdef, tx, loss_cfg, learning_rate_schedule(optim_cfg), chunk_size=chunk,
                        reference_on_the_fly=on_the_fly, mesh=mesh),
        state_shardings, mesh, ref_shardings,
    )

    manager = checkpoint_manager(out / "checkpoints", config.train.keep_checkpoints)
    position = {"epoch": 0, "batch": 0}
    state, position, latest = _restore_newest_readable(manager, state, state_shardings, position, out, config.model.init)

    def save(step: int):
        meta = {"position": position, "data_seed": d.seed, "model_init": config.model.init,
                CHECKSUMS_KEY: array_checksums(state)}  # verified on restore (flipped bits that still decode)
        manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)))

    shardings = batch_shardings(mesh)
    peak = peak_flops_per_device(config.train.peak_flops_per_device)
    jsonl, board = _metrics_writers(out)
    preemption = _Preemption()
    start = int(state.step)
    progress = tqdm(total=max_steps, initial=start, desc="train", unit="step", disable=None if jax.process_index() == 0 else True)
    exit_code, last_saved = 0, latest
    try:
        for step in range(start, max_steps):
            if position["batch"] >= batches.batches_per_epoch:
                position = {"epoch": position["epoch"] + 1, "batch": 0}
            batch, idx = batches.batch(position["epoch"], position["batch"])
            valid = idx >= 0
            batch["ref_chosen"] = np.where(valid, ref_c[np.maximum(idx, 0)], 0.0).astype(np.float32).reshape(batch["pair_valid"].shape)
            batch["ref_rejected"] = np.where(valid, ref_r[np.maximum(idx, 0)], 0.0).astype(np.float32).reshape(batch["pair_valid"].shape)
            t0 = time.perf_counter()
            state, metrics = step_fn(state, put_batch(batch, shardings), ref_params)
            metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
            seconds = time.perf_counter() - t0
            position = {"epoch": position["epoch"], "batch": position["batch"] + 1}

            tokens = int(batch["segment_ids"].astype(bool).sum())
            context = batch["tokens"].shape[-1]
            flops = tokens * train_flops_per_token(model_cfg, context, on_the_fly)
            metrics.update(step=step + 1, epoch=position["epoch"], tokens=tokens, seconds=seconds, tokens_per_second=tokens / seconds)
            if peak:
                metrics["mfu"] = flops / seconds / (peak * jax.device_count())
            if jsonl is not None:
                # strict JSON: a non-finite value (a skipped step's loss) is written as null, not NaN
                jsonl.write(json.dumps({k: v if np.isfinite(v) else None for k, v in metrics.items()}, allow_nan=False) + "\n")
                for k, v in metrics.items():
                    board.add_scalar(f"train/{k}", v, step + 1)
            progress.update(1)
            progress.set_postfix(
                loss=f"{metrics['loss']:.4f}", acc=f"{metrics['reward_accuracy']:.2f}",
                tok_s=f"{metrics['tokens_per_second']:.0f}", **({"mfu": f"{metrics['mfu']:.1%}"} if peak else {}),
            )
            if not metrics["update_applied"]:
                print(f"step {step + 1}: loss or gradient not finite (loss {metrics['loss']}, grad norm "
                      f"{metrics['grad_norm']}); update skipped ({int(state.consecutive_skips)} in a row, "
                      f"{int(state.skipped)} in all)")
            if int(state.consecutive_skips) >= config.train.max_consecutive_skips:
                save(step + 1)  # skipped updates leave the parameters at the last good state
                last_saved = step + 1
                print(f"stopping: {int(state.consecutive_skips)} consecutive non-finite steps (loss or gradient); "
                      f"last good state saved at step {step + 1} (parameters and optimizer state as after step "
                      f"{step + 1 - int(state.consecutive_skips)}, the last applied update); exit code {EXIT_TOO_MANY_SKIPS}")
                exit_code = EXIT_TOO_MANY_SKIPS
                break
            if any_process(preemption.requested):  # every process stops at the same step, whichever got SIGTERM
                save(step + 1)
                last_saved = step + 1
                print(f"SIGTERM: checkpoint saved at step {step + 1}; exiting with {EXIT_PREEMPTED} (rerun to resume)")
                exit_code = EXIT_PREEMPTED
                break
            if (step + 1) % config.train.save_every == 0 or step + 1 == max_steps:
                save(step + 1)
                last_saved = step + 1
    finally:
        progress.close()
        manager.wait_until_finished()
        preemption.restore()
        if jsonl is not None:
            jsonl.close()
            board.close()

    if exit_code:
        return exit_code
    if last_saved != max_steps and max_steps > start:
        save(max_steps)
        manager.wait_until_finished()
    if int(state.step) > 0 and int(state.skipped) >= int(state.step):
        print(f"not trained: all {int(state.step)} updates were skipped (non-finite loss, gradient or update); "
              f"no final model written; exit code {EXIT_NOT_TRAINED}")
        return EXIT_NOT_TRAINED
    if not bool(all_finite(state.params)):
        print(f"not trained: the parameters are not finite after step {int(state.step)}; "
              f"no final model written; exit code {EXIT_NOT_TRAINED}")
        return EXIT_NOT_TRAINED
    final = nnx.merge(graphdef, state.params)
    save_orbax(final, out / "final", overwrite=True)
    print(f"done: {max_steps} steps, {int(state.skipped)} skipped updates; final model in {out / 'final'}")
    return 0
