"""Reference log-probs: one jitted, sharded forward pass of the frozen reference over all
pairs, cached beside the pair file(s) and keyed by a fingerprint of everything they depend on
(reference checkpoint files, every pair file's contents, tokenisation and mask settings), so a
stale cache is detected and recomputed rather than silently reused.

Cache file (`cache_file_for`): <dir>/<pair file name>.reference-logps.npz for one pair file;
for several (data.pairs 'a.jsonl,b.jsonl:0.5') <dir>/<stem>+<stem>...-<hash>.reference-logps.npz,
the hash over the files' resolved paths (weights do not change the per-pair log-probs, each
pair is computed once). <dir> is reference.cache_dir or the first file's directory.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from pathlib import Path
from typing import Sequence

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec
from tqdm.auto import tqdm

from ipo_jax.io import atomic_write_bytes
from ipo_jax.data.pairs import PairBatches
from ipo_jax.train.step import batch_shardings, policy_pair_logps, put_batch

log = logging.getLogger(__name__)


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
