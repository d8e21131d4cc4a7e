"""The frozen reference of a run (`build_reference`): nothing (a loss without one), its weights run
beside the policy in every step (reference.mode 'on_the_fly'), or its log-probs per pair
computed once (reference.mode 'precomputed'). The reference is the initial policy unless
reference.init names another model of the same architecture.

Precomputed log-probs: one jitted, sharded forward pass of the frozen reference over all
pairs, cached beside the pair file(s) and keyed by a fingerprint of everything they depend on
(reference checkpoint files, every pair file's contents, tokenisation and mask settings), so a
stale cache is detected and recomputed rather than silently reused.

Cache file (`cache_file_for`): <dir>/<pair file name>.reference-logps.npz for one pair file;
for several (data.pairs 'a.jsonl,b.jsonl:0.5') <dir>/<stem>+<stem>...-<hash>.reference-logps.npz,
the hash over the files' resolved paths (weights do not change the per-pair log-probs, each
pair is computed once). <dir> is reference.cache_dir or the first file's directory.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
from pathlib import Path
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec
from tqdm.auto import tqdm

from ipo_jax.checkpoint.init import load_model
from ipo_jax.data.pairs import PairBatches
from ipo_jax.io import atomic_write_bytes
from ipo_jax.loss import LossConfig
from ipo_jax.train.checkpoints import shape_mismatches
from ipo_jax.train.data import TrainData
from ipo_jax.train.errors import TrainingError
from ipo_jax.train.step import batch_shardings, policy_pair_logps, put_batch

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Reference:
    """What the train step needs of the frozen reference."""

    params: Any | None  # on the fly: the reference's weights, passed to every step; else None
    chosen: np.ndarray  # precomputed: summed log-probs of each pair's chosen side (dataset order); else zeros
    rejected: np.ndarray

    @property
    def on_the_fly(self) -> bool:
        return self.params is not None

    def shardings(self):
        return None if self.params is None else jax.tree.map(lambda x: x.sharding, self.params)

    def batch_fields(self, idx: np.ndarray, shape: tuple[int, ...]) -> dict[str, np.ndarray]:
        """ref_chosen / ref_rejected of a batch whose pairs are `idx` (-1: a padding pair, 0)."""
        valid = idx >= 0
        pick = lambda values: np.where(valid, values[np.maximum(idx, 0)], 0.0).astype(np.float32).reshape(shape)  # noqa: E731
        return {"ref_chosen": pick(self.chosen), "ref_rejected": pick(self.rejected)}


def build_reference(config, loss_cfg: LossConfig, data: TrainData, mesh, graphdef, params) -> Reference:
    """The run's reference (see the module doc). `params` are the initial policy's; an on-the-fly
    reference that is the initial policy gets a copy of them (the policy's buffers are donated)."""
    none = np.zeros(len(data.pairs), np.float32)
    if not loss_cfg.needs_reference:
        return Reference(None, none, none)
    mode, init = config.reference.mode, config.reference.init or config.model.init
    if mode not in ("on_the_fly", "precomputed"):
        raise TrainingError(f"reference.mode {mode!r}: expected 'precomputed' or 'on_the_fly'")
    other = None
    if init != config.model.init:
        other = _reference_params(init, config, mesh, len(data.tokenizer), params)
        log.info("reference model: %s (the policy starts from %s)", init, config.model.init)
    if mode == "on_the_fly":
        return Reference(other if other is not None else jax.tree.map(jnp.copy, params), none, none)
    chosen, rejected = _precomputed(config, data, mesh, graphdef, params if other is None else other, init)
    return Reference(None, chosen, rejected)


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


def _precomputed(config, data: TrainData, mesh, graphdef, params, init: str) -> tuple[np.ndarray, np.ndarray]:
    """Every pair's reference log-probs, from the cache when it matches (else computed and cached)."""
    d = config.data
    settings = dict(mask_from=d.mask_from, layout=d.layout, max_length=d.max_length, dtype=config.model.param_dtype,
                    compute=config.model.dtype, tokenizer=len(data.tokenizer), seed=config.train.seed,
                    **({"packing": True} if d.packing else {}))
    pair_files = [s.path for s in data.sources]
    cache_file = cache_file_for(pair_files, config.reference.cache_dir)
    batches = PairBatches(data.pairs, d.pairs_per_micro, 1, d.layout, d.mask_from, data.buckets, shuffle=False,
                          packing=d.packing)
    chosen, rejected, cached = load_or_compute(
        cache_file, fingerprint(init, pair_files, settings), [p.id for p in data.pairs],
        lambda: compute_reference_logps(params, graphdef, batches, mesh, config.train.logprob_chunk),
    )
    log.info("reference log-probs: %s %s", "loaded from" if cached else "computed and cached in", cache_file)
    return chosen, rejected


def fingerprint(init: str, pairs_file: str | Path | Sequence[str | Path], settings: dict) -> str:
    """sha256 over the reference checkpoint's files (name, size, mtime), the bytes of every pair
    file (one path or several, in order) and the settings that change the numbers (mask start,
    max_length: which pairs are kept, dtype, tokenizer, packing)."""
    files = [pairs_file] if isinstance(pairs_file, (str, Path)) else list(pairs_file)
    h = hashlib.sha256()
    h.update(json.dumps({"init": init, **settings}, sort_keys=True, default=str).encode())
    kind, _, location = init.partition(":")
    if kind in ("hf", "orbax"):
        root = Path(location)
        for f in sorted(p for p in root.rglob("*") if p.is_file()):
            stat = f.stat()
            h.update(f"{f.relative_to(root)}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    if len(files) == 1:
        h.update(Path(files[0]).read_bytes())  # as before several files were allowed: old caches stay valid
    else:
        for f in files:  # length-prefixed, so moving bytes from one file to the next changes the key
            data = Path(f).read_bytes()
            h.update(f"{len(data)}:".encode() + data)
    return h.hexdigest()


def cache_file_for(pair_files: Sequence[str | Path], cache_dir: str | Path = "") -> Path:
    """Where the reference log-probs of these pair files are cached (see the module doc)."""
    files = [Path(f) for f in pair_files]
    directory = Path(cache_dir) if cache_dir else files[0].parent
    if len(files) == 1:
        return directory / f"{files[0].name}.reference-logps.npz"
    digest = hashlib.sha256("\n".join(str(f.resolve()) for f in files).encode()).hexdigest()[:12]
    stems = "+".join(f.stem for f in files)[:80]
    return directory / f"{stems}-{digest}.reference-logps.npz"


def compute_reference_logps(params, graphdef, batches: PairBatches, mesh, chunk_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Summed log-probs of chosen and rejected for every pair, in dataset order."""
    shardings = batch_shardings(mesh)
    row_sharding = NamedSharding(mesh, PartitionSpec(shardings["tokens"].spec[1], None, None))

    def forward(p, batch):
        mb = jax.tree.map(lambda x: x[0], batch)  # reference batches have one micro-batch
        logp_c, logp_r, _, _ = policy_pair_logps(p, graphdef, mb, chunk_size, row_sharding)
        return logp_c, logp_r

    keys = [k for k in shardings if k not in ("ref_chosen", "ref_rejected")]
    shardings = {k: shardings[k] for k in keys}
    forward = jax.jit(forward)
    ref_c = np.zeros(len(batches.pairs), np.float32)
    ref_r = np.zeros(len(batches.pairs), np.float32)
    for index in tqdm(range(batches.batches_per_epoch), desc="reference log-probs", unit="batch", disable=None):
        batch, idx = batches.batch(0, index)
        c, r = jax.device_get(forward(params, put_batch({k: batch[k] for k in keys}, shardings)))
        c, r = np.asarray(c).reshape(-1), np.asarray(r).reshape(-1)
        ref_c[idx[idx >= 0]] = c[idx >= 0]
        ref_r[idx[idx >= 0]] = r[idx >= 0]
    return ref_c, ref_r


def load_or_compute(cache_file: Path, key: str, ids: list[str], compute) -> tuple[np.ndarray, np.ndarray, bool]:
    """(ref_chosen, ref_rejected, from_cache). The cache holds the key and pair ids; any mismatch recomputes."""
    if cache_file.is_file():
        with np.load(cache_file, allow_pickle=False) as z:
            if str(z["key"]) == key and list(z["ids"]) == ids:
                return z["ref_chosen"], z["ref_rejected"], True
        log.warning("reference log-prob cache %s is stale (different checkpoint, pairs or settings); recomputing", cache_file)
    ref_c, ref_r = compute()
    if jax.process_index() == 0:
        cache_file.parent.mkdir(parents=True, exist_ok=True)  # reference.cache_dir may name a new directory
        buffer = io.BytesIO()
        np.savez(buffer, key=np.array(key), ids=np.array(ids), ref_chosen=ref_c, ref_rejected=ref_r)
        atomic_write_bytes(cache_file, buffer.getvalue())  # a crash never leaves a half-written cache
    return ref_c, ref_r, False
