"""`ipo-jax plan`: will a training run fit its accelerators? Answered before anyone pays for them.

The config's real train step (`make_train_step` + `jit_train_step` of ipo_jax.train.step, the
train state `init_train_state` builds, the batch shardings the loop uses) is lowered from
abstract arrays (`jax.eval_shape`; no weight is ever allocated) and compiled ahead of time for a
topology. The compiled program's `memory_analysis()` gives the per-device bytes:

  arguments  the train state (master weights, optimizer moments, counters) and the batch
  outputs    the new train state and the metrics; the state is donated, so most of the
             outputs alias the arguments (`aliased`)
  temps      activations kept for the backward pass, gradients and their accumulator, the
             optimizer update, the log-prob chunks
  peak       arguments + outputs - aliased + temps

Topologies (`parse_topology`): TPU v5p slices `v5p-8` ... `v5p-256` (v5p-N has N/2 chips of
95 GiB on N/8 hosts of 4 chips; compiled for the real TPU with libtpu when it is installed, else
simulated with one CPU device per chip) and GPU nodes `8xh100`, `8xh200`, `Nxa100-80` (N GPUs of
that kind: one node for N <= 8, N/8 nodes of 8 GPUs above; simulated with N CPU devices). A
simulated compile runs XLA's CPU compiler, whose fusion and buffer choices differ from a TPU's or
GPU's by some percent; hence a run is said to fit only with `headroom` (default 10%) of the
device's memory left free, also room for the runtime.

Layer extrapolation (`layers=(a, b)`): the step is compiled with a and b layers and every
quantity extrapolated linearly to the real depth; tools/check_plan_extrapolation.py measures its
error against a full-depth compile.

When a run does not fit, `suggest_change` plans alternatives in order of their cost to the run
(remat policy, fewer rows per micro-batch with more micro-batches for the same pairs per update,
a tensor-parallel axis, a shorter sequence) and reports the first that fits.

Settings are validated as `ipo-jax train` validates them (`ipo_jax.validation`, stage "plan":
the train rules less the pair files, tokenizer and output directory, which a plan never reads)
before anything is compiled, and the longest row (`sequence_length`) must fit the model's
context (max_position_embeddings): a bad setting is a PlanError / SettingsError, exit code 2.

The per-host view (`host_view`): a run on several hosts is one JAX process per host (TPU VM
worker, GPU node), each driving its own devices. The plan says how many processes, which mesh
axes cross hosts (their collectives go over the host network: DCN / InfiniBand, not ICI /
NVLink), and which rows of each micro-batch each host's devices hold: the global batch is the
config's pairs per update, each host computes its share (every process builds the same global
batch and fills its own devices' rows, ipo_jax.train.step.put_batch).
"""

from __future__ import annotations

import copy
import dataclasses
import importlib.util
import math
import os
import re
import time
from pathlib import Path
from typing import Any, Iterator, Mapping

import jax
import jax.numpy as jnp
from flax import nnx
from jax._src import xla_bridge  # the public API has no "backends started?" query
from jax.experimental import topologies

from ipo_jax.checkpoint.orbax import read_orbax_config
from ipo_jax.grpo import step as grpo_step
from ipo_jax.loss import LossConfig
from ipo_jax.models.config import ModelConfig
from ipo_jax.models.decoder import Decoder
from ipo_jax.models.presets import list_presets, preset_config
from ipo_jax.sharding import LOGICAL_RULES, MeshError, make_mesh, resolve_mesh_shape
from ipo_jax.train.step import (
    PAIR_KEYS,
    ROW_KEYS,
    OptimConfig,
    batch_shardings,
    check_batch_fits_mesh,
    init_train_state,
    jit_train_step,
    learning_rate_schedule,
    make_optimizer,
    make_train_step,
    tree_shardings,
)
from ipo_jax.validation import validate_settings

GIB = 1024**3
DEFAULT_HEADROOM = 0.10
REMAT_ORDER = ("none", "dots_saveable", "full")  # least memory last
SHORTEST_SUGGESTED_LENGTH = 1024

# Per-device memory budgets in bytes. TPU v5p: 95 GiB of HBM per chip. GPUs: the total memory
# CUDA reports (nvidia-smi) for the 80 GB H100 SXM, the 141 GB H200 and the 80 GB A100.
V5P_CHIP_BYTES = 95 * GIB
GPU_BYTES = {"h100": 81559 * 2**20, "h200": 143771 * 2**20, "a100-80": 81920 * 2**20}
GPU_LABEL = {"h100": "H100 80GB", "h200": "H200 141GB", "a100-80": "A100 80GB"}
# v5p-N slices (N = TensorCores, 2 per chip) and their chip topologies (x, y, z) for libtpu.
V5P_SLICES = {8: "2x2x1", 16: "2x2x2", 32: "2x2x4", 64: "2x4x4", 128: "4x4x4", 256: "4x4x8"}
MAX_GPUS = 1024
TPU_CHIPS_PER_HOST = 4  # a v5p TPU VM host (worker) drives 4 chips
GPUS_PER_NODE = 8  # Nxh100 with N > 8: N/8 nodes of 8 GPUs
# The planned program never runs, so the CPU backend may skip LLVM's optimisations: half the
# compile time, and the buffers (hence memory_analysis) are assigned before LLVM runs.
CPU_COMPILE_OPTIONS = {"xla_backend_optimization_level": 0}


class PlanError(ValueError):
    """Bad input to the planner (an unknown topology, a mesh the topology cannot hold): exit code 2."""


# ---------------------------------------------------------------------------------- topologies


@dataclasses.dataclass(frozen=True)
class Topology:
    name: str  # as the user wrote it, lower case
    kind: str  # "tpu" | "gpu"
    devices: int  # chips / GPUs, one JAX device each
    device_bytes: int  # memory per device
    device_label: str
    tpu_topology: str = ""  # libtpu's name ("v5p:2x2x1"), TPU only
    hosts: int = 1  # JAX processes, one per host (TPU VM worker / GPU node)

    @property
    def device_gib(self) -> float:
        return self.device_bytes / GIB

    @property
    def devices_per_host(self) -> int:
        return self.devices // self.hosts

    @property
    def host_label(self) -> str:
        return "TPU VM host" if self.kind == "tpu" else "GPU node"


def known_topologies() -> list[str]:
    return [f"v5p-{n}" for n in V5P_SLICES] + [
        "8xh100", "8xh200", "Nxa100-80 (also Nxh100, Nxh200: N GPUs; N > 8: N/8 nodes of 8)"]


def parse_topology(name: str) -> Topology:
    """`v5p-8` ... `v5p-256` (N/8 hosts of 4 chips), or `<N>x<gpu>` with gpu h100 | h200 | a100-80
    (one node for N <= 8, else N/8 nodes of 8: N must then be a multiple of 8); PlanError otherwise."""
    text = name.strip().lower()
    if m := re.fullmatch(r"v5p-(\d+)", text):
        cores = int(m.group(1))
        if cores in V5P_SLICES:
            chips = cores // 2
            return Topology(text, "tpu", chips, V5P_CHIP_BYTES, "TPU v5p chip", f"v5p:{V5P_SLICES[cores]}",
                            hosts=max(1, chips // TPU_CHIPS_PER_HOST))
    elif m := re.fullmatch(r"(\d+)x(h100|h200|a100-80)", text):
        count, gpu = int(m.group(1)), m.group(2)
        if count > GPUS_PER_NODE and count % GPUS_PER_NODE and count <= MAX_GPUS:
            nearest = (count // GPUS_PER_NODE + 1) * GPUS_PER_NODE
            raise PlanError(f"topology {name!r}: more than {GPUS_PER_NODE} GPUs means nodes of {GPUS_PER_NODE}, "
                            f"so N must be a multiple of {GPUS_PER_NODE} (e.g. {nearest}x{gpu})")
        if 1 <= count <= MAX_GPUS:
            return Topology(text, "gpu", count, GPU_BYTES[gpu], GPU_LABEL[gpu],
                            hosts=max(1, count // GPUS_PER_NODE))
    raise PlanError(f"unknown topology {name!r}; known topologies: {', '.join(known_topologies())}")


def libtpu_available() -> bool:
    return importlib.util.find_spec("libtpu") is not None


def simulated(topology: Topology) -> bool:
    """True when the topology is compiled for CPU devices standing in for its accelerators."""
    return not (topology.kind == "tpu" and libtpu_available())


def request_cpu_devices(count: int) -> bool:
    """Ask for `count` CPU devices if JAX's backends have not started yet (they cannot change
    after). Returns whether at least `count` CPU devices are (or will be) available."""

    if not xla_bridge.backends_are_initialized():
        current = jax.config.jax_num_cpu_devices
        flag = re.search(r"--xla_force_host_platform_device_count=(\d+)", os.environ.get("XLA_FLAGS", ""))
        if max(current, int(flag.group(1)) if flag else 1) < count:
            jax.config.update("jax_num_cpu_devices", count)
    return len(jax.devices("cpu")) >= count


def topology_devices(topology: Topology) -> list:
    """The devices a topology's program is compiled for: TPU devices of a libtpu topology
    description (no TPU needed), or the first N CPU devices standing in for the accelerators."""

    if not simulated(topology):

        os.environ.setdefault("TPU_ACCELERATOR_TYPE", topology.name)  # quiets libtpu's probing of this host
        return list(topologies.get_topology_desc(platform="tpu", topology_name=topology.tpu_topology).devices)
    cpus = jax.devices("cpu")
    if len(cpus) < topology.devices:
        raise PlanError(
            f"{topology.name} is simulated with {topology.devices} CPU devices, but JAX started with {len(cpus)}; "
            f"plan it in a fresh process (ipo-jax plan ...), or set jax_num_cpu_devices={topology.devices} "
            "before JAX starts"
        )
    return cpus[: topology.devices]


# ---------------------------------------------------------------------------------- the run's shapes


def model_config_for(config):
    """The ModelConfig of the run's policy, from its config.json or preset, without weights.

    An `hf:<dir>` that is not on this machine (planning on a laptop) falls back to the preset
    named like the directory (hf:/models/Qwen3-8B -> preset qwen3-8b)."""

    m = config.model
    overrides = dict(param_dtype=m.param_dtype, dtype=m.dtype, remat_policy=m.remat)
    if "attention" in m and "attention" in {f.name for f in dataclasses.fields(ModelConfig)}:
        overrides["attention"] = m.attention
    kind, _, location = m.init.partition(":")
    if kind == "preset":
        cfg = preset_config(location, **overrides)
        if config.get("tokenizer") == "tiny":  # the loop grows a preset's vocabulary to the tokenizer's
            cfg = cfg.replace(vocab_size=max(cfg.vocab_size, -(-config.tiny_tokenizer_vocab // 64) * 64))
        return cfg
    if kind == "hf":
        if (Path(location) / "config.json").is_file():
            return ModelConfig.from_hf_dir(location, **overrides)
        preset = Path(location).name.lower()
        if preset in list_presets():
            return preset_config(preset, **overrides)
        raise PlanError(
            f"model.init {m.init!r}: {location}/config.json not found and no preset is named {preset!r}; "
            "plan with --config.model.init=preset:<name> (ipo-jax presets lists them)"
        )
    if kind == "orbax":
        return read_orbax_config(location, **overrides)
    raise PlanError(f"model.init {m.init!r}: expected 'preset:<name>', 'hf:<dir>' or 'orbax:<dir>'")


def sequence_length(config) -> int:
    """The longest row the run compiles: the largest bucket (data.max_length unless buckets are set);
    a GRPO run's: the longest prompt + the most new tokens (sampler.max_prompt_length +
    sampling.max_new_tokens)."""
    if grpo_step.is_grpo_config(config):
        return grpo_step.row_length(config)
    return max(config.data.buckets) if config.data.buckets else config.data.max_length


def _length_setting(config) -> str:
    if grpo_step.is_grpo_config(config):
        return "sampler.max_prompt_length + sampling.max_new_tokens"
    return "the largest of data.buckets" if config.data.buckets else "data.max_length"


def check_sequence_fits_model(config, model_cfg) -> None:
    """The longest row the run compiles must fit the model's context (max_position_embeddings)."""
    length, context = sequence_length(config), model_cfg.max_position_embeddings
    if length > context:
        setting = _length_setting(config)
        raise PlanError(f"{setting} is {length} tokens, longer than the context of {config.model.init} "
                        f"({context} tokens, max_position_embeddings); expected at most {context}")


def rows_per_micro(config) -> int:
    if grpo_step.is_grpo_config(config):
        return grpo_step.rows_per_micro(config)
    return config.data.pairs_per_micro * (2 if config.data.layout == "duplicated" else 1)


def batch_counts(config) -> tuple[int, int]:
    """(pairs -- a GRPO run's rows -- per micro-batch, micro-batches per update)."""
    if grpo_step.is_grpo_config(config):
        return grpo_step.rows_per_micro(config), config.grpo.micro_batches
    return config.data.pairs_per_micro, config.data.micro_batches


def _abstract_batch(config, mesh) -> dict:
    """The batch the loop feeds the step, as abstract arrays [micro_batches, rows, length] with
    its shardings; dtypes as ipo_jax.data.pairs.pack_pairs makes them."""


    shardings = batch_shardings(mesh)
    m, rows, pairs, length = config.data.micro_batches, rows_per_micro(config), config.data.pairs_per_micro, sequence_length(config)
    batch = {}
    for key in ROW_KEYS:
        dtype = jnp.bool_ if key in ("slot_chosen", "slot_rejected") else jnp.int32
        batch[key] = jax.ShapeDtypeStruct((m, rows, length), dtype, sharding=shardings[key])
    for key in PAIR_KEYS:
        dtype = jnp.bool_ if key == "pair_valid" else jnp.float32
        batch[key] = jax.ShapeDtypeStruct((m, pairs), dtype, sharding=shardings[key])
    return batch


def compile_train_step(config, model_cfg, mesh):
    """The run's train step compiled for `mesh` from abstract inputs (built like the loop builds it)."""


    check_batch_fits_mesh(rows_per_micro(config), mesh)
    graphdef, params = nnx.split(nnx.eval_shape(lambda: Decoder(model_cfg, rngs=nnx.Rngs(0))), nnx.Param)
    loss_cfg = LossConfig(**config.loss)
    optim_cfg = OptimConfig(**config.optim, total_steps=1000)  # the schedule's length does not change memory
    tx = make_optimizer(optim_cfg)
    abstract_state = jax.eval_shape(lambda p: init_train_state(p, tx, mesh)[0], params)
    state_shardings = tree_shardings(abstract_state, mesh)
    abstract_state = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_state, state_shardings
    )
    on_the_fly = loss_cfg.needs_reference and config.reference.mode == "on_the_fly"
    ref_params = ref_shardings = None
    if on_the_fly:  # the frozen reference: a copy of the policy's weights, sharded like them
        ref_shardings = tree_shardings(params, mesh)
        ref_params = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), params, ref_shardings)
    step = make_train_step(graphdef, tx, loss_cfg, learning_rate_schedule(optim_cfg),
                           chunk_size=config.train.logprob_chunk, reference_on_the_fly=on_the_fly, mesh=mesh)
    jitted = jit_train_step(step, state_shardings, mesh, ref_shardings)
    lowered = jitted.lower(abstract_state, _abstract_batch(config, mesh), ref_params)
    on_cpu = mesh.devices.flat[0].platform == "cpu"
    return lowered.compile(CPU_COMPILE_OPTIONS if on_cpu else None)


# ---------------------------------------------------------------------------------- hosts


def host_grid(mesh, topology: Topology, devices: list):
    """The host (JAX process) of each device of `mesh`, an int array shaped like the mesh.

    Simulated: the topology's i-th device is on host i // devices_per_host, the order in which a
    multi-host run lists its devices (jax.devices() is process-major; make_mesh lays GPUs and
    CPUs out in that order). Compiled for TPU with libtpu: the devices' own process_index."""
    import numpy as np

    order = {d: i for i, d in enumerate(devices)}  # topology_devices(topology)
    by_process = [getattr(d, "process_index", 0) for d in mesh.devices.flat]
    if not simulated(topology) and len(set(by_process)) == topology.hosts:
        hosts = by_process
    else:
        hosts = [order[d] // topology.devices_per_host for d in mesh.devices.flat]
    return np.asarray(hosts).reshape(mesh.devices.shape)


def batch_axes() -> tuple[str, ...]:
    """The mesh axes the rows of a batch are split over (LOGICAL_RULES["batch"])."""

    spec = LOGICAL_RULES["batch"]
    return (spec,) if isinstance(spec, str) else tuple(spec or ())


@dataclasses.dataclass
class HostView:
    """How a run spreads over hosts (see the module doc); `lines()` is what the plan prints."""

    topology: Topology
    mesh: dict[str, int]  # axis -> size, in the mesh's axis order
    crossing: dict[str, int]  # mesh axis (size > 1) -> how many hosts one line along it spans
    batch_axes: tuple[str, ...]
    batch_parts: int  # shards of the batch dimension (product of the batch axes)
    rows_per_micro: int
    pairs_per_micro: int
    micro_batches: int
    host_parts: list[list[int]]  # per host: the batch shards its devices hold (sorted)
    unit: str = "pairs"  # what a batch counts: pairs (train), rows (a GRPO update: prompts x G completions)

    @property
    def rows_per_part(self) -> int:
        return self.rows_per_micro // self.batch_parts

    def host_pairs_per_update(self, host: int) -> float:
        return self.pairs_per_micro * self.micro_batches * len(self.host_parts[host]) / self.batch_parts

    def host_rows(self, host: int) -> str:
        """The rows of each micro-batch a host's devices hold, as ranges ("0-7", "0-3, 8-11")."""
        k = self.rows_per_part
        ranges: list[list[int]] = []
        for part in self.host_parts[host]:
            lo, hi = part * k, part * k + k - 1
            if ranges and ranges[-1][1] == lo - 1:
                ranges[-1][1] = hi
            else:
                ranges.append([lo, hi])
        return ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in ranges)

    def lines(self, peak: float | None = None) -> list[str]:
        t = self.topology
        pairs = self.pairs_per_micro * self.micro_batches
        what = f"{t.host_label}{'s' if t.hosts > 1 else ''}"
        if t.hosts == 1:
            out = [f"hosts: 1 process ({what}) x {t.devices} devices; the whole batch "
                   f"({pairs} {self.unit} per step) on this host"]
            if peak is not None:
                out[0] += f"; {t.devices} x {peak / GIB:.1f} GiB = {t.devices * peak / GIB:.1f} GiB"
            return out
        out = [f"hosts: {t.hosts} processes (one per {t.host_label}) x {t.devices_per_host} devices each = "
               f"{t.devices} devices; one `ipo-jax train` process per host"]
        spans = []
        for axis, size in self.mesh.items():
            if size > 1:
                n = self.crossing[axis]
                spans.append(f"{axis}={size} spans {n} hosts" if n > 1 else f"{axis}={size} within each host")
        net = "DCN" if t.kind == "tpu" else "InfiniBand / Ethernet"
        crossing = [a for a in self.crossing if self.crossing[a] > 1]
        note = (f" ({', '.join(crossing)} collectives cross the host network, {net})" if crossing else "")
        out.append(f"mesh over hosts: {'; '.join(spans) or 'one device'}{note}")
        if "tensor" in crossing:
            out.append(f"warning: the tensor axis crosses hosts (collectives in every layer over {net}); "
                       f"keep mesh.tensor <= {t.devices_per_host}")
        axes = " x ".join(f"{a}={self.mesh[a]}" for a in self.batch_axes if self.mesh[a] > 1) or "none"
        out.append(f"batch: {self.rows_per_micro} rows per micro-batch split over the batch axes ({axes}) = "
                   f"{self.batch_parts} shards of {self.rows_per_part} row{'s' if self.rows_per_part > 1 else ''}")
        shown = list(range(t.hosts)) if t.hosts <= 4 else [0, 1, t.hosts - 1]
        for h in shown:
            if h == t.hosts - 1 and t.hosts > 4:
                out.append(f"  ... ({t.hosts - 3} hosts more)")
            out.append(f"  host {h} (process {h}): rows {self.host_rows(h)} of each micro-batch, "
                       f"{self.host_pairs_per_update(h):g} {self.unit} per step")
        per_host = sorted({self.host_pairs_per_update(h) for h in range(t.hosts)})
        each = f"{per_host[0]:g}" if len(per_host) == 1 else f"{per_host[0]:g}-{per_host[-1]:g}"
        line = (f"global batch {pairs} {self.unit} per step ({self.pairs_per_micro} per micro-batch x "
                f"{self.micro_batches}); per host {each} {self.unit} per step")
        if any(self.host_pairs_per_update(h) == pairs for h in range(t.hosts)):
            line += " (the batch axes do not cross hosts: every host computes the whole batch)"
        out.append(line)
        if peak is not None:
            n = t.devices_per_host
            out.append(f"per host: {n} x {peak / GIB:.1f} GiB = {n * peak / GIB:.1f} GiB "
                       f"of {t.devices_per_host * t.device_gib:.1f} GiB")
        return out


def host_view(config, topology: Topology, mesh_sizes: Mapping[str, int], hosts) -> HostView:
    """The per-host view of a run: `mesh_sizes` axis -> size (the mesh's order), `hosts` the host
    of each device shaped like the mesh (host_grid)."""
    import numpy as np

    hosts = np.asarray(hosts)
    axes = list(mesh_sizes)
    crossing = {}
    for i, axis in enumerate(axes):
        if mesh_sizes[axis] > 1:
            lines = np.moveaxis(hosts, i, -1).reshape(-1, mesh_sizes[axis])
            crossing[axis] = max(len(set(line.tolist())) for line in lines)
    axes_of_batch = tuple(a for a in batch_axes() if a in mesh_sizes)
    batch_parts = math.prod(mesh_sizes[a] for a in axes_of_batch)
    # the batch shard of each device: its coordinates on the batch axes, row-major (as NamedSharding splits)
    coords = np.indices(hosts.shape)
    part = np.zeros(hosts.shape, dtype=int)
    for a in axes_of_batch:
        part = part * mesh_sizes[a] + coords[axes.index(a)]
    host_parts = [sorted(set(part[hosts == h].tolist())) for h in range(topology.hosts)]
    per_micro, micro_batches = batch_counts(config)
    return HostView(topology, dict(mesh_sizes), crossing, axes_of_batch, batch_parts, rows_per_micro(config),
                    per_micro, micro_batches, host_parts, "rows" if grpo_step.is_grpo_config(config) else "pairs")


# ---------------------------------------------------------------------------------- memory


@dataclasses.dataclass(frozen=True)
class Memory:
    """Per-device bytes of one compiled step (see the module doc)."""

    arguments: float
    outputs: float
    aliased: float
    temps: float

    @property
    def peak(self) -> float:
        return self.arguments + self.outputs - self.aliased + self.temps

    @classmethod
    def of(cls, compiled) -> Memory:
        m = compiled.memory_analysis()
        return cls(m.argument_size_in_bytes, m.output_size_in_bytes, m.alias_size_in_bytes, m.temp_size_in_bytes)

    def as_dict(self) -> dict[str, float]:
        return {**dataclasses.asdict(self), "peak": self.peak}


def extrapolate(at_a: Memory, at_b: Memory, a: int, b: int, layers: int) -> Memory:
    """Each quantity linear in the layer count through the compiles at a and b layers."""
    fields = [f.name for f in dataclasses.fields(Memory)]
    return Memory(**{k: getattr(at_a, k) + (getattr(at_b, k) - getattr(at_a, k)) * (layers - a) / (b - a) for k in fields})


def with_overrides(config, overrides: Mapping[str, Any]):
    """A copy of `config` with dotted keys replaced (the original is left alone)."""
    out = copy.deepcopy(config)
    for dotted, value in overrides.items():
        *parents, leaf = dotted.split(".")
        node = out
        for p in parents:
            node = node[p]
        node[leaf] = value  # an existing key: allowed on a locked config, type-checked
    return out


@dataclasses.dataclass
class Measurement:
    memory: Memory
    layers: int  # the model's depth
    method: str  # "full depth" | "extrapolated from a and b layers"
    mesh: dict[str, int]
    seconds: float
    hosts: Any = None  # numpy int array shaped like the mesh: the host (process) of each device


# (config, model, compile target) -> Memory: a setting planned twice in one process (the suggestion
# search, then the plan of the suggested change) is compiled once.
_COMPILED: dict[tuple, Memory] = {}


def _memory(config, model_cfg, mesh, topology: Topology) -> Memory:
    target = "cpu" if simulated(topology) else topology.tpu_topology  # simulated: only the device count matters
    key = (config.to_json_best_effort(sort_keys=True), model_cfg, target, topology.devices)
    if key not in _COMPILED:
        if grpo_step.is_grpo_config(config):  # the GRPO update: policy + reference forward, G x prompts rows
            on_cpu = mesh.devices.flat[0].platform == "cpu"
            compiled = grpo_step.compile_grpo_step(config, model_cfg, mesh, CPU_COMPILE_OPTIONS if on_cpu else None)
        else:
            compiled = compile_train_step(config, model_cfg, mesh)
        _COMPILED[key] = Memory.of(compiled)
    return _COMPILED[key]


def measure(config, topology: Topology, layers: tuple[int, int] | None = None) -> Measurement:
    """Per-device memory of the config's train step on `topology` (PlanError for a mesh the
    topology cannot hold or a batch its mesh cannot split). With `layers` (a, b), a < b, the
    step is compiled at a and b layers and extrapolated to the model's depth."""

    start = time.perf_counter()
    model_cfg = model_config_for(config)
    check_sequence_fits_model(config, model_cfg)
    devices = topology_devices(topology)
    try:
        mesh = make_mesh(dict(config.mesh), devices=devices)
    except MeshError as e:
        raise PlanError(f"mesh on {topology.name} ({topology.devices} devices): {e}") from None
    parts = math.prod(mesh.shape[a] for a in batch_axes())
    if rows_per_micro(config) % parts:  # check_batch_fits_mesh would refuse it; say what would fit
        raise PlanError(f"{rows_per_micro(config)} rows per micro-batch cannot be split over the batch mesh axes "
                        f"({', '.join(batch_axes())}: {parts} devices on {topology.name}); "
                        f"{batch_fit_hint(config, parts)}")
    try:
        if layers and layers[1] < model_cfg.num_layers:
            a, b = layers
            if not 0 < a < b:
                raise PlanError(f"--layers {a},{b}: expected two layer counts 0 < A < B")
            at_a = _memory(config, model_cfg.replace(num_layers=a), mesh, topology)
            at_b = _memory(config, model_cfg.replace(num_layers=b), mesh, topology)
            memory, method = extrapolate(at_a, at_b, a, b, model_cfg.num_layers), f"extrapolated from {a} and {b} layers"
        else:
            memory, method = _memory(config, model_cfg, mesh, topology), "full depth"
    except PlanError:
        raise
    except ValueError as e:  # rows that do not split over the mesh, dims the tensor axis does not divide
        raise PlanError(str(e)) from None
    return Measurement(memory, model_cfg.num_layers, method, dict(mesh.shape), time.perf_counter() - start,
                       host_grid(mesh, topology, devices))


def batch_fit_hint(config, parts: int) -> str:
    """What to plan instead when the rows of a micro-batch do not split over `parts` batch shards:
    more pairs per micro-batch, fewer micro-batches, the same pairs per step."""
    if grpo_step.is_grpo_config(config):
        rows = grpo_step.rows_per_update(config)
        fitting = [m for m in range(config.grpo.micro_batches, 0, -1) if rows % m == 0 and (rows // m) % parts == 0]
        return (f"plan with --config.grpo.micro_batches={fitting[0]} (the same {rows} rows per update)" if fitting
                else f"{rows} rows per update (grpo.prompts_per_step x grpo.num_generations) cannot fill {parts} "
                "shards: choose a multiple, or a tensor axis (--config.mesh.tensor=2)")
    rows_per_pair = 2 if config.data.layout == "duplicated" else 1
    total = config.data.pairs_per_micro * config.data.micro_batches
    for ppm in range(config.data.pairs_per_micro + 1, total + 1):
        if total % ppm == 0 and (ppm * rows_per_pair) % parts == 0:
            return (f"plan with --config.data.pairs_per_micro={ppm} --config.data.micro_batches={total // ppm} "
                    f"(the same {total} pairs per step), or a tensor axis (--config.mesh.tensor=2)")
    ppm = parts // math.gcd(parts, rows_per_pair)
    return (f"{total} pairs per step cannot fill {parts} shards: plan with --config.data.pairs_per_micro={ppm} "
            f"--config.data.micro_batches=1 (more pairs per step), or a tensor axis (--config.mesh.tensor=2)")


def headroom_of(peak: float, topology: Topology) -> float:
    return 1.0 - peak / topology.device_bytes


def fits(peak: float, topology: Topology, headroom: float = DEFAULT_HEADROOM) -> bool:
    return headroom_of(peak, topology) >= headroom


# ---------------------------------------------------------------------------------- suggestions


def candidate_changes(config, topology: Topology) -> Iterator[dict[str, Any]]:
    """Changes that lower memory, cumulative, in order of their cost to the run: a stronger remat
    policy (recompute), fewer rows per micro-batch and more micro-batches (same pairs per update;
    smaller matmuls), a tensor-parallel axis (communication in every layer), a shorter sequence
    (the data changes). A candidate the topology cannot hold is skipped by the caller."""

    changes: dict[str, Any] = {}
    remat = config.model.remat
    for policy in REMAT_ORDER[REMAT_ORDER.index(remat) + 1 :] if remat in REMAT_ORDER else ():
        changes["model.remat"] = policy
        yield dict(changes)
    if grpo_step.is_grpo_config(config):
        yield from _grpo_candidates(config, topology, changes)
        return

    pairs_per_update = config.data.pairs_per_micro * config.data.micro_batches
    rows_per_pair = 2 if config.data.layout == "duplicated" else 1

    def fewer_rows(batch_parts: int) -> Iterator[dict[str, Any]]:
        """Halve the pairs per micro-batch while the rows still split over the batch axes."""
        ppm = changes.get("data.pairs_per_micro", config.data.pairs_per_micro)
        while ppm % 2 == 0 and ((ppm // 2) * rows_per_pair) % batch_parts == 0:
            ppm //= 2
            changes.update({"data.pairs_per_micro": ppm, "data.micro_batches": pairs_per_update // ppm})
            yield dict(changes)

    try:
        sizes = resolve_mesh_shape(dict(config.mesh), topology.devices)
    except MeshError:
        sizes = {"data": 1, "fsdp": topology.devices, "tensor": 1}
    yield from fewer_rows(sizes.get("data", 1) * sizes.get("fsdp", 1))
    model_cfg = model_config_for(config)
    for t in (2, 4, 8):
        if t <= sizes.get("tensor", 1) or topology.devices % t or model_cfg.num_kv_heads % t:
            continue
        changes.update({"mesh.data": 1, "mesh.fsdp": -1, "mesh.tensor": t})
        yield dict(changes)
        yield from fewer_rows(topology.devices // t)
    length = sequence_length(config)
    while length // 2 >= SHORTEST_SUGGESTED_LENGTH:
        length //= 2
        changes["data.max_length"] = length
        if config.data.buckets:
            changes["data.buckets"] = tuple(b for b in config.data.buckets if b < length) + (length,)
        yield dict(changes)


def _grpo_candidates(config, topology: Topology, changes: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """A GRPO run's changes after remat: more micro-batches (the same rows per update, while a
    micro-batch still splits over the batch axes), then a tensor-parallel axis."""
    rows = grpo_step.rows_per_update(config)
    try:
        sizes = resolve_mesh_shape(dict(config.mesh), topology.devices)
    except MeshError:
        sizes = {"data": 1, "fsdp": topology.devices, "tensor": 1}
    parts = sizes.get("data", 1) * sizes.get("fsdp", 1)
    micro = config.grpo.micro_batches
    while rows % (micro * 2) == 0 and (rows // (micro * 2)) % parts == 0:
        micro *= 2
        changes["grpo.micro_batches"] = micro
        yield dict(changes)
    model_cfg = model_config_for(config)
    for t in (2, 4, 8):
        if t > sizes.get("tensor", 1) and topology.devices % t == 0 and model_cfg.num_kv_heads % t == 0:
            changes.update({"mesh.data": 1, "mesh.fsdp": -1, "mesh.tensor": t})
            yield dict(changes)


def override_flags(changes: Mapping[str, Any]) -> str:
    def value(v):
        return repr(v) if isinstance(v, tuple) else str(v)

    return " ".join(f"--config.{k}={value(v)}" for k, v in changes.items())


@dataclasses.dataclass
class Tried:
    changes: dict[str, Any]
    peak: float | None  # None: the topology cannot hold it
    note: str = ""


def suggest_change(config, topology: Topology, headroom: float, layers=None, log=print) -> tuple[dict | None, list[Tried]]:
    """The first candidate change (see candidate_changes) whose plan fits; each is compiled."""
    tried = []
    for changes in candidate_changes(config, topology):
        try:
            m = measure(with_overrides(config, changes), topology, layers)
        except PlanError as e:
            tried.append(Tried(changes, None, str(e)))
            continue
        tried.append(Tried(changes, m.memory.peak))
        ok = fits(m.memory.peak, topology, headroom)
        log(f"  tried {override_flags(changes)}: {m.memory.peak / GIB:.1f} GiB, "
            f"{headroom_of(m.memory.peak, topology):.0%} headroom{' -> fits' if ok else ''}")
        if ok:
            return changes, tried
    return None, tried


# ---------------------------------------------------------------------------------- the report


def describe_run(config) -> str:
    if grpo_step.is_grpo_config(config):
        g = config.grpo
        return (f"GRPO update: {config.model.init}, params {config.model.param_dtype}, compute {config.model.dtype}, "
                f"remat {config.model.remat}, attention {config.model.get('attention', 'dense')}; "
                f"{sequence_length(config)} tokens (prompt {config.sampler.max_prompt_length} + completion "
                f"{config.sampling.max_new_tokens}) x {rows_per_micro(config)} rows per micro-batch x "
                f"{g.micro_batches} micro-batches ({g.prompts_per_step} prompts x G={g.num_generations} per update); "
                f"log-prob chunk {g.logprob_chunk}; reference forward {'yes (beta ' + str(g.beta) + ')' if g.beta > 0 else 'no (beta 0)'}")
    d = config.data
    return (f"{config.model.init}, params {config.model.param_dtype}, compute {config.model.dtype}, "
            f"remat {config.model.remat}, attention {config.model.get('attention', 'dense')}; "
            f"{sequence_length(config)} tokens x {rows_per_micro(config)} rows per micro-batch x {d.micro_batches} "
            f"micro-batches ({d.pairs_per_micro * d.micro_batches} pairs per update, layout {d.layout}); "
            f"log-prob chunk {config.train.logprob_chunk}; reference {config.reference.mode}")


def topology_note(topology: Topology) -> str:
    where = (f"{topology.devices} x {topology.device_label} ({topology.device_gib:.1f} GiB each)")
    if not simulated(topology):
        return f"{topology.name}: {where}, compiled for TPU with libtpu (no TPU used)"
    how = "simulated with CPU devices" + (" (libtpu is not installed)" if topology.kind == "tpu" else "")
    note = f"{topology.name}: {where}, {how}; XLA's CPU compiler differs from the accelerator's by some percent"
    if topology.kind == "gpu":
        note += ("; JAX on GPU preallocates 75% of the memory unless XLA_PYTHON_CLIENT_MEM_FRACTION "
                 "is raised (e.g. 0.95)")
    return note


def run_plan(config, topology_name: str, *, headroom: float = DEFAULT_HEADROOM, layers=None, suggest: bool = True,
             device_memory_gib: float | None = None, log=print) -> int:
    """Plan the config on the topology, print the report; 0 fits, 3 does not fit (PlanError: bad input).
    `device_memory_gib` replaces the topology's memory per device (another card, a reserved share)."""
    if not 0 <= headroom < 1:
        raise PlanError(f"--headroom {headroom}: expected a fraction in [0, 1)")
    # the train (or grpo) stage's rules: a config plan calls fine, train refuses, is no plan
    validate_settings("grpo-plan" if grpo_step.is_grpo_config(config) else "plan", config)
    topology = parse_topology(topology_name)
    if device_memory_gib is not None:
        if not (math.isfinite(device_memory_gib) and device_memory_gib > 0):
            raise PlanError(f"--device-memory {device_memory_gib}: expected a positive number of GiB")
        topology = dataclasses.replace(topology, device_bytes=int(device_memory_gib * GIB),
                                       device_label=f"{topology.device_label} (budget set to {device_memory_gib:g} GiB)")
    if simulated(topology) and not request_cpu_devices(topology.devices):
        topology_devices(topology)  # raises the PlanError naming the device counts
    check_sequence_fits_model(config, model_config_for(config))  # before anything is printed or compiled
    log(f"plan: {describe_run(config)}")
    log(f"topology: {topology_note(topology)}")
    m = measure(config, topology, layers)
    mem = m.memory
    mesh = " x ".join(f"{k}={v}" for k, v in m.mesh.items() if v > 1) or "one device"
    log(f"mesh {mesh}; {m.layers} layers ({m.method}); planned in {m.seconds:.0f} s")
    log(f"per device: arguments {mem.arguments / GIB:.2f} GiB, outputs {mem.outputs / GIB:.2f} GiB "
        f"({mem.aliased / GIB:.2f} aliased to the donated arguments), temporaries {mem.temps / GIB:.2f} GiB, "
        f"peak {mem.peak / GIB:.2f} GiB")
    for line in host_view(config, topology, m.mesh, m.hosts).lines(mem.peak):
        log(line)
    peak = mem.peak
    if grpo_step.is_grpo_config(config):  # rollouts: the same weights (and reference), plus the sampler's cache
        rollout = mem.arguments + grpo_step.kv_cache_bytes(config, model_config_for(config), m.mesh)
        log(f"rollout (estimate): the train state and batch {mem.arguments / GIB:.2f} GiB + the sampler's KV cache "
            f"({config.sampler.batch_size} rows) {(rollout - mem.arguments) / GIB:.2f} GiB = {rollout / GIB:.2f} GiB "
            f"per device{' (above the update: the plan uses it)' if rollout > peak else ''}")
        peak = max(peak, rollout)
    room = headroom_of(peak, topology)
    if fits(peak, topology, headroom):
        log(f"fits ({peak / GIB:.1f} of {topology.device_gib:.1f} GiB, {room:.0%} headroom)")
        return 0
    short = f"{room:.0%} headroom, under the {headroom:.0%} kept free" if room >= 0 else "over the device's memory"
    log(f"does not fit ({peak / GIB:.1f} of {topology.device_gib:.1f} GiB: {short})")
    if suggest:
        log("looking for the smallest change that fits (each compiled):")
        changes, _ = suggest_change(config, topology, headroom, layers, log)
        if changes is None:
            log(f"no change tried fits {topology.name}; a larger topology is needed")
        else:
            log(f"smallest change that fits: {override_flags(changes)}")
    return 3
