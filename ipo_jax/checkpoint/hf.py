"""Hugging Face safetensors <-> Decoder.

Import reads an HF directory (single `model.safetensors` or a sharded index) tensor by tensor
straight into the target shardings: each device's shard is sliced out of the memory-mapped
file by `jax.make_array_from_callback`, so no full host copy of the model is ever made.
Only safetensors are read; pickle-based files (*.bin, *.pt) are refused. Each weight file is
checked against the SHA-256 recorded for it (`ipo_jax.checkpoint.manifest`: a manifest, the HF
cache's blob name, a hub download record) by a thread hashing beside the load; a mismatch is an
IntegrityError before the model is returned, a file nothing vouches for is one warning line.

Export writes safetensors shards under a size limit plus the index, `config.json`,
`generation_config.json`, when given the tokenizer files, and a `SHA256SUMS` manifest of them
all (`sha256sum -c` format). It writes into a temporary directory and renames it into place, so a
crash or a full disk never leaves a half-written model.

Name and layout mapping: our state path -> HF name by a rename table; an HF Linear weight
[out, in] is our kernel [*in_dims, *out_dims] (heads split out), an HF bias [out] is our
bias [*out_dims]; embeddings and norms are identical.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import re
import shutil
from pathlib import Path
from typing import Any, Iterator

import jax
import ml_dtypes
import numpy as np
from flax import nnx
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file
from tqdm.auto import tqdm

from ipo_jax.checkpoint.atomic import atomic_output_dir
from ipo_jax.checkpoint.manifest import MANIFEST_NAME, BackgroundVerifier, expected_digests, write_manifest
from ipo_jax.distributed import is_main_process
from ipo_jax.models.config import ModelConfig
from ipo_jax.models.decoder import Decoder
from ipo_jax.sharding import LOGICAL_RULES, param_shardings

log = logging.getLogger(__name__)

_RENAMES = {
    "embed": "model.embed_tokens.weight",
    "blocks": "model.layers.{layer}",
    "attn": "self_attn",
    "input_norm": "input_layernorm",
    "post_attn_norm": "post_attention_layernorm",
    "final_norm": "model.norm",
    "kernel": "weight",
    "lm_head": "lm_head.weight",
}
# Tensors some HF checkpoints carry that are not parameters of the model.
_IGNORABLE = re.compile(r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq")
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")
# Copied into an exported HF directory when a tokenizer directory is given.
TOKENIZER_EXPORT_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "chat_template.jinja",
    "chat_template.json",
)
_NP_DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}


class CheckpointError(ValueError):
    """An HF checkpoint does not match the model its config describes."""


class UnsafeCheckpointError(CheckpointError):
    """Only pickle-based weights were found; they are never loaded."""


@dataclasses.dataclass(frozen=True)
class TensorMap:
    """How one of our parameters corresponds to one HF tensor (per layer, if stacked).

    split_shape is the HF tensor with its merged dims split out; `groups` says how many
    consecutive split dims form each HF dim; our dim j is split dim ours_to_split[j].
    """

    path: tuple[str, ...]
    hf_name: str  # contains "{layer}" when stacked
    num_layers: int | None  # None: not stacked
    split_shape: tuple[int, ...]
    groups: tuple[int, ...]
    ours_to_split: tuple[int, ...]

    @property
    def hf_shape(self) -> tuple[int, ...]:
        shape, start = [], 0
        for g in self.groups:
            shape.append(math.prod(self.split_shape[start : start + g]))
            start += g
        return tuple(shape)

    @property
    def layer_shape(self) -> tuple[int, ...]:
        return tuple(self.split_shape[d] for d in self.ours_to_split)

    def names(self) -> list[str]:
        if self.num_layers is None:
            return [self.hf_name]
        return [self.hf_name.format(layer=i) for i in range(self.num_layers)]

    def read(self, tensor_slice, ours_slices: tuple[slice, ...]) -> np.ndarray:
        """Read only the part of the HF tensor that our slice needs, in our layout."""
        split_slices: list[slice] = [slice(None)] * len(self.split_shape)
        for j, s in enumerate(ours_slices):
            split_slices[self.ours_to_split[j]] = s
        hf_index, reshape, post = [], [], []
        start = 0
        for g in self.groups:
            dims = range(start, start + g)
            start += g
            rest = math.prod(self.split_shape[d] for d in dims[1:])
            first = split_slices[dims[0]]
            hf_index.append(slice(first.start * rest, first.stop * rest))
            reshape += [first.stop - first.start] + [self.split_shape[d] for d in dims[1:]]
            post += [slice(None)] + [split_slices[d] for d in dims[1:]]
        raw = tensor_slice[tuple(hf_index)]
        return np.asarray(raw).reshape(reshape)[tuple(post)].transpose(self.ours_to_split)

    def to_hf(self, layer_value: np.ndarray) -> np.ndarray:
        return layer_value.transpose(np.argsort(self.ours_to_split)).reshape(self.hf_shape)


def _hf_name(path: tuple[str, ...]) -> str:
    return ".".join(_RENAMES.get(p, p) for p in path)


def tensor_maps(abstract_params: nnx.State) -> list[TensorMap]:
    """One TensorMap per parameter of a (possibly abstract) Decoder param state."""
    maps = []
    for path, var in nnx.to_flat_state(abstract_params):
        path = tuple(str(p) for p in path)
        meta = var.get_metadata()
        axes = meta["logical_axes"]
        stacked = axes[0] == "layers"
        shape = tuple(var.shape[1:] if stacked else var.shape)
        num_in = meta.get("num_in")
        if num_in is not None:  # Linear: HF [out, in] <-> ours [*in, *out]
            n_out = len(shape) - num_in
            split = shape[num_in:] + shape[:num_in]
            groups = (n_out, num_in)
            ours_to_split = tuple(n_out + j for j in range(num_in)) + tuple(range(n_out))
        elif path[-1] == "bias":  # HF [out] <-> ours [*out]
            split, groups, ours_to_split = shape, (len(shape),), tuple(range(len(shape)))
        else:
            split, groups, ours_to_split = shape, (1,) * len(shape), tuple(range(len(shape)))
        maps.append(
            TensorMap(path, _hf_name(path), var.shape[0] if stacked else None, split, groups, ours_to_split)
        )
    return maps


# ---------------------------------------------------------------------------- reading


def hf_weight_files(model_dir: Path) -> dict[str, Path]:
    """Map each tensor name to its safetensors file; refuse pickle-only checkpoints."""
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as e:
            raise CheckpointError(f"{index}: not a safetensors index (expected a 'weight_map' object): {e}") from e
        files = {name: model_dir / f for name, f in weight_map.items()}
        for f in sorted(set(files.values())):
            if not f.is_file():
                raise CheckpointError(f"{index} names {f.name}, which does not exist in {model_dir}")
        return files
    shards = sorted(model_dir.glob("*.safetensors"))
    if not shards:
        pickles = sorted(p.name for p in model_dir.iterdir() if p.suffix in _PICKLE_SUFFIXES)
        if pickles:
            raise UnsafeCheckpointError(
                f"{model_dir}: only pickle-based weights found ({', '.join(pickles)}); these are never loaded "
                "because unpickling can run arbitrary code. Convert them to safetensors first (for example "
                "with transformers: from_pretrained(...).save_pretrained(dir, safe_serialization=True))."
            )
        raise CheckpointError(f"{model_dir}: no model.safetensors, no model.safetensors.index.json")
    files = {}
    for shard in shards:
        with _open_safetensors(shard) as f:
            for name in f.keys():
                files[name] = shard
    return files


def _open_safetensors(path: Path):
    """safe_open, with a damaged file (truncated, not safetensors) reported by name."""
    try:
        return safe_open(path, framework="numpy")
    except Exception as e:  # noqa: BLE001 -- safetensors raises its own SafetensorError (and OSError)
        if isinstance(e, OSError) and e.errno is not None:
            raise
        raise CheckpointError(f"{path}: not a readable safetensors file ({' '.join(str(e).split())}); "
                              "is it truncated or damaged?") from None


def _check_tensors(maps: list[TensorMap], files: dict[str, Path], handles, tied: bool, model_dir: Path):
    problems = []
    expected = {}
    for m in maps:
        for name in m.names():
            expected[name] = m
    for name, m in expected.items():
        if name not in files:
            problems.append(f"missing tensor {name} (expected shape {list(m.hf_shape)})")
            continue
        shape = tuple(handles[files[name]].get_slice(name).get_shape())
        if shape != m.hf_shape:
            problems.append(
                f"tensor {name} in {files[name].name} has shape {list(shape)}, expected {list(m.hf_shape)}"
            )
    for name in sorted(set(files) - set(expected)):
        if _IGNORABLE.fullmatch(name):
            log.info("ignoring non-parameter tensor %s", name)
        elif tied and name == "lm_head.weight":
            log.info("ignoring lm_head.weight: the config ties it to the embeddings")
        else:
            problems.append(f"unexpected tensor {name} in {files[name].name}")
    if problems:
        shown = "\n  ".join(problems[:20]) + (f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else "")
        raise CheckpointError(f"{model_dir}: checkpoint does not match config.json:\n  {shown}")


def _normalise(index: tuple, shape: tuple[int, ...]) -> tuple[slice, ...]:
    out = []
    for s, dim in zip(index, shape):
        start, stop, step = s.indices(dim)
        assert step == 1, "strided shards are not expected from NamedSharding"
        out.append(slice(start, stop))
    return tuple(out)


def load_hf(
    model_dir: str | Path,
    *,
    mesh: jax.sharding.Mesh | None = None,
    rules=LOGICAL_RULES,
    param_dtype: str = "float32",
    dtype: str | None = None,
    verify: str | Path | None = None,
    **config_overrides,
) -> Decoder:
    """Load an HF Llama / Qwen2 / Qwen3 directory into a Decoder sharded over `mesh`.

    Every weight file is checked against `verify` (a SHA-256 manifest), the directory's own
    `SHA256SUMS`, and the digests the HF cache / hub download recorded, whichever exist
    (IntegrityError on a mismatch, ManifestError for a manifest that does not list a file)."""
    model_dir = Path(model_dir)
    cfg = ModelConfig.from_hf_dir(model_dir, param_dtype=param_dtype, dtype=dtype or param_dtype, **config_overrides)
    abstract = nnx.eval_shape(lambda: Decoder(cfg, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    shardings = param_shardings(state, mesh, rules)
    maps = {m.path: m for m in tensor_maps(state)}
    files = hf_weight_files(model_dir)
    target = _NP_DTYPES[param_dtype]

    bytes_read = 0  # by this process: each process reads only the slices of its own devices' shards

    with contextlib.ExitStack() as stack:
        handles = {f: stack.enter_context(_open_safetensors(f)) for f in sorted(set(files.values()))}
        _check_tensors(list(maps.values()), files, handles, cfg.tie_word_embeddings, model_dir)
        checks, unverified = expected_digests(sorted(handles), model_dir, verify)
        if unverified:
            log.warning("%s: %s not verified (no SHA-256 recorded: not an HF cache snapshot, no %s, no --verify "
                        "manifest); loading as is", model_dir, ", ".join(f.name for f in unverified), MANIFEST_NAME)
        verifier = stack.enter_context(_verifying(checks))

        def load(path, var, sharding):
            m = maps[tuple(str(getattr(k, "key", k)) for k in path)]

            def callback(index):
                nonlocal bytes_read
                if verifier.failure() is not None:  # a damaged file: stop reading it now
                    verifier.wait()
                index = _normalise(index, var.shape)
                if m.num_layers is None:
                    name = m.hf_name
                    block = m.read(handles[files[name]].get_slice(name), index)
                else:
                    block = np.stack([m.read(handles[files[m.hf_name.format(layer=layer)]].get_slice(m.hf_name.format(layer=layer)), index[1:])
                                      for layer in range(index[0].start, index[0].stop)])
                bytes_read += block.nbytes
                return block.astype(target)

            progress.update(1)
            progress.set_postfix_str(m.hf_name.replace(".{layer}", ""), refresh=False)
            return var.replace(jax.make_array_from_callback(var.shape, sharding, callback))

        with tqdm(total=len(maps), desc=f"load {model_dir.name}", unit="tensor", disable=None) as progress:
            state = jax.tree_util.tree_map_with_path(
                load, state, shardings, is_leaf=lambda x: isinstance(x, nnx.Variable)
            )
        verifier.wait()  # the model is returned only once every file matched its digest
        if checks:
            log.info("verified the SHA-256 of %d file(s) of %s", len(checks), model_dir)
    log.info("process %d of %d read %d bytes of tensor data from %s", jax.process_index(), jax.process_count(),
             bytes_read, model_dir)
    return nnx.merge(graphdef, state)


@contextlib.contextmanager
def _verifying(checks):
    verifier = BackgroundVerifier(checks)
    try:
        yield verifier
    finally:
        verifier.cancel()  # a no-op once wait() has returned; stops the hashing when the load failed


# ---------------------------------------------------------------------------- writing


def parse_size(size: int | str) -> int:
    """'5GB', '500MB', '10KiB' or an int of bytes."""
    if isinstance(size, int):
        return size
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(i?)B?\s*", size, re.IGNORECASE)
    if not m:
        raise ValueError(f"size {size!r}: expected bytes or a number with KB/MB/GB (e.g. '5GB')")
    base = 1024 if m.group(3) else 1000
    return int(float(m.group(1)) * base ** " KMGT".index(m.group(2).upper() or " "))


def _host(x: jax.Array) -> np.ndarray:
    if not x.is_fully_addressable:
        from jax.experimental import multihost_utils

        x = multihost_utils.process_allgather(x, tiled=True)
    return np.asarray(jax.device_get(x))


def iter_hf_tensors(model: Decoder, dtype: str | None = None) -> Iterator[tuple[str, np.ndarray]]:
    """(HF name, HF-layout host array) for every tensor, one at a time."""
    np_dtype = _NP_DTYPES[dtype or model.cfg.param_dtype]
    state = nnx.state(model, nnx.Param)
    for m, (_, var) in zip(tensor_maps(state), nnx.to_flat_state(state)):
        value = var[...]
        if m.num_layers is None:
            yield m.hf_name, m.to_hf(_host(value)).astype(np_dtype)
        else:
            for layer in range(m.num_layers):
                yield m.hf_name.format(layer=layer), m.to_hf(_host(value[layer])).astype(np_dtype)


def save_hf(
    model: Decoder,
    out_dir: str | Path,
    *,
    dtype: str | None = None,
    tokenizer_dir: str | Path | None = None,
    max_shard_size: int | str = "5GB",
    overwrite: bool = False,
    generation_config: dict[str, Any] | None = None,
) -> Path:
    """Write an HF directory that `transformers.AutoModelForCausalLM.from_pretrained` loads."""
    out_dir = Path(out_dir)
    cfg: ModelConfig = model.cfg
    dtype = dtype or cfg.param_dtype
    limit = parse_size(max_shard_size)
    is_writer = is_main_process()
    tmp = None
    try:
        with atomic_output_dir(out_dir, overwrite) as tmp:
            _write_hf(model, tmp, dtype, limit, is_writer, tokenizer_dir, generation_config)
    except OSError as e:  # name the file as it would have been, not the removed temporary directory
        if tmp is not None and e.filename and Path(e.filename).is_relative_to(tmp):
            raise OSError(e.errno, e.strerror, str(out_dir / Path(e.filename).relative_to(tmp))) from None
        raise
    return out_dir


_OS_ERROR = re.compile(r"\(os error (\d+)\)")


def _save_safetensors(tensors: dict[str, np.ndarray], path: Path) -> None:
    """save_file, with its I/O failures (a full disk) raised as the OSError they are."""
    try:
        save_file(tensors, str(path), metadata={"format": "pt"})
    except SafetensorError as e:
        code = _OS_ERROR.search(str(e))
        if code is None:
            raise
        raise OSError(int(code.group(1)), os.strerror(int(code.group(1))), str(path)) from None


def _write_hf(model, tmp: Path, dtype, limit, is_writer, tokenizer_dir, generation_config):
    cfg: ModelConfig = model.cfg

    # Plan the shards from shapes alone so file names are known before writing.
    maps = tensor_maps(nnx.state(model, nnx.Param))
    itemsize = np.dtype(_NP_DTYPES[dtype]).itemsize
    plan, shard_sizes = {}, [0]
    for m in maps:
        for name in m.names():
            nbytes = math.prod(m.hf_shape) * itemsize
            if shard_sizes[-1] and shard_sizes[-1] + nbytes > limit:
                shard_sizes.append(0)
            shard_sizes[-1] += nbytes
            plan[name] = len(shard_sizes) - 1
    n = len(shard_sizes)
    file_names = ["model.safetensors"] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]

    pending: dict[str, np.ndarray] = {}
    current = 0
    progress = tqdm(total=len(plan), desc="export", unit="tensor", disable=None)
    for name, array in iter_hf_tensors(model, dtype):
        if plan[name] != current:
            if is_writer:
                _save_safetensors(pending, tmp / file_names[current])
            pending, current = {}, plan[name]
        pending[name] = np.ascontiguousarray(array)
        progress.update(1)
    if is_writer:
        _save_safetensors(pending, tmp / file_names[current])
    progress.close()
    if not is_writer:
        return

    if n > 1:
        index = {
            "metadata": {"total_size": sum(shard_sizes)},
            "weight_map": {name: file_names[i] for name, i in sorted(plan.items())},
        }
        (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    (tmp / "config.json").write_text(json.dumps(cfg.to_hf_dict(torch_dtype=dtype), indent=2) + "\n")
    gen = {"bos_token_id": cfg.bos_token_id, "eos_token_id": cfg.to_hf_dict()["eos_token_id"]}
    gen.update(generation_config or {})
    (tmp / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
    if tokenizer_dir is not None:
        copy_tokenizer_files(Path(tokenizer_dir), tmp)
    write_manifest(tmp)  # read back from the page cache: the digests are of the bytes that reached the file


def copy_tokenizer_files(src: Path, dst: Path) -> list[str]:
    found = [name for name in TOKENIZER_EXPORT_FILES if (src / name).is_file()]
    if not found:
        raise FileNotFoundError(f"{src}: no tokenizer files found (looked for {', '.join(TOKENIZER_EXPORT_FILES)})")
    for name in found:
        shutil.copy2(src / name, dst / name)
    return found
