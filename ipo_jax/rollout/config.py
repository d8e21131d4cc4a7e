"""The policy's settings, shared by the pipeline and eval configs: the ``model``, ``sampling``,
``sampler`` and ``mesh`` sections (`ipo_jax.rollout.build_policy` reads them)."""

from __future__ import annotations

import ml_collections


def add_policy_sections(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Add the ``model``, ``sampling``, ``sampler`` and ``mesh`` sections to `c`; returns `c`."""
    c.model = ml_collections.ConfigDict()
    c.model.init = ""  # the policy: 'hf:<dir>', 'orbax:<dir>' (e.g. a run's final/) or 'preset:<name>'
    c.model.param_dtype = "float32"
    c.model.dtype = "float32"

    c.sampling = ml_collections.ConfigDict()
    c.sampling.temperature = 0.6  # the paper's decoding: temperature 0.6, top-p 0.95
    c.sampling.top_p = 0.95
    c.sampling.top_k = 0
    c.sampling.max_new_tokens = 1024

    c.sampler = ml_collections.ConfigDict()
    c.sampler.batch_size = 8
    c.sampler.chunk_tokens = 32
    c.sampler.max_prompt_length = 4096

    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = -1
    c.mesh.fsdp = 1
    c.mesh.tensor = 1
    return c


__all__ = ["add_policy_sections"]
