"""Where the sampler's arrays live: rows over the logical 'batch' axis (data x fsdp), a KV
cache's heads over 'kv_heads' (tensor) where the mesh divides them, anything the mesh does not
divide replicated; without a mesh, everything on the model's device.

Every input is placed explicitly (committed), so the first decode chunk, fed by the prefill and
by the host, hits the same compiled program as the later ones, fed by the last chunk.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ipo_jax.models.config import ModelConfig
from ipo_jax.models.decoder import KVCache
from ipo_jax.sharding import logical_to_spec

CACHE_AXES = ("batch", "kv_heads", "length", "head_dim")


class SamplerShardingError(ValueError):
    """The sampler's batch does not fit its mesh."""


def _axis_names(axes) -> tuple[str, ...]:
    return (axes,) if isinstance(axes, str) else tuple(axes or ())


class Layout:
    """The shardings of a sampler's per-row arrays and caches on `mesh` (None: one `device`)."""

    def __init__(self, cfg: ModelConfig, mesh: Mesh | None, device: jax.Device):
        self.cfg, self.mesh = cfg, mesh
        if mesh is None:
            self.replicated = jax.sharding.SingleDeviceSharding(device)
            self.row_devices = 1  # devices the rows are split over: a batch must be a multiple
        else:
            self.replicated = NamedSharding(mesh, PartitionSpec())
            self.row_axes = _axis_names(logical_to_spec(("batch",))[0])
            self.row_devices = int(np.prod([mesh.shape[a] for a in self.row_axes]))

    def check_batch(self, batch_size: int) -> None:
        """SamplerShardingError unless the mesh's row devices divide `batch_size`."""
        if batch_size % self.row_devices:
            raise SamplerShardingError(
                f"sampler batch_size {batch_size} is not divisible by the mesh's row axes {self.row_axes} "
                f"(size {self.row_devices}, mesh {dict(self.mesh.shape)}); choose a batch size that is a "
                f"multiple of {self.row_devices}"
            )

    def spec(self, logical: Sequence[str | None], shape: Sequence[int]) -> PartitionSpec:
        """logical_to_spec, with every dim the mesh does not divide replicated instead."""
        spec = []
        for axes, size in zip(logical_to_spec(logical), shape):
            devices = int(np.prod([self.mesh.shape[a] for a in _axis_names(axes)]))
            spec.append(axes if size % devices == 0 else None)
        return PartitionSpec(*spec)

    def sharding(self, logical: Sequence[str | None], shape: Sequence[int]):
        if self.mesh is None:
            return self.replicated
        return NamedSharding(self.mesh, self.spec(logical, shape))

    def rows(self, array) -> jax.sharding.Sharding:
        """A per-row array's sharding: its first dim over 'batch'; a scalar replicated."""
        if not array.ndim:
            return self.replicated
        return self.sharding(("batch",) + (None,) * (array.ndim - 1), array.shape)

    def kv(self, array) -> jax.sharding.Sharding:
        """A [B,K,S,H] key or value array's sharding (a 1-row shared prefix's rows replicated)."""
        return self.sharding(CACHE_AXES, array.shape)

    def cache_shardings(self, batch: int, max_len: int) -> KVCache:
        """The shardings of a `batch`-row cache (a KVCache of shardings): k, v [B,K,S,H] over
        ('batch', 'kv_heads', -, -), ids [B,S] over ('batch', -), each dim the mesh does not
        divide replicated (a 1-row prefix cache, or 2 KV heads on tensor=4); the index replicated."""
        kv = self.sharding(CACHE_AXES, (batch, self.cfg.num_kv_heads, max_len, self.cfg.head_dim))
        ids = self.sharding(("batch", "length"), (batch, max_len))
        layers = (kv,) * self.cfg.num_layers
        return KVCache(layers, layers, ids, ids, self.replicated)

    def new_cache(self, batch: int, max_len: int) -> KVCache:
        """An empty cache, made in the calling jitted program straight into its shardings."""
        return self.pin_cache(KVCache.init(self.cfg, batch, max_len))

    def pin_cache(self, cache: KVCache) -> KVCache:
        """`cache` constrained to its shardings (inside a jitted program)."""
        if self.mesh is None:
            return cache
        return jax.lax.with_sharding_constraint(cache, self.cache_shardings(cache.k[0].shape[0], cache.max_len))

    def put_rows(self, x) -> jax.Array:
        """A host array of per-row values onto the devices, rows split as `rows` says."""
        x = jnp.asarray(x)
        if self.mesh is None or not x.ndim:
            return jax.device_put(x, self.replicated)
        return jax.device_put(x, self.rows(x))

    def put_replicated(self, x) -> jax.Array:
        return jax.device_put(jnp.asarray(x), self.replicated)
