"""Device meshes (data, fsdp, tensor axes) and the one table mapping logical axes to mesh axes.

Weights name their dims with logical axes ('vocab', 'embed', 'q_heads', ...). `LOGICAL_RULES`
says which mesh axis (or axes) each logical axis is split over; anything not listed, or
mapped to None, is replicated. Change the table, not the model, to change the layout.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import jax
import numpy as np
from flax import nnx
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

# logical axis -> mesh axis, tuple of mesh axes, or None (replicated)
LOGICAL_RULES: dict[str, Any] = {
    "batch": ("data", "fsdp"),
    "vocab": "tensor",
    "embed": "fsdp",
    "mlp": "tensor",
    "q_heads": "tensor",
    "kv_heads": "tensor",
    "head_dim": None,
    "layers": None,
    "length": None,
}


class MeshError(ValueError):
    """The requested mesh does not fit the devices or the model."""


def resolve_mesh_shape(shape: Mapping[str, int], num_devices: int) -> dict[str, int]:
    """Fill in one -1 axis with 'the rest' of the devices; check the product."""
    unknown = [a for a in MESH_AXES if shape.get(a, 1) == -1]
    extra = set(shape) - set(MESH_AXES)
    if extra:
        raise MeshError(f"unknown mesh axes {sorted(extra)}; expected a subset of {MESH_AXES}")
    if len(unknown) > 1:
        raise MeshError(f"at most one mesh axis may be -1, got {unknown}")
    sizes = {a: int(shape.get(a, 1)) for a in MESH_AXES}
    known = math.prod(s for a, s in sizes.items() if a not in unknown)
    if known <= 0 or any(s == 0 or s < -1 for s in sizes.values()):
        raise MeshError(f"mesh axis sizes must be positive (or one -1), got {dict(shape)}")
    if unknown:
        if num_devices % known:
            raise MeshError(f"mesh {dict(shape)}: {num_devices} devices are not divisible by {known}")
        sizes[unknown[0]] = num_devices // known
    if math.prod(sizes.values()) != num_devices:
        raise MeshError(f"mesh {sizes} needs {math.prod(sizes.values())} devices, but {num_devices} are available")
    return sizes


def make_mesh(shape: Mapping[str, int] | None = None, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A mesh with axes (data, fsdp, tensor); default: all devices on fsdp.

    Axis types are Auto (jit propagates shardings), not the Explicit default of jax.make_mesh.
    """
    devices = list(devices if devices is not None else jax.devices())
    sizes = resolve_mesh_shape(shape or {"fsdp": -1}, len(devices))
    dims = tuple(sizes[a] for a in MESH_AXES)
    try:
        grid = mesh_utils.create_device_mesh(dims, devices=devices)
    except Exception:  # e.g. CPU devices without a physical topology
        grid = np.asarray(devices).reshape(dims)
    return Mesh(grid, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES))


def logical_to_spec(logical_axes: Sequence[str | None], rules: Mapping[str, Any] = LOGICAL_RULES) -> PartitionSpec:
    used: set[str] = set()
    spec = []
    for name in logical_axes:
        target = rules.get(name) if name is not None else None
        axes = (target,) if isinstance(target, str) else tuple(target or ())
        axes = tuple(a for a in axes if a not in used)  # a mesh axis may split only one dim
        used.update(axes)
        spec.append(axes[0] if len(axes) == 1 else (axes or None))
    return PartitionSpec(*spec)


def named_sharding(
    mesh: Mesh, logical_axes: Sequence[str | None], shape: Sequence[int], *, name: str = "array", rules=LOGICAL_RULES
) -> NamedSharding:
    """NamedSharding for an array; a dim that the mesh does not divide is a clear error."""
    spec = logical_to_spec(logical_axes, rules)
    for dim, (size, axes, logical) in enumerate(zip(shape, spec, logical_axes)):
        if axes is None:
            continue
        parts = math.prod(mesh.shape[a] for a in ((axes,) if isinstance(axes, str) else axes))
        if size % parts:
            raise MeshError(
                f"{name}: dim {dim} ({logical!r}, size {size}) is not divisible by mesh axes {axes} "
                f"(size {parts}); choose a mesh whose {axes} size divides {size}, or change LOGICAL_RULES"
            )
    return NamedSharding(mesh, spec)


def param_shardings(abstract_state: nnx.State, mesh: Mesh | None, rules=LOGICAL_RULES) -> nnx.State:
    """A State of shardings matching `abstract_state` (Variables with `logical_axes` metadata).

    Without a mesh, everything goes to this process's first device.
    """

    def one(path, variable):
        if mesh is None:
            return jax.sharding.SingleDeviceSharding(jax.local_devices()[0])  # this process's first
        axes = variable.get_metadata().get("logical_axes")
        if axes is None:
            return NamedSharding(mesh, PartitionSpec())
        return named_sharding(mesh, axes, variable.shape, name="/".join(map(str, path)), rules=rules)

    return jax.tree_util.tree_map_with_path(
        lambda p, v: one(tuple(getattr(k, "key", k) for k in p), v),
        abstract_state,
        is_leaf=lambda x: isinstance(x, nnx.Variable),
    )


def shard_model(model: nnx.Module, mesh: Mesh | None, rules=LOGICAL_RULES) -> nnx.Module:
    """Move a model's variables onto their shardings (in place) and return it."""
    state = nnx.state(model)
    shardings = param_shardings(state, mesh, rules)
    nnx.update(model, jax.device_put(state, shardings))
    return model
