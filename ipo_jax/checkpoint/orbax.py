"""orbax save/restore of a Decoder's parameters, restored straight into the target shardings.

Directory layout:
  <dir>/model_config.json   the HF-style config plus our dtypes (so the model can be rebuilt)
  <dir>/params/             orbax StandardCheckpointer directory (a plain nested dict of arrays)

Before restoring, the stored arrays' names and shapes are checked against the model that
model_config.json describes; a mismatch is a CheckpointError naming each array and both shapes.
After restoring, every array's checksum (`array_checksums`, recorded in model_config.json at
save time) is compared with the restored values: flipped bits are a CheckpointError, never a
silently different model. The training loop records and checks the same checksums for its
checkpoints.

A write that fails (a full disk, a read-only directory) is the OSError it stands for, naming the
directory (`os_error_from`: tensorstore reports a full disk as "RESOURCE_EXHAUSTED ...
[os_error_code='28']"); the temporary directory is removed (ipo_jax.checkpoint.atomic).
"""

from __future__ import annotations

import errno
import json
import os
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from flax import nnx

from ipo_jax.checkpoint.atomic import atomic_output_dir
from ipo_jax.distributed import is_main_process
from ipo_jax.checkpoint.hf import CheckpointError
from ipo_jax.models.config import ModelConfig
from ipo_jax.models.decoder import Decoder
from ipo_jax.sharding import LOGICAL_RULES, param_shardings

CONFIG_FILE = "model_config.json"
PARAMS_DIR = "params"


CHECKSUMS_KEY = "checksums"
_OS_ERROR_CODE = re.compile(r"\[os_error_code='?(\d+)'?\]")


def os_error_from(error: BaseException, path: str | Path) -> OSError | None:
    """The OSError a failed orbax / tensorstore write stands for, naming `path`; None if it is not one.

    tensorstore reports the system error inside a ValueError's text ("... No space left on device
    [os_error_code='28']"), possibly as the cause of the exception orbax raises."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno is not None:
            return OSError(error.errno, error.strerror or os.strerror(error.errno), error.filename or str(path))
        match = _OS_ERROR_CODE.search(str(error))
        if match and int(match[1]) in errno.errorcode:
            code = int(match[1])
            return OSError(code, os.strerror(code), str(path))
        error = error.__cause__ or error.__context__
    return None


def _array_checksum(x: jax.Array) -> jax.Array:
    """A 32-bit fingerprint of an array's exact bits: sum over elements of bits * odd weight(index),
    modulo 2**32. Any single changed element changes it (an odd weight times a non-zero difference
    below 2**32 is non-zero modulo 2**32), it does not depend on the array's sharding or on the
    order of the sum, and it runs where the array lives (no host copy)."""
    x = jnp.asarray(x)
    if x.dtype == jnp.bool_:
        bits = x.astype(jnp.uint32)
    else:
        unsigned = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}.get(x.dtype.itemsize)
        if unsigned is None:
            raise TypeError(f"no checksum for arrays of {x.dtype}")
        bits = jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32)
    index = jax.lax.iota(jnp.uint32, max(bits.size, 1))[: bits.size].reshape(bits.shape)
    weight = index * jnp.uint32(2654435761) | jnp.uint32(1)  # Knuth's multiplicative hash, made odd
    return jnp.sum(bits * weight, dtype=jnp.uint32)


@jax.jit
def _checksums(leaves: list) -> list:
    return [_array_checksum(x) for x in leaves]


def _leaf_name(path) -> str:
    keys = [str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path]
    if keys and keys[-1] == "value":  # an nnx Variable's array (as orbax metadata names it)
        keys = keys[:-1]
    return "/".join(keys)


def array_checksums(tree) -> dict[str, int]:
    """{'params/blocks/mlp/up_proj/kernel': 32-bit checksum} for every array of a pytree.

    Computed on the devices (every process of a multi-host run calls it and gets the same
    numbers, whatever its addressable shards); checksums of equal arrays are equal."""
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    if not flat:
        return {}
    values = jax.device_get(_checksums([leaf for _, leaf in flat]))
    return {_leaf_name(path): int(v) for (path, _), v in zip(flat, values)}


def checksum_mismatches(recorded: dict[str, int], tree) -> list[str]:
    """Names of the arrays of `tree` whose checksum differs from the recorded one (or is missing)."""
    actual = array_checksums(tree)
    bad = [f"{name}: checksum {actual[name]:#010x}, recorded {int(want):#010x}"
           for name, want in recorded.items() if name in actual and int(want) != actual[name]]
    bad += [f"{name}: no checksum recorded" for name in actual if name not in recorded]
    bad += [f"{name}: recorded but not restored" for name in recorded if name not in actual]
    return bad


def save_orbax(model: Decoder, out_dir: str | Path, *, overwrite: bool = False) -> Path:
    out_dir = Path(out_dir).absolute()
    cfg: ModelConfig = model.cfg
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    is_writer = is_main_process()
    checksums = array_checksums(params)  # every process: the computation spans all devices
    # orbax coordinates all processes itself; only the config file is ours to write.
    try:
        with atomic_output_dir(out_dir, overwrite) as tmp:
            with ocp.StandardCheckpointer() as checkpointer:
                checkpointer.save(tmp / PARAMS_DIR, params)
                checkpointer.wait_until_finished()
            if is_writer:
                meta = {"hf_config": cfg.to_hf_dict(), "param_dtype": cfg.param_dtype, "dtype": cfg.dtype}
                meta[CHECKSUMS_KEY] = checksums
                (tmp / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    except Exception as e:  # noqa: BLE001 -- tensorstore reports a failed write as a ValueError holding the OS error
        error = os_error_from(e, out_dir)
        if error is None:
            raise
        raise error from None
    return out_dir


def read_orbax_config(ckpt_dir: str | Path, **overrides) -> ModelConfig:
    path = Path(ckpt_dir) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found; is {ckpt_dir} a model directory written by ipo-jax?")
    meta = json.loads(path.read_text())
    fields = {"param_dtype": meta["param_dtype"], "dtype": meta["dtype"], **overrides}
    return ModelConfig.from_hf_dict(meta["hf_config"], source=str(path), **fields)


def load_orbax(
    ckpt_dir: str | Path, *, mesh: jax.sharding.Mesh | None = None, rules=LOGICAL_RULES, **config_overrides
) -> Decoder:
    """Rebuild the Decoder from <dir>/model_config.json and restore its parameters sharded over `mesh`."""
    ckpt_dir = Path(ckpt_dir).absolute()
    cfg = read_orbax_config(ckpt_dir, **config_overrides)
    abstract = nnx.eval_shape(lambda: Decoder(cfg, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    shardings = param_shardings(state, mesh, rules)
    target = jax.tree.map(
        lambda v, s: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=s),
        nnx.to_pure_dict(state),
        nnx.to_pure_dict(shardings),
    )
    with ocp.StandardCheckpointer() as checkpointer:
        _check_stored_shapes(checkpointer, ckpt_dir, target)
        restored = checkpointer.restore(ckpt_dir / PARAMS_DIR, target)
    recorded = json.loads((ckpt_dir / CONFIG_FILE).read_text()).get(CHECKSUMS_KEY)
    if recorded is not None:  # directories written before checksums were recorded have none
        bad = checksum_mismatches(recorded, restored)
        if bad:
            raise CheckpointError(f"{ckpt_dir / PARAMS_DIR}: the stored parameters are damaged (they do not match "
                                  f"the checksums in {CONFIG_FILE}): " + "; ".join(bad[:5])
                                  + (f"; and {len(bad) - 5} more" if len(bad) > 5 else ""))
    nnx.replace_by_pure_dict(state, restored)
    return nnx.merge(graphdef, state)


def _flat(tree) -> dict[str, tuple[int, ...]]:
    return {"/".join(str(getattr(k, "key", k)) for k in path): tuple(leaf.shape)
            for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _check_stored_shapes(checkpointer, ckpt_dir: Path, target) -> None:
    """The stored arrays must be the ones model_config.json describes (orbax alone reports a
    shape clash without naming the array)."""
    try:
        metadata = checkpointer.metadata(ckpt_dir / PARAMS_DIR)
    except Exception as e:  # noqa: BLE001 -- orbax raises many types for a damaged directory
        raise CheckpointError(f"{ckpt_dir / PARAMS_DIR}: cannot read the checkpoint's metadata ({type(e).__name__}: {e})") from e
    stored = getattr(metadata, "item_metadata", metadata)
    stored, wanted = _flat(getattr(stored, "tree", stored)), _flat(target)
    problems = [f"{name}: stored {list(stored[name])}, {CONFIG_FILE} needs {list(shape)}"
                for name, shape in wanted.items() if name in stored and stored[name] != shape]
    problems += [f"{name}: missing (expected {list(shape)})" for name, shape in wanted.items() if name not in stored]
    problems += [f"{name}: not a parameter of the configured model" for name in stored if name not in wanted]
    if problems:
        shown = "\n  ".join(problems[:20]) + (f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else "")
        raise CheckpointError(f"{ckpt_dir}: the parameters do not match {CONFIG_FILE}:\n  {shown}")
